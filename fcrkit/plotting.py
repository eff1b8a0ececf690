"""Figures: training curves and 2-D views of latent blocks (written to files, no display needed)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from fcrkit.train.trainer import History


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: works on machines without a display
    import matplotlib.pyplot as plt

    return plt


def plot_histories(histories: Mapping[str, History], path: str | Path, *, key: str = "validation_loss") -> Path:
    """One curve of ``history[key]`` per model (e.g. the validation -ELBO per cell) against epochs."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, history in histories.items():
        values = history.values.get(key) or history.values.get("loss", [])
        ax.plot(np.arange(1, len(values) + 1), values, label=name)
    ax.set_xlabel("epoch")
    ax.set_ylabel(key.replace("_", " "))
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)


def plot_blocks(blocks: Mapping[str, np.ndarray], labels: Mapping[str, np.ndarray], path: str | Path) -> Path:
    """A grid of 2-D views: one row per latent block, one column per label set used as colour.

    Blocks with more than two dimensions are shown by their first two principal components.
    """
    plt = _pyplot()
    fig, axes = plt.subplots(len(blocks), len(labels), figsize=(3.2 * len(labels), 3.0 * len(blocks)), squeeze=False)
    for row, (block, z) in enumerate(blocks.items()):
        xy = _two_dims(np.asarray(z, dtype=float))
        for col, (label, values) in enumerate(labels.items()):
            ax = axes[row, col]
            values = np.asarray(values).astype(str)
            for level in np.unique(values):
                chosen = values == level
                ax.scatter(xy[chosen, 0], xy[chosen, 1], s=3, alpha=0.6, label=level)
            ax.set_title(f"{block} by {label}", fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.legend(fontsize=6, markerscale=3, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)


def _two_dims(z: np.ndarray) -> np.ndarray:
    if z.shape[1] <= 2:
        return np.column_stack([z, np.zeros((len(z), 2 - z.shape[1]))])
    from sklearn.decomposition import PCA

    return PCA(n_components=2).fit_transform(z)


def plot_benchmark(table: Any, path: str | Path) -> Path:
    """The benchmark table as a figure: one bar chart per score (rows: recipes; NaN bars left out)."""
    plt = _pyplot()
    columns = [c for c in ("mcc", *[c for c in table.columns if str(c).startswith("nmi_")], "r2_top50", "r2_all",
                           "mse_top20", "train_s") if c in table.columns and np.isfinite(table[c]).any()]
    n = max(len(columns), 1)
    fig, axes = plt.subplots(1, n, figsize=(2.6 * n, 0.35 * len(table) + 1.6), sharey=True, squeeze=False)
    names = [str(i) for i in table.index][::-1]  # first recipe on top
    table = table.iloc[::-1]
    for ax, column in zip(axes[0], columns):
        values = table[column].to_numpy(dtype=float)
        ax.barh(names, np.nan_to_num(values), color=["#bbbbbb" if n == "no change" else "#4477aa" for n in names])
        ax.set_title(column.replace("_", " "), fontsize=9)
        ax.tick_params(labelsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)
