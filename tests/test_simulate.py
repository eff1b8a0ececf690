"""The simulators: ``basic`` (unchanged) and ``interaction`` (the FCR world)."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import fcrkit
from fcrkit.errors import ConfigError

N_CELLS = 3000


@pytest.fixture(scope="module")
def world() -> ad.AnnData:
    return fcrkit.simulate.interaction(n_cells=N_CELLS, seed=0)


def _codes(adata: ad.AnnData) -> tuple[np.ndarray, np.ndarray]:
    return adata.obs["covariate"].cat.codes.to_numpy(), adata.obs["treatment"].cat.codes.to_numpy()


def _condition_stats(adata: ad.AnnData, key: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-(covariate, treatment) means, variances and cell counts of ``obsm[key]``."""
    x, t = _codes(adata)
    z = adata.obsm[key].astype(np.float64)
    n_x, n_t = x.max() + 1, t.max() + 1
    means = np.zeros((n_x, n_t, z.shape[1]))
    variances = np.zeros_like(means)
    counts = np.zeros((n_x, n_t))
    for i in range(n_x):
        for j in range(n_t):
            zz = z[(x == i) & (t == j)]
            means[i, j], variances[i, j], counts[i, j] = zz.mean(0), zz.var(0, ddof=1), len(zz)
    return means, variances, counts


def _two_way(adata: ad.AnnData, key: str) -> dict[str, float]:
    """Mean squared covariate effect, treatment effect and interaction residual of the per-condition
    means of ``obsm[key]``, and ``noise``: the mean squared standard error of a condition mean."""
    means, variances, counts = _condition_stats(adata, key)
    grand = means.mean(axis=(0, 1))
    row = means.mean(axis=1) - grand
    col = means.mean(axis=0) - grand
    resid = means - grand - row[:, None] - col[None]
    return {
        "x": float((row**2).mean()),
        "t": float((col**2).mean()),
        "interaction": float((resid**2).mean()),
        "noise": float((variances / counts[..., None]).mean()),
    }


def _r2(features: np.ndarray, targets: np.ndarray) -> np.ndarray:
    design = np.c_[np.ones(len(features)), features]
    coef, *_ = np.linalg.lstsq(design, targets, rcond=None)
    residual = targets - design @ coef
    return 1.0 - residual.var(axis=0) / targets.var(axis=0)


# ---------------------------------------------------------------------------------------------
# interaction: structure


def test_shapes_keys_and_dtypes(world):
    assert world.shape == (N_CELLS, 200)
    assert sp.isspmatrix_csr(world.X) and world.X.dtype == np.int32
    assert list(world.var_names[:2]) == ["gene_0", "gene_1"]
    assert isinstance(world.obs["covariate"].dtype, pd.CategoricalDtype)
    assert isinstance(world.obs["treatment"].dtype, pd.CategoricalDtype)
    assert list(world.obs["covariate"].cat.categories) == ["cov_0", "cov_1", "cov_2"]
    assert list(world.obs["treatment"].cat.categories) == ["control", "drug_0", "drug_1", "drug_2"]
    for key, width in [("z_x", 2), ("z_t", 2), ("z_tx", 2), ("z_true", 6)]:
        assert world.obsm[key].shape == (N_CELLS, width) and world.obsm[key].dtype == np.float32
    z_true = np.concatenate([world.obsm["z_x"], world.obsm["z_t"], world.obsm["z_tx"]], axis=1)
    np.testing.assert_array_equal(world.obsm["z_true"], z_true)
    sim = world.uns["simulation"]
    assert sim["kind"] == "interaction" and sim["seed"] == 0 and sim["likelihood"] == "nb"
    assert sim["dims"] == {"x": 2, "t": 2, "tx": 2}
    assert sim["means"]["x"].shape == sim["scales"]["x"].shape == (3, 2)
    assert sim["means"]["t"].shape == sim["scales"]["t"].shape == (4, 2)
    assert sim["means"]["tx"].shape == sim["scales"]["tx"].shape == (3, 4, 2)
    assert list(sim["treatments"]) == ["control", "drug_0", "drug_1", "drug_2"]


def test_dims_as_tuple_or_partial_mapping():
    adata = fcrkit.simulate.interaction(n_cells=300, n_genes=30, dims=(1, 2, 3), seed=0)
    assert [adata.obsm[k].shape[1] for k in ("z_x", "z_t", "z_tx", "z_true")] == [1, 2, 3, 6]
    adata = fcrkit.simulate.interaction(n_cells=300, n_genes=30, dims={"tx": 4}, seed=0)
    assert adata.uns["simulation"]["dims"] == {"x": 2, "t": 2, "tx": 4}
    assert adata.obsm["z_tx"].shape[1] == 4 and adata.uns["simulation"]["means"]["tx"].shape == (3, 4, 4)


def test_reproducible_with_a_seed_and_different_with_another(world):
    again = fcrkit.simulate.interaction(n_cells=N_CELLS, seed=0)
    assert (again.X != world.X).nnz == 0
    for key in ("z_x", "z_t", "z_tx", "z_true"):
        np.testing.assert_array_equal(again.obsm[key], world.obsm[key])
    pd.testing.assert_frame_equal(again.obs, world.obs)
    other = fcrkit.simulate.interaction(n_cells=N_CELLS, seed=1)
    assert (other.X != world.X).nnz > 0
    assert not np.allclose(other.obsm["z_true"], world.obsm["z_true"])
    assert not np.allclose(other.uns["simulation"]["means"]["tx"], world.uns["simulation"]["means"]["tx"])


def test_the_world_does_not_depend_on_the_number_of_cells(world):
    small = fcrkit.simulate.interaction(n_cells=500, seed=0)
    for part in ("means", "scales"):
        for block in ("x", "t", "tx"):
            np.testing.assert_array_equal(small.uns["simulation"][part][block], world.uns["simulation"][part][block])


def test_every_condition_has_cells_and_the_design_is_balanced(world):
    table = pd.crosstab(world.obs["covariate"], world.obs["treatment"])
    assert table.shape == (3, 4) and (table.to_numpy() > 0).all()
    assert table["control"].sum() == round(0.3 * N_CELLS)
    assert np.ptp(table["control"].to_numpy()) <= 1  # controls spread evenly over the covariates
    assert np.ptp(table.drop(columns="control").to_numpy()) <= 1  # as are the treated cells
    # few cells: still every pair
    tiny = fcrkit.simulate.interaction(n_cells=40, n_covariates=4, n_treatments=5, control_fraction=0.2, seed=3)
    assert (pd.crosstab(tiny.obs["covariate"], tiny.obs["treatment"]).to_numpy() > 0).all()


def test_counts_are_non_negative_integers_with_varying_library_sizes(world):
    assert world.X.data.min() >= 0
    assert world.X.nnz < world.shape[0] * world.shape[1]  # some zeros, as in real counts
    library = np.asarray(world.X.sum(axis=1)).ravel()
    assert library.std() / library.mean() > 0.1
    assert 0.5 * 3000 < np.median(library) < 2 * 3000


# ---------------------------------------------------------------------------------------------
# interaction: each block depends on its own labels


def test_z_x_depends_on_the_covariate_only(world):
    effects = _two_way(world, "z_x")
    assert effects["x"] > 50 * effects["noise"]
    assert effects["t"] < 5 * effects["noise"] and effects["interaction"] < 5 * effects["noise"]
    means, _, counts = _condition_stats(world, "z_x")
    truth = world.uns["simulation"]["means"]["x"]
    se = world.uns["simulation"]["scales"]["x"].max() / np.sqrt(counts.min())
    assert np.abs(means - truth[:, None, :]).max() < 5 * se  # same mean for every treatment


def test_z_t_depends_on_the_treatment_only(world):
    effects = _two_way(world, "z_t")
    assert effects["t"] > 50 * effects["noise"]
    assert effects["x"] < 5 * effects["noise"] and effects["interaction"] < 5 * effects["noise"]
    means, _, counts = _condition_stats(world, "z_t")
    truth = world.uns["simulation"]["means"]["t"]  # row 0: the controls' own condition
    se = world.uns["simulation"]["scales"]["t"].max() / np.sqrt(counts.min())
    assert np.abs(means - truth[None, :, :]).max() < 5 * se


def test_z_tx_is_a_genuine_interaction(world):
    effects = _two_way(world, "z_tx")
    assert effects["interaction"] > 50 * effects["noise"]
    total = effects["x"] + effects["t"] + effects["interaction"]
    # not additive in x and t (a pure interaction of 3 x 4 conditions averages about 0.55 here)
    assert effects["interaction"] > 0.15 * total
    means, _, counts = _condition_stats(world, "z_tx")
    se = world.uns["simulation"]["scales"]["tx"].max() / np.sqrt(counts.min())
    assert np.abs(means - world.uns["simulation"]["means"]["tx"]).max() < 5 * se  # controls included


def test_condition_variances_vary_and_match_the_scales(world):
    for block in ("x", "t", "tx"):
        _, variances, _ = _condition_stats(world, f"z_{block}")
        scales = world.uns["simulation"]["scales"][block]
        expected = {"x": scales[:, None, :], "t": scales[None, :, :], "tx": scales}[block] ** 2
        np.testing.assert_allclose(variances, np.broadcast_to(expected, variances.shape), rtol=0.35)
    _, variances, _ = _condition_stats(world, "z_tx")
    assert (variances.max(axis=(0, 1)) / variances.min(axis=(0, 1)) > 1.5).all()


def test_the_counts_carry_the_latents(world):
    logged = np.log1p(world.X.toarray().astype(np.float64))
    logged -= logged.mean(axis=0)
    u, s, _ = np.linalg.svd(logged, full_matrices=False)
    r2 = _r2(u[:, :10] * s[:10], world.obsm["z_true"].astype(np.float64))
    assert r2.min() > 0.3 and r2.mean() > 0.5, r2


def test_the_mixing_is_non_linear():
    """A linear map of z explains the gene logits only in part (the mixing is not linear)."""
    adata = fcrkit.simulate.interaction(n_cells=2000, n_genes=50, likelihood="gaussian", dispersion=1e6, seed=0)
    values = np.asarray(adata.X, dtype=np.float64)  # log1p(library_size * p) with negligible noise
    r2 = _r2(adata.obsm["z_true"].astype(np.float64), values)
    assert np.median(r2) < 0.97, np.median(r2)


# ---------------------------------------------------------------------------------------------
# interaction: likelihoods, setup and storage


def test_poisson_and_gaussian_share_the_latents(world):
    poisson = fcrkit.simulate.interaction(n_cells=N_CELLS, likelihood="poisson", seed=0)
    gaussian = fcrkit.simulate.interaction(n_cells=N_CELLS, likelihood="gaussian", seed=0)
    for other in (poisson, gaussian):
        np.testing.assert_array_equal(other.obsm["z_true"], world.obsm["z_true"])
        pd.testing.assert_frame_equal(other.obs, world.obs)
    assert sp.isspmatrix_csr(poisson.X) and poisson.X.dtype == np.int32 and poisson.X.data.min() >= 0
    assert (poisson.X != world.X).nnz > 0
    assert isinstance(gaussian.X, np.ndarray) and gaussian.X.dtype == np.float32
    assert np.isfinite(gaussian.X).all() and (gaussian.X < 0).any()  # noise, not counts
    # log1p-normalised: close to log1p of the counts normalised to the same total
    counts = world.X.toarray().astype(np.float64)
    normalised = np.log1p(counts / counts.sum(axis=1, keepdims=True) * 3000.0)
    assert abs(gaussian.X.mean() - normalised.mean()) < 0.3
    assert gaussian.uns["simulation"]["likelihood"] == "gaussian"


def test_setup_anndata_accepts_the_output(world):
    adata = world.copy()
    setup = fcrkit.setup_anndata(adata, treatment_key="treatment", covariate_keys=["covariate"])
    assert setup.treatments == ("drug_0", "drug_1", "drug_2")
    assert setup.covariate_levels == {"covariate": ("cov_0", "cov_1", "cov_2")}
    labels = {key: label.dense() for key, label in setup.encode_labels(adata.obs).items()}
    control = (adata.obs["treatment"] == "control").to_numpy()
    assert labels["t"].shape == (N_CELLS, 3) and not labels["t"][control].any()
    assert (labels["t"][~control].sum(axis=1) == 1).all()
    gaussian = fcrkit.simulate.interaction(n_cells=300, n_genes=30, likelihood="gaussian", seed=0)
    fcrkit.setup_anndata(gaussian, treatment_key="treatment", covariate_keys="covariate")


def test_write_h5ad_round_trip(world, tmp_path):
    path = tmp_path / "interaction.h5ad"
    world.write_h5ad(path)
    back = ad.read_h5ad(path)
    assert (back.X != world.X).nnz == 0
    for key in ("z_x", "z_t", "z_tx", "z_true"):
        np.testing.assert_array_equal(back.obsm[key], world.obsm[key])
    assert list(back.obs["treatment"].cat.categories) == list(world.obs["treatment"].cat.categories)
    sim, sim_back = world.uns["simulation"], back.uns["simulation"]
    assert int(sim_back["seed"]) == 0 and {k: int(v) for k, v in sim_back["dims"].items()} == sim["dims"]
    assert list(sim_back["treatments"]) == list(sim["treatments"])
    for part in ("means", "scales"):
        for block in ("x", "t", "tx"):
            np.testing.assert_array_equal(sim_back[part][block], sim[part][block])
    gaussian = fcrkit.simulate.interaction(n_cells=200, n_genes=20, likelihood="gaussian", seed=0)
    gaussian.write_h5ad(tmp_path / "gaussian.h5ad")
    np.testing.assert_array_equal(ad.read_h5ad(tmp_path / "gaussian.h5ad").X, gaussian.X)


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"n_cells": 0}, "n_cells=0"),
        ({"n_genes": -3}, "n_genes=-3"),
        ({"n_covariates": 1.5}, "n_covariates=1.5"),
        ({"n_treatments": 0}, "n_treatments=0"),
        ({"n_treatments": True}, "n_treatments=True"),
        ({"dims": {"y": 2}}, "'y'"),
        ({"dims": {"tx": 0}}, "dims['tx']=0"),
        ({"dims": (2, 2)}, "dims=(2, 2)"),
        ({"dims": "x"}, "dims='x'"),
        ({"control_fraction": 0.0}, "control_fraction=0.0"),
        ({"control_fraction": 1.0}, "control_fraction=1.0"),
        ({"control_fraction": -0.2}, "control_fraction=-0.2"),
        ({"control_fraction": "half"}, "control_fraction='half'"),
        ({"likelihood": "zinb"}, "likelihood='zinb'"),
        ({"likelihood": "Poison"}, "likelihood='Poison'"),
        ({"library_size": 0.0}, "library_size=0.0"),
        ({"dispersion": -1.0}, "dispersion=-1.0"),
        ({"mixing_gain": 0.0}, "mixing_gain=0.0"),
        ({"seed": -1}, "seed=-1"),
        ({"n_cells": 10}, "n_cells=10"),
    ],
)
def test_bad_arguments_raise_config_error_naming_the_value(kwargs, named):
    with pytest.raises(ConfigError) as info:
        fcrkit.simulate.interaction(**kwargs)
    assert named in str(info.value)
    assert isinstance(info.value, ValueError)


def test_unknown_likelihood_suggests_the_closest():
    with pytest.raises(ConfigError, match="Did you mean 'poisson'"):
        fcrkit.simulate.interaction(likelihood="poison")


# ---------------------------------------------------------------------------------------------
# hard_interaction: the harder preset


def test_hard_world_has_its_conditions_shapes_and_sparsity():
    adata = fcrkit.simulate.hard_interaction(seed=0)
    assert adata.shape == (6000, 200)
    assert {k: adata.obsm[f"z_{k}"].shape[1] for k in ("x", "t", "tx")} == {"x": 2, "t": 2, "tx": 2}
    assert list(adata.obs["covariate"].cat.categories) == [f"cov_{k}" for k in range(5)]
    assert list(adata.obs["treatment"].cat.categories) == ["control"] + [f"drug_{k}" for k in range(5)]
    sizes = pd.crosstab(adata.obs["covariate"], adata.obs["treatment"])
    assert sizes.shape == (5, 6) and sizes.to_numpy().min() > 100  # all 30 conditions, well populated
    zeros = 1 - adata.X.nnz / np.prod(adata.shape)
    default_zeros = 1 - (world := fcrkit.simulate.interaction(n_cells=600, seed=0)).X.nnz / np.prod(world.shape)
    assert 0.65 < zeros < 0.8 and default_zeros < 0.2, (zeros, default_zeros)
    assert adata.uns["simulation"]["mixing_gain"] == 2.5


def test_hard_world_overrides_keep_its_mixing_and_the_gain_makes_it_less_linear():
    """The gain is what makes the world harder: a linear map of z explains far less of the
    noise-free log-expression than in the same world with gain 1."""
    r2 = {}
    for gain in (1.0, 2.5):
        adata = fcrkit.simulate.hard_interaction(seed=0, n_cells=2000, likelihood="gaussian", dispersion=1e6,
                                                 mixing_gain=gain)
        r2[gain] = float(np.median(_r2(adata.obsm["z_true"].astype(np.float64), np.asarray(adata.X, np.float64))))
    assert r2[2.5] < 0.5 < 0.7 < r2[1.0], r2


# ---------------------------------------------------------------------------------------------
# basic: unchanged


def test_basic_is_unchanged():
    adata = fcrkit.simulate.basic(n_cells=600, n_genes=50, n_latent=4, seed=0)
    assert sp.isspmatrix_csr(adata.X) and adata.X.dtype == np.int32 and adata.shape == (600, 50)
    assert set(adata.obs.columns) == {"cell_type", "treatment"} and adata.obsm["z_true"].shape == (600, 4)
    assert adata.uns["simulation"]["kind"] == "basic"
    # values recorded before the simulators shared their helpers: the random stream is the same
    assert adata.X[:2, :6].toarray().tolist() == [[1, 0, 0, 0, 4, 0], [0, 65, 4, 5, 0, 12]]
    np.testing.assert_allclose(adata.obsm["z_true"][0], [-0.6850546, 4.3968005, -5.8685188, -5.1273165], rtol=1e-5)
    assert abs(int(adata.X.sum()) - 1260289) <= 10
    assert adata.obs["treatment"].value_counts().to_dict() == {"control": 294, "drug_1": 158, "drug_0": 148}
