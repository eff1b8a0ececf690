"""Global latent blocks: one latent row per treatment (or covariate level) in a plate of its own, with
variational parameters of its own; the spec, the Pyro program, persistence, objectives and learning."""

from __future__ import annotations

import numpy as np
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from scipy.spatial.distance import pdist
from torch import nn

import fcrkit
from fcrkit.data.labels import EntryDraws, entry_rows, treatment_entries
from fcrkit.data.loaders import CellData
from fcrkit.errors import ConfigError, DataError
from fcrkit.hookspecs import hookimpl
from fcrkit.spec import BlockSpec, ModelSpec

N_TREATMENTS, N_LATENT = 6, 3


class TreatmentShift(nn.Module):
    """Test prior: ``z ~ N(Σ_p d_p shift_p, I)``, the shifts read from the global block ``shift``."""

    def __init__(self, dim, label_dims):
        super().__init__()
        assert set(label_dims) == {"t", "shift"}

    def distribution(self, labels, n):
        cells, rows, doses = treatment_entries(labels)
        loc = torch.zeros(n, labels["shift"].shape[-1]).index_add(0, cells, doses[:, None] * labels["shift"][rows])
        return dist.Normal(loc, torch.ones_like(loc)).to_event(1)


class Plugin:
    @hookimpl
    def fcrkit_register_components(self, registry):
        registry.prior("treatment_shift", TreatmentShift)


def shift_spec(**block) -> dict:
    return {
        "name": "shifted",
        "blocks": [
            {"name": "shift", "dim": N_LATENT, "plate": "t", **block},
            {"name": "z", "dim": N_LATENT, "prior": {"name": "treatment_shift", "conditions": ["t", "shift"]},
             "encoder": {"name": "mlp", "n_hidden": 32}},
        ],
        "decoder": {"name": "mlp", "n_hidden": 32},
        "likelihood": "nb",
    }


@pytest.fixture(scope="module")
def world():
    adata = fcrkit.simulate.sparse_shift(n_cells=100 * (N_TREATMENTS + 1), n_genes=40, n_latent=N_LATENT,
                                         n_treatments=N_TREATMENTS, n_hidden=15, seed=1)
    fcrkit.setup_anndata(adata, treatment_key="treatment")
    return adata


# -- the spec ---------------------------------------------------------------------------------------------
def test_spec_round_trip_with_a_plate(tmp_path):
    spec = ModelSpec.from_dict(shift_spec(posterior={"name": "delta"}))
    block = spec.blocks[0]
    assert block.plate == "t" and block.is_global and block.encoder is None
    assert spec.cell_block_dims == {"z": N_LATENT} and spec.global_block_dims == {"shift": N_LATENT}
    assert spec.to_dict()["blocks"][0] == {"name": "shift", "dim": N_LATENT, "prior": {"name": "standard_normal"},
                                           "posterior": {"name": "delta"}, "plate": "t"}
    assert ModelSpec.from_dict(spec.to_dict()) == spec
    assert "plate" not in spec.to_dict()["blocks"][1]  # the default plate is left out
    toml = tmp_path / "m.toml"
    toml.write_text('name = "shifted"\nlikelihood = "nb"\ndecoder = { name = "mlp", n_hidden = 32 }\n'
                    '[[blocks]]\nname = "shift"\ndim = 3\nplate = "t"\n'
                    'posterior = { name = "delta" }\n'
                    '[[blocks]]\nname = "z"\ndim = 3\nencoder = { name = "mlp", n_hidden = 32 }\n'
                    'prior = { name = "treatment_shift", conditions = ["t", "shift"] }\n')
    assert ModelSpec.from_toml(toml) == spec
    # the recipe-wide posterior leaves global blocks alone
    assert spec.with_posterior("flow").blocks[0].posterior.name == "delta"


def test_bad_plates_and_conditions_are_refused_by_name(world, fcrkit_plugin):
    with pytest.raises(ConfigError, match="block 'shift': plate='cell' is not one of 'cells', 't', 'x'"):
        ModelSpec.from_dict(shift_spec(plate="cell"))
    with pytest.raises(ConfigError, match="block 'shift': a global block .* no encoder: remove its encoder"):
        ModelSpec.from_dict(shift_spec(encoder="mlp"))
    with pytest.raises(ConfigError, match="block 'z' prior: component 'treatment_shift': unknown condition 'shif'. "
                                          "Did you mean 'shift'.* or a global block \\('shift'\\)"):
        spec = shift_spec()
        spec["blocks"][1]["prior"]["conditions"] = ["t", "shif"]
        ModelSpec.from_dict(spec)
    with pytest.raises(ConfigError, match="Block 'z' is per cell; only a global block"):
        BlockSpec("z2", 2, prior={"name": "standard_normal", "conditions": ["z"]})  # fine alone ...
        ModelSpec("m", (BlockSpec("z", 2), BlockSpec("z2", 2, prior={"name": "standard_normal",
                                                                      "conditions": ["z"]})))
    with pytest.raises(ConfigError, match="only global blocks"):
        ModelSpec("m", (BlockSpec("g", 2, plate="t"),))
    fcrkit_plugin(Plugin())
    spec = shift_spec()
    spec["blocks"][0]["plate"] = "x"  # the world has no covariates
    with pytest.raises(ConfigError, match="block 'shift' is global over label 'x'.*pass covariate_keys"):
        fcrkit.compose(spec, world)


def test_per_entry_draws_are_declared_checked_and_read_only_by_parts_that_can(world, fcrkit_plugin):
    spec = ModelSpec.from_dict(shift_spec(draws="per_entry"))
    assert spec.blocks[0].draws == "per_entry" and spec.to_dict()["blocks"][0]["draws"] == "per_entry"
    assert ModelSpec.from_dict(spec.to_dict()) == spec
    assert "draws" not in ModelSpec.from_dict(shift_spec()).to_dict()["blocks"][0]  # the default is left out
    with pytest.raises(ConfigError, match="block 'shift': draws='every' is not one of 'per_entry', 'site'"):
        ModelSpec.from_dict(shift_spec(draws="every"))
    with pytest.raises(ConfigError, match="block 'shift': draws='per_entry' .* needs plate = 't' \\(got plate='x'\\)"):
        ModelSpec.from_dict(shift_spec(plate="x", draws="per_entry"))
    fcrkit_plugin(Plugin())
    with pytest.raises(ConfigError, match="prior 'treatment_shift' \\(z.prior\\) reads global block\\(s\\) 'shift', "
                                          "drawn per treatment entry .* give the block\\(s\\) draws = 'site'"):
        fcrkit.compose(shift_spec(draws="per_entry"), world)  # the test prior indexes a (V, dim) value itself
    # entry_rows reads both forms, and refuses draws made for other entries
    table = torch.arange(12.0).reshape(4, 3)
    rows = torch.tensor([2, 0, 2])
    assert torch.equal(entry_rows(table, rows), table[rows])
    draws = EntryDraws(rows, torch.ones(3, 3))
    assert torch.equal(entry_rows(draws, rows.clone()), torch.ones(3, 3))
    with pytest.raises(DataError, match="drawn for 3 treatment entries, which are not the 2 asked for"):
        entry_rows(draws, rows[:2])


# -- the Pyro program -------------------------------------------------------------------------------------
def test_the_global_site_is_in_its_own_plate_and_not_scaled_by_the_subsample(world, fcrkit_plugin):
    fcrkit_plugin(Plugin())
    model = fcrkit.compose(shift_spec(), world, seed=0)
    module = model.module
    batch = CellData.from_anndata(world, model.setup).batch(torch.arange(0, 700, 7))  # 100 of 700 cells
    guide = poutine.trace(module.guide).get_trace(batch, world.n_obs)
    trace = poutine.trace(poutine.replay(module.model, trace=guide)).get_trace(batch, world.n_obs)
    for tr in (trace, guide):
        site = tr.nodes["shift"]
        assert site["value"].shape == (N_TREATMENTS, N_LATENT)
        assert [(f.name, f.size) for f in site["cond_indep_stack"]] == [("treatments", N_TREATMENTS)]
        assert site["scale"] == 1.0  # counted once per step, whatever the minibatch
        assert tr.nodes["z"]["scale"] == pytest.approx(7.0)  # the per-cell sites are rescaled: 700 / 100
    assert trace.nodes["y"]["scale"] == pytest.approx(7.0)
    # a second global block over the same label shares the plate (made once per run of the program)
    spec = shift_spec()
    spec["blocks"].insert(0, {"name": "other", "dim": 2, "plate": "t"})
    two = fcrkit.compose(spec, world, seed=0).module
    shared = poutine.trace(two.guide).get_trace(batch, world.n_obs)
    assert shared.nodes["other"]["cond_indep_stack"] == shared.nodes["shift"]["cond_indep_stack"]
    # the prior read the guide's draw of the global block (the value a component finds in labels)
    prior = trace.nodes["z"]["fn"].base_dist
    t = batch.labels["t"]
    assert torch.allclose(prior.loc, t @ guide.nodes["shift"]["value"])
    # the regulariser context carries the global value, read off the trace
    ctx = module.context(guide, batch, world.n_obs)
    assert set(ctx.z) == {"z"} and torch.equal(ctx.globals["shift"], guide.nodes["shift"]["value"])
    assert torch.equal(ctx.global_loc["shift"], module.globals["shift"].loc)


def test_latents_stay_per_cell_and_the_global_block_has_its_own_reader(world, fcrkit_plugin):
    fcrkit_plugin(Plugin())
    model = fcrkit.compose(shift_spec(), world, seed=0)
    z = model.get_latent_representation()
    assert z.shape == (world.n_obs, N_LATENT)  # one per-cell block: its array, as for one-block models
    with torch.no_grad():
        model.module.globals["shift"].loc.normal_()
    table = model.get_global_latent("shift")
    assert list(table.index) == list(model.setup.treatments) and list(table.columns) == ["shift_0", "shift_1",
                                                                                          "shift_2"]
    np.testing.assert_array_equal(table.to_numpy(), model.module.globals["shift"].loc.detach().numpy())
    assert (model.get_global_latent("shift", value="scale").to_numpy() > 0).all()
    with pytest.raises(ConfigError, match="block 'shift' is global .* model.get_global_latent\\('shift'\\)"):
        model.get_latent_representation(block="shift")
    with pytest.raises(ConfigError, match="'z' is not a global block"):
        model.get_global_latent("z")


def test_save_load_round_trip_of_global_parameters_is_exact(world, fcrkit_plugin, tmp_path):
    fcrkit_plugin(Plugin())
    model = fcrkit.compose(shift_spec(), world, seed=0)
    model.train(2, batch_size=128, seed=0, accelerator="cpu")
    model.module.fix_global("shift", torch.arange(N_TREATMENTS * N_LATENT, dtype=torch.float32).reshape(-1, 3))
    model.save(tmp_path / "m")
    loaded = fcrkit.models.Model.load(tmp_path / "m", world)
    for name in ("loc", "raw_scale", "fixed_value", "is_fixed"):
        assert torch.equal(getattr(loaded.module.globals["shift"], name), getattr(model.module.globals["shift"], name))
    assert loaded.get_global_latent("shift").equals(model.get_global_latent("shift"))
    loaded.module.fix_global("shift", None)  # freed: its trained variational parameters again
    np.testing.assert_array_equal(loaded.get_global_latent("shift").to_numpy(),
                                  model.module.globals["shift"].loc.detach().numpy())


def test_fixed_global_block_is_no_site(world, fcrkit_plugin):
    fcrkit_plugin(Plugin())
    module = fcrkit.compose(shift_spec(), world, seed=0).module
    batch = CellData.from_anndata(world, fcrkit.models.Model(world, shift_spec()).setup).batch(torch.arange(50))
    module.fix_global("shift", torch.ones(N_TREATMENTS, N_LATENT))
    trace = poutine.trace(module.model).get_trace(batch, world.n_obs)
    assert "shift" not in trace.nodes
    assert torch.allclose(trace.nodes["z"]["fn"].base_dist.loc, batch.labels["t"] @ torch.ones(N_TREATMENTS, 3))
    with pytest.raises(ConfigError, match="takes a value of shape \\(6, 3\\)"):
        module.fix_global("shift", torch.ones(2, 3))


# -- objectives -------------------------------------------------------------------------------------------
def test_objectives_with_a_global_block(world, fcrkit_plugin):
    fcrkit_plugin(Plugin())
    losses = {}
    for elbo in ("trace_meanfield", "trace"):  # Normal against Normal: the analytic KL, or sampled
        model = fcrkit.compose(shift_spec(), world, seed=0)
        losses[elbo] = model.train(2, batch_size=256, seed=0, accelerator="cpu", elbo=elbo)["elbo"]
        assert np.isfinite(losses[elbo]).all() and losses[elbo][-1] < losses[elbo][0]
    # a relaxed-Bernoulli global block has no analytic KL: trace_meanfield falls back to the sampled one
    masked = shift_spec(prior={"name": "bernoulli", "temperature": 1.0},
                        posterior={"name": "relaxed_bernoulli", "init_logit": 2.0})
    model = fcrkit.compose(masked, world, seed=0)
    assert np.isfinite(model.train(1, batch_size=256, seed=0, accelerator="cpu")["elbo"]).all()
    model = fcrkit.compose(shift_spec(), world, seed=0)
    with pytest.raises(ConfigError, match="elbo='iwae'.*global block\\(s\\) 'shift' are shared by every cell"):
        model.train(1, batch_size=256, seed=0, accelerator="cpu", elbo="iwae", num_particles=2)
    model.module.fix_global("shift", torch.zeros(N_TREATMENTS, N_LATENT))  # a constant: iwae is a bound again
    model.train(1, batch_size=256, seed=0, accelerator="cpu", elbo="iwae", num_particles=2)


# -- learning ---------------------------------------------------------------------------------------------
def shift_agreement(learned: np.ndarray, true: np.ndarray) -> float:
    """Pearson correlation of the pairwise distances between treatments' shifts (invariant to the latent's
    rotation, sign and scale, which the model cannot identify)."""
    return float(np.corrcoef(pdist(learned), pdist(true))[0, 1])


def test_a_global_shift_block_learns_the_true_per_treatment_shifts(world, fcrkit_plugin):
    fcrkit_plugin(Plugin())
    model = fcrkit.compose(shift_spec(), world, seed=0)
    model.train(15, batch_size=64, lr=1e-2, seed=0, accelerator="cpu")
    true = world.uns["simulation"]["shifts"]
    learned = model.get_global_latent("shift").loc[[f"drug_{a}" for a in range(N_TREATMENTS)]].to_numpy()
    score = shift_agreement(learned, true)
    permuted = np.mean([shift_agreement(learned[np.random.default_rng(s).permutation(N_TREATMENTS)], true)
                        for s in range(20)])
    print(f"shift agreement {score:.2f}; rows permuted {permuted:.2f}")
    assert score > 0.8 and score > permuted + 0.5


def test_a_regularizer_can_start_late():
    from fcrkit.spec import RegularizerSpec

    late = RegularizerSpec.parse({"name": "mask_sparsity", "weight": 10.0, "start_epoch": 20, "warmup_epochs": 10,
                                  "blocks": ["mask"]})
    assert late.options == {"blocks": ["mask"]} and late.start_epoch == 20.0
    assert [late.weight_at(e) for e in (0, 19.9, 20, 25, 30, 40)] == [0.0, 0.0, 0.0, 5.0, 10.0, 10.0]
    assert RegularizerSpec.parse(late.to_dict()) == late
    assert "start_epoch" not in RegularizerSpec("kl").to_dict()  # the default is left out
    with pytest.raises(ConfigError, match="start_epoch must be >= 0"):
        RegularizerSpec("kl", start_epoch=-1)


def test_global_draws_are_refused_by_a_model_without_global_blocks(world):
    spec = {"name": "no_globals", "blocks": [{"name": "z", "dim": 2, "encoder": "mlp",
                                              "prior": {"name": "conditional_gaussian", "conditions": ["t"]}}],
            "decoder": "mlp", "likelihood": "nb"}
    model = fcrkit.compose(spec, world, seed=0)
    with pytest.raises(ConfigError, match=r"global_draws=2 draws the global blocks, but model 'no_globals' has none"):
        model.predict(world[:5], treatment="drug_0", global_draws=2)
