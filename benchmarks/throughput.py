"""Training throughput (cells/s) of fcrkit's SCVI and FCR against the hand-written limit and scvi-tools.

On one simulated count matrix (default 20,000 cells x 2,000 genes, CSR, written once to a temporary
h5ad), two kinds of measurement run, each in a fresh process with ``--threads`` torch threads and
denormal floats flushed to zero (as fcrkit's trainer does; a decoder's softmax makes many):

- **Whole runs** (``--contenders``): each trains for ``--epochs`` epochs; cells/s is the number of
  cells over the median time of an epoch after the first (warm-up) one, with no validation.

  - ``fcrkit SCVI`` / ``fcrkit FCR``: the recipes, as a user runs them (``model.train``, data as CSR);
  - ``hand-written SCVI (fcrkit NB)`` / ``(textbook NB)``: the same networks and loss in plain
    PyTorch (``handwritten.py``), on a dense tensor of the whole matrix (the cheapest data path),
    with fcrkit's NB kernel or the textbook one;
  - ``hand-written FCR``: FCR's networks and objective written out in plain PyTorch;
  - ``scvi-tools SCVI``: ``scvi.model.SCVI`` with the same architecture (1 hidden layer of 128, 10
    latents, NB, gene dispersion), when scvi-tools is installed (``pip install scvi-tools``).

- **Paired steps** (``--paired``): fcrkit's training step (``Trainer.step`` with its CSR data path)
  and its hand-written twin take turns, minibatch by minibatch, in one process; the ratio of their
  total times after the warm-up epoch is the "step within 1.15x / 1.3x of hand-written" figure. On a
  shared 2-core machine whose speed drifts by up to 20% from one minute to the next, whole runs in
  separate processes cannot resolve a 5% difference; taking turns step by step can.

Every process runs with glibc's malloc thresholds fixed (``STEADY_MALLOC``), so that returning
freed memory to the OS and faulting it back in, which glibc's adaptive thresholds do more in some
runs than in others, does not decide the ratios. With ``--repeats R`` everything runs R times,
interleaved (so that drifts hit all alike), and medians are reported (with min and max).

    python benchmarks/throughput.py [--cells 20000 --genes 2000 --batch-sizes 512 1024 --epochs 4]

Prints the cells/s table and the ratios the performance issue asks for, and writes ``--csv`` (and
``<csv stem>-ratios.csv``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

CONTENDERS = ("fcrkit SCVI", "hand-written SCVI (fcrkit NB)", "hand-written SCVI (textbook NB)", "scvi-tools SCVI",
              "fcrkit FCR", "hand-written FCR")
# glibc's malloc hands freed minibatch-sized blocks back to the OS and faults them in again on the
# next step; how often depends on its adaptive thresholds, so the same run cost 0.3 s or 1.7 s of
# system time (up to 15% of the run) from one run to the next. Fixed thresholds keep freed blocks
# for reuse, for every contender alike (--glibc-malloc-defaults measures without them).
STEADY_MALLOC = {"MALLOC_MMAP_THRESHOLD_": str(32 * 2**20), "MALLOC_TRIM_THRESHOLD_": str(4 * 2**30)}
KL_WARMUP = {"SCVI": 20, "FCR": 10}  # epochs, as in the recipes


def _dense(adata, device: str):
    """The whole count matrix as one dense tensor, and the library sizes (the hand-written data path)."""
    import numpy as np
    import torch

    dense = torch.from_numpy(adata.X.toarray() if hasattr(adata.X, "toarray") else np.asarray(adata.X)).to(device)
    return dense, dense.sum(1, keepdim=True)


def _hand_scvi(adata, kernel: str, device: str) -> Callable:
    """A hand-written SCVI step: ``step(cells, epoch)`` trains on the rows ``cells``."""
    import torch
    from handwritten import HandSCVI, scvi_step

    dense, library = _dense(adata, device)
    model = HandSCVI(adata.n_vars, kernel=kernel).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)

    def step(cells, epoch: float):
        kl_weight = min(1.0, epoch / KL_WARMUP["SCVI"])
        return scvi_step(model, optimizer, dense.index_select(0, cells), library.index_select(0, cells), kl_weight)

    return step


def _hand_fcr(adata, device: str) -> Callable:
    """A hand-written FCR step over the networks of a built ``FCR`` model, with control partners."""
    import torch
    from handwritten import fcr_optimizers, fcr_step

    import fcrkit
    from fcrkit.data.pairing import ControlPairing
    from fcrkit.models.fcr import DEFAULT_WEIGHTS

    model = fcrkit.models.FCR(adata, seed=0)
    module = model.module.to(device)
    module.train()
    labels = {k: torch.as_tensor(v.dense(), device=device)  # the hand-written twin reads dense labels
              for k, v in model.setup.encode_labels(adata.obs).items()}
    dense, library = _dense(adata, device)
    sampler = ControlPairing.from_anndata(adata, model.setup).sampler(torch.arange(adata.n_obs), torch.device(device))
    optimizer, adversaries = fcr_optimizers(module)
    weights = {k: v for k, v in DEFAULT_WEIGHTS.items() if k not in ("kl", "condition_kl")}

    def step(cells, epoch: float):
        index = torch.cat([cells, sampler.sample(cells)])
        return fcr_step(module, optimizer, adversaries, dense.index_select(0, index), library.index_select(0, index),
                        labels["x"].index_select(0, index), labels["t"].index_select(0, index), weights,
                        min(1.0, epoch / KL_WARMUP["FCR"]))

    return step


def _fcrkit_step(adata, recipe: str, batch_size: int, device: str) -> Callable:
    """fcrkit's own training step (``Trainer.step``) with its data path (CSR rows cut per minibatch)."""
    import torch

    from fcrkit.data.backed import cell_data
    from fcrkit.data.pairing import ControlPairing
    from fcrkit.train.trainer import Trainer, TrainingPlan

    model = _fcrkit_model(adata, recipe)
    model.module.to(device).train()
    data = cell_data(model.adata, model.setup, device=torch.device(device))
    plan = TrainingPlan(batch_size=batch_size, validation_fraction=0.0, seed=0)
    pairing = ControlPairing.for_mode(model.adata, model.setup, model.spec.control_pairing)
    trainer = Trainer(model.module, data, plan, pairing)
    if pairing is not None:
        trainer.sampler = pairing.sampler(torch.arange(adata.n_obs, device=device), torch.device(device))
    generator = torch.Generator(device=device).manual_seed(0)

    def step(cells, epoch: float):
        return trainer.step(data.gather(cells), adata.n_obs, epoch, generator)["loss"]

    return step


def _hand_written(name: str, adata, device: str) -> Callable:
    if name == "hand-written FCR":
        return _hand_fcr(adata, device)
    return _hand_scvi(adata, "fcrkit" if "fcrkit" in name else "textbook", device)


def _minibatches(n: int, batch_size: int, epoch: int, device: str) -> Iterator[tuple[object, float]]:
    """One epoch's shuffled minibatches of ``range(n)``, each with the fractional epoch it starts at."""
    import torch

    order = torch.randperm(n, device=device)
    for first in range(0, n, batch_size):
        yield order[first:first + batch_size], epoch + first / n


def _epochs(step: Callable, n: int, batch_size: int, epochs: int, device: str) -> list[float]:
    """Seconds of each of ``epochs`` epochs of ``step`` over shuffled minibatches (one host sync an epoch)."""
    import torch

    seconds = []
    for epoch in range(epochs):
        start = time.perf_counter()
        total = torch.zeros((), device=device)
        for cells, at in _minibatches(n, batch_size, epoch, device):
            total += step(cells, at)
        float(total)
        seconds.append(time.perf_counter() - start)
    return seconds


def _paired(adata, recipe: str, batch_size: int, epochs: int, device: str) -> dict[str, float]:
    """fcrkit's step and its hand-written twin in alternation, minibatch by minibatch, in one process.

    Both see the same minibatches in the same order; the machine's drifts in speed (up to 20% from
    one minute to the next on a shared 2-core VM) hit both alike. Returns the seconds per epoch of
    each, summed over the epochs after the first (warm-up) one.
    """
    import torch

    ours = _fcrkit_step(adata, recipe, batch_size, device)
    hand = _hand_written("hand-written FCR" if recipe == "FCR" else "hand-written SCVI (fcrkit NB)",
                         adata, device)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    n, spent = adata.n_obs, {"fcrkit": 0.0, "hand": 0.0}
    for epoch in range(epochs):
        for cells, at in _minibatches(n, batch_size, epoch, device):
            for who, step in (("fcrkit", ours), ("hand", hand)):
                sync()
                start = time.perf_counter()
                step(cells, at)
                sync()
                if epoch:
                    spent[who] += time.perf_counter() - start
    return {who: seconds / (epochs - 1) for who, seconds in spent.items()}


def _fcrkit_model(adata, recipe: str):
    import fcrkit

    if recipe == "SCVI":
        return fcrkit.models.SCVI(adata, n_latent=10, n_hidden=128, n_layers=1, likelihood="nb", seed=0)
    return fcrkit.models.FCR(adata, seed=0)


def _fcrkit(adata, recipe: str, batch_size: int, epochs: int, device: str) -> list[float]:
    history = _fcrkit_model(adata, recipe).train(max_epochs=epochs, batch_size=batch_size, validation_fraction=0.0,
                                                 seed=0, accelerator=device, progress_bar=False)
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
    """Run one contender (or one paired measurement) in this process and print its result as JSON."""
    import anndata as ad
    import torch

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    torch.set_flush_denormal(True)  # as fcrkit's trainer does, for every contender alike
    adata = ad.read_h5ad(args.data)
    name, device = args.worker, args.device
    if name.startswith("paired"):
        print(json.dumps({"paired": _paired(adata, name.split()[1], args.batch_size, args.epochs, device)}))
        return
    if name.startswith("fcrkit"):
        seconds = _fcrkit(adata, name.split()[1], args.batch_size, args.epochs, device)
    elif name.startswith("hand-written"):
        seconds = _epochs(_hand_written(name, adata, device), adata.n_obs, args.batch_size,
                          args.epochs, device)
    else:
        seconds = _scvi_tools(adata, args.batch_size, args.epochs, device)
    print(json.dumps({"seconds": seconds, "cells": adata.n_obs}))


def _subprocess(name: str, data: Path, batch_size: int, args: argparse.Namespace) -> dict:
    command = [sys.executable, __file__, "--worker", name, "--data", str(data), "--batch-size", str(batch_size),
               "--epochs", str(args.epochs), "--threads", str(args.threads), "--device", args.device]
    env = os.environ if args.glibc_malloc_defaults else {**os.environ, **STEADY_MALLOC}
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"{name} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _run(name: str, data: Path, batch_size: int, args: argparse.Namespace) -> float | None:
    """Cells/s of one run of contender ``name`` in a fresh process (None when it cannot run here)."""
    if name == "scvi-tools SCVI" and subprocess.run([sys.executable, "-c", "import scvi"],
                                                     capture_output=True).returncode != 0:
        print(f"  {name}: skipped (scvi-tools is not installed: pip install scvi-tools)")
        return None
    result = _subprocess(name, data, batch_size, args)
    speed = result["cells"] / statistics.median(result["seconds"][1:])
    print(f"  {name:34s} batch {batch_size:5d}: {speed:9,.0f} cells/s "
          f"(epochs: {', '.join(f'{s:.2f}' for s in result['seconds'])} s)", flush=True)
    return speed


def _run_paired(recipe: str, data: Path, batch_size: int, args: argparse.Namespace) -> float:
    """fcrkit's step time over its hand-written twin's, measured in alternation (see :func:`_paired`)."""
    seconds = _subprocess(f"paired {recipe}", data, batch_size, args)["paired"]
    ratio = seconds["fcrkit"] / seconds["hand"]
    print(f"  {'paired ' + recipe + ' steps':34s} batch {batch_size:5d}: fcrkit {seconds['fcrkit']:.2f} s/epoch, "
          f"hand-written {seconds['hand']:.2f} s/epoch, ratio {ratio:.3f}", flush=True)
    return ratio


def _ratios(rows: list[dict], paired: dict[tuple[str, int], list[float]]) -> list[dict]:
    """Per batch size: fcrkit SCVI's speed-up over scvi-tools (whole runs), and each recipe's step time
    over its hand-written twin's (paired runs; median, min and max over the repeats)."""
    goals = {"SCVI": 1.15, "FCR": 1.3}
    out = []
    for batch in sorted({r["batch"] for r in rows} | {b for _, b in paired}):
        speed = {r["contender"]: r["cells/s"] for r in rows if r["batch"] == batch}
        if "fcrkit SCVI" in speed and speed.get("scvi-tools SCVI"):
            value = speed["fcrkit SCVI"] / speed["scvi-tools SCVI"]
            out.append({"batch": batch, "ratio": "SCVI speed-up over scvi-tools (goal >= 1.5)", "value": value,
                        "min": math.nan, "max": math.nan})
        for recipe, goal in goals.items():
            if ratios := paired.get((recipe, batch)):
                out.append({"batch": batch, "ratio": f"{recipe} step time / hand-written (goal <= {goal})",
                            "value": statistics.median(ratios), "min": min(ratios), "max": max(ratios)})
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
    parser.add_argument("--contenders", nargs="*", default=list(CONTENDERS), choices=CONTENDERS, metavar="NAME",
                        help="whole training runs to time, each in its own process")
    parser.add_argument("--paired", nargs="*", default=["SCVI", "FCR"], choices=["SCVI", "FCR"], metavar="RECIPE",
                        help="recipes whose step to time in alternation with its hand-written twin")
    parser.add_argument("--glibc-malloc-defaults", action="store_true",
                        help="run the contenders with glibc's adaptive malloc thresholds (see STEADY_MALLOC)")
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
        paired: dict[tuple[str, int], list[float]] = {}
        for repeat in range(args.repeats):
            print(f"round {repeat + 1} of {args.repeats}")
            for batch in args.batch_sizes:
                for name in args.contenders:
                    if (speed := _run(name, data, batch, args)) is not None:
                        runs.setdefault((name, batch), []).append(speed)
                for recipe in args.paired:
                    paired.setdefault((recipe, batch), []).append(_run_paired(recipe, data, batch, args))
    rows = [{"contender": name, "batch": batch, "cells/s": statistics.median(speeds), "min": min(speeds),
             "max": max(speeds)} for (name, batch), speeds in runs.items()]
    rows.sort(key=lambda row: (row["batch"], args.contenders.index(row["contender"])))
    if rows:
        report(rows, args.csv, f"Throughput (cells/s after warm-up; median of {args.repeats} runs, min and max)")
    if ratios := _ratios(rows, paired):
        report(ratios, Path(args.csv).with_name(Path(args.csv).stem + "-ratios.csv"),
               f"Ratios (median of {args.repeats} runs, min and max)")


if __name__ == "__main__":
    main()
