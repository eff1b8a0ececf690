"""Highly variable genes: the step before training on thousands of genes.

:func:`highly_variable_genes` is Seurat v3's selection (``flavor="seurat_v3"`` in scanpy), the
convention on raw counts: fit the log variance of every gene against its log mean with a local
quadratic regression (loess, ``span`` of the genes), standardise each gene's counts by the fitted
standard deviation, clip them at ``sqrt(n_cells)``, and rank the genes by the variance of the
standardised, clipped counts. With scanpy (and scikit-misc, its loess) installed, scanpy computes it;
otherwise fcrkit's own implementation, which differs in one respect: the loess is evaluated exactly at
up to :data:`LOESS_POINTS` genes spread over the range of means and linearly interpolated between
them (scikit-misc interpolates between the vertices of a k-d tree instead). See
``docs/recipes/index.md`` ("Genes").
"""

from __future__ import annotations

import importlib.util
import warnings
from typing import Literal

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from fcrkit.data.anndata import Matrix, check_unique_genes, get_matrix
from fcrkit.errors import ConfigError, DataError

__all__ = ["LOESS_POINTS", "highly_variable_genes", "seurat_v3_variances"]

#: Most genes at which fcrkit's loess is evaluated exactly; the fit is interpolated between them.
LOESS_POINTS = 1000
_COLUMNS = ["highly_variable", "highly_variable_rank", "means", "variances", "variances_norm"]


def highly_variable_genes(
    adata: AnnData,
    n_top_genes: int = 2000,
    *,
    layer: str | None = None,
    span: float = 0.3,
    subset: bool = False,
    inplace: bool = True,
    implementation: Literal["auto", "scanpy", "fcrkit"] = "auto",
) -> pd.DataFrame | None:
    """Mark the ``n_top_genes`` most variable genes of raw counts (Seurat v3, scanpy's ``"seurat_v3"``).

    Run it on the cells the model will be trained on (held-out cells should not choose the genes),
    before :func:`~fcrkit.setup_anndata`::

        fcrkit.data.highly_variable_genes(adata, n_top_genes=2000)
        adata = adata[:, adata.var["highly_variable"]].copy()

    Args:
        adata: cells x genes with raw counts in ``X`` or in ``layer``.
        n_top_genes: how many genes to mark (all genes if there are fewer).
        layer: layer holding the counts (None: ``X``).
        span: fraction of the genes in each local regression of the loess (scanpy's default 0.3).
        subset: keep only the selected genes in ``adata`` (in place).
        inplace: write the columns below to ``adata.var`` and ``{"flavor": "seurat_v3",
            "implementation": ...}`` to ``adata.uns["hvg"]``; False returns them as a DataFrame instead.
        implementation: ``"scanpy"`` (needs scanpy and scikit-misc), ``"fcrkit"`` (this module's), or
            ``"auto"``: scanpy's when both are installed, else fcrkit's.

    Returns:
        None with ``inplace``; else a DataFrame indexed by gene: ``highly_variable`` (bool),
        ``highly_variable_rank`` (0 = most variable; NaN beyond ``n_top_genes``), ``means``,
        ``variances`` and ``variances_norm`` (the variance of the standardised, clipped counts).

    Raises:
        ConfigError: a bad argument, or ``implementation="scanpy"`` without scanpy or scikit-misc.
        DataError: duplicated gene names, negative or non-finite values. Non-integer values (not raw
            counts) only warn, as in scanpy.
    """
    if not isinstance(adata, AnnData):
        raise ConfigError(f"highly_variable_genes expects an AnnData, got a {type(adata).__name__}.")
    if isinstance(n_top_genes, bool) or not isinstance(n_top_genes, (int, np.integer)) or n_top_genes < 1:
        raise ConfigError(f"n_top_genes={n_top_genes!r} must be a positive integer (e.g. 2000).")
    if isinstance(span, bool) or not isinstance(span, (int, float)) or not 0 < span <= 1:
        raise ConfigError(f"span={span!r} must be a number in (0, 1] (the fraction of genes in each local fit).")
    if implementation not in ("auto", "scanpy", "fcrkit"):
        raise ConfigError(f"implementation={implementation!r} is not 'auto', 'scanpy' or 'fcrkit'.")
    check_unique_genes(adata)
    n_top = int(min(n_top_genes, adata.n_vars))
    if implementation == "auto":
        implementation = "scanpy" if _scanpy_available() else "fcrkit"
    if implementation == "scanpy":
        frame = _scanpy_seurat_v3(adata, n_top, layer, span)
    else:
        means, variances, norm = seurat_v3_variances(get_matrix(adata, layer), span=span)
        frame = _ranked(pd.Index(adata.var_names), means, variances, norm, n_top)
    if not inplace:
        return frame[frame["highly_variable"]] if subset else frame
    for column in _COLUMNS:
        adata.var[column] = frame[column].to_numpy()
    adata.uns["hvg"] = {"flavor": "seurat_v3", "implementation": implementation}
    if subset:
        adata._inplace_subset_var(frame["highly_variable"].to_numpy())  # what scanpy's subset=True does
    return None


def seurat_v3_variances(counts: Matrix, *, span: float = 0.3) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per gene: mean, variance (n - 1 in the denominator) and Seurat v3's standardised variance.

    The standardised variance is the variance of ``min(y, mean + sqrt(n) * sd) / sd`` with ``sd`` the
    loess fit of ``log10 variance`` against ``log10 mean`` (constant genes get ``sd = 1``, hence 0).

    Raises:
        DataError: negative or non-finite values.
    """
    matrix = counts.tocsr() if sp.issparse(counts) else np.asarray(counts)
    values = matrix.data if sp.issparse(matrix) else matrix
    if values.size and (not np.all(np.isfinite(values)) or values.min() < 0):
        raise DataError("highly_variable_genes: the matrix has negative or non-finite values; it needs raw counts "
                        "(point layer= at them).")
    if values.size and np.any(values != np.floor(values)):
        warnings.warn("highly_variable_genes (seurat_v3) expects raw counts, but non-integers were found.",
                      UserWarning, stacklevel=3)
    n = matrix.shape[0]
    if n < 2:
        raise DataError(f"highly_variable_genes needs at least 2 cells to estimate variances, got {n}.")
    total, square = _column_sums(matrix)
    means = total / n
    variances = np.maximum(square - n * means**2, 0) / (n - 1)
    varying = variances > 0
    log_sd = np.zeros(means.size)
    if varying.any():
        log_sd[varying] = 0.5 * loess(np.log10(means[varying]), np.log10(variances[varying]), span=span)
    sd = 10.0**log_sd
    clipped_total, clipped_square = _column_sums(matrix, clip=means + np.sqrt(n) * sd)
    norm = (n * means**2 + clipped_square - 2 * clipped_total * means) / ((n - 1) * sd**2)
    return means, variances, norm


def loess(x: np.ndarray, y: np.ndarray, *, span: float = 0.3, points: int = LOESS_POINTS) -> np.ndarray:
    """Fitted values of a local quadratic regression of ``y`` on ``x`` (loess, degree 2, tricube weights).

    Each local fit uses the ``floor(span * n)`` nearest points by ``|x - x0|`` with weights
    ``(1 - (d / d_max)**3)**3``; it is evaluated at up to ``points`` values of ``x`` (evenly spaced in
    rank, the ends included) and linearly interpolated between them.
    """
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    n = x.size
    q = min(n, max(int(np.floor(span * n)), 3))
    order = np.argsort(x, kind="stable")
    xs, ys = x[order], y[order]
    anchors = np.unique(xs[np.unique(np.linspace(0, n - 1, min(points, n)).round().astype(int))])
    # the q nearest points of x0 are the window xs[lo : lo + q] whose two ends are about as far from x0:
    # the first lo with xs[lo] + xs[lo + q - 1] >= 2 x0, or the one before it
    ends = xs[: n - q + 1] + xs[q - 1 :]
    lo = np.clip(np.searchsorted(ends, 2 * anchors), 0, n - q)
    before = np.maximum(lo - 1, 0)

    def reach(start: np.ndarray) -> np.ndarray:
        return np.maximum(anchors - xs[start], xs[start + q - 1] - anchors)

    lo = np.where(reach(before) < reach(lo), before, lo)
    fitted = np.empty(anchors.size)
    step = max(1, (1 << 21) // q)  # anchors per block: blocks of about 2M values
    for start in range(0, anchors.size, step):
        x0, first = anchors[start : start + step, None], lo[start : start + step, None]
        window = first + np.arange(q)
        offset = xs[window] - x0
        radius = reach(lo[start : start + step])[:, None]
        radius = np.where(radius > 0, radius, 1.0)  # q identical x: every one weighs 1
        weight = np.clip(1 - (np.abs(offset) / radius) ** 3, 0, None) ** 3
        powers = [weight]
        for _ in range(4):
            powers.append(powers[-1] * offset)
        moments = np.stack([p.sum(1) for p in powers], axis=1)
        gram = moments[:, [[0, 1, 2], [1, 2, 3], [2, 3, 4]]]
        targets = ys[window]
        rhs = np.stack([(p * targets).sum(1) for p in powers[:3]], axis=1)
        # the intercept of the local fit is its value at x0; pinv copes with too few distinct x
        fitted[start : start + step] = (np.linalg.pinv(gram) @ rhs[:, :, None])[:, 0, 0]
    return np.interp(x, anchors, fitted)


def _column_sums(matrix: Matrix, clip: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Sum and sum of squares of every column, each value first capped at its column's ``clip``."""
    if sp.issparse(matrix):
        data = matrix.data.astype(np.float64)
        if clip is not None:  # zeros are never above a non-negative cap
            data = np.minimum(data, clip[matrix.indices])
        n_genes = matrix.shape[1]
        return (np.bincount(matrix.indices, weights=data, minlength=n_genes),
                np.bincount(matrix.indices, weights=data**2, minlength=n_genes))
    total, square = np.zeros(matrix.shape[1]), np.zeros(matrix.shape[1])
    step = max(1, (1 << 22) // max(1, matrix.shape[1]))
    for start in range(0, matrix.shape[0], step):  # in row blocks: no full-size float64 copy
        block = matrix[start : start + step].astype(np.float64)
        if clip is not None:
            block = np.minimum(block, clip)
        total += block.sum(0)
        square += (block**2).sum(0)
    return total, square


def _ranked(genes: pd.Index, means: np.ndarray, variances: np.ndarray, norm: np.ndarray, n_top: int) -> pd.DataFrame:
    """The result table: genes ranked by standardised variance (ties keep the gene order, as scanpy's sort)."""
    order = np.argsort(-norm, kind="stable")
    rank = np.empty(norm.size)
    rank[order] = np.arange(norm.size)
    return pd.DataFrame({"highly_variable": rank < n_top, "highly_variable_rank": np.where(rank < n_top, rank, np.nan),
                         "means": means, "variances": variances, "variances_norm": norm}, index=genes)


def _scanpy_available() -> bool:
    return all(importlib.util.find_spec(name) is not None for name in ("scanpy", "skmisc"))


def _scanpy_seurat_v3(adata: AnnData, n_top: int, layer: str | None, span: float) -> pd.DataFrame:
    """scanpy's ``highly_variable_genes(flavor="seurat_v3")`` as the table of :func:`highly_variable_genes`."""
    if not _scanpy_available():
        raise ConfigError("implementation='scanpy' needs scanpy and scikit-misc (pip install scanpy scikit-misc); "
                          "implementation='fcrkit' or 'auto' works without them.")
    import scanpy

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        frame = scanpy.pp.highly_variable_genes(adata, n_top_genes=n_top, flavor="seurat_v3", layer=layer, span=span,
                                                inplace=False)
    frame.index = adata.var_names
    return frame[_COLUMNS]
