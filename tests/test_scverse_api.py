"""scverse habits (issue 17, item 7): latents as scvi-tools users write them, and normalised expression.

The rule of ``get_latent_representation``: one block -> its array; several blocks -> a dict keyed by
``obsm`` key; ``block=`` -> that block's array; ``as_dict=True`` -> the dict, for any model.
``get_normalized_expression`` is scvi-tools' method: expected expression per cell on a common scale.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import fcrkit
from fcrkit.errors import ConfigError, DataError
from tests.simulated import interaction_data


@pytest.fixture(scope="module")
def adata():
    """200 simulated count cells x 25 genes with a treatment and a covariate, set up for fcrkit."""
    return interaction_data(200, 25)


@pytest.fixture(scope="module")
def scvi(adata):
    return fcrkit.models.SCVI(adata, n_latent=3, n_hidden=16, seed=0)  # untrained: the surface is the point


@pytest.fixture(scope="module")
def fcr(adata):
    return fcrkit.models.FCR(adata, n_latent={"x": 2, "t": 2, "tx": 3}, n_hidden=16, seed=0)


def test_single_block_latent_goes_straight_into_obsm(scvi, adata):
    out = adata.copy()
    out.obsm["X_scvi"] = scvi.get_latent_representation()  # the scvi-tools idiom
    assert out.obsm["X_scvi"].shape == (adata.n_obs, 3)
    as_dict = scvi.get_latent_representation(as_dict=True)
    assert list(as_dict) == ["X_scvi"]
    np.testing.assert_array_equal(out.obsm["X_scvi"], as_dict["X_scvi"])
    np.testing.assert_array_equal(out.obsm["X_scvi"], scvi.get_latent_representation(block="z"))
    out.obsm.update(scvi.get_latent_representation(as_dict=True))  # the form generic code uses


def test_multi_block_latent_is_a_dict_and_block_picks_one(fcr, adata):
    latent = fcr.get_latent_representation()
    assert list(latent) == ["X_fcr_x", "X_fcr_tx", "X_fcr_t"]
    assert [z.shape[1] for z in latent.values()] == [2, 3, 2]
    np.testing.assert_array_equal(fcr.get_latent_representation(block="tx"), latent["X_fcr_tx"])
    out = adata.copy()
    out.obsm.update(latent)
    np.testing.assert_array_equal(out.obsm["X_fcr_t"], latent["X_fcr_t"])


def test_latent_block_errors_name_the_blocks(fcr):
    with pytest.raises(ConfigError, match=r"block='zt' is not a block of model 'fcr' \(blocks: 't', 'tx', 'x'\)"):
        fcr.get_latent_representation(block="zt")
    with pytest.raises(ConfigError, match="not both"):
        fcr.get_latent_representation(block="x", as_dict=True)


def observed_totals(adata) -> np.ndarray:
    return np.asarray(adata.X.sum(1)).ravel()


@pytest.mark.parametrize("likelihood", ["nb", "zinb", "poisson"])
def test_normalized_expression_rows_sum_to_the_library_size(adata, likelihood):
    model = fcrkit.models.BetaVAE(adata, n_latent=3, n_hidden=16, likelihood=likelihood, seed=0)
    frequencies = model.get_normalized_expression()
    assert isinstance(frequencies, pd.DataFrame)
    assert list(frequencies.index) == list(adata.obs_names) and list(frequencies.columns) == list(adata.var_names)
    np.testing.assert_allclose(frequencies.sum(1), 1.0, rtol=1e-5)
    scaled = model.get_normalized_expression(library_size=1e4, return_numpy=True)
    np.testing.assert_allclose(scaled.sum(1), 1e4, rtol=1e-5)
    np.testing.assert_allclose(scaled, 1e4 * frequencies.to_numpy(), rtol=1e-5)
    if likelihood != "zinb":  # ZINB's expected counts are gated: fewer than the library
        own = model.get_normalized_expression(library_size="latent", return_numpy=True)
        np.testing.assert_allclose(own.sum(1), observed_totals(adata), rtol=1e-4)


def test_normalized_expression_picks_cells_and_genes(scvi, adata):
    full = scvi.get_normalized_expression()
    rows = [5, 0, 17]
    genes = [str(adata.var_names[4]), str(adata.var_names[1])]
    part = scvi.get_normalized_expression(indices=rows, gene_list=genes)
    pd.testing.assert_frame_equal(part, full.iloc[rows][genes], rtol=1e-5)
    other = scvi.get_normalized_expression(adata[10:20].copy(), return_numpy=True)
    np.testing.assert_allclose(other, full.to_numpy()[10:20], rtol=1e-5, atol=1e-8)


def test_normalized_expression_averages_seeded_posterior_draws(scvi):
    mean = scvi.get_normalized_expression(return_numpy=True)
    drawn = scvi.get_normalized_expression(n_samples=3, seed=1, return_numpy=True)
    np.testing.assert_array_equal(drawn, scvi.get_normalized_expression(n_samples=3, seed=1, return_numpy=True))
    assert not np.allclose(drawn, mean)
    np.testing.assert_allclose(drawn.sum(1), 1.0, rtol=1e-5)


def test_normalized_expression_errors_name_the_argument(scvi, adata):
    with pytest.raises(ConfigError, match="library_size=0 must be a positive number"):
        scvi.get_normalized_expression(library_size=0)
    with pytest.raises(ConfigError, match="n_samples=0"):
        scvi.get_normalized_expression(n_samples=0)
    with pytest.raises(ConfigError, match="position 200 is out of range for 200 cells"):
        scvi.get_normalized_expression(indices=[0, 200])
    with pytest.raises(DataError, match="'gene_x' is not among the model's 25 genes"):
        scvi.get_normalized_expression(gene_list=["gene_x"])


def test_gaussian_model_returns_values_on_the_data_scale(adata):
    lognorm = adata.copy()
    lognorm.X = np.log1p(np.asarray(adata.X.toarray() if hasattr(adata.X, "toarray") else adata.X))
    fcrkit.setup_anndata(lognorm, treatment_key="treatment", covariate_keys=["covariate"])
    model = fcrkit.models.BetaVAE(lognorm, n_latent=2, n_hidden=16, likelihood="gaussian", seed=0)
    values = model.get_normalized_expression(return_numpy=True)
    assert values.shape == lognorm.shape
    with pytest.raises(ConfigError, match="models real values .* no library size"):
        model.get_normalized_expression(library_size=1e4)
