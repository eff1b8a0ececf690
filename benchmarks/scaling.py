"""How the cost of an epoch grows with cells and with genes: it should grow linearly in both.

Trains fcrkit's ``SCVI`` recipe (1 hidden layer of 128, 10 latents, NB, batch 512) for ``--epochs``
epochs on simulated CSR counts and reports the median epoch after the first (warm-up) one: first with the number of
cells growing at 2,000 genes, then with the number of genes growing at 20,000 cells. ``s/epoch per
unit`` divides by the cells (or genes) relative to the smallest size: flat means linear.

    python benchmarks/scaling.py [--cells 10000 50000 100000 200000 --genes 1000 2000 5000 10000]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def epoch_seconds(n_cells: int, n_genes: int, batch_size: int, epochs: int, device: str) -> float:
    """Median seconds of a training epoch of SCVI after the first, on simulated counts of this size."""
    import statistics

    from common import simulated_counts

    import fcrkit

    adata = simulated_counts(n_cells, n_genes, seed=0)
    model = fcrkit.models.SCVI(adata, n_latent=10, n_hidden=128, n_layers=1, likelihood="nb", seed=0)
    history = model.train(max_epochs=epochs, batch_size=batch_size, validation_fraction=0.0, seed=0,
                          accelerator=device, progress_bar=False)
    return statistics.median(history.epoch_seconds[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cells", type=int, nargs="+", default=[10_000, 50_000, 100_000, 200_000])
    parser.add_argument("--genes", type=int, nargs="+", default=[1_000, 2_000, 5_000, 10_000])
    parser.add_argument("--fixed-genes", type=int, default=2_000)
    parser.add_argument("--fixed-cells", type=int, default=20_000)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--epochs", type=int, default=3, help="epochs per size; the first is warm-up")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--csv", default="scaling.csv")
    args = parser.parse_args()
    if args.epochs < 2:
        parser.error("--epochs must be at least 2 (the first epoch is warm-up)")

    import torch
    from common import report

    torch.set_num_threads(args.threads)
    rows = []
    for axis, sizes in (("cells", args.cells), ("genes", args.genes)):
        for size in sizes:
            cells, genes = (size, args.fixed_genes) if axis == "cells" else (args.fixed_cells, size)
            seconds = epoch_seconds(cells, genes, args.batch_size, args.epochs, args.device)
            rows.append({"grows": axis, "cells": cells, "genes": genes, "s/epoch": seconds,
                         "s/epoch per unit": seconds / (size / sizes[0]), "cells/s": cells / seconds})
            print(f"  {cells:8,d} cells x {genes:6,d} genes: {seconds:7.2f} s/epoch", flush=True)
    report(rows, args.csv, f"Time per epoch (SCVI, batch {args.batch_size}, {args.threads} threads, {args.device})")


if __name__ == "__main__":
    main()
