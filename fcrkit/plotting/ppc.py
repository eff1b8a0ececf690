"""The posterior predictive check as a figure: per-gene statistics of model draws against the data."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from fcrkit.plotting._figure import new_figure, save


def plot_ppc(results: Any, path: str | Path) -> Path:
    """One panel per statistic (mean, variance, CV, zero fraction): each gene's model value against its data value.

    Args:
        results: a :class:`fcrkit.metrics.ppc.PPCResult`, or a dict name -> result (one colour per model,
            e.g. ``{"SCVI": ..., "FCR": ...}``).
        path: file to write.

    Mean, variance and CV are drawn on log axes (values + 1e-3); the diagonal is a perfect model. Each
    legend entry gives the statistic's Spearman correlation.

    Returns:
        The path written.
    """
    from fcrkit.metrics.ppc import STATISTICS

    named = results if isinstance(results, dict) else {"model": results}
    figure = new_figure(3.2 * len(STATISTICS), 3.2)
    axes = figure.subplots(1, len(STATISTICS), squeeze=False)[0]
    for ax, stat in zip(axes, STATISTICS):
        low, high = np.inf, -np.inf
        for name, result in named.items():
            data = result.genes[f"{stat}_data"].to_numpy(dtype=float)
            model = result.genes[f"{stat}_model"].to_numpy(dtype=float)
            if stat != "zero_fraction":
                data, model = data + 1e-3, model + 1e-3
            ax.scatter(data, model, s=4, alpha=0.5, label=f"{name} (ρ {result.table.loc[stat, 'spearman']:.2f})")
            low, high = min(low, data.min(), model.min()), max(high, data.max(), model.max())
        ax.plot([low, high], [low, high], color="black", linewidth=0.8)
        if stat != "zero_fraction":
            ax.set_xscale("log")
            ax.set_yscale("log")
        ax.set_xlabel(f"{stat.replace('_', ' ')}, data", fontsize=9)
        ax.set_ylabel(f"{stat.replace('_', ' ')}, model draws", fontsize=9)
        ax.legend(fontsize=7, markerscale=3)
    return save(figure, path)
