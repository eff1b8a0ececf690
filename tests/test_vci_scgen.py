"""VCI and scGen: their registered parts, the log-normalisation round trip, persistence, and Kang.

Kang protocol (as tests/test_fcr_kang.py): hold out the stimulated CD14 monocytes, train on the rest
(2000 most variable genes), predict them from their own controls, and score R² of ``log1p`` of the
mean normalised expression over the top-50 DEGs with :func:`fcrkit.metrics.prediction_scores`.
"""

from __future__ import annotations

import numpy as np
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine

import fcrkit
from fcrkit.components.counterfactual import Counterfactual, LogNormalizedGaussian
from fcrkit.components.nn import lognormalize
from fcrkit.data.loaders import CellData
from fcrkit.errors import ConfigError
from fcrkit.metrics.baselines import log_normalize
from fcrkit.protocols import ModelInfo
from fcrkit.testing import check_component, tiny_adata
from tests.kang import kang_split

SMALL = {"n_hidden": 32, "n_latent": 4}


# -- the registered parts ------------------------------------------------------------------------------
@pytest.mark.parametrize("options", [{}, {"mean": "expectation"}, {"scale": "gene-cell", "target_sum": 1e3}])
def test_lognorm_gaussian_conforms(options):
    check_component("likelihood", "lognorm_gaussian", options)


@pytest.mark.parametrize("options", [{}, {"kernel": "mean"}, {"match_weight": 0.0}, {"space": "identity"}])
def test_counterfactual_regularizer_conforms(options):
    check_component("regularizer", "counterfactual", options)


def test_counterfactual_regularizer_refuses_bad_options():
    info = ModelInfo({"z": 2}, {"x": 3}, 5)
    with pytest.raises(ConfigError, match="no 't' labels"):
        Counterfactual(info)
    info = ModelInfo({"z": 2}, {"x": 3, "t": 2}, 5)
    with pytest.raises(ConfigError, match="bandwidth"):
        Counterfactual(info, bandwidth=0)
    with pytest.raises(ConfigError, match="kernel"):
        Counterfactual(info, kernel="knn")


def test_counterfactual_treatment_is_another_treatment_of_the_batch():
    reg = Counterfactual(ModelInfo({"z": 2}, {"t": 2}, 5))
    t = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]]).repeat(50, 1)
    torch.manual_seed(0)
    swapped = reg.counterfactual_treatments(t)
    assert not (swapped == t).all(-1).any()  # never the cell's own treatment
    rows = {tuple(r) for r in swapped.tolist()}
    assert rows == {tuple(r) for r in t.tolist()}  # only rows seen in the batch, each of them drawn
    one = torch.zeros(4, 2)
    assert torch.equal(reg.counterfactual_treatments(one), one)  # nothing else to swap to


# -- log-normalisation on the way in and back ------------------------------------------------------------
@torch.no_grad()
def test_lognorm_gaussian_round_trip_and_density():
    torch.manual_seed(0)
    y = torch.poisson(torch.full((6, 9), 4.0))
    library = y.sum(-1, keepdim=True)
    v = lognormalize(y)
    np.testing.assert_allclose(v.numpy(), log_normalize(y.numpy()), rtol=1e-5, atol=1e-6)
    lik = LogNormalizedGaussian(9)
    # decoding the cell's own log-normalised values gives its counts back (plug-in mean)
    np.testing.assert_allclose(lik.mean({"mean": v}, library).numpy(), y.numpy(), rtol=1e-4, atol=1e-4)
    # the density of the counts is the Gaussian of the log-normalised values and the Jacobian of the map
    loc = torch.randn(6, 9)
    scale = lik.gaussian.scale({})
    expected = dist.Normal(loc, scale).log_prob(v).sum(-1) - (v + torch.log(library / 1e4)).sum(-1)
    np.testing.assert_allclose(lik.distribution({"mean": loc}, library).log_prob(y).numpy(), expected.numpy(),
                               rtol=1e-5, atol=1e-4)
    # either profile gives non-negative expected counts that add up to the cell's library
    for mode in ("plugin", "expectation"):
        counts = LogNormalizedGaussian(9, mean=mode).mean({"mean": loc}, library)
        assert (counts >= 0).all()
        np.testing.assert_allclose(counts.sum(-1).numpy(), library.squeeze(-1).numpy(), rtol=1e-5)


def test_scgen_encodes_log_normalised_counts_and_predicts_counts():
    adata = tiny_adata(seed=1)
    model = fcrkit.models.ScGen(adata, **SMALL, seed=0)
    assert model.module.encoder_input == "lognorm"  # the likelihood's choice under encoder_input="auto"
    y = torch.as_tensor(adata.X[:5].toarray(), dtype=torch.float32)
    np.testing.assert_allclose(model.module.inputs(y).numpy(), log_normalize(y.numpy()), rtol=1e-5, atol=1e-6)
    model.train(max_epochs=3, batch_size=64, seed=0, accelerator="cpu")
    controls = adata[adata.obs["treatment"] == "control"].copy()
    pred = model.predict(controls, treatment="drug_0")
    assert pred.shape == controls.shape and (pred.X >= 0).all()
    # expected counts with each cell's own library, not log-normalised values
    np.testing.assert_allclose(pred.X.sum(1), np.asarray(controls.X.sum(1)).ravel(), rtol=1e-4)
    assert set(pred.obs["treatment"]) == {"drug_0"}
    shift = {b: model.latent_shift("drug_0", balance=b) for b in ("pooled", "paired")}
    assert shift["pooled"].shape == (SMALL["n_latent"],) and np.isfinite(shift["paired"]).all()
    with pytest.raises(ConfigError, match="dose"):
        model.predict(controls, treatment="drug_0", dose=2.0)
    with pytest.raises(ConfigError, match="balance"):
        model.predict(controls, treatment="drug_0", balance="upsample")


def test_scgen_on_log_normalised_data_predicts_log_normalised_values():
    adata = tiny_adata(seed=2)
    adata.layers["lognorm"] = log_normalize(adata.X.toarray()).astype(np.float32)
    fcrkit.setup_anndata(adata, layer="lognorm", treatment_key="treatment", covariate_keys=["cell_type"],
                         control_value="control")
    model = fcrkit.models.ScGen(adata, likelihood="gaussian", **SMALL, seed=0)
    assert model.module.encoder_input == "identity"
    model.train(max_epochs=3, batch_size=64, seed=0, accelerator="cpu")
    pred = model.predict(adata[adata.obs["treatment"] == "control"], treatment="drug_1")
    assert np.abs(pred.X).max() < 20  # on the log scale, like the data
    with pytest.raises(ConfigError, match="Gaussian model of log-normalised"):
        fcrkit.models.ScGen(adata, likelihood="nb")


# -- the counterfactual term reaches the encoder and the decoder ------------------------------------------------
def _counterfactual_loss(model, **options):
    """The counterfactual term of a minibatch; also says whether it moved any batch-norm statistics."""
    data = CellData.from_anndata(model.adata, model.setup)
    batch = data.batch(torch.arange(128))
    model.module.train()
    guide = poutine.trace(model.module.guide).get_trace(batch, data.n_obs)
    ctx = model.module.context(guide, batch, data.n_obs)
    reg = model.module.regularizers["counterfactual"]
    for key, value in options.items():
        setattr(reg, key, value)
    model.module.zero_grad()
    norms = [m for m in model.module.modules() if isinstance(m, torch.nn.BatchNorm1d)]
    before = [(m.running_mean.clone(), m.running_var.clone()) for m in norms]
    loss = reg.loss(ctx)
    moved = any(not (torch.equal(m.running_mean, a) and torch.equal(m.running_var, b))
                for m, (a, b) in zip(norms, before))
    return loss, moved


def _has_gradient(module) -> bool:
    return any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())


def test_counterfactual_gradient_reaches_encoder_and_decoder():
    model = fcrkit.models.VCI(tiny_adata(), **SMALL, seed=0)
    torch.manual_seed(0)
    loss, moved = _counterfactual_loss(model)
    assert torch.isfinite(loss) and loss > 0
    assert not moved  # decoded counterfactuals must not shift the statistics used at prediction
    loss.backward()
    assert _has_gradient(model.module.encoders) and _has_gradient(model.module.decoder)
    # the match term trains the decoder; the KL (its counterfactual input detached, as in VCI's code) does not
    _counterfactual_loss(model, match_weight=0.0)[0].backward()
    assert _has_gradient(model.module.encoders) and not _has_gradient(model.module.decoder)
    _counterfactual_loss(model, match_weight=1.0, kl_weight=0.0)[0].backward()
    assert _has_gradient(model.module.decoder)


def test_vci_trains_and_predicts_counts():
    adata = tiny_adata()
    model = fcrkit.models.VCI(adata, **SMALL, seed=0)
    history = model.train(max_epochs=3, batch_size=64, seed=0, accelerator="cpu")
    assert "counterfactual" in history and np.isfinite(history["counterfactual"]).all()
    controls = adata[adata.obs["treatment"] == "control"]
    pred = model.predict(controls, treatment="drug_1")
    assert pred.shape == controls.shape and (pred.X >= 0).all()
    assert pred.uns["fcrkit_prediction"]["treatment"] == "drug_1"
    again = model.predict(controls, treatment="drug_1")
    np.testing.assert_array_equal(pred.X, again.X)  # deterministic
    with pytest.raises(fcrkit.errors.DataError, match="drug_9"):
        model.predict(controls, treatment="drug_9")


# -- persistence --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("recipe", ["VCI", "ScGen"])
def test_save_load_round_trip(recipe, tmp_path):
    adata = tiny_adata()
    cls = getattr(fcrkit.models, recipe)
    model = cls(adata, **SMALL, seed=0)
    model.train(max_epochs=2, batch_size=64, seed=0, accelerator="cpu")
    controls = adata[adata.obs["treatment"] == "control"]
    expected = model.predict(controls, treatment="drug_0").X
    model.save(tmp_path / "model")
    loaded = cls.load(tmp_path / "model", adata)
    assert type(loaded) is cls and loaded.spec == model.spec
    np.testing.assert_allclose(loaded.predict(controls, treatment="drug_0").X, expected, rtol=1e-5, atol=1e-6)
    latent = loaded.get_latent_representation()
    np.testing.assert_allclose(latent, model.get_latent_representation(), rtol=1e-5,
                               atol=1e-6)


# -- Kang: beat the no-change answer on the top-50 DEGs of a held-out cell type --------------------------------
@pytest.fixture(scope="module")
def kang():
    return kang_split()


def test_scgen_beats_no_change_on_a_held_out_cell_type(kang):
    model = fcrkit.models.ScGen(kang.train, n_latent=32, n_hidden=256, seed=0)
    model.train(max_epochs=40, batch_size=128, seed=0, accelerator="cpu")
    scores = kang.scores(model.predict(kang.controls, treatment="STIM"))
    kang.report("scGen", scores)
    assert scores["r2_top50"] > kang.baselines["no change"]["r2_top50"] + 1.0
    assert scores["r2_all"] > kang.baselines["no change"]["r2_all"]


def test_vci_beats_no_change_on_a_held_out_cell_type(kang):
    model = fcrkit.models.VCI(kang.train, seed=0)
    model.train(max_epochs=30, batch_size=256, lr=3e-3, seed=0, accelerator="cpu")
    scores = kang.scores(model.predict(kang.controls, treatment="STIM"))
    kang.report("VCI", scores)
    assert scores["r2_top50"] > kang.baselines["no change"]["r2_top50"] + 1.0
    assert scores["r2_all"] > kang.baselines["no change"]["r2_all"]
