"""Training curves: the loss terms a :class:`~fcrkit.train.trainer.History` recorded, epoch by epoch."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.ticker import MaxNLocator

from fcrkit.errors import DataError
from fcrkit.plotting._figure import new_figure, save
from fcrkit.train.trainer import History

#: Panel titles of the terms every History has; any other term is a regulariser's (unweighted) loss.
TERM_TITLES = {
    "loss": "total loss (training objective)",
    "elbo": "-ELBO per cell (training)",
    "validation_loss": "-ELBO per cell (validation)",
}
PANELS_PER_ROW = 4


def _as_histories(history: History | Mapping[str, History], func: str) -> dict[str, History]:
    histories = {"": history} if isinstance(history, History) else dict(history)
    if not histories:
        raise DataError(f"{func}: no histories given; pass a History (model.history) or a mapping name -> History.")
    for name, h in histories.items():
        if not isinstance(h, History):
            raise DataError(f"{func}: {name or 'history'} is a {type(h).__name__}, not a History; pass "
                            "model.history or the value model.train(...) returned.")
        if not any(h.values.values()):
            raise DataError(f"{func}: history {name!r} has no recorded epochs; train the model first.")
    return histories


def loss_terms(histories: Mapping[str, History]) -> list[str]:
    """The terms to draw, one panel each: total loss, -ELBO, the regularisers, validation loss.

    Args:
        histories: model name -> its training History.

    Returns:
        The term names with values in at least one history, in that order (regularisers in the
        order they were recorded).
    """
    recorded: dict[str, None] = {}
    for history in histories.values():
        recorded.update(dict.fromkeys(k for k, v in history.values.items() if v))
    first, last = ["loss", "elbo"], ["validation_loss"]
    return ([t for t in first if t in recorded] + [t for t in recorded if t not in first + last]
            + [t for t in last if t in recorded])


def _draw(ax: Axes, histories: Mapping[str, History], term: str, fallback: str | None = None) -> None:
    """One line per run of ``term`` (of ``fallback`` for a run without it), one colour per run."""
    for colour, (name, history) in enumerate(histories.items()):
        values = history.values.get(term) or (history.values.get(fallback) if fallback else None)
        if values:
            ax.plot(np.arange(1, len(values) + 1), values, color=f"C{colour}", label=name or None)


def plot_training_curves(history: History | Mapping[str, History], path: str | Path) -> Path:
    """One panel per loss term of a training run: total loss, -ELBO, each regulariser, validation loss.

    Regulariser panels show the unweighted value the trainer recorded (the total adds them times
    their weights). Several runs (e.g. one per model) share panels: one coloured line per run,
    drawn in the panels of the terms it has.

    Args:
        history: a :class:`~fcrkit.train.trainer.History` (``model.history``) or a mapping run name ->
            History.
        path: file to write (PNG by default; the suffix picks the format).

    Returns:
        The path written.

    Raises:
        DataError: no history, something that is not a History, or a history with no epochs.
    """
    histories = _as_histories(history, "plot_training_curves")
    terms = loss_terms(histories)
    n_cols = min(len(terms), PANELS_PER_ROW)
    n_rows = math.ceil(len(terms) / n_cols)
    figure = new_figure(3.2 * n_cols, 2.5 * n_rows)
    axes = figure.subplots(n_rows, n_cols, squeeze=False).ravel()
    for ax, term in zip(axes, terms):
        _draw(ax, histories, term)
        ax.set_title(TERM_TITLES.get(term, f"{term} (unweighted)"), fontsize=9)
        ax.set_xlabel("epoch", fontsize=8)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.tick_params(labelsize=7)
    for ax in axes[len(terms):]:
        ax.set_visible(False)
    if len(histories) > 1:
        axes[0].legend(fontsize=7)
    return save(figure, path)


def plot_histories(histories: Mapping[str, History], path: str | Path, *, key: str = "validation_loss") -> Path:
    """One curve of one term (by default the validation -ELBO per cell) per run, against epochs.

    Args:
        histories: run name -> History.
        path: file to write.
        key: the term; a history without it shows its total ``loss`` instead.

    Returns:
        The path written.
    """
    histories = _as_histories(histories, "plot_histories")
    figure = new_figure(6, 4)
    ax = figure.subplots()
    _draw(ax, histories, key, fallback="loss")
    ax.set_xlabel("epoch")
    ax.set_ylabel(key.replace("_", " "))
    if len(histories) > 1:
        ax.legend()
    return save(figure, path)
