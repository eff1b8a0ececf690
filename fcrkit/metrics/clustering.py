"""How well clusters of a representation (or of each latent block) agree with known labels.

Clusters come from k-means (k = number of labels) or Leiden at a **fixed** resolution (never the best
of a sweep, which flatters every model); agreement is scikit-learn's
``normalized_mutual_info_score`` (arithmetic normalisation) and ``adjusted_rand_score``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

from fcrkit.errors import ConfigError, DataError
from fcrkit.metrics._validation import OptionalDependencyError, as_block_dict, as_matrix

__all__ = ["block_cluster_scores", "cluster_labels", "cluster_scores"]

_METHODS = ("kmeans", "leiden")


def _check_method(method: str, func: str) -> None:
    if method not in _METHODS:
        raise ConfigError(f"{func}: method must be 'kmeans' or 'leiden', got {method!r}.")


def _labels_array(labels: ArrayLike, n_cells: int, func: str) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 1 or len(labels) != n_cells:
        raise DataError(f"{func}: labels must be 1-D with one entry per cell ({n_cells} cells), "
                        f"got shape {labels.shape}.")
    if pd.isna(labels).any():
        raise DataError(f"{func}: labels contain {int(pd.isna(labels).sum())} missing values.")
    return labels


def cluster_labels(
    z: ArrayLike,
    n_clusters: int | None,
    *,
    method: Literal["kmeans", "leiden"] = "kmeans",
    resolution: float = 1.0,
    seed: int = 0,
    n_neighbors: int = 15,
) -> np.ndarray:
    """Cluster the cells of ``z`` (cells x dims); returns one integer label per cell.

    * ``"kmeans"``: ``sklearn.cluster.KMeans(n_clusters, n_init=10, random_state=seed)`` on ``z``
      as given (no scaling).
    * ``"leiden"``: scanpy (optional, ``pip install scanpy``): ``sc.pp.neighbors(use_rep=z,
      n_neighbors=n_neighbors, random_state=seed)`` then ``sc.tl.leiden(resolution=resolution,
      random_state=seed)`` at this one fixed resolution; ``n_clusters`` is ignored (the number of
      clusters is whatever the resolution gives).
    """
    func = "cluster_labels"
    _check_method(method, func)
    z = as_matrix(z, "z", func, min_rows=2)
    if method == "kmeans":
        if n_clusters is None or int(n_clusters) < 1 or int(n_clusters) > z.shape[0]:
            raise ConfigError(f"{func}: k-means needs 1 <= n_clusters <= {z.shape[0]} (cells), got {n_clusters!r}.")
        return KMeans(n_clusters=int(n_clusters), n_init=10, random_state=seed).fit_predict(z)
    try:
        import anndata as ad
        import scanpy as sc
    except ImportError:
        raise OptionalDependencyError(
            f"{func}: method='leiden' needs scanpy (and its leiden backend), which is not installed: "
            "pip install scanpy  (or use method='kmeans')."
        ) from None
    adata = ad.AnnData(obs=pd.DataFrame(index=[str(i) for i in range(z.shape[0])]))
    adata.obsm["X_rep"] = z
    sc.pp.neighbors(adata, use_rep="X_rep", n_neighbors=int(n_neighbors), random_state=seed)
    sc.tl.leiden(adata, resolution=float(resolution), random_state=seed, key_added="leiden")
    return adata.obs["leiden"].astype(int).to_numpy()


def cluster_scores(
    z: ArrayLike,
    labels: ArrayLike,
    *,
    method: Literal["kmeans", "leiden"] = "kmeans",
    n_clusters: int | None = None,
    resolution: float = 1.0,
    seed: int = 0,
) -> dict[str, float]:
    """``{"nmi": ..., "ari": ...}`` of clusters of ``z`` against ``labels``.

    Clusters: :func:`cluster_labels` with ``n_clusters`` (default: the number of distinct labels)
    for k-means, or ``resolution`` for Leiden. Scores: ``normalized_mutual_info_score(labels,
    clusters)`` and ``adjusted_rand_score(labels, clusters)`` (both symmetric; 1 = same partition;
    ARI is ~0 and can be negative for chance agreement).
    """
    func = "cluster_scores"
    _check_method(method, func)
    z = as_matrix(z, "z", func, min_rows=2)
    labels = _labels_array(labels, z.shape[0], func)
    if n_clusters is None:
        n_clusters = len(pd.unique(labels))
    clusters = cluster_labels(z, n_clusters, method=method, resolution=resolution, seed=seed)
    return _scores(labels, clusters)


def _scores(labels: np.ndarray, clusters: np.ndarray) -> dict[str, float]:
    return {"nmi": float(normalized_mutual_info_score(labels, clusters)),
            "ari": float(adjusted_rand_score(labels, clusters))}


def block_cluster_scores(
    blocks: Mapping[str, ArrayLike],
    label_sets: Mapping[str, ArrayLike],
    *,
    method: Literal["kmeans", "leiden"] = "kmeans",
    resolution: float = 1.0,
    seed: int = 0,
) -> pd.DataFrame:
    """NMI and ARI of clusters of every latent block against every label set.

    For each block (e.g. ``{"z_x": ..., "z_t": ..., "z_tx": ...}``) and label set (e.g.
    ``{"x": covariate, "t": treatment, "xt": covariate + "_" + treatment}``), the scores of
    :func:`cluster_scores`. With k-means, k is the number of distinct labels of that label set (one
    clustering per block and distinct k); with Leiden one clustering per block at the fixed
    ``resolution`` is scored against every label set.

    Returns:
        DataFrame, one row per block (index named ``"block"``), columns ``nmi_<label>`` and
        ``ari_<label>`` for each label set, in the mappings' order.
    """
    func = "block_cluster_scores"
    _check_method(method, func)
    arrays = as_block_dict(blocks, "blocks", func)
    n_cells = next(iter(arrays.values())).shape[0]
    if not isinstance(label_sets, Mapping) or not label_sets:
        raise DataError(f"{func}: label_sets must be a non-empty mapping of name -> labels, got {label_sets!r:.80}.")
    labels = {str(k): _labels_array(v, n_cells, f"{func} (label set {k!r})") for k, v in label_sets.items()}

    rows = {}
    for block, z in arrays.items():
        cache: dict[int | None, np.ndarray] = {}
        row = {}
        for name, lab in labels.items():
            k = len(pd.unique(lab)) if method == "kmeans" else None
            if k not in cache:
                cache[k] = cluster_labels(z, k, method=method, resolution=resolution, seed=seed)
            scores = _scores(lab, cache[k])
            row[f"nmi_{name}"], row[f"ari_{name}"] = scores["nmi"], scores["ari"]
        rows[block] = row
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.index.name = "block"
    return table
