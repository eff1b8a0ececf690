"""What every figure shares: an Agg canvas and one way of writing it to a file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from fcrkit.errors import DataError

DPI = 120


def new_figure(width: float, height: float) -> Figure:
    """A figure drawn by Agg with constrained layout.

    A bare ``Figure`` with its own Agg canvas, not ``pyplot``: it needs no display, leaves the
    user's pyplot backend and open figures alone, and is freed like any object.
    """
    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def save(figure: Figure, path: str | Path) -> Path:
    """Write ``figure`` to ``path`` (format from the suffix; parent folders created); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=DPI, bbox_inches="tight")  # legends outside the axes stay in the file
    return path


def as_vector(values: object, name: str, func: str) -> np.ndarray:
    """A finite 1-D float array, or a :class:`DataError` naming ``name`` and what was given."""
    try:
        vector = np.asarray(values, dtype=float)
    except (TypeError, ValueError) as err:
        raise DataError(f"{func}: {name} must be numbers, one per gene ({err}).") from None
    if vector.ndim != 1 or len(vector) == 0:
        raise DataError(f"{func}: {name} must be a non-empty 1-D vector (one value per gene), got shape "
                        f"{vector.shape}.")
    if not np.isfinite(vector).all():
        raise DataError(f"{func}: {name} contains {int((~np.isfinite(vector)).sum())} NaN or infinite values.")
    return vector
