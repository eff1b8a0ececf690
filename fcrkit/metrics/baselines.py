"""Reference representations to compare learned latents against."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from sklearn.decomposition import PCA


def log_normalize(counts: np.ndarray | sp.spmatrix, target_sum: float = 1e4) -> np.ndarray | sp.csr_matrix:
    """``log1p(counts / total * target_sum)`` per cell (scanpy's normalize_total + log1p)."""
    if sp.issparse(counts):
        counts = sp.csr_matrix(counts, dtype=np.float64)
        totals = np.asarray(counts.sum(axis=1)).ravel()
        scaled = sp.diags(target_sum / np.maximum(totals, 1)) @ counts
        scaled.data = np.log1p(scaled.data)
        return scaled.tocsr()
    counts = np.asarray(counts, dtype=np.float64)
    totals = np.maximum(counts.sum(axis=1, keepdims=True), 1)
    return np.log1p(counts / totals * target_sum)


def pca_embedding(counts: np.ndarray | sp.spmatrix, n_components: int, *, seed: int = 0) -> np.ndarray:
    """PCA of log-normalised counts."""
    x = log_normalize(counts)
    if sp.issparse(x):
        x = x.toarray()
    return PCA(n_components=n_components, random_state=seed).fit_transform(x)
