"""2-D views of latent blocks, coloured by labels (covariate, treatment, condition ...).

A block with more than two dimensions is drawn through UMAP when ``umap-learn`` is installed and
through its first two principal components otherwise (``method="auto"``); ``"umap"`` and ``"pca"``
force one. A block with at most two dimensions is drawn as it is, whatever the method: its
coordinates are already the picture.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.lines import Line2D

from fcrkit.errors import DataError, OptionalDependencyError, check_choice
from fcrkit.plotting._figure import new_figure, save

METHODS = ("auto", "umap", "pca")
#: A categorical legend lists at most this many levels (the rest are counted in its last line).
MAX_LEGEND_ENTRIES = 15


def _umap(required: bool) -> ModuleType | None:
    try:
        import umap
    except ImportError:
        if required:
            raise OptionalDependencyError(
                "method='umap' needs umap-learn, which is not installed: pip install umap-learn "
                "(or use method='auto', which falls back to PCA, or method='pca')."
            ) from None
        return None
    return umap


def embed_2d(z: Any, *, method: str = "auto", seed: int = 0) -> tuple[np.ndarray, str]:
    """Two coordinates per cell to draw a latent block with.

    Args:
        z: cells x dimensions.
        method: ``"auto"`` (UMAP if ``umap-learn`` imports, else PCA), ``"umap"`` or ``"pca"``.
            Ignored for blocks of at most two dimensions, which are returned as they are (one
            dimension is padded with zeros).
        seed: random state of UMAP and PCA.

    Returns:
        The cells x 2 coordinates and what made them: ``"dim"`` (the block itself), ``"UMAP"`` or
        ``"PCA"``.

    Raises:
        ConfigError: an unknown ``method``.
        OptionalDependencyError: ``method="umap"`` without ``umap-learn``.
        DataError: ``z`` is not a finite cells x dimensions matrix with at least two cells.
    """
    check_choice("method", method, METHODS, owner="embed_2d")
    z = np.asarray(z, dtype=float)
    if z.ndim != 2 or z.shape[0] < 2 or z.shape[1] < 1 or not np.isfinite(z).all():
        raise DataError(f"embed_2d: z must be a finite cells x dimensions matrix with at least 2 cells, got "
                        f"shape {z.shape}.")
    if z.shape[1] <= 2:
        return np.column_stack([z, np.zeros((len(z), 2 - z.shape[1]))]), "dim"
    umap = _umap(required=method == "umap") if method != "pca" else None
    if umap is not None:
        return np.asarray(umap.UMAP(n_components=2, random_state=seed).fit_transform(z)), "UMAP"
    from sklearn.decomposition import PCA

    return PCA(n_components=2, random_state=seed).fit_transform(z), "PCA"


def _is_continuous(values: np.ndarray) -> bool:
    """Numbers with more distinct values than a legend can list get a colour bar instead."""
    return (np.issubdtype(values.dtype, np.number) and not np.issubdtype(values.dtype, np.bool_)
            and len(np.unique(values)) > MAX_LEGEND_ENTRIES)


def _level_colours(levels: list[str]) -> list[Any]:
    if len(levels) <= 10:
        return [colormaps["tab10"](i) for i in range(len(levels))]
    if len(levels) <= 20:
        return [colormaps["tab20"](i) for i in range(len(levels))]
    return [colormaps["turbo"](x) for x in np.linspace(0, 1, len(levels))]


def _legend(ax: Axes, levels: list[str], colours: list[Any]) -> None:
    """The levels under the axes, at most MAX_LEGEND_ENTRIES of them (long lists end in '... N more')."""
    shown = levels if len(levels) <= MAX_LEGEND_ENTRIES else levels[: MAX_LEGEND_ENTRIES - 1]
    handles = [Line2D([], [], ls="", marker="o", ms=5, color=c, label=level) for level, c in zip(shown, colours)]
    if len(shown) < len(levels):
        handles.append(Line2D([], [], ls="", label=f"... {len(levels) - len(shown)} more"))
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.04), ncol=2 if len(handles) > 4 else 1,
              fontsize=7, frameon=False, handletextpad=0.2, columnspacing=0.8)


def _categories(values: Any) -> pd.Categorical:
    """Levels in a categorical's own order (control first), else sorted; missing values become a level."""
    category = pd.Categorical(values)
    if (category.codes < 0).any():
        category = category.add_categories("(missing)").fillna("(missing)")
    return category


def _colouring(raw: Any, order: np.ndarray) -> tuple[np.ndarray, list[str] | None, list[Any] | None]:
    """The colour values of one label set in drawing ``order``, with its levels and their colours
    (None for a continuous label, drawn through a colour map)."""
    values = np.asarray(raw)
    if _is_continuous(values):
        return values[order].astype(float), None, None
    category = _categories(raw)
    levels = [str(c) for c in category.categories]
    colours = _level_colours(levels)
    return np.asarray(colours)[np.asarray(category.codes)[order]], levels, colours


def _check_cells(blocks: Mapping[str, np.ndarray], labels: Mapping[str, np.ndarray]) -> int:
    if not blocks or not labels:
        raise DataError(f"plot_blocks: need at least one block and one label set, got {len(blocks)} blocks and "
                        f"{len(labels)} label sets.")
    sizes = {f"blocks[{name!r}]": len(z) for name, z in blocks.items()}
    sizes.update({f"labels[{name!r}]": len(v) for name, v in labels.items()})
    if len(set(sizes.values())) > 1:
        listed = ", ".join(f"{name} {n}" for name, n in sizes.items())
        raise DataError(f"plot_blocks: every block and label set needs one row per cell; got {listed}.")
    return next(iter(sizes.values()))


def plot_blocks(
    blocks: Mapping[str, Any],
    labels: Mapping[str, Any],
    path: str | Path,
    *,
    method: str = "auto",
    seed: int = 0,
) -> Path:
    """A grid of 2-D views: one row per latent block, one column per label set used as colour.

    Each block is drawn by :func:`embed_2d` (so UMAP or PCA for blocks of more than two
    dimensions). Categorical labels share one colour per level down a column and get a legend
    under it (at most ``MAX_LEGEND_ENTRIES`` levels listed); numeric labels with many values get a
    colour bar. Cells are drawn in a random order so no level hides another.

    Args:
        blocks: block name -> cells x dimensions (e.g. ``{"z_x": ..., "z_t": ..., "z_tx": ...}``).
        labels: label name -> one value per cell (e.g. covariate, treatment, condition).
        path: file to write.
        method: ``"auto"``, ``"umap"`` or ``"pca"`` (see :func:`embed_2d`).
        seed: random state of the embedding and the drawing order.

    Returns:
        The path written.

    Raises:
        DataError: no blocks or labels, or blocks and label sets with different numbers of cells.
        ConfigError: an unknown ``method``.
        OptionalDependencyError: ``method="umap"`` without ``umap-learn``.
    """
    check_choice("method", method, METHODS, owner="plot_blocks")
    n_cells = _check_cells(dict(blocks), dict(labels))
    order = np.random.default_rng(seed).permutation(n_cells)
    figure = new_figure(3.2 * len(labels), 3.0 * len(blocks))
    axes = figure.subplots(len(blocks), len(labels), squeeze=False)
    colourings = {label: _colouring(raw, order) for label, raw in labels.items()}  # shared down each column
    for row, (block, z) in enumerate(blocks.items()):
        xy, how = embed_2d(z, method=method, seed=seed)
        for col, (label, (values, levels, colours)) in enumerate(colourings.items()):
            ax = axes[row, col]
            if levels is None:  # a number per cell: a colour map and a colour bar
                points = ax.scatter(xy[order, 0], xy[order, 1], c=values, s=3, cmap="viridis")
                if row == len(blocks) - 1:
                    figure.colorbar(points, ax=axes[:, col], location="bottom", shrink=0.8, label=label)
            else:
                ax.scatter(xy[order, 0], xy[order, 1], c=values, s=3, alpha=0.7, linewidths=0)
                if row == len(blocks) - 1:
                    _legend(ax, levels, colours)
            if row == 0:
                ax.set_title(f"coloured by {label}", fontsize=9)
            if col == 0:
                ax.set_ylabel(block if how == "dim" else f"{block} ({how})", fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
    return save(figure, path)
