"""Tests of fcrkit-independence, written with fcrkit's own test helpers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from fcrkit_independence import NormalizedHSIC, Statement, kci_checks, normalized_hsic
from fcrkit_independence import plugin as independence_plugin

import fcrkit
from fcrkit.errors import ConfigError
from fcrkit.testing import check_component, tiny_adata


def test_conforms_to_the_regularizer_protocol():
    check_component("regularizer", NormalizedHSIC)
    check_component("regularizer", NormalizedHSIC, {"pairs": [["x", "label:t"]], "use": "loc"})


def test_bad_pair_names_it():
    with pytest.raises(ConfigError, match="'nope'"):
        check_component("regularizer", NormalizedHSIC, {"pairs": [["x", "nope"]]})


def test_normalized_hsic_is_near_zero_for_independent_and_high_for_dependent_inputs():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(300, 3, generator=g)
    independent = normalized_hsic(a, torch.randn(300, 2, generator=g))
    nonlinear = normalized_hsic(a, a[:, :2] ** 2 + 0.1 * torch.randn(300, 2, generator=g))
    assert float(independent) < 0.05
    assert float(nonlinear) > 5 * float(independent)  # measured: 0.021 and 0.23
    assert float(normalized_hsic(a, a)) == pytest.approx(1.0, abs=1e-5)


def test_statement_parsing():
    assert Statement.parse("z_x _||_ t | x") == Statement("z_x", "t", ("x",))
    assert Statement.parse("z_tx ⟂ z_t | x, t") == Statement("z_tx", "z_t", ("x", "t"))
    assert str(Statement.parse("z_t _||_ x")) == "z_t _||_ x"
    with pytest.raises(ConfigError, match="cannot read"):
        Statement.parse("z_x independent of t")


def test_kci_rejects_dependence_and_keeps_conditional_independence():
    rng = np.random.default_rng(0)
    n = 400
    x = rng.integers(0, 3, n)
    x_onehot = np.eye(3)[x]
    t = rng.integers(0, 2, n).astype(float)[:, None]
    # z_x depends on x only: independent of t given x; z_t depends on t: not independent of t
    latents = {"x": x[:, None] + 0.3 * rng.normal(size=(n, 2)), "t": 2 * t + 0.3 * rng.normal(size=(n, 2))}
    labels = {"x": x_onehot, "t": t}
    table = kci_checks(latents, labels, ["z_x _||_ t | x", "z_t _||_ t"], n_cells=300, repeats=2).set_index("statement")
    assert table.loc["z_x _||_ t | x", "p_value_median"] > 0.05
    assert table.loc["z_t _||_ t", "p_value_median"] < 1e-3


def test_penalty_lowers_block_dependence_in_a_trained_fcr(fcrkit_plugin):
    registry = fcrkit_plugin(independence_plugin, "fcrkit_independence")
    assert "independence_nhsic" in registry.names("regularizer")
    adata = tiny_adata()

    def dependence(weight: float) -> float:
        term = {"name": "independence_nhsic", "weight": weight, "pairs": [["x", "tx"]], "use": "loc"}
        extra = [term] if weight else []
        model = fcrkit.models.FCR(adata, "nb", 3, regularizers=extra, seed=0)
        model.train(max_epochs=15, batch_size=128, seed=0, accelerator="cpu")
        z = model.get_latent_representation()
        return float(normalized_hsic(torch.as_tensor(z["X_fcr_x"]), torch.as_tensor(z["X_fcr_tx"])))

    plain, penalised = dependence(0.0), dependence(50.0)
    assert penalised < 0.6 * plain, (plain, penalised)  # measured: 0.25 -> 0.09
