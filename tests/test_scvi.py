"""The scVI recipe learns a latent at least as informative as PCA."""

from __future__ import annotations

import numpy as np

import fcrkit
from fcrkit.data.anndata import get_matrix
from fcrkit.metrics import knn_accuracy, linear_r2, log_normalize, pca_embedding
from tests.conftest import shared_dataset


def most_variable_genes(counts, n: int) -> np.ndarray:
    """Indices of the ``n`` genes with the largest variance of log-normalised expression."""
    x = log_normalize(counts)
    mean = np.asarray(x.mean(axis=0)).ravel()
    var = np.asarray(x.multiply(x).mean(axis=0)).ravel() - mean**2
    return np.sort(np.argsort(-var)[:n])


def test_scvi_on_simulated_counts_recovers_the_latent():
    adata = fcrkit.simulate.basic(n_cells=1500, n_genes=100, n_latent=4, seed=1)
    fcrkit.setup_anndata(adata, treatment_key="treatment", covariate_keys=["cell_type"])
    model = fcrkit.models.SCVI(adata, n_latent=4, n_hidden=64, seed=0)
    model.train(max_epochs=40, batch_size=128, seed=0, accelerator="cpu", lr=3e-3)
    z = model.get_latent_representation()
    pca = pca_embedding(get_matrix(adata, None), 4)
    labels = adata.obs["cell_type"].to_numpy()
    acc, acc_pca = knn_accuracy(z, labels), knn_accuracy(pca, labels)
    r2, r2_pca = linear_r2(adata.obsm["z_true"], z), linear_r2(adata.obsm["z_true"], pca)
    print(f"simulated: 15-NN accuracy scVI {acc:.3f} vs PCA {acc_pca:.3f}; linear R2 {r2:.3f} vs {r2_pca:.3f}")
    assert acc >= acc_pca - 0.03
    assert r2 >= 0.7, f"scVI latent explains only R2={r2:.3f} of the true latent"


def test_scvi_on_kang_matches_pca_for_cell_types():
    adata = shared_dataset("kang_ifnb2800.h5ad")
    adata = adata[:, most_variable_genes(adata.X, 2000)].copy()
    fcrkit.setup_anndata(adata, treatment_key="sample", control_value="CTRL", covariate_keys=["cell_type"])
    model = fcrkit.models.SCVI(adata, n_latent=10, seed=0)
    model.train(max_epochs=30, batch_size=128, seed=0, accelerator="cpu")
    labels = adata.obs["cell_type"].to_numpy()
    acc = knn_accuracy(model.get_latent_representation(), labels)
    acc_pca = knn_accuracy(pca_embedding(adata.X, 10), labels)
    print(f"Kang, 2000 genes: 15-NN accuracy of cell_type, scVI {acc:.3f} vs PCA {acc_pca:.3f}")
    assert acc >= acc_pca - 0.03
