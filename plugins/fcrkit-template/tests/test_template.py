"""The template plugin's tests, written with fcrkit's own test helpers."""

from __future__ import annotations

import fcrkit_template
import numpy as np
import pytest

import fcrkit
from fcrkit.errors import ConfigError
from fcrkit.testing import check_component, tiny_adata


def test_conforms_to_the_regularizer_protocol():
    check_component("regularizer", fcrkit_template.L1Block, {"block": "tx"})


def test_unknown_block_names_the_block():
    with pytest.raises(ConfigError, match="'zz'"):
        check_component("regularizer", fcrkit_template.L1Block, {"block": "zz"})


def test_penalty_shrinks_the_block_in_a_trained_fcr(fcrkit_plugin):
    registry = fcrkit_plugin(fcrkit_template)
    assert registry.get("regularizer", "template_l1").plugin == "fcrkit_template"
    adata = tiny_adata()

    def mean_abs_tx(weight: float) -> float:
        extra = [{"name": "template_l1", "weight": weight, "block": "tx"}] if weight else []
        model = fcrkit.models.FCR(adata, "nb", 3, regularizers=extra, seed=0)
        model.train(max_epochs=15, batch_size=128, seed=0, accelerator="cpu")
        if weight:
            assert "template_l1" in model.history
        return float(np.abs(model.get_latent_representation()["X_fcr_tx"]).mean())

    plain, penalised = mean_abs_tx(0.0), mean_abs_tx(20.0)
    assert penalised < 0.6 * plain, (plain, penalised)  # measured: 0.61 -> 0.26
