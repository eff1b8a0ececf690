"""The generic model, the trainer and the Model object, on small simulated data."""

from __future__ import annotations

import math

import anndata as ad
import numpy as np
import pyro
import pytest
import torch
from pyro.infer import TraceMeanField_ELBO

import fcrkit
from fcrkit.components.regularizers import ScaleSites
from fcrkit.data.loaders import CellData
from fcrkit.errors import ConfigError, DataError, NonFiniteLossError
from fcrkit.metrics import log_normalize
from fcrkit.models import SCVI, Model


def vae_spec(**overrides) -> dict:
    spec = {
        "name": "vae",
        "blocks": [{"name": "z", "dim": 4, "encoder": {"name": "mlp", "n_hidden": 32}}],
        "decoder": {"name": "mlp", "n_hidden": 32},
        "likelihood": "nb",
    }
    spec.update(overrides)
    return spec


def elbo_loss(model: Model, adata: ad.AnnData, index: torch.Tensor, seed: int = 0) -> float:
    """Negative ELBO of one batch with the Monte Carlo noise fixed by ``seed``."""
    data = CellData.from_anndata(adata, model.setup)
    model.module.eval()
    pyro.set_rng_seed(seed)
    with torch.no_grad():
        return float(TraceMeanField_ELBO().differentiable_loss(model.module.model, model.module.guide,
                                                               data.batch(index), data.n_obs))


def test_csr_and_dense_inputs_give_the_same_loss(small_adata):
    dense = small_adata.copy()
    dense.X = small_adata.X.toarray()
    index = torch.tensor([5, 0, 77, 300, 5, 599])
    sparse_loss = elbo_loss(Model(small_adata, vae_spec(), seed=1), small_adata, index)
    dense_loss = elbo_loss(Model(dense, vae_spec(), seed=1), dense, index)
    assert math.isfinite(sparse_loss)
    assert sparse_loss == pytest.approx(dense_loss, rel=1e-6)


def test_kl_regulariser_scales_the_kl_linearly(small_adata):
    model = Model(small_adata, vae_spec(), seed=0)
    index = torch.arange(64)

    def loss_with_beta(beta: float) -> float:
        with ScaleSites(["z"], beta):
            return elbo_loss(model, small_adata, index)

    l0, l1, l2 = loss_with_beta(0.0), loss_with_beta(1.0), loss_with_beta(2.0)
    kl = l1 - l0
    assert kl > 0  # an untrained encoder is not the prior
    assert l2 - l1 == pytest.approx(kl, rel=1e-4)


def test_save_load_round_trip_gives_identical_latents(small_adata, tmp_path):
    model = SCVI(small_adata, n_latent=3, n_hidden=32, seed=0)
    model.train(max_epochs=3, batch_size=128, seed=0, accelerator="cpu")
    before = model.get_latent_representation(as_dict=True)
    model.save(tmp_path / "run")
    loaded = SCVI.load(tmp_path / "run", small_adata)
    after = loaded.get_latent_representation(as_dict=True)
    assert set(before) == set(after) == {"X_scvi"}
    assert np.array_equal(before["X_scvi"], after["X_scvi"])
    assert loaded.history["loss"] == model.history["loss"]
    assert loaded.is_trained and loaded.spec == model.spec
    with pytest.raises(ConfigError, match="not empty"):
        model.save(tmp_path / "run")
    model.save(tmp_path / "run", overwrite=True)


def test_load_refuses_data_with_other_genes(small_adata, tmp_path):
    model = SCVI(small_adata, n_latent=3, n_hidden=16, seed=0)
    model.save(tmp_path / "run")
    with pytest.raises(DataError, match="gene_49"):
        SCVI.load(tmp_path / "run", small_adata[:, :49].copy())
    renamed = small_adata.copy()
    renamed.var_names = [f"g{i}" if i == 3 else name for i, name in enumerate(renamed.var_names)]
    with pytest.raises(DataError, match=r"missing \('gene_3'\).*not in the model \('g3'\)"):
        SCVI.load(tmp_path / "run", renamed)
    with pytest.raises(DataError, match="another order"):
        SCVI.load(tmp_path / "run", small_adata[:, ::-1].copy())
    with pytest.raises(ConfigError, match="not an fcrkit model directory"):
        SCVI.load(tmp_path / "nowhere", small_adata)


def test_same_seed_same_latents(small_adata):
    def run() -> np.ndarray:
        model = SCVI(small_adata, n_latent=3, n_hidden=32, seed=3)
        model.train(max_epochs=2, batch_size=100, seed=7, accelerator="cpu")
        return model.get_latent_representation()

    assert np.array_equal(run(), run())


def test_latents_of_a_subset_match_the_full_data(small_adata):
    model = SCVI(small_adata, n_latent=3, n_hidden=32, seed=0)
    model.train(max_epochs=2, batch_size=128, seed=0, accelerator="cpu")
    full = model.get_latent_representation()
    part = model.get_latent_representation(small_adata[100:150].copy())
    np.testing.assert_allclose(part, full[100:150], rtol=1e-5, atol=1e-6)
    sampled = model.get_latent_representation(give_mean=False)
    assert sampled.shape == full.shape and not np.allclose(sampled, full)


def test_training_reduces_the_loss_and_records_history(small_adata):
    model = SCVI(small_adata, n_latent=3, n_hidden=32, seed=0)
    history = model.train(max_epochs=15, batch_size=64, seed=0, accelerator="cpu", lr=3e-3)
    assert len(history) == 15
    assert {"loss", "elbo", "validation_loss"} <= set(history.values)
    assert history["validation_loss"][-1] < 0.8 * history["validation_loss"][0]
    assert history.cells_per_second > 0


def test_early_stopping_stops_and_restores_the_best_epoch(small_adata):
    model = SCVI(small_adata, n_latent=3, n_hidden=16, seed=0)
    history = model.train(max_epochs=50, batch_size=128, seed=0, accelerator="cpu",
                          early_stopping=True, patience=2, min_delta=1e9)
    assert history.stopped_early and len(history) == 3 and history.best_epoch == 0


class ExplodingPenalty:
    """A loss term that becomes NaN at epoch 1."""

    def __init__(self, info):
        pass

    def loss(self, ctx):
        value = ctx.loc["z"].pow(2).mean()
        return value * float("nan") if ctx.epoch >= 1 else value


class LabelAdversary(torch.nn.Module):
    """Adversary guessing whether a cell is treated from z; the encoder is pushed to fool it."""

    adversary_steps = 3

    def __init__(self, info):
        super().__init__()
        self.adversary = torch.nn.Linear(info.block_dims["z"], 1)
        self.calls = 0

    def _bce(self, ctx):
        treated = (ctx.labels["t"].sum(-1) > 0).float()
        return torch.nn.functional.binary_cross_entropy_with_logits(self.adversary(ctx.z["z"]).squeeze(-1), treated)

    def loss(self, ctx):
        return -self._bce(ctx)

    def adversary_loss(self, ctx):
        self.calls += 1
        assert not ctx.z["z"].requires_grad  # adversaries only ever see detached latents
        return self._bce(ctx)


class TestPlugin:
    @fcrkit.hookimpl
    def fcrkit_register_components(self, registry):
        registry.regularizer("test_exploding", ExplodingPenalty)
        registry.regularizer("test_adversary", LabelAdversary)


@pytest.fixture
def test_plugin():
    with fcrkit.registry.plugin(TestPlugin(), name="test-plugin") as registry:
        yield registry


def test_non_finite_loss_names_the_term_and_keeps_the_last_good_state(small_adata, test_plugin):
    model = Model(small_adata, vae_spec(regularizers=[{"name": "test_exploding", "weight": 1.0}]), seed=0)
    with pytest.raises(NonFiniteLossError, match=r"'test_exploding'.*epoch 2;.*\(1 finished\)") as info:
        model.train(max_epochs=5, batch_size=128, seed=0, accelerator="cpu")
    # epochs count from 1, as in the history; the epoch that finished stays in the model's history
    assert info.value.term == "test_exploding" and info.value.epoch == 2
    assert len(model.history) == 1 and np.isfinite(model.history["loss"][0]) and model.is_trained
    assert all(torch.isfinite(p).all() for p in model.module.parameters())


def test_adversary_gets_its_own_optimiser_and_steps(small_adata, test_plugin):
    model = Model(small_adata, vae_spec(regularizers=[{"name": "test_adversary", "weight": 0.5}]), seed=0)
    reg = model.module.regularizers["test_adversary"]
    before = reg.adversary.weight.detach().clone()
    history = model.train(max_epochs=2, batch_size=100, seed=0, accelerator="cpu", validation_fraction=0.0)
    steps_per_epoch = math.ceil(len(small_adata) / 100)
    assert reg.calls == 3 * 2 * steps_per_epoch
    assert not torch.equal(before, reg.adversary.weight)
    assert "test_adversary" in history and all(v < 0 for v in history["test_adversary"])
    # the adversary's weights are saved with the model
    assert any(k.startswith("regularizer_modules.test_adversary.adversary") for k in model.module.state_dict())


def test_conditional_prior_learns_condition_dependent_means(small_adata):
    spec = vae_spec(blocks=[{"name": "z", "dim": 4,
                             "prior": {"name": "conditional_gaussian", "conditions": ["x"], "n_hidden": 16},
                             "encoder": {"name": "mlp", "conditions": ["x"], "n_hidden": 32}}])
    model = Model(small_adata, spec, seed=0)
    model.train(max_epochs=20, batch_size=64, seed=0, accelerator="cpu", lr=3e-3)
    prior = model.module.priors["z"]
    eye = torch.eye(small_adata.obs["cell_type"].cat.categories.size)
    with torch.no_grad():
        locs = prior.distribution({"x": eye}, len(eye)).base_dist.loc
    spread = torch.cdist(locs, locs).max().item()
    assert spread > 0.5, f"prior means of the cell types barely differ (max distance {spread:.3f})"


def test_gaussian_likelihood_on_log_normalised_data_and_counts_refused(small_adata):
    lognorm = small_adata.copy()
    lognorm.X = log_normalize(small_adata.X).astype(np.float32)
    fcrkit.setup_anndata(lognorm, treatment_key="treatment", covariate_keys=["cell_type"])
    with pytest.raises(DataError, match="gaussian"):
        SCVI(lognorm)
    model = Model(lognorm, vae_spec(likelihood="gaussian"), seed=0)
    assert model.module.encoder_input == "identity"
    history = model.train(max_epochs=5, batch_size=128, seed=0, accelerator="cpu")
    assert history["validation_loss"][-1] < history["validation_loss"][0]


def test_train_rejects_bad_settings(small_adata):
    model = SCVI(small_adata, n_latent=2, n_hidden=8)
    with pytest.raises(ConfigError, match="max_epoch"):
        model.train(max_epoch=3)
    with pytest.raises(ConfigError, match="batch_size=0"):
        model.train(batch_size=0)
    with pytest.raises(ConfigError, match="accelerator='tpu'"):
        model.train(accelerator="tpu")
    with pytest.raises(ConfigError, match="elbo='bogus'"):
        model.train(max_epochs=1, elbo="bogus", accelerator="cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_trains_on_cuda(small_adata):
    model = SCVI(small_adata, n_latent=3, n_hidden=32, seed=0)
    history = model.train(max_epochs=3, batch_size=128, seed=0, accelerator="cuda")
    assert history["validation_loss"][-1] < history["validation_loss"][0]
    assert model.get_latent_representation().shape == (small_adata.n_obs, 3)


@pytest.mark.parametrize("elbo", [
    "trace",
    pyro.infer.TraceMeanField_ELBO(num_particles=3),
    pyro.infer.TraceMeanField_ELBO(num_particles=3, vectorize_particles=True, max_plate_nesting=1),
], ids=["trace", "meanfield-3-particles", "meanfield-3-vectorized"])
def test_other_pyro_elbos_train(small_adata, elbo):
    model = SCVI(small_adata, n_latent=3, n_hidden=32, seed=0)
    history = model.train(max_epochs=4, batch_size=128, seed=0, accelerator="cpu", elbo=elbo, lr=3e-3)
    assert history["validation_loss"][-1] < history["validation_loss"][0]
