"""Input checks shared by the metric modules (private)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import scipy.sparse as sp
from numpy.typing import ArrayLike

from fcrkit.errors import DataError, OptionalDependencyError  # noqa: F401  (re-exported for the metrics)


def as_matrix(values: ArrayLike, name: str, func: str, *, min_rows: int = 1) -> np.ndarray:
    """``values`` as a finite float 2-D array (a 1-D array becomes one column)."""
    if sp.issparse(values):
        values = values.toarray()
    try:
        array = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise DataError(f"{func}: {name} must be numeric, got {type(values).__name__} ({err}).") from None
    if array.ndim == 1:
        array = array[:, None]
    if array.ndim != 2:
        raise DataError(f"{func}: {name} must be 1-D or 2-D (cells x dims), got shape {array.shape}.")
    if array.shape[0] < min_rows:
        raise DataError(f"{func}: {name} has {array.shape[0]} rows (shape {array.shape}); need at least {min_rows}.")
    if array.shape[1] == 0:
        raise DataError(f"{func}: {name} has no columns (shape {array.shape}).")
    if not np.all(np.isfinite(array)):
        bad = int(np.size(array) - np.count_nonzero(np.isfinite(array)))
        raise DataError(f"{func}: {name} contains {bad} NaN or infinite values.")
    return array


def same_rows(func: str, **arrays: np.ndarray) -> None:
    """Raise unless every array has the same number of rows (names and shapes in the message)."""
    rows = {name: np.shape(a)[0] for name, a in arrays.items()}
    if len(set(rows.values())) > 1:
        shapes = ", ".join(f"{name} {np.shape(a)}" for name, a in arrays.items())
        raise DataError(f"{func}: arrays must have one row per cell, the same cells in the same order; got {shapes}.")


def as_block_dict(blocks: Mapping[str, ArrayLike], name: str, func: str) -> dict[str, np.ndarray]:
    """A non-empty mapping of block name -> finite 2-D float array, all with the same rows."""
    if not isinstance(blocks, Mapping) or not blocks:
        raise DataError(f"{func}: {name} must be a non-empty mapping of block name -> array, got {blocks!r:.80}.")
    out = {str(k): as_matrix(v, f"{name}[{k!r}]", func) for k, v in blocks.items()}
    same_rows(func, **{f"{name}[{k!r}]": v for k, v in out.items()})
    return out


def subsample_indices(n: int, max_cells: int | None, seed: int) -> np.ndarray | None:
    """Sorted indices of ``max_cells`` cells drawn without replacement by ``seed``; None if n <= max_cells."""
    if max_cells is None or n <= max_cells:
        return None
    return np.sort(np.random.default_rng(seed).choice(n, size=int(max_cells), replace=False))
