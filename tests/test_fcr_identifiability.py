"""FCR recovers the interaction block of the default simulator, and keeps its blocks apart.

Over 3 seeds (medians), every method is scored with one square Hungarian match of all 6 true
dimensions against 6 learned ones (``fcrkit.metrics.block_mcc``): FCR's z_tx MCC must reach 0.75 and
beat a β-VAE from the same parts and PCA; and each true block must be predicted (held-out
kernel-ridge R²) better by its own learned block than by any other.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import fcrkit
from fcrkit.data.anndata import get_matrix
from fcrkit.metrics import block_mcc, block_r2, pca_embedding

BLOCKS = ("x", "t", "tx")
SEEDS = (0, 1, 2)
EPOCHS = 60


def run_seed(seed: int) -> tuple[dict[str, dict[str, float]], pd.DataFrame]:
    adata = fcrkit.simulate.interaction(n_cells=3000, n_genes=200, seed=seed)
    fcrkit.setup_anndata(adata, treatment_key="treatment", covariate_keys=["covariate"])
    true = {b: adata.obsm[f"z_{b}"] for b in BLOCKS}
    settings = {"max_epochs": EPOCHS, "batch_size": 256, "lr": 3e-3, "seed": seed, "accelerator": "cpu",
                "progress_bar": False}
    fcr = fcrkit.models.FCR(adata, n_latent={b: 2 for b in BLOCKS}, seed=seed)
    fcr.train(**settings)
    fcr_latent = fcr.get_latent_representation()
    fcr_blocks = {b: fcr_latent[f"X_fcr_{b}"] for b in BLOCKS}
    beta = fcrkit.models.BetaVAE(adata, n_latent=6, seed=seed)
    beta.train(**settings)
    scores = {
        "FCR": block_mcc(true, np.hstack([fcr_blocks[b] for b in BLOCKS])),
        "β-VAE": block_mcc(true, beta.get_latent_representation()),
        "PCA": block_mcc(true, pca_embedding(get_matrix(adata, None), 6, seed=seed)),
    }
    return scores, block_r2(true, fcr_blocks, regressor="kernel", seed=seed)


@pytest.fixture(scope="module")
def runs() -> list[tuple[dict[str, dict[str, float]], pd.DataFrame]]:
    return [run_seed(seed) for seed in SEEDS]


def test_fcr_recovers_z_tx_better_than_beta_vae_and_pca(runs):
    per_seed = {method: [scores[method]["tx"] for scores, _ in runs] for method in ("FCR", "β-VAE", "PCA")}
    for method, values in per_seed.items():
        print(f"MCC z_tx {method}: " + ", ".join(f"seed {s}: {v:.3f}" for s, v in zip(SEEDS, values))
              + f"; median {np.median(values):.3f}")
    median = {method: float(np.median(values)) for method, values in per_seed.items()}
    assert median["FCR"] >= 0.75
    assert median["FCR"] > median["β-VAE"]
    assert median["FCR"] > median["PCA"]


def test_fcr_blocks_keep_their_content_apart(runs):
    matrices = [matrix.loc[list(BLOCKS), list(BLOCKS)].to_numpy() for _, matrix in runs]
    median = pd.DataFrame(np.median(matrices, axis=0), index=list(BLOCKS), columns=list(BLOCKS))
    print("median held-out kernel-ridge R² (rows: true blocks, columns: FCR blocks)\n" + median.round(2).to_string())
    for block in BLOCKS:
        assert median.loc[block, block] > median.loc[block].drop(block).max(), f"true z_{block} leaks"
