"""Posterior families x objectives on one data set: held-out ELBO, IWELBO (k = 100) and their gap.

Trains scVI (NB likelihood, no KL warm-up, so that every objective accepts it) on 80% of a simulated
data set (:func:`fcrkit.simulate.basic`) once per (posterior family, objective) pair, with the same
seed, and scores the held-out 20% with :func:`fcrkit.metrics.likelihood_bounds`. The gap IWELBO - ELBO
estimates how far the posterior family is from the true posterior (it is zero for an exact one); the
IWELBO is the better estimate of ``log p(y)``. Prints a table (the one in docs/inference.md) and
writes CSV.

    python benchmarks/inference.py [--cells 2000] [--genes 100] [--epochs 60] [--out inference.csv]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

import fcrkit

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import report  # noqa: E402

RUNS = [  # (posterior family, objective, particles)
    ("normal", "trace_meanfield", 1),
    ("normal", "trace", 1),
    ("normal", "iwae", 5),
    ("flow", "trace_meanfield", 1),
    ("flow", "iwae", 5),
    ("delta", "trace_meanfield", 1),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cells", type=int, default=2000)
    parser.add_argument("--genes", type=int, default=100)
    parser.add_argument("--latent", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--k", type=int, default=100, help="importance samples of the IWELBO")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=None, help="CSV path")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    adata = fcrkit.simulate.basic(n_cells=args.cells, n_genes=args.genes, n_latent=args.latent, seed=args.seed)
    fcrkit.setup_anndata(adata, treatment_key="treatment", covariate_keys=["cell_type"], control_value="control")
    held_out = np.random.default_rng(args.seed).random(adata.n_obs) < 0.2
    train, test = adata[~held_out].copy(), adata[held_out].copy()
    rows = []
    for family, objective, particles in RUNS:
        model = fcrkit.models.SCVI(train, n_latent=args.latent, n_hidden=64, kl_warmup_epochs=0, posterior=family,
                                   seed=args.seed)
        start = time.perf_counter()
        model.train(max_epochs=args.epochs, batch_size=256, lr=3e-3, accelerator="cpu", seed=args.seed,
                    elbo=objective, num_particles=particles, progress_bar=False)
        seconds = time.perf_counter() - start
        bounds = fcrkit.metrics.likelihood_bounds(model, test, k=args.k, seed=args.seed).mean()
        rows.append({"posterior": family, "objective": objective if particles == 1 else f"{objective} (k={particles})",
                     "elbo": bounds["elbo"], "iwelbo": bounds["iwelbo"], "gap": bounds["iwelbo"] - bounds["elbo"],
                     "train_s": seconds})
        print(rows[-1], flush=True)
    title = (f"held-out ELBO / IWELBO (k={args.k}) per cell, nats; scVI, {args.cells} cells x {args.genes} genes, "
             f"{args.latent} latents, {args.epochs} epochs")
    report(rows, args.out, title)


if __name__ == "__main__":
    main()
