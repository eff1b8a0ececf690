"""Training throughput (cells/s) of fcrkit's SCVI and FCR against the hand-written limit and scvi-tools.

On one simulated count matrix (default 20,000 cells x 2,000 genes, CSR, written once to a temporary
h5ad), each contender trains for ``--epochs`` epochs in a fresh process with ``--threads`` torch
threads; cells/s is the number of cells over the median time of an epoch after the first
(warm-up) one, with no validation. Every contender runs with denormal floats flushed to zero, as
fcrkit's trainer does (a decoder's softmax makes many; without it a step can be 15% slower). With
``--repeats R`` every contender runs R times, interleaved with the others (so that drifts of the
machine's speed hit all alike), and the median is reported.
Contenders:

- ``fcrkit SCVI`` / ``fcrkit FCR``: the recipes, as a user runs them (``model.train``, data as CSR);
- ``hand-written SCVI (fcrkit NB)`` / ``(textbook NB)``: the same networks and loss in plain PyTorch
  (``handwritten.py``), on a dense tensor of the whole matrix (the cheapest data path), with fcrkit's
  NB kernel or the textbook one;
- ``hand-written FCR``: FCR's networks and objective written out in plain PyTorch;
- ``scvi-tools SCVI``: ``scvi.model.SCVI`` with the same architecture (1 hidden layer of 128, 10
  latents, NB, gene dispersion), when scvi-tools is installed (``pip install scvi-tools``).

    python benchmarks/throughput.py [--cells 20000 --genes 2000 --batch-sizes 512 1024 --epochs 4]

Prints the table with the ratios the performance issue asks for and writes ``--csv``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

CONTENDERS = ("fcrkit SCVI", "hand-written SCVI (fcrkit NB)", "hand-written SCVI (textbook NB)", "scvi-tools SCVI",
              "fcrkit FCR", "hand-written FCR")
KL_WARMUP = 20  # epochs, as in the SCVI recipe; FCR's is 10


def _epoch_loop(epochs: int, run_epoch) -> list[float]:
    seconds = []
    for epoch in range(epochs):
        start = time.perf_counter()
        run_epoch(epoch)
        seconds.append(time.perf_counter() - start)
    return seconds


def _hand_scvi(adata, batch_size: int, epochs: int, kernel: str, device: str) -> list[float]:
    import numpy as np
    import torch
    from handwritten import HandSCVI, scvi_step

    dense = torch.from_numpy(adata.X.toarray() if hasattr(adata.X, "toarray") else np.asarray(adata.X)).to(device)
    library = dense.sum(1, keepdim=True)
    model = HandSCVI(adata.n_vars, kernel=kernel).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    n = dense.shape[0]

    def run_epoch(epoch: int) -> None:
        order = torch.randperm(n, device=device)
        total = torch.zeros((), device=device)
        for step, start in enumerate(range(0, n, batch_size)):
            index = order[start:start + batch_size]
            kl_weight = min(1.0, (epoch + step * batch_size / n) / KL_WARMUP)
            total += scvi_step(model, optimizer, dense.index_select(0, index), library.index_select(0, index),
                               kl_weight)
        float(total)  # one host sync per epoch

    return _epoch_loop(epochs, run_epoch)


def _hand_fcr(adata, batch_size: int, epochs: int, device: str) -> list[float]:
    import numpy as np
    import torch
    from handwritten import fcr_step

    import fcrkit
    from fcrkit.data.pairing import ControlPairing
    from fcrkit.models.fcr import DEFAULT_WEIGHTS

    model = fcrkit.models.FCR(adata, seed=0)
    module = model.module.to(device)
    module.train()
    setup = model.setup
    labels = {k: torch.as_tensor(v, dtype=torch.float32, device=device)
              for k, v in setup.encode_labels(adata.obs).items()}
    dense = torch.from_numpy(adata.X.toarray() if hasattr(adata.X, "toarray") else np.asarray(adata.X)).to(device)
    library = dense.sum(1, keepdim=True)
    n = dense.shape[0]
    sampler = ControlPairing.from_anndata(adata, setup).sampler(torch.arange(n), torch.device(device))
    adversary_params = {id(p) for name in ("permutation_t", "permutation_x")
                        for p in module.regularizers[name].adversary.parameters()}
    optimizer = torch.optim.Adam([p for p in module.parameters() if id(p) not in adversary_params], lr=1e-3)
    adversaries = {name: torch.optim.Adam(module.regularizers[name].adversary.parameters(), lr=1e-3)
                   for name in ("permutation_t", "permutation_x")}
    weights = {k: v for k, v in DEFAULT_WEIGHTS.items() if k not in ("kl", "condition_kl")}

    def run_epoch(epoch: int) -> None:
        order = torch.randperm(n, device=device)
        total = torch.zeros((), device=device)
        for step, start in enumerate(range(0, n, batch_size)):
            cells = order[start:start + batch_size]
            index = torch.cat([cells, sampler.sample(cells)])
            kl_weight = min(1.0, (epoch + step * batch_size / n) / 10)
            total += fcr_step(module, optimizer, adversaries, dense.index_select(0, index),
                              library.index_select(0, index), labels["x"].index_select(0, index),
                              labels["t"].index_select(0, index), weights, kl_weight)
        float(total)

    return _epoch_loop(epochs, run_epoch)


def _fcrkit(adata, recipe: str, batch_size: int, epochs: int, device: str) -> list[float]:
    import fcrkit

    model = (fcrkit.models.SCVI(adata, n_latent=10, n_hidden=128, n_layers=1, likelihood="nb", seed=0)
             if recipe == "SCVI" else fcrkit.models.FCR(adata, seed=0))
    history = model.train(max_epochs=epochs, batch_size=batch_size, validation_fraction=0.0, seed=0,
                          accelerator=device, progress_bar=False)
    return history.epoch_seconds


def _scvi_tools(adata, batch_size: int, epochs: int, device: str) -> list[float]:
    import scvi
    from lightning.pytorch.callbacks import Callback

    class EpochTimer(Callback):
        def __init__(self):
            self.seconds: list[float] = []

        def on_train_epoch_start(self, trainer, module):
            self.start = time.perf_counter()

        def on_train_epoch_end(self, trainer, module):
            self.seconds.append(time.perf_counter() - self.start)

    adata = adata.copy()
    scvi.model.SCVI.setup_anndata(adata)
    model = scvi.model.SCVI(adata, n_hidden=128, n_latent=10, n_layers=1, dropout_rate=0.1, dispersion="gene",
                            gene_likelihood="nb")
    timer = EpochTimer()
    model.train(max_epochs=epochs, batch_size=batch_size, train_size=1.0, accelerator=device, devices=1,
                enable_progress_bar=False, callbacks=[timer], logger=False, enable_checkpointing=False)
    return timer.seconds


def worker(args: argparse.Namespace) -> None:
    """Run one contender in this process and print its epoch times as JSON."""
    import anndata as ad
    import torch

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    torch.set_flush_denormal(True)  # as fcrkit's trainer does, for every contender alike
    adata = ad.read_h5ad(args.data)
    name, device = args.worker, args.device
    if name.startswith("fcrkit"):
        seconds = _fcrkit(adata, name.split()[1], args.batch_size, args.epochs, device)
    elif name == "hand-written FCR":
        seconds = _hand_fcr(adata, args.batch_size, args.epochs, device)
    elif name.startswith("hand-written SCVI"):
        kernel = "fcrkit" if "fcrkit" in name else "textbook"
        seconds = _hand_scvi(adata, args.batch_size, args.epochs, kernel, device)
    else:
        seconds = _scvi_tools(adata, args.batch_size, args.epochs, device)
    print(json.dumps({"seconds": seconds, "cells": adata.n_obs}))


def _run(name: str, data: Path, batch_size: int, args: argparse.Namespace) -> float | None:
    """Cells/s of one run of contender ``name`` in a fresh process (None when it cannot run here)."""
    if name == "scvi-tools SCVI" and subprocess.run([sys.executable, "-c", "import scvi"],
                                                     capture_output=True).returncode != 0:
        print(f"  {name}: skipped (scvi-tools is not installed: pip install scvi-tools)")
        return None
    command = [sys.executable, __file__, "--worker", name, "--data", str(data), "--batch-size", str(batch_size),
               "--epochs", str(args.epochs), "--threads", str(args.threads), "--device", args.device]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{name} failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    speed = result["cells"] / statistics.median(result["seconds"][1:])
    print(f"  {name:34s} batch {batch_size:5d}: {speed:9,.0f} cells/s "
          f"(epochs: {', '.join(f'{s:.2f}' for s in result['seconds'])} s)", flush=True)
    return speed


def _ratios(rows: list[dict]) -> list[dict]:
    """Per batch size: fcrkit SCVI vs scvi-tools, and each recipe's time per cell vs its hand-written limit."""
    out = []
    for batch in sorted({r["batch"] for r in rows}):
        speed = {r["contender"]: r["cells/s"] for r in rows if r["batch"] == batch}
        hand_scvi = max((v for k, v in speed.items() if k.startswith("hand-written SCVI")), default=None)
        entries = {
            "SCVI speed-up over scvi-tools (goal >= 1.5)": ("fcrkit SCVI", speed.get("scvi-tools SCVI"), True),
            "SCVI time / hand-written (goal <= 1.15)": ("fcrkit SCVI", hand_scvi, False),
            "FCR time / hand-written (goal <= 1.3)": ("fcrkit FCR", speed.get("hand-written FCR"), False),
        }
        for what, (ours, other, speedup) in entries.items():
            if other and ours in speed:
                value = speed[ours] / other if speedup else other / speed[ours]
                out.append({"batch": batch, "ratio": what, "value": value})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cells", type=int, default=20_000)
    parser.add_argument("--genes", type=int, default=2_000)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[512, 1024])
    parser.add_argument("--epochs", type=int, default=4, help="epochs per contender; the first is warm-up")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each contender, interleaved; median")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--contenders", nargs="+", default=list(CONTENDERS), choices=CONTENDERS, metavar="NAME")
    parser.add_argument("--csv", default="throughput.csv")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--batch-size", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    if args.epochs < 2:
        parser.error("--epochs must be at least 2 (the first epoch is warm-up)")

    from common import report, simulated_counts

    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "counts.h5ad"
        adata = simulated_counts(args.cells, args.genes, seed=0)
        adata.write_h5ad(data)
        density = adata.X.nnz / (adata.n_obs * adata.n_vars)
        print(f"{args.cells:,} cells x {args.genes:,} genes, {density:.0%} non-zero, {args.threads} threads, "
              f"{args.device}, {args.epochs} epochs each (first is warm-up)")
        runs: dict[tuple[str, int], list[float]] = {}
        for repeat in range(args.repeats):
            print(f"round {repeat + 1} of {args.repeats}")
            for batch in args.batch_sizes:
                for name in args.contenders:
                    if (speed := _run(name, data, batch, args)) is not None:
                        runs.setdefault((name, batch), []).append(speed)
    rows = [{"contender": name, "batch": batch, "cells/s": statistics.median(speeds), "min": min(speeds),
             "max": max(speeds)} for (name, batch), speeds in runs.items()]
    rows.sort(key=lambda row: (row["batch"], args.contenders.index(row["contender"])))
    report(rows, args.csv, f"Throughput (cells/s after warm-up; median of {args.repeats} runs, min and max)")
    if ratios := _ratios(rows):
        report(ratios, None, "Ratios")


if __name__ == "__main__":
    main()
