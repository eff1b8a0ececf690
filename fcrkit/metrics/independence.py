"""Kernel independence test (HSIC) between two sets of variables observed on the same cells.

Definitions (Gretton et al., "A Kernel Statistical Test of Independence", NIPS 2008):

* Gaussian kernels ``K_ij = exp(-|x_i - x_j|² / (2 σ_x²))`` and ``L`` likewise for ``y``, with the
  median heuristic of the authors' reference code ``hsicTestGamma.m``:
  ``σ² = 0.5 * median(|a_i - a_j|²)`` over all pairs i < j with non-zero distance (the reference
  code takes the median over the first 100 cells only),
  i.e. ``K_ij = exp(-|x_i - x_j|² / median)``; ``σ = 1`` if every distance is 0 (a constant variable,
  whose centred kernel is 0, so HSIC = 0 and p = 1).
* biased statistic ``HSIC_b = n⁻² tr(K H L H)`` with ``H = I - 11ᵀ/n``.
* p-value: the gamma approximation of the null distribution of ``n * HSIC_b`` (moments as in
  ``hsicTestGamma.m``), or a permutation test.

Inputs are used as given (no standardisation; the bandwidth adapts to each variable's overall
scale). Labels should be one-hot encoded.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import ArrayLike

from fcrkit.errors import ConfigError, DataError
from fcrkit.metrics._validation import as_matrix, same_rows, subsample_indices

if TYPE_CHECKING:
    import torch

__all__ = ["HSICResult", "hsic", "hsic_torch"]


@dataclass(frozen=True)
class HSICResult:
    """Result of :func:`hsic`.

    Attributes:
        statistic: biased HSIC, ``n⁻² tr(K H L H)`` (>= 0; 0 for independent in the infinite limit).
        p_value: p-value of the null hypothesis "x and y are independent".
        method: ``"gamma"`` (gamma approximation) or ``"permutation"``.
        n: number of cells used (after subsampling).
    """

    statistic: float
    p_value: float
    method: str
    n: int


def _gaussian_kernel(a: np.ndarray) -> np.ndarray:
    from scipy.spatial.distance import pdist, squareform  # here: every model imports this module

    sq = pdist(a, "sqeuclidean")
    positive = sq[sq > 0]
    median = float(np.median(positive)) if positive.size else 2.0  # sigma = 1
    return squareform(np.exp(-sq / median), checks=False) + np.eye(len(a))


def _center(k: np.ndarray) -> np.ndarray:
    return k - k.mean(axis=0, keepdims=True) - k.mean(axis=1, keepdims=True) + k.mean()


def _gamma_p_value(k: np.ndarray, l: np.ndarray, kc: np.ndarray, lc: np.ndarray, stat_n: float) -> float:
    """P(Gamma > n * HSIC_b) with the null mean and variance of ``hsicTestGamma.m``."""
    from scipy.stats import gamma  # here: scipy.stats takes about half a second to import
    m = k.shape[0]
    var = (kc * lc / 6.0) ** 2
    var = (var.sum() - np.trace(var)) / m / (m - 1)
    var = 72.0 * (m - 4) * (m - 5) / m / (m - 1) / (m - 2) / (m - 3) * var
    mu_x = (k.sum() - np.trace(k)) / m / (m - 1)
    mu_y = (l.sum() - np.trace(l)) / m / (m - 1)
    mean = (1.0 + mu_x * mu_y - mu_x - mu_y) / m
    if not (var > 0 and mean > 0):
        return 1.0
    shape, scale = mean**2 / var, var * m / mean
    return float(gamma.sf(stat_n, shape, scale=scale))


def hsic(
    x: ArrayLike,
    y: ArrayLike,
    *,
    permutations: int = 0,
    seed: int = 0,
    max_cells: int = 1000,
) -> HSICResult:
    """HSIC independence test between ``x`` (cells x dx) and ``y`` (cells x dy) (1-D = one column).

    Statistic: ``HSIC_b = n⁻² tr(K H L H)`` with Gaussian kernels and median-heuristic bandwidths
    (see the module docstring for the exact bandwidth). p-value: with ``permutations=0`` (default)
    the gamma approximation of Gretton et al. (2008), matching ``n * HSIC_b`` to a gamma
    distribution with the null mean and variance estimated from the kernels; with
    ``permutations=N > 0`` the permutation p-value ``(1 + #{HSIC_b(x, y[π]) >= HSIC_b}) / (1 + N)``
    over N random permutations of y. HSIC is O(n²) in memory: if there are more than
    ``max_cells`` cells, ``max_cells`` of them are drawn without replacement (the same cells for x
    and y), deterministically by ``seed``. Requires at least 6 cells.
    """
    func = "hsic"
    if int(permutations) < 0:
        raise ConfigError(f"{func}: permutations must be 0 (gamma approximation) or positive, got {permutations!r}.")
    if int(max_cells) < 6:
        raise ConfigError(f"{func}: max_cells must be at least 6, got {max_cells!r}.")
    xa = as_matrix(x, "x", func, min_rows=6)
    ya = as_matrix(y, "y", func, min_rows=6)
    same_rows(func, x=xa, y=ya)
    cells = subsample_indices(xa.shape[0], int(max_cells), seed)
    if cells is not None:
        xa, ya = xa[cells], ya[cells]
    n = xa.shape[0]

    k, l = _gaussian_kernel(xa), _gaussian_kernel(ya)
    kc, lc = _center(k), _center(l)
    stat = float(np.sum(kc * lc)) / n**2  # tr(HKH HLH) = tr(K H L H), H idempotent
    if int(permutations) == 0:
        return HSICResult(stat, _gamma_p_value(k, l, kc, lc, n * stat), "gamma", n)
    rng = np.random.default_rng(seed)
    exceed = 0
    for _ in range(int(permutations)):
        perm = rng.permutation(n)
        exceed += float(np.sum(kc * l[np.ix_(perm, perm)])) / n**2 >= stat - 1e-15
    return HSICResult(stat, (1.0 + exceed) / (1.0 + int(permutations)), "permutation", n)


def _torch_gaussian_kernel(a: torch.Tensor) -> torch.Tensor:
    import torch

    sq_norm = (a * a).sum(dim=1)
    n = a.shape[0]
    off_diagonal = 1.0 - torch.eye(n, dtype=a.dtype, device=a.device)
    sq = (sq_norm[:, None] + sq_norm[None, :] - 2.0 * a @ a.T).clamp_min(0.0) * off_diagonal
    with torch.no_grad():
        # the same median as numpy: exact pairwise distances, i < j, non-zero
        iu = torch.triu_indices(n, n, offset=1, device=a.device)
        d = a.detach()
        pairs = ((d[iu[0]] - d[iu[1]]) ** 2).sum(dim=1)
        pairs = pairs[pairs > 0]
        if pairs.numel() == 0:
            median = torch.tensor(2.0, dtype=a.dtype, device=a.device)
        elif pairs.numel() <= 2**24:
            median = torch.quantile(pairs, 0.5)
        else:
            median = pairs.median()  # torch.quantile has a size limit; lower median here
    return torch.exp(-sq / median)


def hsic_torch(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Differentiable biased HSIC, ``n⁻² tr(K H L H)``, the statistic of :func:`hsic` in torch.

    Same Gaussian kernels and median-heuristic bandwidths as :func:`hsic` (the bandwidths are
    computed without gradient, as constants of the current batch); no subsampling and no p-value.
    Gradients flow to ``x`` and ``y`` (for use as an independence regulariser on a minibatch).
    1-D inputs are one column. O(n²) memory: use minibatches.
    """
    import torch

    x, y = torch.as_tensor(x), torch.as_tensor(y)
    if not x.is_floating_point():
        x = x.to(torch.get_default_dtype())
    if not y.is_floating_point():
        y = y.to(x.dtype)
    if x.dim() == 1:
        x = x[:, None]
    if y.dim() == 1:
        y = y[:, None]
    if x.dim() != 2 or y.dim() != 2 or x.shape[0] != y.shape[0] or x.shape[0] < 2:
        raise DataError(f"hsic_torch: x and y must be 2-D with the same number (>= 2) of rows, got shapes "
                          f"{tuple(x.shape)} and {tuple(y.shape)}.")
    n = x.shape[0]
    k = _torch_gaussian_kernel(x)
    l = _torch_gaussian_kernel(y.to(k.dtype))
    h = torch.eye(n, dtype=k.dtype, device=k.device) - 1.0 / n
    return torch.sum((h @ k @ h) * l) / n**2
