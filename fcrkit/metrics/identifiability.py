"""How much of a known latent a learned representation recovers.

* :func:`mcc` / :func:`mcc_both`: mean correlation coefficient after matching learned to true
  dimensions (component-wise identifiability).
* :func:`block_r2`: held-out R² of predicting each true block from each learned block (block-wise
  identifiability: high on the diagonal, low off it).
* :func:`linear_r2`: cross-validated linear R² of the whole true latent from the whole learned one.

Conventions follow ``shared/reference/METRICS.md``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike
from scipy.optimize import linear_sum_assignment
from scipy.stats import rankdata
from sklearn.compose import TransformedTargetRegressor
from sklearn.decomposition import PCA
from sklearn.kernel_ridge import KernelRidge
from sklearn.linear_model import LinearRegression
from sklearn.metrics import r2_score
from sklearn.model_selection import GridSearchCV, KFold, cross_val_predict, train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from fcrkit.errors import ConfigError, DataError
from fcrkit.metrics._validation import as_block_dict, as_matrix, same_rows, subsample_indices

__all__ = ["MCCResult", "block_r2", "linear_r2", "mcc", "mcc_both"]

#: Kernel-ridge grid searched by :func:`block_r2` (3-fold CV on the train split). Gammas are
#: multiplied by ``1 / n_features`` of the (standardised) learned block.
KERNEL_ALPHAS: tuple[float, ...] = (1e-3, 1e-2, 1e-1, 1.0)
KERNEL_GAMMAS: tuple[float, ...] = (0.1, 0.3, 1.0, 3.0)


# --------------------------------------------------------------------------------------------- MCC
@dataclass(frozen=True, eq=False)
class MCCResult:
    """Result of :func:`mcc`.

    Attributes:
        value: MCC, the mean over the *true* dimensions of the matched ``|corr|`` (a true dimension
            left unmatched, when there are fewer learned dimensions, counts as 0).
        per_component: ``|corr|`` of each true dimension with its matched learned dimension, in
            true-dimension order (0 where unmatched).
        matching: for each true dimension, the index of the learned column it was matched to (-1
            where unmatched). With a reduction (``reduction`` not None) the index refers to the
            reduced components, except for ``reduce="variance"`` where it is mapped back to the
            original columns of ``z_hat``.
        method: ``"pearson"`` or ``"spearman"``.
        reduction: how ``z_hat`` was reduced to ``d_true`` dimensions before matching
            (``"varimax"``, ``"pca"`` or ``"variance"``), or None when it was not.
    """

    value: float
    per_component: np.ndarray
    matching: np.ndarray
    method: str
    reduction: str | None = None

    def __float__(self) -> float:
        return float(self.value)


def _standardize(z: np.ndarray) -> np.ndarray:
    """Columns centred and scaled to unit (population) variance; constant columns become zeros."""
    constant = np.ptp(z, axis=0) == 0
    z = z - z.mean(axis=0)
    std = z.std(axis=0)
    return np.divide(z, std, out=np.zeros_like(z), where=~constant & (std > 0))


def _abs_cross_corr(z_true: np.ndarray, z_hat: np.ndarray) -> np.ndarray:
    """``|corr|`` between every true (rows) and learned (columns) dimension; 0 for constant columns."""
    c = _standardize(z_true).T @ _standardize(z_hat) / z_true.shape[0]
    return np.clip(np.abs(c), 0.0, 1.0)


def _varimax(loadings: np.ndarray, *, max_iter: int = 500, tol: float = 1e-10) -> np.ndarray:
    """Orthogonal rotation ``R`` maximising the varimax criterion of ``loadings @ R`` (Kaiser 1958)."""
    p, k = loadings.shape
    rotation = np.eye(k)
    criterion = 0.0
    for _ in range(max_iter):
        rotated = loadings @ rotation
        u, s, vt = np.linalg.svd(loadings.T @ (rotated**3 - rotated * (rotated**2).sum(axis=0) / p))
        rotation = u @ vt
        new = s.sum()
        if new <= criterion * (1.0 + tol):
            break
        criterion = new
    return rotation


def _reduce(z_hat: np.ndarray, k: int, how: str, seed: int) -> tuple[np.ndarray, np.ndarray | None]:
    """``z_hat`` reduced to ``k`` columns using ``z_hat`` alone; also the kept original columns (or None)."""
    if how == "variance":
        keep = np.sort(np.argsort(-z_hat.var(axis=0), kind="stable")[:k])
        return z_hat[:, keep], keep
    pca = PCA(n_components=k, svd_solver="full", random_state=seed).fit(z_hat)
    scores = pca.transform(z_hat)
    if how == "pca":
        return scores, None
    sd = np.sqrt(np.maximum(pca.explained_variance_, 1e-300))
    loadings = pca.components_.T * sd  # learned dims x components
    return (scores / sd) @ _varimax(loadings), None


def mcc(
    z_true: ArrayLike,
    z_hat: ArrayLike,
    *,
    method: Literal["pearson", "spearman"] = "pearson",
    square: bool = True,
    reduce: Literal["varimax", "pca", "variance"] = "varimax",
    seed: int = 0,
) -> MCCResult:
    """Mean correlation coefficient (MCC) between true and learned latent dimensions.

    Definition: ``C[i, j] = |corr(z_true[:, i], z_hat[:, j])|`` over cells (the d_true x d_hat cross
    block; Pearson tests affine, Spearman component-wise monotone equivalence). Learned dimensions
    are matched one-to-one to true ones by ``scipy.optimize.linear_sum_assignment(-C)``; MCC is the
    mean of the matched entries over the **true** dimensions. A constant column has correlation 0
    with everything (never NaN).

    Fairness rule (``square=True``, the default, use it to compare methods): when there are more
    learned than true dimensions (d_hat > d_true), ``z_hat`` is first reduced to d_true dimensions
    *without looking at* ``z_true``, and the match is square. Otherwise a model with many dimensions
    could pick its luckiest few (rectangular matching takes, per true dimension, the best of all
    learned columns, so its MCC can only grow with d_hat, even for pure noise). The reduction:

    * ``"varimax"`` (default): the top-d_true principal components of ``z_hat`` (centred, **not**
      standardised, so near-constant collapsed dimensions carry no weight), with the basis of that
      subspace varimax-rotated back towards ``z_hat``'s own axes. The rotation matters: when the
      leading eigenvalues are (nearly) tied, as for i.i.d. standard-normal latents, plain PCs are an
      arbitrary rotation of the subspace and mix the learned axes, so even a perfect recovery
      padded with dead dimensions scores ~0.75. Varimax is determined by ``z_hat`` alone.
    * ``"pca"``: the plain top-d_true principal components (subject to the caveat above).
    * ``"variance"``: the d_true learned columns with the largest variance ("active units",
      Burda et al. 2016); keeps original columns, scale-dependent.

    With ``square=False`` every learned dimension is a candidate (rectangular assignment); this
    flatters models with more dimensions and is for diagnosis only. When d_hat < d_true (either
    mode), the d_hat learned dimensions are matched and each unmatched true dimension counts as 0.

    Args:
        z_true: cells x d_true known latents (1-D = one dimension).
        z_hat: cells x d_hat learned latents, same cells in the same order.
        method: ``"pearson"`` or ``"spearman"`` (Pearson on column ranks, average ties; ranks are
            taken after any reduction).
        square: apply the fairness rule above.
        reduce: how to reduce ``z_hat`` when ``square`` and d_hat > d_true.
        seed: random state passed to PCA (the full SVD solver is deterministic anyway).
    """
    func = "mcc"
    if method not in ("pearson", "spearman"):
        raise ConfigError(f"{func}: method must be 'pearson' or 'spearman', got {method!r}.")
    if reduce not in ("varimax", "pca", "variance"):
        raise ConfigError(f"{func}: reduce must be 'varimax', 'pca' or 'variance', got {reduce!r}.")
    zt = as_matrix(z_true, "z_true", func, min_rows=2)
    zh = as_matrix(z_hat, "z_hat", func, min_rows=2)
    same_rows(func, z_true=zt, z_hat=zh)
    d_true, d_hat = zt.shape[1], zh.shape[1]

    reduction, kept = None, None
    if square and d_hat > d_true:
        if reduce != "variance" and zt.shape[0] < d_true:
            raise DataError(f"{func}: {zt.shape[0]} cells cannot give {d_true} principal components of z_hat "
                            f"{zh.shape}; use more cells or reduce='variance'.")
        zh, kept = _reduce(zh, d_true, reduce, seed)
        reduction = reduce
    if method == "spearman":
        zt, zh = rankdata(zt, axis=0), rankdata(zh, axis=0)

    corr = _abs_cross_corr(zt, zh)
    rows, cols = linear_sum_assignment(-corr)
    per_component = np.zeros(d_true)
    matching = np.full(d_true, -1, dtype=int)
    per_component[rows] = corr[rows, cols]
    matching[rows] = kept[cols] if kept is not None else cols
    return MCCResult(float(per_component.mean()), per_component, matching, method, reduction)


def block_mcc(true_blocks: Mapping[str, ArrayLike], z_hat: ArrayLike, **kwargs: Any) -> dict[str, float]:
    """MCC of each true block, from ONE square match of all true dimensions against ``z_hat``.

    The true blocks are concatenated (in mapping order) and matched with :func:`mcc` against the
    learned latent (all blocks of a model side by side, any order); a block's value is the mean of
    its matched components, and ``"all"`` the overall MCC. Scoring every method this way keeps a
    model from choosing, block by block, whichever learned dimensions suit it. ``kwargs`` go to
    :func:`mcc`.
    """
    blocks = as_block_dict(true_blocks, "true_blocks", "block_mcc")
    result = mcc(np.hstack(list(blocks.values())), z_hat, **kwargs)
    out, start = {}, 0
    for name, z in blocks.items():
        out[name] = float(np.mean(result.per_component[start:start + z.shape[1]]))
        start += z.shape[1]
    out["all"] = result.value
    return out


def mcc_both(z_true: ArrayLike, z_hat: ArrayLike, **kwargs: Any) -> dict[str, float]:
    """``{"pearson": MCC, "spearman": MCC}``: :func:`mcc` with both methods (other arguments passed on)."""
    if "method" in kwargs:
        raise ConfigError(f"mcc_both computes both methods; do not pass method={kwargs['method']!r}.")
    return {m: mcc(z_true, z_hat, method=m, **kwargs).value for m in ("pearson", "spearman")}


# ------------------------------------------------------------------------------------ block R²
def _kernel_regressor(n_features: int, seed: int, n_train: int) -> GridSearchCV:
    model = TransformedTargetRegressor(
        regressor=make_pipeline(StandardScaler(), KernelRidge(kernel="rbf")),
        transformer=StandardScaler(),  # kernel ridge has no intercept: centre (and scale) the targets
    )
    grid = {
        "regressor__kernelridge__alpha": list(KERNEL_ALPHAS),
        "regressor__kernelridge__gamma": [g / n_features for g in KERNEL_GAMMAS],
    }
    folds = KFold(n_splits=min(3, n_train), shuffle=True, random_state=seed)
    return GridSearchCV(model, grid, cv=folds, scoring="r2")


def block_r2(
    true_blocks: Mapping[str, ArrayLike],
    learned_blocks: Mapping[str, ArrayLike],
    *,
    regressor: Literal["linear", "kernel"] = "linear",
    test_fraction: float = 0.3,
    seed: int = 0,
    max_cells: int = 2000,
) -> pd.DataFrame:
    """Held-out R² of predicting each true block from each learned block.

    For every true block b and learned block b': fit a regressor ``z_hat[b'] -> z_true[b]`` on a
    train split and report ``r2_score(z_true[b]_test, prediction)`` (sklearn, ``uniform_average``
    over the dimensions of b). All pairs use the same split (``train_test_split`` with
    ``test_size=test_fraction``, ``random_state=seed``). Held-out R² is not clipped: it is negative
    when the prediction is worse than the test mean. Block-wise identifiability = high on the
    diagonal, low off it.

    Regressors:

    * ``"linear"``: ``LinearRegression`` on all cells.
    * ``"kernel"``: ``KernelRidge(kernel="rbf")`` on standardised inputs (targets standardised too,
      since kernel ridge has no intercept; R² is computed on the original scale), alpha in
      ``KERNEL_ALPHAS`` and gamma in ``KERNEL_GAMMAS / n_features`` picked by ``GridSearchCV``
      (3-fold, R²) on the train split. Kernel ridge is O(n³): first at most ``max_cells`` cells are
      drawn without replacement, deterministically by ``seed``.

    Returns:
        DataFrame with one row per true block (index named ``"true"``) and one column per learned
        block (columns named ``"learned"``), in the mappings' order.
    """
    func = "block_r2"
    if regressor not in ("linear", "kernel"):
        raise ConfigError(f"{func}: regressor must be 'linear' or 'kernel', got {regressor!r}.")
    if not 0.0 < float(test_fraction) < 1.0:
        raise ConfigError(f"{func}: test_fraction must be strictly between 0 and 1, got {test_fraction!r}.")
    if int(max_cells) < 10:
        raise ConfigError(f"{func}: max_cells must be at least 10, got {max_cells!r}.")
    true = as_block_dict(true_blocks, "true_blocks", func)
    learned = as_block_dict(learned_blocks, "learned_blocks", func)
    n_true, n_learned = next(iter(true.values())).shape[0], next(iter(learned.values())).shape[0]
    if n_true != n_learned:
        raise DataError(f"{func}: true blocks have {n_true} rows but learned blocks have {n_learned} rows.")

    cells = np.arange(n_true)
    if regressor == "kernel":
        sub = subsample_indices(n_true, max_cells, seed)
        cells = cells if sub is None else sub
    train, test = train_test_split(cells, test_size=float(test_fraction), random_state=seed)
    if len(train) < 3 or len(test) < 2:
        raise DataError(f"{func}: {len(cells)} cells give a train split of {len(train)} and a test split of "
                        f"{len(test)}; need at least 3 and 2.")

    table = pd.DataFrame(index=pd.Index(list(true), name="true"),
                         columns=pd.Index(list(learned), name="learned"), dtype=float)
    for b_hat, x in learned.items():
        for b_true, y in true.items():
            if regressor == "linear":
                model: Any = LinearRegression()
            else:
                model = _kernel_regressor(x.shape[1], seed, len(train))
            model.fit(x[train], y[train])
            table.loc[b_true, b_hat] = r2_score(y[test], model.predict(x[test]))
    return table


# ----------------------------------------------------------------------------------- linear R²
def linear_r2(z_true: np.ndarray, z_hat: np.ndarray, *, folds: int = 5, seed: int = 0) -> float:
    """Cross-validated R² of a linear regression from ``z_hat`` to ``z_true``.

    Predictions are out-of-fold; the score is ``r2_score(z_true, prediction)`` averaged uniformly over
    the true dimensions (1 = every true latent is a linear function of the learned one).
    """
    z_true, z_hat = np.asarray(z_true, dtype=float), np.asarray(z_hat, dtype=float)
    if z_true.shape[0] != z_hat.shape[0]:
        raise DataError(f"linear_r2: {z_true.shape[0]} true rows but {z_hat.shape[0]} learned rows.")
    splitter = KFold(n_splits=folds, shuffle=True, random_state=seed)
    prediction = cross_val_predict(LinearRegression(), z_hat, z_true, cv=splitter)
    return float(r2_score(z_true, prediction))
