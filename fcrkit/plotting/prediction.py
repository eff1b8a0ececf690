"""Predicted against true mean expression of one condition, with the top DEGs marked."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from sklearn.metrics import r2_score

from fcrkit.errors import ConfigError, DataError
from fcrkit.plotting._figure import as_vector, new_figure, save


def _deg_indices(true: np.ndarray, control: np.ndarray | None, degs: Any, n_degs: int) -> np.ndarray:
    """The genes to mark: the first ``n_degs`` of ``degs`` if given, else the largest |true - control|."""
    func = "plot_prediction"
    if degs is not None:
        ranked = np.asarray(degs, dtype=int).ravel()
        if ranked.size and (ranked.min() < 0 or ranked.max() >= len(true)):
            raise DataError(f"{func}: degs must be gene indices in [0, {len(true)}), got values in "
                            f"[{ranked.min()}, {ranked.max()}].")
        return ranked[:n_degs]
    if control is None:
        return np.array([], dtype=int)
    return np.argsort(-np.abs(true - control), kind="stable")[:n_degs]


def _scatter(ax: Axes, x: np.ndarray, y: np.ndarray, marked: np.ndarray, names: Sequence[str] | None) -> None:
    """All genes in grey, the marked ones in red (named when ``names`` is given), and the line y = x."""
    ax.scatter(x, y, s=6, color="#999999", alpha=0.6, linewidths=0, label="all genes")
    ax.scatter(x[marked], y[marked], s=14, color="#cc3311", linewidths=0, label=f"top {len(marked)} DEGs")
    low, high = min(x.min(), y.min()), max(x.max(), y.max())
    ax.plot([low, high], [low, high], color="black", lw=0.8, ls="--", label="y = x")
    ax.tick_params(labelsize=7)
    if names is not None:
        _name_points(ax, x, y, marked, names)


#: Where a name may sit relative to its point (in points); the first free one is taken.
LABEL_OFFSETS = ((4, 2), (4, -8), (-4, 2), (-4, -8), (4, 9), (-4, 9), (4, -15), (-4, -15), (0, 16), (0, -22))
LABEL_SIZE = 6


def _name_points(ax: Axes, x: np.ndarray, y: np.ndarray, marked: np.ndarray, names: Sequence[str]) -> None:
    """Name the marked points, each at the offset whose text box overlaps least with those placed.

    DEGs crowd the ends of the diagonal, where names at one fixed offset would print over each
    other. Text boxes are estimated in points from the number of characters.
    """
    ax.get_xlim(), ax.get_ylim()  # settles the autoscaled limits, so transData maps data to the final axes
    to_points = 72.0 / ax.figure.dpi
    placed: list[tuple[float, float, float, float]] = []
    for g in marked:
        px, py = ax.transData.transform((x[g], y[g])) * to_points
        width, height = 0.6 * LABEL_SIZE * len(names[g]), LABEL_SIZE

        def box(offset: tuple[int, int], px: float = px, py: float = py, width: float = width,
                height: float = height) -> tuple[float, float, float, float]:
            left = px + offset[0] - (width if offset[0] < 0 else 0)
            return left, py + offset[1], left + width, py + offset[1] + height

        def overlap(b: tuple[float, float, float, float]) -> float:
            return sum(max(0.0, min(b[2], o[2]) - max(b[0], o[0])) * max(0.0, min(b[3], o[3]) - max(b[1], o[1]))
                       for o in placed)

        offset = min(LABEL_OFFSETS, key=lambda o: overlap(box(o)))  # min keeps the first of equal ones
        placed.append(box(offset))
        ax.annotate(names[g], (x[g], y[g]), xytext=offset, textcoords="offset points", fontsize=LABEL_SIZE,
                    color="#cc3311", ha="right" if offset[0] < 0 else "left",
                    arrowprops={"arrowstyle": "-", "lw": 0.4, "color": "#cc3311", "shrinkA": 0, "shrinkB": 2})


def _r2(true: np.ndarray, predicted: np.ndarray) -> float:
    return float(r2_score(true, predicted)) if len(true) >= 2 else float("nan")


def plot_prediction(
    true_mean: Any,
    predicted_mean: Any,
    path: str | Path,
    *,
    control_mean: Any = None,
    gene_names: Sequence[str] | None = None,
    n_degs: int = 20,
    degs: Any = None,
    title: str | None = None,
) -> Path:
    """Predicted against true mean expression of one condition, the top DEGs marked and named.

    Means are per gene, on one scale: :func:`fcrkit.metrics.mean_log_expression` of the true
    treated cells, of the predicted cells and (optionally) of the controls they were predicted
    from. The marked DEGs are the first ``n_degs`` of ``degs`` (e.g. from
    :func:`fcrkit.metrics.rank_genes` on the cells), or else the genes with the largest
    ``|true - control|``. With ``control_mean`` a second panel shows the predicted change from the
    controls against the true change, where a prediction of "no change" would sit on the x axis;
    the DEGs are named there (else in the one panel). The title gives R² over all genes and over
    the marked DEGs, as ``sklearn.metrics.r2_score(true, predicted)`` (not clipped), the
    definition of :func:`fcrkit.metrics.prediction_scores`.

    Args:
        true_mean: true mean expression, one value per gene.
        predicted_mean: predicted mean expression, same genes in the same order.
        path: file to write.
        control_mean: mean expression of the controls (used to rank DEGs and for the change panel).
        gene_names: names to label the DEGs with (default ``gene_<index>``).
        n_degs: how many DEGs to mark.
        degs: gene indices ranked best first; overrides the ranking by ``|true - control|``.
        title: first line of the title (default: "predicted vs true mean expression").

    Returns:
        The path written.

    Raises:
        DataError: the vectors or ``gene_names`` differ in length (the message gives the sizes),
            are not finite 1-D numbers, or ``degs`` holds indices out of range.
        ConfigError: ``n_degs`` is not a positive integer.
    """
    func = "plot_prediction"
    true = as_vector(true_mean, "true_mean", func)
    predicted = as_vector(predicted_mean, "predicted_mean", func)
    control = None if control_mean is None else as_vector(control_mean, "control_mean", func)
    sizes = {"true_mean": len(true), "predicted_mean": len(predicted)}
    if control is not None:
        sizes["control_mean"] = len(control)
    if gene_names is not None:
        sizes["gene_names"] = len(gene_names)
    if len(set(sizes.values())) > 1:
        listed = ", ".join(f"{name} has {n}" for name, n in sizes.items())
        raise DataError(f"{func}: every input needs one value per gene, in the same order; {listed}.")
    if isinstance(n_degs, bool) or not isinstance(n_degs, int | np.integer) or n_degs < 1:
        raise ConfigError(f"{func}: n_degs must be a positive integer, got {n_degs!r}.")
    names = [str(n) for n in gene_names] if gene_names is not None else [f"gene_{g}" for g in range(len(true))]
    marked = _deg_indices(true, control, degs, int(n_degs))

    figure = new_figure(9.0 if control is not None else 4.8, 4.4)
    axes = figure.subplots(1, 2 if control is not None else 1, squeeze=False)[0]
    # with a change panel the names go there only: genes spread out more there than along the diagonal
    _scatter(axes[0], true, predicted, marked, None if control is not None else names)
    axes[0].set_xlabel("true mean expression", fontsize=8)
    axes[0].set_ylabel("predicted mean expression", fontsize=8)
    axes[0].legend(fontsize=7, loc="upper left")
    if control is not None:
        _scatter(axes[1], true - control, predicted - control, marked, names)
        axes[1].axhline(0, color="#bbbbbb", lw=0.6)
        axes[1].set_xlabel("true change from control", fontsize=8)
        axes[1].set_ylabel("predicted change from control", fontsize=8)
    scores = f"R² all {len(true)} genes {_r2(true, predicted):.3f}"
    if len(marked):
        scores += f", top {len(marked)} DEGs {_r2(true[marked], predicted[marked]):.3f}"
    figure.suptitle(f"{title or 'predicted vs true mean expression'}\n{scores}", fontsize=10)
    return save(figure, path)
