"""FCR's interaction block where it is hard: ``fcrkit.simulate.hard_interaction``, three seeds.

Per seed, FCR (with :data:`fcrkit.models.fcr.HARD_WORLD`'s settings, or the defaults with
``--defaults``), a β-VAE from the same parts and PCA of the counts are each scored with one square
Hungarian match of all six true dimensions against six learned ones (``fcrkit.metrics.block_mcc``):
the full MCC and that of z_tx; for FCR also whether the held-out kernel-ridge block-R² matrix is
diagonal dominant (each true block best predicted by its own learned block). Prints the per-seed
table and the medians; the targets are a median FCR z_tx MCC >= 0.7, dominance in >= 2 of 3 seeds,
and FCR's full MCC >= 0.05 above both baselines.

    python benchmarks/fcr_hard_world.py [--seeds 0 1 2] [--jobs 2] [--defaults] [--out table.csv]
    python benchmarks/fcr_hard_world.py --seeds 0 --cells 1000 --epochs 1   # a quick check

Each seed runs in its own process with one torch thread (``--jobs`` at a time).
"""

from __future__ import annotations

import argparse
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

BLOCKS = ("x", "t", "tx")


def run_seed(seed: int, defaults: bool = False, n_cells: int | None = None,
             epochs: int | None = None) -> list[dict[str, Any]]:
    """The three methods' rows for one seed of the hard world (``n_cells``, ``epochs``: smaller runs)."""
    import torch

    torch.set_num_threads(1)
    import fcrkit
    from fcrkit.data.anndata import get_matrix
    from fcrkit.metrics import block_mcc, block_r2, pca_embedding
    from fcrkit.models.fcr import HARD_WORLD

    adata = fcrkit.simulate.hard_interaction(seed=seed, **({} if n_cells is None else {"n_cells": n_cells}))
    fcrkit.setup_anndata(adata, treatment_key="treatment", covariate_keys=["covariate"])
    true = {b: adata.obsm[f"z_{b}"] for b in BLOCKS}
    model_kw = {} if defaults else dict(HARD_WORLD["model"])
    train_kw = {"max_epochs": 60, "batch_size": 256, "lr": 3e-3} if defaults else dict(HARD_WORLD["train"])
    train_kw.update(seed=seed, accelerator="cpu", progress_bar=False)
    if epochs is not None:
        train_kw["max_epochs"] = epochs

    start = time.perf_counter()
    fcr = fcrkit.models.FCR(adata, n_latent={b: 2 for b in BLOCKS}, seed=seed, **model_kw)
    fcr.train(**train_kw)
    latent = fcr.get_latent_representation()
    blocks = {b: latent[f"X_fcr_{b}"] for b in BLOCKS}
    r2 = block_r2(true, blocks, regressor="kernel", seed=seed).loc[list(BLOCKS), list(BLOCKS)].to_numpy()
    dominant = all(r2[i, i] > np.delete(r2[i], i).max() for i in range(len(BLOCKS)))
    rows = [{"seed": seed, "method": "FCR", **block_mcc(true, np.hstack([blocks[b] for b in BLOCKS])),
             "dominant": dominant, "seconds": time.perf_counter() - start}]

    start = time.perf_counter()
    beta = fcrkit.models.BetaVAE(adata, n_latent=6, seed=seed)
    beta.train(**train_kw)
    rows.append({"seed": seed, "method": "β-VAE", **block_mcc(true, beta.get_latent_representation()),
                 "seconds": time.perf_counter() - start})
    pca = pca_embedding(get_matrix(adata, None), 6, seed=seed)
    rows.append({"seed": seed, "method": "PCA", **block_mcc(true, pca)})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--jobs", type=int, default=2, help="seeds run at a time, one process each")
    parser.add_argument("--defaults", action="store_true", help="FCR's default settings (the baseline)")
    parser.add_argument("--cells", type=int, default=None, help="fewer cells (a quick check; default 6000)")
    parser.add_argument("--epochs", type=int, default=None, help="other epochs than the settings' (a quick check)")
    parser.add_argument("--out", type=Path, default=None, help="also write the table as CSV")
    args = parser.parse_args()

    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        n = len(args.seeds)
        runs = list(pool.map(run_seed, args.seeds, [args.defaults] * n, [args.cells] * n, [args.epochs] * n))
    table = pd.DataFrame([row for rows in runs for row in rows])
    table = table.rename(columns={"all": "MCC", "tx": "MCC z_tx"})
    columns = ["seed", "method", "MCC", "MCC z_tx", "x", "t", "dominant", "seconds"]
    with pd.option_context("display.float_format", "{:.3f}".format, "display.width", 120):
        print(table[columns].to_string(index=False))
        medians = table.groupby("method", sort=False)[["MCC", "MCC z_tx"]].median()
        print("\nmedians over seeds\n" + medians.to_string())
    fcr = table[table["method"] == "FCR"]
    print(f"\nFCR block-R² diagonal dominant in {int(fcr['dominant'].sum())} of {len(fcr)} seeds")
    if args.out is not None:
        table.to_csv(args.out, index=False)


if __name__ == "__main__":
    main()
