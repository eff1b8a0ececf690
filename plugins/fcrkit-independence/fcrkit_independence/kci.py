"""Kernel conditional-independence (KCI) checks of latent blocks against labels, with causal-learn.

A statement reads ``"z_x _||_ t | x"``: names with the ``z_`` prefix are latent blocks, bare names
are observed labels (encoded as fcrkit encodes them: one-hot covariates, multi-hot treatments);
``⟂`` may stand for ``_||_``; nothing after ``|`` means an unconditional test. KCI costs O(n³), so
each repeat tests a random subsample of ``n_cells`` cells.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from fcrkit.errors import ConfigError, DataError

#: FCR's block structure as independence statements (see METRICS.md of the fcrkit project).
FCR_STATEMENTS: tuple[str, ...] = (
    "z_x _||_ t | x",
    "z_t _||_ x | t",
    "z_tx _||_ z_x | x, t",
    "z_tx _||_ z_t | x, t",
)


@dataclass(frozen=True)
class Statement:
    """``a`` is independent of ``b`` given ``given`` (names of blocks ``z_*`` or labels)."""

    a: str
    b: str
    given: tuple[str, ...] = ()

    @classmethod
    def parse(cls, text: str) -> Statement:
        """From ``"z_x _||_ t | x"`` (or with ``⟂``)."""
        match = re.fullmatch(r"\s*(\S+)\s*(?:_\|\|_|⟂)\s*(\S+)\s*(?:\|\s*(.*))?", text)
        if match is None:
            raise ConfigError(f"cannot read the independence statement {text!r}; write it like 'z_x _||_ t | x'.")
        given = tuple(g.strip() for g in (match.group(3) or "").split(",") if g.strip())
        return cls(match.group(1), match.group(2), given)

    def __str__(self) -> str:
        return f"{self.a} _||_ {self.b}" + (f" | {', '.join(self.given)}" if self.given else "")


def _columns(name: str, latents: Mapping[str, np.ndarray], labels: Mapping[str, np.ndarray], n: int) -> np.ndarray:
    source, key = (latents, name[2:]) if name.startswith("z_") else (labels, name)
    if key not in source:
        kind = "latent blocks" if source is latents else "labels"
        known = [f"z_{k}" for k in latents] + list(labels)
        raise DataError(f"{name!r} is not among the {kind}; names are {known}.")
    value = np.asarray(source[key], dtype=np.float64)
    value = value.reshape(len(value), -1)
    if len(value) != n:
        raise DataError(f"{name!r} has {len(value)} rows, the other inputs {n}.")
    return value


def _varying(a: np.ndarray) -> np.ndarray:
    """Drop constant columns (causal-learn standardises each column; a constant one would be NaN)."""
    keep = a.std(axis=0) > 0
    return a[:, keep] if keep.any() else a[:, :1]


def kci_checks(
    latents: Mapping[str, np.ndarray],
    labels: Mapping[str, np.ndarray],
    statements: Sequence[str | Statement] = FCR_STATEMENTS,
    *,
    n_cells: int = 500,
    repeats: int = 3,
    seed: int = 0,
) -> pd.DataFrame:
    """Test each statement with KCI on ``repeats`` random subsamples of ``n_cells`` cells.

    Args:
        latents: block name -> ``(cells, dim)`` array (for example the posterior means per block).
        labels: label name -> ``(cells, width)`` array, e.g. ``fcrkit.data.get_setup(adata).encode_labels(adata.obs)``.
        statements: what to test; FCR's block structure by default.
        n_cells: cells per subsample (KCI is O(n³)); all cells when there are fewer.
        repeats: subsamples per statement.
        seed: seed of the subsamples.

    Returns:
        One row per statement: ``statement``, ``p_value_median``, ``p_value_min``, ``statistic_median``,
        ``n_cells``, ``repeats``. A small p-value rejects independence.
    """
    from causallearn.utils.KCI.KCI import (  # the heavy dependency, only when used
        KCI_CInd,
        KCI_UInd,
    )

    parsed = [s if isinstance(s, Statement) else Statement.parse(s) for s in statements]
    n = len(next(iter(latents.values()))) if latents else len(next(iter(labels.values())))
    if n < 10:
        raise DataError(f"only {n} cells: KCI needs at least 10.")
    rng = np.random.default_rng(seed)
    rows = []
    for statement in parsed:
        a = _columns(statement.a, latents, labels, n)
        b = _columns(statement.b, latents, labels, n)
        z = np.hstack([_columns(g, latents, labels, n) for g in statement.given]) if statement.given else None
        p_values, stats = [], []
        for _ in range(repeats):
            rows_ = rng.choice(n, size=min(n_cells, n), replace=False)
            if z is None:
                p, stat = KCI_UInd().compute_pvalue(_varying(a[rows_]), _varying(b[rows_]))
            else:
                p, stat = KCI_CInd().compute_pvalue(_varying(a[rows_]), _varying(b[rows_]), _varying(z[rows_]))
            p_values.append(float(p))
            stats.append(float(stat))
        rows.append({"statement": str(statement), "p_value_median": float(np.median(p_values)),
                     "p_value_min": float(np.min(p_values)), "statistic_median": float(np.median(stats)),
                     "n_cells": int(min(n_cells, n)), "repeats": repeats})
    return pd.DataFrame(rows)
