"""FCR's parts: control pairing, the structure regularisers, the recipe's arguments, predict."""

from __future__ import annotations

import inspect

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from anndata import AnnData

import fcrkit
import fcrkit.runconfig
from fcrkit.components.priors import ConditionalGaussian
from fcrkit.components.structure import (
    ConditionKL,
    ControlSimilarity,
    LabelClassifier,
    PermutationDiscriminator,
    permute_within,
)
from fcrkit.data.loaders import CellData
from fcrkit.data.pairing import ControlPairing
from fcrkit.errors import ConfigError, DataError
from fcrkit.protocols import Context, ModelInfo


@pytest.fixture
def world() -> AnnData:
    adata = fcrkit.simulate.interaction(n_cells=600, n_genes=40, n_covariates=2, n_treatments=2, seed=0)
    fcrkit.setup_anndata(adata, treatment_key="treatment", covariate_keys=["covariate"])
    return adata


def small_fcr(adata, **kwargs) -> fcrkit.models.FCR:
    return fcrkit.models.FCR(adata, n_latent=2, n_hidden=32, n_layers=1, prior_hidden=16, seed=0, **kwargs)


def one_context(model, adata, n: int = 64) -> Context:
    """The context of one paired batch, as the trainer builds it."""
    from fcrkit.train.trainer import Trainer, TrainingPlan

    data = CellData.from_anndata(adata, model.setup)
    pairing = ControlPairing.from_anndata(adata, model.setup, model.spec.control_pairing)
    trainer = Trainer(model.module, data, TrainingPlan(max_epochs=1), pairing)
    trainer.sampler = pairing.sampler(torch.arange(data.n_obs), data.device)
    _, ctx = trainer._losses(data.batch(torch.arange(n)), data.n_obs, 0.0, with_terms=False)
    assert isinstance(ctx, Context) and ctx.pairs == n
    return ctx


# -- pairing ---------------------------------------------------------------------------------------
def test_pairs_are_controls_of_the_same_covariates(world):
    setup = fcrkit.data.get_setup(world)
    sampler = ControlPairing.from_anndata(world, setup).sampler(torch.arange(world.n_obs), torch.device("cpu"))
    cells = torch.arange(world.n_obs)
    partners = torch.cat([sampler.sample(cells, torch.Generator().manual_seed(s)) for s in range(3)]).numpy()
    obs = world.obs
    assert (obs["treatment"].to_numpy()[partners] == "control").all()
    assert (obs["covariate"].to_numpy()[partners] == np.tile(obs["covariate"].to_numpy(), 3)).all()
    assert len(np.unique(partners)) > 0.5 * (obs["treatment"] == "control").sum()  # really random


def test_missing_controls_are_named_and_any_pairing_works(world):
    adata = world[~((world.obs["covariate"] == "cov_1") & (world.obs["treatment"] == "control"))].copy()
    setup = fcrkit.setup_anndata(adata, treatment_key="treatment", covariate_keys=["covariate"])
    with pytest.raises(DataError, match=r"covariate='cov_1'.*control_pairing = 'any'"):
        ControlPairing.from_anndata(adata, setup).sampler(torch.arange(adata.n_obs), torch.device("cpu"))
    sampler = ControlPairing.from_anndata(adata, setup, "any").sampler(torch.arange(adata.n_obs), torch.device("cpu"))
    partners = sampler.sample(torch.arange(adata.n_obs)).numpy()
    assert (adata.obs["treatment"].to_numpy()[partners] == "control").all()


# -- regularisers ----------------------------------------------------------------------------------
def test_permute_within_moves_cells_inside_their_group():
    groups = torch.tensor([0, 1, 0, 2, 1, 0, 1, 3])
    for _ in range(5):
        perm = permute_within(groups)
        assert sorted(perm.tolist()) == list(range(8))
        assert torch.equal(groups[perm], groups)
        moved = perm != torch.arange(8)
        singleton = (groups == 2) | (groups == 3)
        assert moved[~singleton].all() and not moved[singleton].any()  # a lone cell stays


def test_discriminator_leaves_out_cells_alone_in_their_condition():
    """A lone cell's "permuted" pair is its real pair: it must not be labelled fake."""
    torch.manual_seed(0)
    disc = PermutationDiscriminator(ModelInfo({"t": 2, "tx": 2}, {"x": 4}, 5), blocks=["t", "tx"])
    a, b = torch.randn(4, 2), torch.randn(4, 2)

    def context(conditions: list[int]) -> Context:
        return Context({"t": a, "tx": b}, {}, {}, {"x": torch.eye(4)[conditions]}, torch.arange(4), 4)

    assert float(disc.adversary_loss(context([0, 1, 2, 3]))) == 0.0  # nothing can be permuted
    # cells 0 and 1 share a condition (the permutation swaps them), cells 2 and 3 are alone
    loss = disc.adversary_loss(context([0, 0, 1, 2]))
    with torch.no_grad():
        real = disc.adversary(torch.cat([a[:2], b[:2]], -1)).squeeze(-1)
        fake = disc.adversary(torch.cat([a[:2], b[[1, 0]]], -1)).squeeze(-1)
        expected = (F.softplus(-real) + F.softplus(fake)).mean()  # BCE(real, 1) + BCE(fake, 0), per cell
    assert float(loss) == pytest.approx(float(expected), rel=1e-5)


def test_discriminator_gradient_reaches_the_encoders_unless_published_noop(world):
    grads = {}
    for noop in (False, True):
        model = small_fcr(world, published_noop=noop)
        ctx = one_context(model, world)
        term = model.module.regularizers["permutation_t"].loss(ctx)
        model.module.zero_grad()
        if term.requires_grad:
            term.backward()
        params = list(model.module.encoders["tx"].parameters()) + list(model.module.encoders["t"].parameters())
        grads[noop] = sum(float(p.grad.abs().sum()) for p in params if p.grad is not None)
    assert grads[False] > 0
    assert grads[True] == 0


def test_label_classifier_learns_a_separable_label():
    info = ModelInfo({"t": 2}, {"t": 3}, 10)
    clf = LabelClassifier(info, blocks=["t"], label="t")
    labels = torch.eye(3).repeat(50, 1)
    z = labels @ torch.randn(3, 2) * 3 + 0.05 * torch.randn(150, 2)
    ctx = Context({"t": z}, {"t": z}, {"t": torch.ones_like(z)}, {"t": labels}, torch.arange(150), 150)
    optimizer = torch.optim.Adam(clf.parameters(), lr=0.05)
    first = float(clf.loss(ctx).detach())
    for _ in range(200):
        optimizer.zero_grad()
        clf.loss(ctx).backward()
        optimizer.step()
    assert float(clf.loss(ctx).detach()) < 0.1 * first
    with pytest.raises(ConfigError, match="unknown block 'zz'"):
        LabelClassifier(info, blocks=["zz"], label="t")


def test_covariate_classifier_has_one_softmax_per_covariate_column(world):
    """Two covariate columns (2 levels each): the loss is the cross-entropy of each column, summed."""
    adata = world.copy()
    adata.obs["replicate"] = pd.Categorical(np.where(np.arange(adata.n_obs) % 3 == 0, "r1", "r2"))
    fcrkit.setup_anndata(adata, treatment_key="treatment", covariate_keys=["covariate", "replicate"])
    model = small_fcr(adata)
    reg = model.module.regularizers["covariate_classifier"]
    ctx = one_context(model, adata, n=60)
    out = reg.classifier[-1]
    with torch.no_grad():  # fixed logits: covariate (log 2, 0), replicate (0, 0)
        out.weight.zero_()
        out.bias.copy_(torch.tensor([np.log(2.0), 0, 0, 0]))
    covariate = adata.obs["covariate"].cat.codes.to_numpy()[:60]
    # softmax of (log 2, 0) is (2/3, 1/3); the replicate column is uniform over its 2 levels
    expected = np.mean(np.where(covariate == 0, np.log(1.5), np.log(3.0))) + np.log(2.0)
    assert float(reg.loss(ctx)) == pytest.approx(expected, rel=1e-5)


def test_control_similarity_value():
    info = ModelInfo({"x": 2, "t": 2}, {"t": 1}, 10)
    sim = ControlSimilarity(info)
    t = torch.tensor([[1.0, 0], [1, 0], [1, 0], [0, 1]])  # rows 0-1 cells, 2-3 their controls
    x = torch.tensor([[1.0, 0], [0, 1], [1, 0], [1, 0]])
    labels = {"t": torch.tensor([[1.0], [0.0], [0.0], [0.0]])}  # cell 0 treated, cell 1 a control
    ctx = Context({}, {"t": t, "x": x}, {}, labels, torch.arange(4), 4, pairs=2)
    # cos_t over treated cells: cell 0 vs its control = 1; cos_x mean: (1 + 0) / 2
    assert float(sim.loss(ctx)) == pytest.approx(1.0 - 0.5)


def test_condition_kl_is_zero_at_the_prior_and_positive_away(world):
    model = small_fcr(world, weights={"condition_kl": 1.0})
    ctx = one_context(model, world)
    reg = model.module.regularizers["condition_kl"]
    assert isinstance(reg, ConditionKL) and float(reg.loss(ctx).detach()) > 0
    for block in ("x", "t", "tx"):
        prior = model.module.prior_distribution(block, ctx.labels, len(ctx.index))
        ctx.loc[block], ctx.scale[block] = prior.loc.detach().clone(), prior.scale.detach().clone()
    assert float(reg.loss(ctx)) == pytest.approx(0.0, abs=1e-5)


def test_condition_kl_sums_the_kl_of_the_averaged_gaussians_over_conditions():
    """Two conditions of two cells each; the value is worked out by hand, not by the code under test."""
    info = ModelInfo({"z": 1}, {"x": 2}, 5)
    reg = ConditionKL(info)
    x = torch.tensor([[1.0, 0], [1, 0], [0, 1], [0, 1]])  # conditions A, A, B, B
    loc = torch.tensor([[0.0], [2.0], [1.0], [1.0]])
    scale = torch.tensor([[1.0], [1.0], [2.0], [2.0]])
    prior_loc = torch.tensor([[0.0], [0.0], [1.0], [1.0]])

    class Parts:  # the priors: N(0, 1) under A, N(1, 1) under B
        def prior_distribution(self, block, labels, n):
            return torch.distributions.Normal(prior_loc, torch.ones_like(prior_loc))

    ctx = Context({"z": loc}, {"z": loc}, {"z": scale}, {"x": x}, torch.arange(4), 4, parts=Parts())
    # A: averaged posterior N(1, 1) against N(0, 1): KL = 1/2.
    # B: averaged posterior N(1, 2²) against N(1, 1): KL = log(1/2) + 4/2 - 1/2 = 1.5 - log 2.
    assert float(reg.loss(ctx)) == pytest.approx(0.5 + 1.5 - np.log(2.0), rel=1e-6)


def test_terms_count_each_cell_once_not_again_as_a_paired_control(world):
    """Classifiers, discriminators, the condition KL and the independence penalties read the batch's own
    cells; the paired controls (rows ``pairs:``) count in the ELBO only (and in the similarity term)."""
    model = small_fcr(world, weights={"condition_kl": 1.0}, regularizers=[
        {"name": "hsic", "key": "hsic", "weight": 1.0, "blocks": ["tx"], "label": "x"},
        {"name": "total_correlation", "key": "tc", "weight": 1.0}])
    paired = one_context(model, world, n=48)
    n = paired.pairs

    def head(d):
        return {k: v[:n] for k, v in d.items()}

    own = Context(head(paired.z), head(paired.loc), head(paired.scale), head(paired.labels), paired.index[:n],
                  world.n_obs, parts=model.module)
    keys = ["treatment_classifier", "covariate_classifier", "permutation_t", "permutation_x", "condition_kl",
            "hsic", "tc"]
    for key in keys:
        reg = model.module.regularizers[key]
        values = []
        for ctx in (paired, own):
            torch.manual_seed(0)  # the discriminators' permutations and the TC's shuffles
            values.append(float(reg.loss(ctx).detach()))
            if hasattr(reg, "adversary_loss"):
                torch.manual_seed(0)
                values.append(float(reg.adversary_loss(ctx.detached()).detach()))
        half = len(values) // 2
        assert values[:half] == pytest.approx(values[half:], rel=1e-5), key


def test_alternating_adversary_owns_every_kth_epoch(world):
    model = small_fcr(world, alternate_every=2, weights={"permutation_x": 0})
    reg = model.module.regularizers["permutation_t"]
    calls = []
    original = reg.adversary_loss
    reg.adversary_loss = lambda ctx: (calls.append(ctx.epoch), original(ctx))[1]
    model.train(max_epochs=4, batch_size=200, seed=0, accelerator="cpu", validation_fraction=0.0,
                progress_bar=False)
    assert sorted(set(calls)) == [1, 3]  # epochs 2 and 4 (1-based) belong to the discriminator


# -- the recipe ------------------------------------------------------------------------------------
def test_fcr_arguments(world):
    spec = fcrkit.models.fcr_spec(weights={"similarity": 0}, regularizers=[
        {"name": "kl", "weight": 2.0}, {"name": "label_classifier", "key": "extra", "blocks": ["x"], "label": "t"}])
    keys = [r.key for r in spec.regularizers]
    assert "similarity" not in keys and "extra" in keys and keys.count("kl") == 1
    assert next(r for r in spec.regularizers if r.key == "kl").weight == 2.0
    assert [b.name for b in spec.blocks] == ["x", "tx", "t"]
    with pytest.raises(ConfigError, match="'similarty'.*Did you mean 'similarity'"):
        fcrkit.models.fcr_spec(weights={"similarty": 1})
    with pytest.raises(ConfigError, match="tx_prior='sum'"):
        fcrkit.models.fcr_spec(tx_prior="sum")
    with pytest.raises(ConfigError, match="'x', 't', 'tx'"):
        fcrkit.models.fcr_spec(n_latent={"x": 2, "t": 2})


def test_predict_redraws_treatment_blocks_and_checks_inputs(world):
    model = small_fcr(world)
    model.train(max_epochs=3, batch_size=200, seed=0, accelerator="cpu", progress_bar=False)
    controls = world[world.obs["treatment"] == "control"].copy()
    pred = model.predict(controls, treatment="drug_1", seed=0)
    assert pred.shape == controls.shape and list(pred.var_names) == list(controls.var_names)
    assert (pred.obs["treatment"] == "drug_1").all()
    assert pred.uns["fcrkit_prediction"]["redrawn_blocks"] == ["tx", "t"]
    assert np.all(pred.X >= 0)
    library = np.asarray(controls.X.sum(axis=1)).ravel()
    np.testing.assert_allclose(pred.X.sum(axis=1), library, rtol=1e-3)  # expected counts keep the library
    again = model.predict(controls, treatment="drug_1", seed=0)
    np.testing.assert_array_equal(pred.X, again.X)
    assert not np.allclose(model.predict(controls, treatment="drug_0", seed=0).X, pred.X)
    combination = model.predict(controls, treatment="drug_0+drug_1", seed=0)  # never seen together
    assert (combination.obs["treatment"] == "drug_0+drug_1").all()
    assert not np.allclose(combination.X, pred.X)
    with pytest.raises(DataError, match="drug_9"):
        model.predict(controls, treatment="drug_9")
    strange = controls.copy()
    strange.obs["covariate"] = pd.Categorical(["cov_7"] * strange.n_obs)
    with pytest.raises(DataError, match="cov_7"):
        model.predict(strange, treatment="drug_1")
    with pytest.raises(DataError, match="genes differ"):
        model.predict(controls[:, :30].copy(), treatment="drug_1")


@pytest.mark.parametrize("name", sorted(fcrkit.runconfig.recipes()))
def test_every_recipe_passes_likelihood_options_through(name):
    build = fcrkit.runconfig.recipes()[name].build_spec
    assert "likelihood_options" in inspect.signature(build).parameters  # so run configs and benchmarks take them
    spec = build(likelihood_options={"min_scale": 0.01})
    assert spec.likelihood.options["min_scale"] == 0.01
    assert build(likelihood_options=None) == build()
    with pytest.raises(ConfigError, match="likelihood_options=3 must be a dict"):
        build(likelihood_options=3)


def test_gaussian_fcr_gets_a_per_cell_scale_through_likelihood_options(world, tmp_path):
    logged = world.copy()
    logged.X = np.log1p(logged.X)
    model = small_fcr(logged, likelihood="gaussian", likelihood_options={"scale": "gene-cell", "min_scale": 0.01})
    assert model.module.likelihood.heads == ("mean", "scale") and model.module.likelihood.min_scale == 0.01
    model.save(tmp_path / "gaussian")
    again = fcrkit.models.FCR.load(tmp_path / "gaussian", logged)
    assert again.spec.likelihood.options == {"scale": "gene-cell", "min_scale": 0.01}
    with pytest.raises(ConfigError, match="'scal'.*Options it accepts"):
        small_fcr(logged, likelihood="gaussian", likelihood_options={"scal": "gene-cell"})


def test_posterior_shift_keeps_the_cells_posterior_and_moves_it_by_the_prior_means(world):
    model = small_fcr(world)  # untrained: the algebra does not need a fit
    controls = world[world.obs["treatment"] == "control"].copy()
    data = CellData.from_anndata(controls, model.setup)
    batch = data.batch(torch.arange(data.n_obs))
    module = model.module.eval()
    with torch.no_grad():
        z = {name: loc for name, (loc, _) in module.encode(batch).items()}
        # predicting a cell's own condition gives back its reconstruction, exactly
        own = model.predict(controls, treatment="control", counterfactual="shift")
        np.testing.assert_allclose(own.X, module.decode_mean(z, batch.labels, batch.library).numpy(), rtol=1e-5)
        # another treatment: z_t and z_tx move by the difference of their prior means, z_x stays
        target = model._target_labels(controls, "drug_1", 1.0)
        for name in ("t", "tx"):
            z[name] = (z[name] + module.prior_distribution(name, target, data.n_obs).mean
                       - module.prior_distribution(name, batch.labels, data.n_obs).mean)
        expected = module.decode_mean(z, target, batch.library).numpy()
    shifted = model.predict(controls, treatment="drug_1", counterfactual="shift")
    np.testing.assert_allclose(shifted.X, expected, rtol=1e-5)
    assert shifted.uns["fcrkit_prediction"]["shifted_blocks"] == ["tx", "t"]
    assert not np.allclose(shifted.X, model.predict(controls, treatment="drug_1", from_prior="mean").X)
    with pytest.raises(ConfigError, match="counterfactual='posterior'"):
        model.predict(controls, treatment="drug_1", counterfactual="posterior")


def test_models_without_treatment_blocks_cannot_predict(world):
    model = fcrkit.models.SCVI(world, n_latent=2, n_hidden=16)
    with pytest.raises(ConfigError, match="cannot predict"):
        model.predict(world, treatment="drug_1")


def test_joint_encoder_variant_splits_one_encoder_into_the_blocks(world, tmp_path):
    model = small_fcr(world, joint_encoder=True)
    assert list(model.module.encoders) == ["joint"]
    assert model.spec.joint_encoder.conditions == ("x", "t")
    model.train(max_epochs=2, batch_size=200, seed=0, accelerator="cpu", progress_bar=False)
    latent = model.get_latent_representation()
    assert {k: v.shape for k, v in latent.items()} == {f"X_fcr_{b}": (world.n_obs, 2) for b in ("x", "tx", "t")}
    model.save(tmp_path / "joint")
    again = fcrkit.models.FCR.load(tmp_path / "joint", world)
    np.testing.assert_array_equal(again.get_latent_representation()["X_fcr_tx"], latent["X_fcr_tx"])


def test_product_prior_shares_the_label_embeddings_of_the_x_and_t_priors(world, tmp_path):
    """p(z_tx | t, x) reads k_t ⊙ k_x with the very embeddings of p(z_t | t) and p(z_x | x) (Fig. 2a)."""
    model = small_fcr(world, tx_prior="product")
    priors = model.module.priors
    assert [name for name, _ in priors["tx"].named_parameters()] == ["loc.weight", "loc.bias", "scale.weight",
                                                                       "scale.bias"]  # no embedding of its own
    with torch.no_grad():  # known embeddings: k_x = relu(2) = 2 and k_t = relu(3) = 3 in every entry
        for block, value in (("x", 2.0), ("t", 3.0)):
            layer = priors[block].embed["all"][0]
            layer.weight.zero_()
            layer.bias.fill_(value)
        priors["tx"].loc.weight.fill_(1.0 / 16)  # the mean of the 16 entries of k_t ⊙ k_x
        priors["tx"].loc.bias.zero_()
    labels = {"x": torch.eye(2)[[0, 1]], "t": torch.eye(2)[[1, 1]]}
    torch.testing.assert_close(model.module.prior_distribution("tx", labels, 2).loc, torch.full((2, 2), 6.0))
    # a gradient of the tx prior reaches the x and t priors' embeddings
    model = small_fcr(world, tx_prior="product")
    model.module.prior_distribution("tx", labels, 2).scale.sum().backward()
    for block in ("x", "t"):
        assert model.module.priors[block].embed["all"][0].weight.grad.abs().sum() > 0
    # saved once (by their owners) and shared again after loading
    model.save(tmp_path / "product")
    again = fcrkit.models.FCR.load(tmp_path / "product", world)
    with torch.no_grad():
        again.module.priors["x"].embed["all"][0].bias.add_(1.0)
    moved = again.module.prior_distribution("tx", labels, 2).loc
    assert not torch.allclose(moved, model.module.prior_distribution("tx", labels, 2).loc)
    scale = model.module.prior_distribution("tx", labels, 2).scale
    assert not torch.allclose(scale[0], scale[1])  # the scale depends on the condition too
    with pytest.raises(ConfigError, match="embeddings_from=.*needs combine='product'"):
        ConditionalGaussian(2, {"x": 2, "t": 2}, combine="concat", embeddings_from={"x": "x", "t": "t"})
