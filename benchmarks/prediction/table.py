"""Print a benchmark folder's mean ± sd table as Markdown (for docs/prediction.md).

    python benchmarks/prediction/table.py benchmarks/prediction/results/kang_celltypes
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd

COLUMNS = ("pearson_delta", "pearson_delta20", "pearson_delta_pm", "cosine_logfc", "rmse", "rmse20",
           "deg_direction20", "deg_overlap20", "energy_distance", "mmd", "r2_all", "r2_top50")


def markdown(folder: Path) -> str:
    """The table of ``benchmark.csv`` with ``benchmark_sd.csv`` as ``mean ± sd`` cells; NaN as –."""
    mean = pd.read_csv(folder / "benchmark.csv", index_col="recipe")
    sd = pd.read_csv(folder / "benchmark_sd.csv", index_col="recipe").reindex_like(mean)
    columns = [c for c in COLUMNS if c in mean.columns]

    def cell(m: float, s: float) -> str:
        if not np.isfinite(m):
            return "–"
        digits = 0 if abs(m) >= 100 else 3
        return f"{m:.{digits}f}" + (f" ± {s:.{digits}f}" if np.isfinite(s) else "")

    lines = ["| | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for name in mean.index:
        lines.append(f"| {name} | " + " | ".join(cell(mean.loc[name, c], sd.loc[name, c]) for c in columns) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown(Path(sys.argv[1])))
