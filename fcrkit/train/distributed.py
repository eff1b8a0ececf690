"""Data-parallel training over processes with ``torch.distributed`` (DistributedDataParallel).

Data-parallel training
----------------------
Each process holds a full replica of the model and trains on its own share of every minibatch;
gradients are averaged across processes after each backward pass, so every replica takes the same
optimiser step and all end with identical parameters. Two ways to launch it:

* **From one Python process**, ``model.train(strategy="ddp", devices=N)`` starts ``N`` worker
  processes itself (start method ``spawn``; backend ``gloo`` on CPU, ``nccl`` on CUDA with one GPU
  per process; rendezvous on a free localhost port), trains, and loads rank 0's final weights and
  history back into ``model``. The model and its AnnData are pickled to the workers, so a script
  that calls it needs the usual ``if __name__ == "__main__":`` guard. On CPU each worker uses
  ``min(torch.get_num_threads(), cores // N)`` torch threads.
* **Under torchrun**, ``torchrun --nproc_per_node N train.py`` with ``model.train(strategy="ddp")``
  (or the default ``strategy="auto"``, which picks ``"ddp"`` when ``WORLD_SIZE > 1``) in
  ``train.py``: every process builds the same model from the same data, and fcrkit initialises the
  process group from torchrun's environment unless the script already did (``gloo`` on CPU,
  ``nccl`` with ``accelerator="cuda"``, each process on ``cuda:LOCAL_RANK``). Every rank returns
  the same history and holds the same weights; save from rank 0 only. Rank 0's initial weights are
  broadcast to the others, so the ranks need not build the model with the same seed.

Example (``batch_size=128`` per process: an effective batch of 512 on 4 processes)::

    # in a script or notebook: spawns 4 CPU workers (or 4 GPUs with accelerator="cuda")
    model.train(max_epochs=100, batch_size=128, seed=0, strategy="ddp", devices=4)

    # train.py, launched with: torchrun --nproc_per_node 4 train.py
    model = fcrkit.models.SCVI(adata, seed=0)
    model.train(max_epochs=100, batch_size=128, seed=0)  # strategy="auto" is "ddp" under torchrun
    if torch.distributed.get_rank() == 0:
        model.save("scvi_ddp")

Batch semantics: ``batch_size`` is the **per-process** batch; the effective (global) batch is
about ``batch_size * N``. The training loop is the one of :class:`~fcrkit.train.trainer.Trainer`;
what differs under data parallelism (sharded data, gradient and buffer reduction, global-batch
regularisers, which rank writes) is its strategy, :class:`~fcrkit.train.strategy.DataParallel`:
see :mod:`fcrkit.train.strategy`. In short: each rank reads only its contiguous shard of the cells
(in memory, or streamed from a backed ``.h5ad`` under torchrun) and shuffles it with its own seeded
generator each epoch; all ranks take the same number of steps, and a step's gradient is that of the
global batch's objective. One process in a group of one reproduces single-process training bit
for bit.

What differs from a single process: the Monte Carlo samples, dropout, minibatch order and control
partners of rank ``r`` come from ``seed + r`` (the train / validation split from ``seed``); control
partners are drawn from the rank's own shard; batch-norm statistics are computed per rank in
training (running statistics are averaged across ranks after every epoch). Regularisers that
compare cells within a minibatch and declare ``global_batch = True`` (HSIC, FCR's permutation
discriminators) see the whole global batch (its latents gathered from every rank); others (the
total correlation's shuffle, the condition KL) see a rank's part only. So the result matches
single-process training at the effective batch within a tolerance, not bit for bit; measured in
``tests/test_distributed.py`` and ``docs/performance.md``.

Regularisers with an adversary (FactorVAE's discriminator, CPA's classifiers, FCR's permutation
discriminators) have their adversary's gradients combined across ranks before each of its
optimiser steps. Validation cells are split across ranks and the summed -ELBO is all-reduced, so
every rank records the same ``validation_loss`` and early stopping stops every rank at the same
epoch. At the end of training the replicas are compared (an element-wise max / min all-reduce of
every parameter and buffer) and a :class:`ReplicaMismatchError` is raised if they differ at all.

Checkpoints: with ``checkpoint_dir``, rank 0 writes the checkpoint atomically (holding every rank's
random streams) and every rank resumes from it with ``resume=True``; the checkpoint directory must
be visible to every rank (one machine, or a shared file system). A run resumed with the same number
of processes ends exactly where the uninterrupted run ends; another number of processes is refused.
Ctrl-C (or the launcher's death: spawned workers receive SIGINT) stops the workers at a step; the
checkpoint on disk is the last one written.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import socket
import tempfile
import traceback
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from fcrkit.data.backed import cell_data
from fcrkit.data.pairing import ControlPairing
from fcrkit.errors import ConfigError
from fcrkit.train import checkpoint
from fcrkit.train.strategy import DataParallel, ReplicaMismatchError, broadcast_module, replica_spread
from fcrkit.train.trainer import History, Trainer, TrainingPlan, _history, resolve_device

logger = logging.getLogger(__name__)

#: Values of ``Model.train(strategy=...)``.
STRATEGIES = ("auto", "single", "ddp")
_RESULT_FILE = "result.pt"
__all__ = ["STRATEGIES", "ReplicaMismatchError", "launched_by_torchrun", "replica_spread", "resolve_strategy",
           "train_model"]


# -- choosing the strategy ----------------------------------------------------------------------------------
def launched_by_torchrun() -> bool:
    """Whether this process is one of several started by ``torchrun`` (``WORLD_SIZE > 1`` in the environment)."""
    return "RANK" in os.environ and _env_int("WORLD_SIZE", 1) > 1


def resolve_strategy(strategy: str, devices: int | None) -> str:
    """``"single"`` or ``"ddp"`` for ``Model.train(strategy=..., devices=...)``; refuses bad values.

    ``"auto"`` is ``"ddp"`` when ``devices > 1``, under torchrun with ``WORLD_SIZE > 1``, or inside an
    initialised process group of more than one process; otherwise ``"single"``.
    """
    if not isinstance(strategy, str) or strategy not in STRATEGIES:
        raise ConfigError(f"strategy={strategy!r} is not one of 'auto', 'single', 'ddp'.")
    if devices is not None and (isinstance(devices, bool) or not isinstance(devices, int) or devices < 1):
        raise ConfigError(f"devices={devices!r} must be a positive integer (the number of processes to train "
                          "on) or None.")
    if strategy == "single" and devices not in (None, 1):
        raise ConfigError(f"strategy='single' trains in this one process, but devices={devices}; use "
                          "strategy='ddp' (or 'auto') to train on several processes.")
    if strategy != "auto":
        return strategy
    in_group = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
    return "ddp" if (devices or 1) > 1 or launched_by_torchrun() or in_group else "single"


def train_model(model: Any, plan: TrainingPlan, accelerator: str, devices: int | None,
                chunk_cells: int | None = None) -> History:
    """Data-parallel training of a :class:`~fcrkit.models.base.Model` (its ``strategy="ddp"`` path).

    Inside a process group (torchrun, or one the caller initialised) this trains this rank's share
    and returns the history every rank shares; otherwise it spawns ``devices`` workers and loads
    rank 0's result into ``model``. ``chunk_cells``: see :func:`fcrkit.data.backed.cell_data`.
    """
    if not dist.is_available():
        raise ConfigError("strategy='ddp' needs torch.distributed, which this torch build lacks; use "
                          "strategy='single'.")
    if dist.is_initialized() or launched_by_torchrun():
        world = dist.get_world_size() if dist.is_initialized() else _env_int("WORLD_SIZE", 1)
        if devices is not None and devices != world:
            raise ConfigError(f"devices={devices}, but this process is one of {world} launched together "
                              f"(WORLD_SIZE={world}); leave devices out under torchrun.")
        return _train_rank(model, plan, _rank_device(accelerator, _env_int("LOCAL_RANK", 0)), chunk_cells)
    if devices is None:
        raise ConfigError("strategy='ddp' needs devices=N (the number of processes to start), or launch the "
                          "script with torchrun --nproc_per_node N.")
    return _spawn(model, plan, accelerator, devices)


def _rank_device(accelerator: str, local_rank: int) -> torch.device:
    """This rank's device: the CPU, or the GPU of its local rank (one GPU per process)."""
    device = resolve_device(accelerator)
    if device.type != "cuda":
        return device
    if device.index is not None:
        raise ConfigError(f"accelerator={accelerator!r} pins every process to one GPU; with strategy='ddp' use "
                          "accelerator='cuda' (each process takes the GPU of its local rank).")
    return torch.device("cuda", local_rank)


def _train_rank(model: Any, plan: TrainingPlan, device: torch.device, chunk_cells: int | None = None) -> History:
    """Train this rank's shard of ``model``'s data (the process group is initialised here if needed)."""
    if not dist.is_initialized():  # torchrun's environment names the rendezvous (env://)
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    model.module.to(device)
    strategy = DataParallel(model.adata.n_obs)
    broadcast_module(model.module)  # the same start on every rank (adversaries included)
    start, stop = strategy.rows
    # only this rank's rows: read into memory, or streamed from disk when the AnnData is backed
    data = cell_data(model.adata, model.setup, device=device, chunk_cells=chunk_cells, rows=strategy.rows)
    pairing = ControlPairing.for_mode(model.adata, model.setup, model.spec.control_pairing)
    if pairing is not None:  # partners from the rank's own shard
        pairing = ControlPairing(pairing.groups[start:stop], pairing.is_control[start:stop], pairing.group_names)
    return Trainer(model.module, data, plan, pairing, strategy=strategy).fit()


# -- spawning workers -------------------------------------------------------------------------------------------
def _spawn(model: Any, plan: TrainingPlan, accelerator: str, devices: int) -> History:
    """Train on ``devices`` new processes; load rank 0's weights and history into ``model``."""
    if model.adata.isbacked:
        raise ConfigError("devices=N starts new processes, which cannot share this AnnData's open backed file; "
                          "launch the script with torchrun --nproc_per_node N instead (each process opens the "
                          "file itself), or read the data into memory.")
    device = resolve_device(accelerator)  # refuses CUDA where there is none, before anything starts
    if device.type == "cuda":
        _rank_device(accelerator, 0)  # refuses 'cuda:N'
        if devices > torch.cuda.device_count():
            raise ConfigError(f"devices={devices}, but only {torch.cuda.device_count()} GPU(s) are visible; use at "
                              f"most that many, or accelerator='cpu'.")
    saved = checkpoint.load(plan.checkpoint_dir) if plan.resume else None
    if plan.seed is None:  # drawn here (or the checkpoint's), so that the run's seed is one every worker knows
        plan = replace(plan, seed=int(saved["identity"]["seed"]) if saved else int(torch.randint(2**31, ()).item()))
    home = next(model.module.parameters()).device
    model.module.cpu()
    # plain pickle copies the tensors: torch.multiprocessing would pass them in shared memory, and the
    # workers would then all train the very same parameters at once
    payload = pickle.dumps(model)
    init_method = f"tcp://127.0.0.1:{_free_port()}"
    threads = max(1, min(torch.get_num_threads(), _cpu_count() // devices))  # the workers share the cores
    try:
        with tempfile.TemporaryDirectory(prefix="fcrkit-ddp-") as out:
            try:
                mp.spawn(_worker, args=(devices, init_method, payload, plan, accelerator, out, threads),
                         nprocs=devices, join=True)
            except (mp.ProcessRaisedException, mp.ProcessExitedException) as err:
                _raise_worker_error(Path(out), err)
            result = torch.load(Path(out) / _RESULT_FILE, map_location="cpu", weights_only=True)
    finally:
        model.module.to(home)
    model.module.load_state_dict(result["module"])
    model.module.to(torch.device("cuda", 0) if device.type == "cuda" else device)
    history = _history(result)
    history.cells_per_second = result["cells_per_second"]
    return history


def _worker(rank: int, world: int, init_method: str, payload: bytes, plan: TrainingPlan, accelerator: str,
            out: str, threads: int) -> None:
    """One spawned process: join the group, train, and (rank 0) write the result to ``out``."""
    torch.set_num_threads(threads)
    try:
        model = pickle.loads(payload)  # this rank's own copy of the model and data
        device = _rank_device(accelerator, rank)
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", init_method=init_method,
                                rank=rank, world_size=world)
        try:
            history = _train_rank(model, plan, device)
            if rank == 0:
                state = {k: v.detach().cpu() for k, v in model.module.state_dict().items()}
                saved = {"values": history.values, "stopped_early": history.stopped_early,
                         "best_epoch": history.best_epoch, "seconds": history.seconds,
                         "epoch_seconds": list(getattr(history, "epoch_seconds", []))}
                torch.save({"module": state, "history": saved, "cells_per_second": history.cells_per_second},
                           Path(out) / _RESULT_FILE)
        finally:
            dist.destroy_process_group()
    except BaseException as err:
        _save_worker_error(Path(out), rank, err)
        raise


def _save_worker_error(out: Path, rank: int, err: BaseException) -> None:
    """Keep a worker's exception (pickled when it survives a round trip) for the parent to raise."""
    text = "".join(traceback.format_exception(err))
    try:
        pickled = pickle.dumps(err)
        pickle.loads(pickled)
    except Exception:  # e.g. an exception whose __init__ takes other arguments than its message
        pickled = None
    with contextlib.suppress(OSError):
        (out / f"error-{rank}.pkl").write_bytes(pickle.dumps({"rank": rank, "error": pickled, "text": text}))


def _raise_worker_error(out: Path, err: BaseException) -> None:
    """Raise the first worker's own exception (e.g. a ConfigError) in the parent, else a RuntimeError."""
    saved = [pickle.loads(p.read_bytes()) for p in sorted(out.glob("error-*.pkl"))]
    # a worker killed while others waited for it fails second: prefer an error that is not a broken collective
    saved.sort(key=lambda s: (s["error"] is None, "gloo" in s["text"] or "NCCL" in s["text"], s["rank"]))
    if saved and saved[0]["error"] is not None:
        raise pickle.loads(saved[0]["error"]) from RuntimeError(f"in worker {saved[0]['rank']}:\n{saved[0]['text']}")
    detail = saved[0]["text"] if saved else str(err)
    raise RuntimeError(f"data-parallel training failed in a worker process:\n{detail}") from None


def _free_port() -> int:
    """A TCP port free on localhost now (for the workers' rendezvous)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _cpu_count() -> int:
    """Cores this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    try:
        return int(value) if value is not None else default
    except ValueError:
        raise ConfigError(f"environment variable {name}={value!r} must be an integer (as torchrun sets it).") from None
