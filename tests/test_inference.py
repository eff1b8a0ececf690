"""Posterior families, objectives and enumerated priors (the Inference page of the docs)."""

from __future__ import annotations

import types

import numpy as np
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine

import fcrkit
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
    first, second = (m.get_latent_representation()["X_scvi"] for m in (model, again))
    np.testing.assert_array_equal(first, second)


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
    plugin = types.ModuleType("reads_scale")

    @fcrkit.hookimpl
    def fcrkit_register_components(registry):
        registry.regularizer("test_reads_scale", _ReadsScale)

    plugin.fcrkit_register_components = fcrkit_register_components
    fcrkit_plugin(plugin)
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
