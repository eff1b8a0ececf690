"""Posterior predictive checks: the per-gene statistics by hand, a perfect model, and NB against Poisson."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest

import fcrkit
import fcrkit.plotting
from fcrkit.errors import DataError
from fcrkit.metrics import gene_statistics, posterior_predictive_check, ppc_compare


def test_gene_statistics_by_hand():
    stats = gene_statistics(np.array([[0, 2, 0], [2, 2, 0]]))
    np.testing.assert_allclose(stats["mean"], [1, 2, 0])
    np.testing.assert_allclose(stats["variance"], [2, 0, 0])        # ddof=1
    np.testing.assert_allclose(stats["cv"], [np.sqrt(2), 0, 0])      # sd / mean; 0 for a silent gene
    np.testing.assert_allclose(stats["zero_fraction"], [0.5, 0, 1])
    with pytest.raises(DataError, match="at least 2 cells"):
        gene_statistics(np.ones((1, 3)))


def test_draws_equal_to_the_data_pass_perfectly_and_shuffled_genes_fail():
    rng = np.random.default_rng(0)
    data = rng.negative_binomial(2, 0.5 / (0.5 + rng.gamma(1, 3, 40)), size=(300, 40))
    perfect = ppc_compare(data, [data, data])
    assert perfect.score == 0 and np.allclose(perfect.table["spearman"], 1)
    shuffled = ppc_compare(data, [data[:, rng.permutation(40)]])
    assert shuffled.score > 0.2 and shuffled.table["spearman"].mean() < 0.5


def overdispersed(n_cells: int = 400, n_genes: int = 30) -> ad.AnnData:
    """Negative binomial counts, dispersion 0.5, one mean per gene and nothing else."""
    rng = np.random.default_rng(0)
    mu = rng.gamma(2, 3, n_genes)
    x = rng.negative_binomial(0.5, 0.5 / (0.5 + mu), size=(n_cells, n_genes))
    adata = ad.AnnData(x.astype(np.float32), obs=pd.DataFrame(index=[f"c{i}" for i in range(n_cells)]))
    fcrkit.setup_anndata(adata)
    return adata


def test_a_negative_binomial_model_matches_overdispersed_counts_better_than_a_poisson_model(tmp_path):
    """The Poisson model's draws have too little variance and too few zeros; its score says so."""
    adata, results = overdispersed(), {}
    for likelihood in ("nb", "poisson"):
        model = fcrkit.models.SCVI(adata, n_latent=2, likelihood=likelihood, seed=0)
        model.train(max_epochs=15, batch_size=128, accelerator="cpu", seed=0)
        results[likelihood] = posterior_predictive_check(model, n_samples=2, seed=0)
    nb, poisson = results["nb"].table, results["poisson"].table
    assert nb.loc["variance", "mae"] < 0.5 * poisson.loc["variance", "mae"]
    assert nb.loc["cv", "mae"] < 0.5 * poisson.loc["cv", "mae"]
    assert nb.loc["zero_fraction", "mae"] < 0.6 * poisson.loc["zero_fraction", "mae"]
    assert results["nb"].score < 0.6 * results["poisson"].score
    # the draws are seeded
    again = posterior_predictive_check(model, n_samples=2, seed=0)
    np.testing.assert_array_equal(again.genes.to_numpy(), results["poisson"].genes.to_numpy())
    path = fcrkit.plotting.plot_ppc({"NB": results["nb"], "Poisson": results["poisson"]}, tmp_path / "ppc.png")
    assert path.stat().st_size > 10_000
