"""Tables of scores as figures: the block-R² matrix as a heat map and the benchmark table as bars."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fcrkit.errors import DataError
from fcrkit.plotting._figure import new_figure, save

#: The benchmark columns drawn, in this order (plus every ``nmi_<label>`` after ``mcc``), when present.
BENCHMARK_COLUMNS = ("mcc", "pearson_delta20", "pearson_delta_pm", "cosine_logfc", "rmse", "normalized_rank",
                     "deg_direction20", "energy_distance", "r2_top50", "r2_all", "mse_top20", "train_s")


def plot_block_r2(matrix: Any, path: str | Path, *, title: str | None = None) -> Path:
    """The block-R² matrix of :func:`fcrkit.metrics.block_r2` as an annotated heat map.

    Rows are the true blocks, columns the learned ones. Colours run from 0 to 1 (held-out R² below
    0, which is worse than predicting the mean, shows as 0); every cell is annotated with its value.
    Block-wise identifiability looks like a bright diagonal on a dark background.

    Args:
        matrix: a DataFrame (true blocks x learned blocks, as :func:`~fcrkit.metrics.block_r2`
            returns) or a 2-D array (rows and columns are then numbered).
        path: file to write.
        title: the figure title (default: "block R² (true from learned)").

    Returns:
        The path written.

    Raises:
        DataError: ``matrix`` is not a non-empty 2-D table of numbers.
    """
    table = matrix if isinstance(matrix, pd.DataFrame) else pd.DataFrame(np.asarray(matrix))
    try:
        values = table.to_numpy(dtype=float)
    except (TypeError, ValueError) as err:
        raise DataError(f"plot_block_r2: matrix must hold numbers ({err}).") from None
    if values.ndim != 2 or values.size == 0:
        raise DataError(f"plot_block_r2: matrix must be a non-empty 2-D table (true x learned blocks), got shape "
                        f"{values.shape}.")
    n_rows, n_cols = values.shape
    figure = new_figure(1.1 * n_cols + 2.0, 0.9 * n_rows + 1.2)
    ax = figure.subplots()
    image = ax.imshow(values, cmap="viridis", vmin=0.0, vmax=1.0)
    for (i, j), value in np.ndenumerate(values):
        text = "n/a" if np.isnan(value) else f"{value:.2f}"
        ax.text(j, i, text, ha="center", va="center", fontsize=10,
                color="black" if np.nan_to_num(value) > 0.6 else "white")  # readable on both ends of viridis
    ax.set_xticks(range(n_cols), [str(c) for c in table.columns])
    ax.set_yticks(range(n_rows), [str(r) for r in table.index])
    ax.set_xlabel(str(table.columns.name or "learned block"))
    ax.set_ylabel(str(table.index.name or "true block"))
    ax.set_title(title or "block R² (true from learned)", fontsize=10)
    figure.colorbar(image, ax=ax, shrink=0.8, label="held-out R²")
    return save(figure, path)


def plot_benchmark(table: pd.DataFrame, path: str | Path, *, errors: pd.DataFrame | None = None,
                   baselines: Sequence[str] = ("no change",)) -> Path:
    """The benchmark table (:func:`fcrkit.benchmark.run_benchmark`) as a figure: one bar chart per score.

    Rows are recipes (the first on top; the rows named in ``baselines`` in grey); columns with no finite
    value are left out and NaN bars are drawn as 0.

    Args:
        table: one row per recipe; columns among ``mcc``, ``nmi_<label>`` and :data:`BENCHMARK_COLUMNS`.
        path: file to write.
        errors: the same shape as ``table``, drawn as error bars (e.g. the standard deviation over seeds).
        baselines: the rows drawn in grey.

    Returns:
        The path written.

    Raises:
        DataError: the table has none of those columns with a finite value.
    """
    wanted = ["mcc", *[str(c) for c in table.columns if str(c).startswith("nmi_")], *BENCHMARK_COLUMNS[1:]]
    columns = [c for c in wanted if c in table.columns and np.isfinite(table[c].to_numpy(dtype=float)).any()]
    if not columns:
        raise DataError(f"plot_benchmark: no score to draw; the table's columns are {list(table.columns)}, none of "
                        f"them among {wanted} with a finite value.")
    figure = new_figure(2.6 * len(columns), 0.35 * len(table) + 1.6)
    axes = figure.subplots(1, len(columns), sharey=True, squeeze=False)[0]
    names = [str(i) for i in table.index][::-1]  # barh draws bottom-up: reverse so the first recipe is on top
    colours = ["#bbbbbb" if name in set(baselines) else "#4477aa" for name in names]
    for ax, column in zip(axes, columns):
        values = table[column].to_numpy(dtype=float)[::-1]
        xerr = None
        if errors is not None and column in errors.columns:
            xerr = np.nan_to_num(errors.reindex(table.index)[column].to_numpy(dtype=float)[::-1])
        ax.barh(names, np.nan_to_num(values), color=colours, xerr=xerr)
        ax.set_title(column.replace("_", " "), fontsize=9)
        ax.tick_params(labelsize=8)
    return save(figure, path)
