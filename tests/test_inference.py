"""Posterior families, objectives and enumerated priors (the Inference page of the docs)."""

from __future__ import annotations

import inspect
import types

import anndata as ad
import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from sklearn.metrics import adjusted_rand_score
from torch import nn

import fcrkit
import fcrkit.runconfig
from fcrkit.data.loaders import CellData
from fcrkit.errors import ConfigError
from fcrkit.models import SCVI, Model
from fcrkit.spec import ModelSpec


def vae_spec(posterior: object = "normal", **block: object) -> dict:
    return {
        "name": "vae",
        "blocks": [{"name": "z", "dim": 3, "encoder": {"name": "mlp", "n_hidden": 32}, "posterior": posterior,
                    **block}],
        "decoder": {"name": "mlp", "n_hidden": 32},
        "likelihood": "nb",
    }


def register_one(fcrkit_plugin, kind: str, name: str, factory: type) -> None:
    """Register ``factory`` as component ``name`` of ``kind`` through a plugin, for one test."""
    plugin = types.ModuleType(f"plugin_{name}")

    @fcrkit.hookimpl
    def fcrkit_register_components(registry):
        getattr(registry, kind)(name, factory)

    plugin.fcrkit_register_components = fcrkit_register_components
    fcrkit_plugin(plugin)


def guide_trace(model: Model, n: int = 16) -> poutine.Trace:
    data = CellData.from_anndata(model.adata, model.setup)
    return poutine.trace(model.module.guide).get_trace(data.batch(torch.arange(n)), data.n_obs)


# -- A. posterior families ---------------------------------------------------------------------------
def test_posterior_is_a_block_option_in_toml_and_round_trips(tmp_path):
    path = tmp_path / "m.toml"
    path.write_text('name = "m"\n[[blocks]]\nname = "z"\ndim = 3\nposterior = { name = "flow", n_flows = 3 }\n')
    spec = ModelSpec.from_toml(path)
    assert spec.blocks[0].posterior.name == "flow" and spec.blocks[0].posterior.options == {"n_flows": 3}
    assert ModelSpec.from_dict(spec.to_dict()) == spec
    # the default family is left out of the dict (saved models of before keep their exact form)
    assert "posterior" not in ModelSpec.from_dict(vae_spec()).to_dict()["blocks"][0]
    with pytest.raises(ConfigError, match="posterior 'flow': a posterior family sees the encoder's output"):
        ModelSpec.from_dict(vae_spec({"name": "flow", "conditions": ["x"]}))


def test_each_family_is_the_guide_site_of_its_block(small_adata):
    expected = {"normal": dist.Independent, "flow": dist.TransformedDistribution, "delta": dist.Delta}
    for family, kind in expected.items():
        trace = guide_trace(Model(small_adata, vae_spec(family), seed=0))
        assert isinstance(trace.nodes["z"]["fn"], kind), family


def test_unknown_posterior_and_bad_option_are_named(small_adata):
    with pytest.raises(fcrkit.errors.UnknownComponentError, match="unknown posterior 'flwo'.*'flow'"):
        Model(small_adata, vae_spec("flwo"))
    with pytest.raises(ConfigError, match="n_flows=0 must be a positive integer"):
        Model(small_adata, vae_spec({"name": "flow", "n_flows": 0}))


def test_every_recipe_takes_posterior_and_it_survives_save_and_load(small_adata, tmp_path):
    model = fcrkit.models.FCR(small_adata, n_latent={"x": 2, "t": 2, "tx": 2}, posterior="flow", seed=0)
    assert {b.posterior.name for b in model.spec.blocks} == {"flow"}
    assert "posterior" in str(type(model).__signature__)
    model = SCVI(small_adata, n_latent=3, n_hidden=32, posterior={"name": "flow", "n_flows": 1}, seed=0)
    model.save(tmp_path / "m")
    again = SCVI.load(tmp_path / "m", small_adata)
    assert again.spec.blocks[0].posterior.options == {"n_flows": 1}
    first, second = (m.get_latent_representation() for m in (model, again))
    np.testing.assert_array_equal(first, second)


@pytest.mark.parametrize("name", sorted(fcrkit.runconfig.recipes()))
def test_every_recipes_spec_takes_posterior_so_run_configs_can_name_it(name):
    build = fcrkit.runconfig.recipes()[name].build_spec
    spec = build(posterior={"name": "flow", "n_flows": 1})
    cell_blocks = [b for b in spec.blocks if not b.is_global]  # global blocks keep their families (masks)
    assert {(b.posterior.name, b.posterior.options["n_flows"]) for b in cell_blocks} == {("flow", 1)}
    assert build(posterior="normal") == build()
    signature = inspect.signature(fcrkit.runconfig.recipes()[name])
    assert list(signature.parameters).count("posterior") == 1


def test_flow_latent_is_the_flow_image_of_the_base_mean(small_adata):
    model = SCVI(small_adata, n_latent=3, n_hidden=32, posterior="flow", seed=0)
    data = CellData.from_anndata(small_adata, model.setup)
    model.module.eval()
    batch = data.batch(torch.arange(8))
    with torch.no_grad():
        loc, _ = model.module.encode(batch)["z"]
        point = model.module.latent(batch)["z"]
    assert point.shape == loc.shape and not torch.allclose(point, loc)  # the flow moved it


class _ReadsScale:
    """A regulariser that reads the posterior scale of block z."""

    def __init__(self, info):
        pass

    def loss(self, ctx):
        return ctx.scale["z"].mean()


def test_regulariser_reading_a_moment_the_family_lacks_is_refused_by_name(small_adata, fcrkit_plugin):
    register_one(fcrkit_plugin, "regularizer", "test_reads_scale", _ReadsScale)
    spec = {**vae_spec("delta"), "regularizers": ["test_reads_scale"]}
    with pytest.raises(ConfigError, match="posterior scale of block 'z', but its posterior family 'delta' has no "
                                          "scale: use posterior 'normal'"):
        Model(small_adata, spec, seed=0).train(max_epochs=1, batch_size=300, accelerator="cpu", seed=0)
    # the flow exposes its base Normal: the same regulariser trains
    spec = {**vae_spec("flow"), "regularizers": ["test_reads_scale"]}
    history = Model(small_adata, spec, seed=0).train(max_epochs=1, batch_size=300, accelerator="cpu", seed=0)
    assert np.isfinite(history["test_reads_scale"][0])


def test_context_exposes_the_flows_base_normal(small_adata):
    model = Model(small_adata, vae_spec("flow"), seed=0)
    model.module.eval()  # no dropout: the encoder gives the same output twice
    data = CellData.from_anndata(small_adata, model.setup)
    batch = data.batch(torch.arange(16))
    trace = poutine.trace(model.module.guide).get_trace(batch, data.n_obs)
    ctx = model.module.context(trace, batch, data.n_obs)
    loc, scale = model.module.encode(batch)["z"]
    torch.testing.assert_close(ctx.loc["z"], loc)
    torch.testing.assert_close(ctx.scale["z"], scale)
    assert not torch.allclose(ctx.z["z"], loc)


# -- B. objectives ------------------------------------------------------------------------------------
def batch_of(model: Model, n: int = 64):
    data = CellData.from_anndata(model.adata, model.setup)
    return data.batch(torch.arange(n)), data.n_obs


def test_iwae_with_one_particle_is_the_elbo_and_with_many_the_iwelbo_metric(small_adata):
    """The IWAE objective is scaled like the others (per data set) and bounds like fcrkit.metrics' IWELBO."""
    from fcrkit.metrics.likelihood import likelihood_bounds
    from fcrkit.train.objectives import resolve_objective

    model = Model(small_adata, vae_spec("flow"), seed=0)
    model.module.eval()
    batch, n_obs = batch_of(model)
    losses = {}
    for name in ("trace", "iwae"):
        pyro.set_rng_seed(3)
        with torch.no_grad():
            losses[name] = float(resolve_objective(name, 1).differentiable_loss(model.module.model, model.module.guide,
                                                                                batch, n_obs))
    assert losses["iwae"] == pytest.approx(losses["trace"], rel=1e-5)
    pyro.set_rng_seed(3)
    with torch.no_grad():  # plate size = batch size: the sum of the cells' bounds
        iwae = -float(resolve_objective("iwae", 100).differentiable_loss(model.module.model, model.module.guide,
                                                                         batch, len(batch.index)))
    bounds = likelihood_bounds(model, small_adata[:64], k=100, seed=0).sum()
    assert iwae == pytest.approx(bounds["iwelbo"], rel=2e-3)
    assert iwae > bounds["elbo"] + 1.0  # the importance-weighted bound is the tighter one, by a margin


@pytest.mark.parametrize("elbo, k", [("iwae", 4), ("trace", 2), ("trace_meanfield", 2)])
def test_objectives_train(small_adata, elbo, k):
    model = SCVI(small_adata, n_latent=3, n_hidden=32, posterior="flow", kl_warmup_epochs=0, seed=0)
    history = model.train(max_epochs=3, batch_size=200, lr=1e-2, accelerator="cpu", seed=0, elbo=elbo, num_particles=k)
    assert history["validation_loss"][-1] < history["validation_loss"][0]


def test_refused_objectives_name_the_combination_and_the_fix(small_adata):
    with pytest.raises(ConfigError, match=r"cannot be trained with elbo='iwae'.*'kl \(weight 1, warm-up 20 epochs\)'"
                                          r".*kl_warmup_epochs=0"):
        SCVI(small_adata, n_latent=3, seed=0).train(max_epochs=1, accelerator="cpu", elbo="iwae", num_particles=2)
    mixture = vae_spec(prior={"name": "gaussian_mixture", "n_components": 2})
    for elbo in ("trace_meanfield", "trace", "iwae"):
        with pytest.raises(ConfigError, match=rf"elbo='{elbo}'.*block\(s\) \"z \(prior 'gaussian_mixture'\)\" sum out "
                                              r"a discrete site.*elbo='trace_enum'"):
            Model(small_adata, mixture, seed=0).train(max_epochs=1, accelerator="cpu", elbo=elbo)
    with pytest.raises(ConfigError, match="num_particles=0 must be a positive integer"):
        SCVI(small_adata, seed=0).train(max_epochs=1, accelerator="cpu", num_particles=0)
    with pytest.raises(ConfigError, match="set num_particles on the instance"):
        SCVI(small_adata, seed=0).train(max_epochs=1, accelerator="cpu", elbo=pyro.infer.Trace_ELBO(),
                                        num_particles=3)


# -- an enumerated discrete latent ----------------------------------------------------------------------
def three_clusters(n: int = 300, n_genes: int = 30, seed: int = 0) -> ad.AnnData:
    """Poisson counts from a 2-d latent drawn around three well-separated centres; obs["cluster"] says which."""
    rng = np.random.default_rng(seed)
    label = rng.integers(0, 3, n)
    centres = np.array([[0.0, 4.0], [-3.5, -2.0], [3.5, -2.0]])
    z = centres[label] + rng.normal(0.0, 0.5, (n, 2))
    logits = z @ rng.normal(0.0, 1.0, (2, n_genes))
    rate = 500 * np.exp(logits - logits.max(1, keepdims=True))
    rate /= rate.sum(1, keepdims=True) / 500
    adata = ad.AnnData(rng.poisson(rate).astype(np.float32))
    adata.obs["cluster"] = label.astype(str)
    fcrkit.setup_anndata(adata)
    return adata


def test_mixture_prior_trains_under_enumeration_and_its_components_find_the_clusters():
    adata = three_clusters()
    spec = {"name": "gmvae", "likelihood": "poisson", "decoder": {"name": "mlp", "n_hidden": 32},
            "blocks": [{"name": "z", "dim": 2, "prior": {"name": "gaussian_mixture", "n_components": 3},
                        "encoder": {"name": "mlp", "n_hidden": 32}}]}
    model = Model(adata, spec, seed=0)
    history = model.train(max_epochs=25, batch_size=100, lr=1e-2, accelerator="cpu", seed=0, elbo="trace_enum")
    assert history["validation_loss"][-1] < history["validation_loss"][0]
    z = torch.as_tensor(model.get_latent_representation())
    with torch.no_grad():
        found = model.module.priors["z"].responsibilities(z).argmax(-1).numpy()
    truth = adata.obs["cluster"].to_numpy()
    chance = np.mean([adjusted_rand_score(np.random.default_rng(s).permutation(truth), found) for s in range(20)])
    assert adjusted_rand_score(truth, found) > 0.8 > chance + 0.7
    # the metrics sum the component out as TraceEnum_ELBO does: their ELBO is the trainer's (Monte Carlo) ELBO
    bounds = fcrkit.metrics.likelihood_bounds(model, k=20).mean()
    batch, n_obs = batch_of(model, adata.n_obs)
    pyro.set_rng_seed(0)
    enum_loss = pyro.infer.TraceEnum_ELBO(max_plate_nesting=1, num_particles=20).loss(
        model.module.model, model.module.guide, batch, n_obs)
    assert -bounds["elbo"] == pytest.approx(enum_loss / n_obs, rel=0.01)


def test_mixture_program_and_its_marginal_are_the_same_prior():
    """Summing the enumerated component out of the prior program gives the closed-form marginal."""
    from fcrkit.components.mixture import GaussianMixturePrior

    prior = GaussianMixturePrior(2, {}, n_components=4)
    z = torch.randn(5, 2)

    def program():
        with pyro.plate("cells", 5):
            prior.sample("z", {}, 5)

    conditioned = poutine.condition(poutine.enum(program, first_available_dim=-2), data={"z": z})
    trace = poutine.trace(conditioned).get_trace()
    joint = trace.nodes["z_component"]["fn"].log_prob(trace.nodes["z_component"]["value"]) + \
        trace.nodes["z"]["fn"].log_prob(z)
    torch.testing.assert_close(torch.logsumexp(joint, 0), prior.distribution({}, 5).log_prob(z))


# -- C. a flow posterior is a better posterior -------------------------------------------------------------
def correlated_weights(n_genes: int) -> torch.Tensor:
    """(2, genes) loadings under which the counts tell ``z1 + z2`` far better than ``z1 - z2``: the
    posterior of ``(z1, z2)`` is correlated, which no diagonal Normal can express."""
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(n_genes, generator=gen), torch.randn(n_genes, generator=gen)
    return torch.stack([a + 0.4 * b, a - 0.4 * b])


class FixedLinearDecoder(nn.Module):
    """The simulator's own linear decoder (nothing to learn): every model shares one generative model."""

    def __init__(self, n_input, n_output, heads, label_dims):
        super().__init__()
        self.register_buffer("w", correlated_weights(n_output))

    def forward(self, z, labels):
        return {"mean": z @ self.w}


def test_flow_posterior_narrows_the_gap_between_iwelbo_and_elbo(fcrkit_plugin):
    """Same generative model (fixed decoder, N(0, I) prior, Poisson counts) and data; only the guide
    differs. The gap IWELBO(k=100) - ELBO estimates how far q is from the true posterior."""
    register_one(fcrkit_plugin, "decoder", "test_fixed_linear", FixedLinearDecoder)
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(300, 2, generator=gen)
    adata = ad.AnnData(torch.poisson(300 * torch.softmax(z @ correlated_weights(30), -1), generator=gen).numpy())
    fcrkit.setup_anndata(adata)
    gaps = {}
    for family in ("normal", "flow"):
        spec = {"name": "v", "decoder": "test_fixed_linear", "likelihood": "poisson",
                "blocks": [{"name": "z", "dim": 2, "posterior": family,
                            "encoder": {"name": "mlp", "n_hidden": 32, "norm": "none", "dropout": 0.0}}]}
        model = Model(adata, spec, seed=0)
        model.train(max_epochs=100, batch_size=100, lr=1e-2, accelerator="cpu", seed=0, validation_fraction=0.0)
        bounds = fcrkit.metrics.likelihood_bounds(model, k=100).mean()
        gaps[family] = bounds["iwelbo"] - bounds["elbo"]
    assert gaps["flow"] < gaps["normal"] - 0.5, gaps  # measured: 2.59 and 1.07 nats
