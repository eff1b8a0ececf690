"""Scores of a predicted response to a perturbation, for ONE held-out condition.

Convention used by every function here (say it when reporting a number):

* expression is per-cell normalised to ``target_sum`` counts (scanpy's ``normalize_total``);
* a condition is summarised by ``log1p`` of its **mean** normalised expression (mean first, then
  log; :func:`mean_log_expression`). A model that returns expected counts has no sampling zeros, so
  the mean of ``log1p`` over its cells is biased upward against observed cells (Jensen); mean-then-log
  treats sampled counts and expected counts alike;
* R² is ``sklearn.metrics.r2_score(true, predicted)`` over genes, **not clipped** (it is negative
  when the prediction is worse than predicting every gene's mean); no minimum cell count is applied
  here (the FCR code used > 30 cells, chemCPA > 5 cells and clipped R² at 0: filter before calling);
* DEGs are ranked by |Welch t| of the treated against the control cells of the same covariate
  (:func:`rank_genes`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import scipy.sparse as sp
from numpy.typing import ArrayLike
from scipy.stats import pearsonr, ttest_ind_from_stats
from sklearn.metrics import mean_squared_error, r2_score

from fcrkit.errors import ConfigError, DataError
from fcrkit.metrics.baselines import log_normalize

__all__ = ["additive_baseline", "mean_log_expression", "prediction_scores", "rank_genes"]

Counts = np.ndarray | sp.spmatrix


def _counts(counts: Any, name: str, func: str, *, min_cells: int = 1) -> np.ndarray | sp.csr_matrix:
    """A cells x genes matrix of finite, non-negative values (dense float array or CSR)."""
    if sp.issparse(counts):
        matrix = sp.csr_matrix(counts, dtype=np.float64)
        values = matrix.data
    else:
        try:
            matrix = np.asarray(counts, dtype=np.float64)
        except (TypeError, ValueError) as err:
            raise DataError(f"{func}: {name} must be a numeric cells x genes matrix ({err}).") from None
        values = matrix
    if matrix.ndim != 2:
        raise DataError(f"{func}: {name} must be a 2-D cells x genes matrix, got shape {matrix.shape}.")
    if matrix.shape[0] < min_cells:
        raise DataError(f"{func}: {name} has {matrix.shape[0]} cells (shape {matrix.shape}); "
                        f"need at least {min_cells}.")
    if not np.all(np.isfinite(values)):
        raise DataError(f"{func}: {name} contains NaN or infinite values.")
    if values.size and values.min() < 0:
        raise DataError(f"{func}: {name} contains negative values (min {values.min():g}); need "
                        "observed or expected counts (non-negative), not log-transformed data.")
    return matrix


def _same_genes(func: str, **matrices: Any) -> None:
    genes = {np.shape(m)[-1] for m in matrices.values()}
    if len(genes) > 1:
        shapes = ", ".join(f"{name} {np.shape(m)}" for name, m in matrices.items())
        raise DataError(f"{func}: all matrices must have the same genes in the same order; got {shapes}.")


def _mean_log(matrix: np.ndarray | sp.csr_matrix, target_sum: float) -> np.ndarray:
    totals = np.asarray(matrix.sum(axis=1), dtype=np.float64).ravel()
    scale = np.divide(target_sum, totals, out=np.zeros_like(totals), where=totals > 0)
    if sp.issparse(matrix):
        mean = np.asarray((sp.diags(scale) @ matrix).mean(axis=0)).ravel()
    else:
        mean = (matrix * scale[:, None]).mean(axis=0)
    return np.log1p(mean)


def _check_target_sum(target_sum: float, func: str) -> float:
    if not np.isfinite(target_sum) or target_sum <= 0:
        raise ConfigError(f"{func}: target_sum must be a positive number, got {target_sum!r}.")
    return float(target_sum)


def mean_log_expression(counts: Counts, target_sum: float = 1e4) -> np.ndarray:
    """``log1p`` of the mean normalised expression of a group of cells (one value per gene).

    Definition: ``log1p(mean_over_cells(counts / cell_total * target_sum))``: normalise each cell to
    ``target_sum``, average over cells, **then** take ``log1p`` (natural log). Cells with total 0 stay
    0. ``counts`` may be observed counts or real-valued expected counts (dense or sparse); taking the
    mean before the log makes both comparable (see the module docstring).
    """
    func = "mean_log_expression"
    target_sum = _check_target_sum(target_sum, func)
    return _mean_log(_counts(counts, "counts", func), target_sum)


def _mean_var(matrix: np.ndarray | sp.csr_matrix) -> tuple[np.ndarray, np.ndarray]:
    """Per-gene mean and unbiased (ddof=1) variance."""
    n = matrix.shape[0]
    if sp.issparse(matrix):
        mean = np.asarray(matrix.mean(axis=0)).ravel()
        mean_sq = np.asarray(matrix.multiply(matrix).mean(axis=0)).ravel()
        var = np.maximum(mean_sq - mean**2, 0.0) * n / (n - 1)
    else:
        mean, var = matrix.mean(axis=0), matrix.var(axis=0, ddof=1)
    return mean, var


def _welch_t(treated: np.ndarray | sp.csr_matrix, control: np.ndarray | sp.csr_matrix, target_sum: float) -> np.ndarray:
    m1, v1 = _mean_var(log_normalize(treated, target_sum))
    m2, v2 = _mean_var(log_normalize(control, target_sum))
    with np.errstate(divide="ignore", invalid="ignore"):
        t, _ = ttest_ind_from_stats(m1, np.sqrt(v1), treated.shape[0], m2, np.sqrt(v2), control.shape[0],
                                    equal_var=False)
    return np.nan_to_num(t, nan=0.0)


def rank_genes(
    treated_counts: Counts, control_counts: Counts, n_genes: int = 50, *, target_sum: float = 1e4
) -> np.ndarray:
    """Indices of the top ``n_genes`` differentially expressed genes, treated vs control cells.

    Definition: both groups are log-normalised (``log1p(counts / total * target_sum)`` per cell);
    per gene, Welch's t-statistic of treated against control (``scipy.stats.ttest_ind_from_stats``,
    unequal variances, ddof=1; NaN from zero variance in both groups -> 0); genes are ranked by
    ``|t|`` descending (ties: lower index first). This is scanpy's
    ``sc.tl.rank_genes_groups(adata, groupby, groups=[treated], reference=control,
    method="t-test", rankby_abs=True)`` computed with scipy only. If ``n_genes`` exceeds the number
    of genes, every gene is returned (ranked).
    """
    func = "rank_genes"
    target_sum = _check_target_sum(target_sum, func)
    treated = _counts(treated_counts, "treated_counts", func, min_cells=2)
    control = _counts(control_counts, "control_counts", func, min_cells=2)
    _same_genes(func, treated_counts=treated, control_counts=control)
    if int(n_genes) < 1:
        raise ConfigError(f"{func}: n_genes must be at least 1, got {n_genes!r}.")
    t = _welch_t(treated, control, target_sum)
    return np.argsort(-np.abs(t), kind="stable")[: int(n_genes)]


def _delta_pearson(pred: np.ndarray, true: np.ndarray) -> float:
    if np.ptp(pred) == 0 or np.ptp(true) == 0:
        return 0.0
    return float(pearsonr(pred, true)[0])


def prediction_scores(
    true_counts: Counts,
    pred_counts: Counts | None = None,
    control_counts: Counts | None = None,
    *,
    pred_mean: ArrayLike | None = None,
    top_k: Sequence[int] = (20, 50),
    mse_k: int = 20,
    degs: ArrayLike | None = None,
    target_sum: float = 1e4,
) -> dict[str, float | int | None]:
    """Scores of a predicted response for one held-out condition (covariate x, treatment t).

    Inputs are cells x genes matrices (dense or sparse) with the same genes: ``true_counts`` the
    observed cells of (x, t), ``pred_counts`` the predicted cells (sampled or expected counts), and
    ``control_counts`` the control cells of x. Instead of ``pred_counts`` a precomputed mean-log
    vector may be given as ``pred_mean`` (e.g. from :func:`additive_baseline`), so baselines are
    scored by the same code.

    With ``true``, ``pred``, ``ctrl`` the :func:`mean_log_expression` vectors (log1p of the mean
    normalised expression) and ``degs`` the genes ranked by :func:`rank_genes` (true treated cells
    vs controls; or the given ``degs`` indices, e.g. from scanpy's ``rank_genes_groups`` on the
    full data set, best first):

    * ``r2_all`` = ``r2_score(true, pred)`` over all genes (argument order: true first);
    * ``r2_top{k}`` = the same over the top-k DEGs, for each k in ``top_k``;
    * ``mse_top{mse_k}`` (default ``mse_top20``) = ``mean_squared_error(true, pred)`` over the top
      ``mse_k`` DEGs;
    * ``delta_pearson`` = Pearson correlation over all genes of ``pred - ctrl`` with
      ``true - ctrl`` (0.0 when either change vector is constant, e.g. a prediction of no change);
    * ``n_true``, ``n_pred``: numbers of cells (``n_pred`` is None when ``pred_mean`` is given).

    R² is not clipped (negative values are kept). No minimum number of cells is enforced.
    """
    func = "prediction_scores"
    target_sum = _check_target_sum(target_sum, func)
    if (pred_counts is None) == (pred_mean is None):
        raise ConfigError(f"{func}: give exactly one of pred_counts (predicted cells) and pred_mean "
                          "(a precomputed mean_log_expression vector).")
    if control_counts is None:
        raise ConfigError(f"{func}: control_counts (the control cells of the held-out covariate) is required.")
    true_m = _counts(true_counts, "true_counts", func, min_cells=2 if degs is None else 1)
    ctrl_m = _counts(control_counts, "control_counts", func, min_cells=2 if degs is None else 1)
    n_genes = true_m.shape[1]
    if pred_counts is not None:
        pred_m = _counts(pred_counts, "pred_counts", func)
        _same_genes(func, true_counts=true_m, pred_counts=pred_m, control_counts=ctrl_m)
        pred = _mean_log(pred_m, target_sum)
        n_pred: int | None = int(pred_m.shape[0])
    else:
        pred = np.asarray(pred_mean, dtype=np.float64)
        if pred.ndim != 1 or not np.all(np.isfinite(pred)):
            raise DataError(f"{func}: pred_mean must be a finite 1-D vector (one value per gene), got shape "
                            f"{pred.shape}.")
        _same_genes(func, true_counts=true_m, pred_mean=pred, control_counts=ctrl_m)
        n_pred = None
    ks = sorted({int(k) for k in top_k})
    if any(k < 1 for k in ks) or int(mse_k) < 1:
        raise ConfigError(f"{func}: top_k and mse_k must be positive, got top_k={tuple(top_k)!r}, mse_k={mse_k!r}.")
    need = max(ks + [int(mse_k)])
    if need > n_genes:
        raise ConfigError(f"{func}: asked for the top {need} DEGs but there are only {n_genes} genes.")

    true = _mean_log(true_m, target_sum)
    ctrl = _mean_log(ctrl_m, target_sum)
    if degs is None:
        ranked = np.argsort(-np.abs(_welch_t(true_m, ctrl_m, target_sum)), kind="stable")
    else:
        ranked = np.asarray(degs, dtype=int).ravel()
        if len(ranked) < need or ranked.min(initial=0) < 0 or ranked.max(initial=0) >= n_genes:
            raise DataError(f"{func}: degs must hold at least {need} gene indices in [0, {n_genes}), got "
                            f"{len(ranked)} indices in [{ranked.min(initial=0)}, {ranked.max(initial=0)}].")

    scores: dict[str, float | int | None] = {"r2_all": float(r2_score(true, pred))}
    for k in ks:
        top = ranked[:k]
        scores[f"r2_top{k}"] = float(r2_score(true[top], pred[top]))
    top = ranked[: int(mse_k)]
    scores[f"mse_top{int(mse_k)}"] = float(mean_squared_error(true[top], pred[top]))
    scores["delta_pearson"] = _delta_pearson(pred - ctrl, true - ctrl)
    scores["n_true"] = int(true_m.shape[0])
    scores["n_pred"] = n_pred
    return scores


def additive_baseline(
    control_counts_x: Counts,
    other_pairs: Sequence[tuple[Counts, Counts]],
    target_sum: float = 1e4,
) -> np.ndarray:
    """The "additive answer" for a held-out (covariate x, treatment t), as a mean-log vector.

    Definition, with ``m(.)`` = :func:`mean_log_expression`:
    ``m(controls of x) + mean over other covariates x' of [m(cells of (x', t)) - m(controls of x')]``,
    i.e. the controls of x shifted by the average effect of t seen in the other covariates (no
    model, no interaction). ``other_pairs`` is one ``(treated_counts_x', control_counts_x')`` pair per
    other covariate x'. Score the result with ``prediction_scores(..., pred_mean=...)``.
    """
    func = "additive_baseline"
    target_sum = _check_target_sum(target_sum, func)
    base_m = _counts(control_counts_x, "control_counts_x", func)
    pairs = list(other_pairs)
    if not pairs:
        raise DataError(f"{func}: other_pairs is empty; the additive answer needs treatment t observed in "
                        "at least one other covariate.")
    effects = []
    for i, pair in enumerate(pairs):
        if not isinstance(pair, tuple | list) or len(pair) != 2:
            raise DataError(f"{func}: other_pairs[{i}] must be a (treated_counts, control_counts) pair.")
        treated = _counts(pair[0], f"other_pairs[{i}][0] (treated)", func)
        control = _counts(pair[1], f"other_pairs[{i}][1] (control)", func)
        _same_genes(func, control_counts_x=base_m, **{f"other_pairs[{i}][0]": treated, f"other_pairs[{i}][1]": control})
        effects.append(_mean_log(treated, target_sum) - _mean_log(control, target_sum))
    return _mean_log(base_m, target_sum) + np.mean(effects, axis=0)
