"""The component contracts are precise: protocols that not everything satisfies, and a Context that runs the
model's parts through declared methods only (no reaching into ``ctx.module``)."""

from __future__ import annotations

import pytest
import torch

import fcrkit
from fcrkit.errors import ConfigError
from fcrkit.protocols import Adversarial, Context, ElboEffect, LossTerm, ModelInfo, ModelParts, Regularizer
from fcrkit.registry import get_registry
from fcrkit.testing import random_context, tiny_adata


def test_regularizer_protocols_are_not_satisfied_by_anything():
    class Nothing:
        pass

    class Penalty:
        def loss(self, ctx):
            return ctx.loc["z"].sum()

    assert not isinstance(Nothing(), Regularizer)  # an empty Protocol would take it
    assert isinstance(Penalty(), Regularizer) and isinstance(Penalty(), LossTerm)
    assert not isinstance(Penalty(), ElboEffect) and not isinstance(Penalty(), Adversarial)
    info = ModelInfo({"x": 2, "t": 2, "tx": 2}, {"x": 3, "t": 2}, 12)
    registry = get_registry()
    kl = registry.build("regularizer", "kl", info)
    assert isinstance(kl, ElboEffect) and not isinstance(kl, Adversarial)
    discriminator = registry.build("regularizer", "permutation_discriminator", info)
    assert isinstance(discriminator, LossTerm) and isinstance(discriminator, Adversarial)


def test_top_level_exports_the_contracts():
    assert fcrkit.Context is Context and fcrkit.ModelInfo is ModelInfo


@pytest.fixture(scope="module")
def model():
    adata = tiny_adata(n_cells=60, n_genes=12)
    return fcrkit.models.FCR(adata, "nb", 2, seed=0)


def test_context_runs_the_models_parts_through_declared_methods(model):
    module = model.module
    assert isinstance(module, ModelParts)
    info = ModelInfo(module.spec.block_dims, module.label_dims, module.n_genes)
    ctx = random_context(info, n=8, parts=module)
    module.eval()
    prior = ctx.prior("tx")
    expected = module.prior_distribution("tx", ctx.labels, 8)
    assert torch.equal(prior.loc, expected.loc) and prior.loc.shape == (8, 2)
    with torch.no_grad():
        decoded = ctx.decode(ctx.loc)
        assert torch.equal(decoded, module.decode_mean(ctx.loc, ctx.labels, ctx.library))
        encoded = ctx.encode(ctx.y)
    assert set(encoded) == {"x", "t", "tx"} and encoded["t"][0].shape == (8, 2)
    assert ctx.input_kind == "counts"
    assert ctx.unpaired().parts is module and ctx.detached().parts is module


def test_frozen_statistics_leave_running_batch_norm_statistics_alone(model):
    module = model.module
    norms = [m for m in module.modules() if isinstance(m, torch.nn.BatchNorm1d)]
    assert norms, "the FCR decoder has batch norms"
    info = ModelInfo(module.spec.block_dims, module.label_dims, module.n_genes)
    ctx = random_context(info, n=8, parts=module)
    module.train()
    before = [n.running_mean.clone() for n in norms]
    with torch.no_grad(), ctx.frozen_statistics():
        ctx.decode({k: v + 5.0 for k, v in ctx.loc.items()})
    assert all(torch.equal(a, n.running_mean) for a, n in zip(before, norms))
    with torch.no_grad():
        ctx.decode({k: v + 5.0 for k, v in ctx.loc.items()})
    assert not all(torch.equal(a, n.running_mean) for a, n in zip(before, norms))
    module.eval()


def test_a_context_without_parts_says_what_is_missing():
    ctx = random_context(ModelInfo({"z": 2}, {"x": 3}, 12), n=4)
    with pytest.raises(ConfigError, match=r"ctx.prior\(\).*build it with parts="):
        ctx.prior("z")
    with pytest.raises(ConfigError, match=r"ctx.decode\(\)"):
        ctx.decode(ctx.z)


@pytest.mark.parametrize(("name", "options"), [("condition_kl", {}), ("counterfactual", {})])
def test_regularizers_that_run_the_model_need_only_the_declared_parts(model, name, options):
    """condition_kl and counterfactual compute the same loss from ``parts`` alone as from the whole model:
    they no longer reach into ``ctx.module``."""
    module = model.module
    info = ModelInfo(module.spec.block_dims, module.label_dims, module.n_genes)
    reg = get_registry().build("regularizer", name, info, **options)
    ctx = random_context(info, n=8, parts=module)
    module.eval()
    torch.manual_seed(0)
    loss = reg.loss(ctx)
    assert loss.shape == () and torch.isfinite(loss)
    loss.backward()
    assert ctx.loc["tx"].grad is not None
