"""Many perturbations: peak RSS and seconds per epoch at 1,000 / 10,000 / 20,000 perturbations.

50,000 simulated cells x 100 genes (counts), each cell a control or one single perturbation (every
perturbation has cells), 32 latent dimensions, batch 1024, one epoch. For each size and model a fresh
subprocess builds the data, registers it (``setup_anndata``), builds the model and trains one epoch, so
each peak RSS is that size's own. Models:

- ``sparse_additive``: a VAE whose ``sparse_additive`` combiner adds ``Σ_p d_p (σ(m_p) ⊙ e_p)`` to the
  basal latent, read from the cells' treatment indices (``fcrkit.data.labels.treatment_entries``);
- ``SAMSVAE`` and ``SVAE`` (``fcrkit.models``) where they exist and accept the size; otherwise the row
  says "not available" or the error.

Columns: ``label_mb`` the stored labels of the data (indices and doses), ``dense_label_mb`` what a dense
``cells x perturbations`` float32 matrix would take, ``params_mb`` the model's parameters, ``setup_s``
registering the data and building the model, ``epoch_s`` one training epoch (validation included).
Each child runs under an address-space limit (``--memory-limit-gb``) so that a model that would need a
``cells x perturbations`` or ``batch x perturbations x dims`` tensor fails with an error instead of
exhausting the machine, and is stopped after ``--timeout`` seconds (the row then gives the peak RSS it
had reached, read from ``/proc``, and says so).

    python benchmarks/many_perturbations.py [--perturbations 1000 10000 20000] [--cells 50000]
                                            [--models sparse_additive SAMSVAE SVAE] [--out many.csv]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import peak_rss_gb, report  # noqa: E402

MODELS = ("sparse_additive", "SAMSVAE", "SVAE")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--perturbations", type=int, nargs="+", default=[1_000, 10_000, 20_000])
    parser.add_argument("--cells", type=int, default=50_000)
    parser.add_argument("--genes", type=int, default=100)
    parser.add_argument("--latent", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--memory-limit-gb", type=float, default=8.0, help="address-space limit of each child")
    parser.add_argument("--threads", type=int, default=1, help="torch threads in each child")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds before a child is stopped")
    parser.add_argument("--out", type=Path, default=None, help="also write the table as CSV")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return _child(args)
    rows = []
    for size in args.perturbations:
        for name in args.models:
            print(f"{name}, {size} perturbations ...", flush=True)
            rows.append(_run(args, name, size))
    report(rows, args.out, f"One epoch, {args.cells} cells x {args.genes} genes, {args.latent} latent dims, "
                           f"batch {args.batch_size}, torch threads {args.threads}")


def _run(args: argparse.Namespace, name: str, size: int) -> dict:
    """One measurement in a fresh interpreter; its last stdout line is a JSON row."""
    command = [sys.executable, __file__, "--child", name, "--size", str(size), "--cells", str(args.cells),
               "--genes", str(args.genes), "--latent", str(args.latent), "--batch-size", str(args.batch_size),
               "--memory-limit-gb", str(args.memory_limit_gb), "--threads", str(args.threads)]
    start = time.perf_counter()
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = child.communicate(timeout=args.timeout)
    except subprocess.TimeoutExpired:
        peak = _peak_of(child.pid)
        child.kill()
        child.communicate()
        return {"model": name, "perturbations": size, "cells": args.cells, "peak_rss_gb": peak,
                "status": f"stopped after {args.timeout:.0f} s (epoch unfinished; peak RSS so far)"}
    lines = out.strip().splitlines()
    if child.returncode or not lines:
        last = (err.strip().splitlines() or ["no output"])[-1]
        row = {"model": name, "perturbations": size, "status": f"failed (exit {child.returncode}): {last[:120]}"}
    else:
        row = json.loads(lines[-1])
    print(f"  {row} ({time.perf_counter() - start:.0f} s)", flush=True)
    return row


def _peak_of(pid: int) -> float:
    """Peak RSS in GB of a running process (Linux VmHWM), NaN where unknown."""
    try:
        with open(f"/proc/{pid}/status") as status:
            line = next(line for line in status if line.startswith("VmHWM"))
        return round(int(line.split()[1]) / 1e6, 3)
    except (OSError, StopIteration):
        return float("nan")


def simulate(n_cells: int, n_genes: int, n_perturbations: int, *, seed: int = 0):
    """Counts of ``n_cells`` cells: a tenth controls, the rest spread over single perturbations.

    A 10-dimensional basal state, each perturbation shifting one or two of its dimensions, a random
    linear map to log rates, Gamma-Poisson (negative binomial) counts.
    """
    import anndata as ad
    import pandas as pd

    rng = np.random.default_rng(seed)
    d = 10
    n_control = n_cells // 10
    which = np.r_[np.full(n_control, -1), np.arange(n_cells - n_control) % n_perturbations]
    effects = np.zeros((n_perturbations, d), dtype=np.float32)
    for k in range(2):  # first target for every perturbation, a second for half of them
        rows = np.arange(n_perturbations) if k == 0 else np.flatnonzero(rng.random(n_perturbations) < 0.5)
        effects[rows, rng.integers(0, d, rows.size)] += rng.choice([-1.5, 1.5], rows.size)
    z = rng.standard_normal((n_cells, d)).astype(np.float32)
    z[n_control:] += effects[which[n_control:]]
    loadings = rng.normal(0.0, 0.4, (d, n_genes)).astype(np.float32)
    rate = np.exp(1.0 + z @ loadings)
    counts = rng.poisson(rate * rng.gamma(5.0, 1 / 5.0, rate.shape)).astype(np.float32)
    names = np.array([f"p{i:05d}" for i in range(n_perturbations)], dtype=object)
    treatment = np.where(which < 0, "control", names[np.maximum(which, 0)])
    obs = pd.DataFrame({"treatment": treatment}, index=[f"cell_{i}" for i in range(n_cells)])
    return ad.AnnData(counts, obs=obs, var=pd.DataFrame(index=[f"g{j}" for j in range(n_genes)]))


def _build(name: str, adata, latent: int):
    """The model ``name`` on ``adata``, or a string saying why there is none."""
    import fcrkit

    if name == "sparse_additive":
        spec = {"name": "sparse_additive_vae", "likelihood": "nb", "blocks": [{"name": "z", "dim": latent}],
                "decoder": {"name": "mlp", "n_hidden": 128},
                "combiner": {"name": "sparse_additive", "conditions": ["t"], "basal": "z"}}
        return fcrkit.compose(spec, adata, seed=0)
    recipe = getattr(fcrkit.models, name, None)
    if recipe is None:
        return f"not available (fcrkit.models.{name} does not exist in this version)"
    return recipe(adata, n_latent=latent, seed=0)


def _child(args: argparse.Namespace) -> None:
    limit = int(args.memory_limit_gb * 2**30)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    import torch

    import fcrkit

    torch.set_num_threads(args.threads)
    row: dict = {"model": args.child, "perturbations": args.size, "cells": args.cells}
    adata = simulate(args.cells, args.genes, args.size)
    row["dense_label_mb"] = round(args.cells * args.size * 4 / 1e6, 1)
    try:
        start = time.perf_counter()
        fcrkit.setup_anndata(adata, treatment_key="treatment", control_value="control")
        model = _build(args.child, adata, args.latent)
        if isinstance(model, str):
            print(json.dumps({**row, "status": model}))
            return
        setup_s = time.perf_counter() - start
        row["params_mb"] = round(sum(p.numel() * p.element_size() for p in model.module.parameters()) / 1e6, 1)
        start = time.perf_counter()
        model.train(max_epochs=1, batch_size=args.batch_size, seed=0, accelerator="cpu", progress_bar=False)
        row.update(setup_s=round(setup_s, 1), epoch_s=round(time.perf_counter() - start, 1), status="ok")
        row["peak_rss_gb"] = round(peak_rss_gb(), 3)
        stored = fcrkit.data.cell_data(adata, model.setup).labels  # measured after the peak: not in it
        row["label_mb"] = round(_label_bytes(stored) / 1e6, 2)
    except Exception as error:  # noqa: BLE001 - the row says what failed, the other sizes still run
        row["status"] = f"error: {type(error).__name__}: {str(error).splitlines()[0][:120] if str(error) else ''}"
        row["peak_rss_gb"] = round(peak_rss_gb(), 3)
    print(json.dumps(row))


def _label_bytes(labels) -> int:
    """Bytes of a CellData's stored labels (indices and doses; dense tensors in older versions)."""
    nbytes = getattr(labels, "nbytes", None)
    if isinstance(nbytes, int):
        return nbytes
    return sum(t.numel() * t.element_size() for t in labels.values())


if __name__ == "__main__":
    os.environ.setdefault("FCRKIT_PROGRESS", "0")
    main()
