"""Perturbation-response metrics on plain arrays, with the conventions of PerturBench, Systema and pertpy.

Mean vectors (``true``, ``pred``, ``reference``, ``control``) are one value per gene: ``log1p`` of the
mean library-normalised expression of a set of cells (:func:`fcrkit.metrics.mean_log_expression`). Sets
of cells (``a``, ``b``) are cells x features arrays, e.g. principal components of log-normalised
expression fitted on the training cells. ``genes`` selects gene indices (e.g. the top-20 DEGs); None
means all genes. Which library computes each number is said per function and in ``docs/metrics.md``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import ArrayLike
from scipy.spatial.distance import cdist
from scipy.stats import pearsonr
from sklearn.metrics import mean_squared_error
from sklearn.metrics.pairwise import rbf_kernel

from fcrkit.errors import ConfigError, DataError

__all__ = ["cosine_logfc", "deg_direction", "deg_overlap", "energy_distance", "mmd", "normalized_rank",
           "pearson_delta", "rmse"]


def _vectors(func: str, genes: ArrayLike | None, **named: Any) -> list[np.ndarray]:
    """The named 1-D finite vectors of one length, restricted to ``genes``."""
    out, length = [], None
    for name, value in named.items():
        v = np.asarray(value, dtype=np.float64)
        if v.ndim != 1:
            raise DataError(f"{func}: {name} must be a 1-D vector (one value per gene), got shape {v.shape}.")
        if not np.all(np.isfinite(v)):
            raise DataError(f"{func}: {name} contains NaN or infinite values.")
        if length is not None and len(v) != length:
            shapes = ", ".join(f"{n} {np.shape(x)}" for n, x in named.items())
            raise DataError(f"{func}: the vectors must have one value per gene, in the same order; got {shapes}.")
        length = len(v)
        out.append(v)
    if genes is None:
        return out
    index = np.asarray(genes).ravel()
    if index.dtype == bool:
        if len(index) != length:
            raise DataError(f"{func}: a boolean genes mask must have {length} entries, got {len(index)}.")
        index = np.flatnonzero(index)
    if not np.issubdtype(index.dtype, np.integer) or index.size == 0 or index.min() < -length or index.max() >= length:
        raise DataError(f"{func}: genes must be a non-empty array of gene indices in [0, {length}) or a boolean "
                        f"mask; got {np.asarray(genes)!r:.80}.")
    return [v[index] for v in out]


def _constant(change: np.ndarray, reference: np.ndarray) -> bool:
    """A change vector constant up to float32 rounding (range below 1e-6 of the reference's scale).

    Predictions stored as float32 counts carry rounding noise of about 1e-7 in log space; a no-change
    prediction must not get a correlation from it.
    """
    return bool(np.ptp(change) <= 1e-6 * max(1.0, float(np.abs(reference).max(initial=0.0))))


def pearson_delta(true: ArrayLike, pred: ArrayLike, reference: ArrayLike, genes: ArrayLike | None = None) -> float:
    """Pearson r of ``pred - reference`` and ``true - reference`` over ``genes`` (``scipy.stats.pearsonr``).

    ``reference`` is the controls of the cells' covariate (PearsonΔ; with the top-20 DEGs as ``genes``,
    PearsonΔ20) or the mean of all perturbed training cells (Systema). A constant change vector (e.g. a
    no-change prediction against the controls; constant up to float32 rounding, a range below 1e-6 of the
    reference's largest value) has no correlation: NaN, not 0.
    """
    t, p, r = _vectors("pearson_delta", genes, true=true, pred=pred, reference=reference)
    dt, dp = t - r, p - r
    if len(dt) < 2 or _constant(dt, r) or _constant(dp, r):
        return float("nan")
    return float(pearsonr(dp, dt)[0])


def cosine_logfc(true: ArrayLike, pred: ArrayLike, control: ArrayLike, genes: ArrayLike | None = None) -> float:
    """Cosine similarity of ``pred - control`` and ``true - control`` (PerturBench's cosine logFC).

    The difference of two ``log1p`` mean vectors is the log fold-change. Computed with numpy
    (``a·b / (|a| |b|)``); NaN when either change is zero up to float32 rounding (all its entries within
    1e-6 of the control's largest value).
    """
    t, p, c = _vectors("cosine_logfc", genes, true=true, pred=pred, control=control)
    dt, dp = t - c, p - c
    tiny = 1e-6 * max(1.0, float(np.abs(c).max(initial=0.0)))
    if np.abs(dt).max(initial=0.0) <= tiny or np.abs(dp).max(initial=0.0) <= tiny:
        return float("nan")
    return float(dt @ dp / (np.linalg.norm(dt) * np.linalg.norm(dp)))


def rmse(true: ArrayLike, pred: ArrayLike, genes: ArrayLike | None = None) -> float:
    """``sqrt(mean((pred - true)^2))`` over ``genes`` (``sklearn.metrics.mean_squared_error``, then the root)."""
    t, p = _vectors("rmse", genes, true=true, pred=pred)
    return float(np.sqrt(mean_squared_error(t, p)))


def _matrix(func: str, name: str, value: Any, min_rows: int = 1) -> np.ndarray:
    m = np.asarray(value, dtype=np.float64)
    if m.ndim != 2 or m.shape[0] < min_rows:
        raise DataError(f"{func}: {name} must be a 2-D array with at least {min_rows} row(s), got shape {m.shape}.")
    if not np.all(np.isfinite(m)):
        raise DataError(f"{func}: {name} contains NaN or infinite values.")
    return m


def normalized_rank(true_means: ArrayLike, pred_means: ArrayLike) -> np.ndarray:
    """Per held-out condition, the fraction of the other conditions whose true mean is closer to its prediction.

    Rows of ``true_means`` and ``pred_means`` (conditions x genes) are the same conditions in the same order.
    For condition i: ``#{j != i : ||pred_i - true_j|| < ||pred_i - true_i||} / (n - 1)``, Euclidean over
    genes (``scipy.spatial.distance.cdist``). 0 is best, about 0.5 is chance (PerturBench's rank metric).
    """
    func = "normalized_rank"
    true = _matrix(func, "true_means", true_means, 2)
    pred = _matrix(func, "pred_means", pred_means, 2)
    if true.shape != pred.shape:
        raise DataError(f"{func}: true_means {true.shape} and pred_means {pred.shape} must have the same shape "
                        "(the same conditions, in the same order, over the same genes).")
    dist = cdist(pred, true)
    own = np.diag(dist)
    closer = (dist < own[:, None]).sum(axis=1)  # own distance is never < itself
    return closer / (len(true) - 1)


def _cells(func: str, a: ArrayLike, b: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    a, b = _matrix(func, "a", a), _matrix(func, "b", b)
    if a.shape[1] != b.shape[1]:
        raise DataError(f"{func}: a {a.shape} and b {b.shape} must have the same features (columns).")
    return a, b


def energy_distance(a: ArrayLike, b: ArrayLike) -> float:
    """pertpy's E-distance between two sets of cells (rows), squared Euclidean distances.

    ``E = 2 mean_ij ||a_i - b_j||² - mean_ij ||a_i - a_j||² - mean_ij ||b_i - b_j||²``, every mean over all
    pairs including ``i = j`` (``scipy.spatial.distance.cdist(..., "sqeuclidean")``). 0 for identical sets.
    """
    a, b = _cells("energy_distance", a, b)
    d = {k: cdist(x, y, "sqeuclidean").mean() for k, (x, y) in {"ab": (a, b), "aa": (a, a), "bb": (b, b)}.items()}
    return float(2 * d["ab"] - d["aa"] - d["bb"])


def mmd(a: ArrayLike, b: ArrayLike) -> float:
    """Biased MMD² with a Gaussian kernel, bandwidth by the median heuristic on the pooled cells.

    ``k(x, y) = exp(-||x - y||² / (2σ²))`` with ``σ² = ½ median_{i<j} ||z_i - z_j||²`` over the pooled cells
    ``z`` (fcrkit's HSIC convention; 1 when every distance is 0); ``MMD² = mean k(a, a) + mean k(b, b)
    - 2 mean k(a, b)``, every mean over all pairs including ``i = j`` (the biased V-statistic). Kernels
    from ``sklearn.metrics.pairwise.rbf_kernel``.
    """
    a, b = _cells("mmd", a, b)
    pooled = np.vstack([a, b])
    d2 = cdist(pooled, pooled, "sqeuclidean")[np.triu_indices(len(pooled), k=1)]
    positive = d2[d2 > 0]
    sigma2 = 0.5 * np.median(positive) if positive.size else 1.0
    gamma = 1.0 / (2 * sigma2)
    return float(rbf_kernel(a, a, gamma=gamma).mean() + rbf_kernel(b, b, gamma=gamma).mean()
                 - 2 * rbf_kernel(a, b, gamma=gamma).mean())


def deg_direction(true: ArrayLike, pred: ArrayLike, control: ArrayLike, genes: ArrayLike) -> float:
    """Fraction of ``genes`` where ``sign(pred - control)`` equals ``sign(true - control)`` (numpy ``sign``).

    ``genes`` is required: the DEGs of the held-out condition (e.g. the top 20 of
    :func:`fcrkit.metrics.rank_genes`). A zero change has sign 0 and matches only another zero change.
    """
    if genes is None:
        raise ConfigError("deg_direction: genes (the DEGs to check) is required.")
    t, p, c = _vectors("deg_direction", genes, true=true, pred=pred, control=control)
    return float(np.mean(np.sign(p - c) == np.sign(t - c)))


def deg_overlap(true_ranked: ArrayLike, pred_ranked: ArrayLike, k: int = 20) -> float:
    """``|top-k of true_ranked ∩ top-k of pred_ranked| / k``: overlap of the true and predicted top-k DEGs.

    Each argument is gene indices ranked best first, e.g. :func:`fcrkit.metrics.rank_genes` of the
    observed treated cells against their controls, and of the predicted cells (sampled counts) against
    the same controls. Computed with ``numpy.intersect1d``.
    """
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ConfigError(f"deg_overlap: k={k!r} must be a positive integer.")
    true, pred = np.asarray(true_ranked).ravel(), np.asarray(pred_ranked).ravel()
    for name, ranked in (("true_ranked", true), ("pred_ranked", pred)):
        if len(ranked) < k or not np.issubdtype(ranked.dtype, np.integer):
            raise DataError(f"deg_overlap: {name} must hold at least k={k} gene indices, got {ranked.size} "
                            f"of dtype {ranked.dtype}.")
    return len(np.intersect1d(true[:k], pred[:k])) / k
