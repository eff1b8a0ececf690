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
``batch_size * N``. Each epoch every rank draws the same permutation of the training cells (from
the run's ``seed``), cuts it into global batches of ``batch_size * N`` cells and takes its own
contiguous part of each, so ranks see disjoint cells and take the same number of steps. Each
rank's loss is the per-cell mean over its part, weighted by its share of the global batch, so the
averaged gradient is that of the global batch's per-cell mean: one step equals a single-process
step on ``batch_size * N`` cells, up to Monte Carlo noise. The last global batch, if smaller, is
split as evenly as possible; when it holds fewer than two cells per process (one, for a model
without batch normalisation) it is merged into the batch before it, so no rank's batch-norm layers
ever see a single cell.

What differs from a single process: the Monte Carlo samples, dropout and control partners of rank
``r`` come from ``seed + r`` (the data order and the train / validation split from ``seed`` on
every rank); batch-norm statistics are computed per rank in training (running statistics are
averaged across ranks after every epoch); regularisers computed on the whole batch (the total
correlation's shuffle, HSIC) see a rank's part only. So the result matches single-process
training at the effective batch within a tolerance, not bit for bit (one process in a group of
one does reproduce single-process training bit for bit). Measured in ``tests/test_distributed.py``
(1,000 simulated cells x 50 genes, 2 gloo processes at batch 64 against one process at batch 128,
60 epochs, lr 0.01, the same seed; -ELBO per cell from 10 Monte Carlo passes over every cell):
scVI 1.8%, 3.6% and 4.7% apart at three seeds, FactorVAE 0.2%, 1.4% and 3.4%; over the three
seeds DDP is about 2% worse on average (188.0 against 184.1 for scVI; plausibly the batch-norm
statistics and FactorVAE's total-correlation shuffle computed on 64 cells, not 128), while
single-process runs at different seeds spread by 3%. The latent's linear R² with the true latent
differs by 0.02-0.17 (0.17 between seeds). The tests allow 8% and 0.25: at this size the spread
between seeds, not DDP, sets the bound.

Regularisers with an adversary (FactorVAE's discriminator, CPA's classifiers) are left out of
DDP's gradient reduction (their parameters also receive gradients from the model's loss, which
their own optimiser never uses); their own gradients are averaged across ranks explicitly before
each of their optimiser steps. Validation cells are split across ranks and the summed -ELBO is
all-reduced, so every rank records the same ``validation_loss`` and early stopping stops every
rank at the same epoch. At the end of training the replicas are compared (an element-wise
max / min all-reduce of every parameter and buffer) and a :class:`ReplicaMismatchError` is raised
if they differ at all.

Not supported with ``strategy="ddp"`` (a :class:`~fcrkit.errors.ConfigError` says so):
``checkpoint_dir`` / ``resume``. Ctrl-C stops the run without the single-process clean-up. DDP runs
with ``find_unused_parameters=True`` (a component may leave parameters out of a step's graph), so
torch logs once per rank that it found none unused; the cost is one graph traversal per step.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import math
import os
import pickle
import socket
import tempfile
import time
import traceback
from dataclasses import replace
from pathlib import Path
from typing import Any

import pyro
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from fcrkit import progress
from fcrkit.data.backed import cell_data
from fcrkit.data.loaders import MIN_BATCH_CELLS, Batch, CellData, batch_sizes
from fcrkit.data.pairing import ControlPairing
from fcrkit.errors import ConfigError, FcrkitError
from fcrkit.model import GenerativeModel
from fcrkit.train.trainer import (
    EpochTotals,
    History,
    Trainer,
    TrainingPlan,
    _has_batch_norm,
    _history,
    _restore,
    _snapshot,
    resolve_device,
    split_indices,
)

logger = logging.getLogger(__name__)

#: Values of ``Model.train(strategy=...)``.
STRATEGIES = ("auto", "single", "ddp")
_RESULT_FILE = "result.pt"
# DDP's switch for synchronising buffers at every forward (renamed in torch 2.13)
_BUFFER_SYNC = "forward_sync_buffers"
if _BUFFER_SYNC not in inspect.signature(DistributedDataParallel).parameters:
    _BUFFER_SYNC = "broadcast_buffers"


class ReplicaMismatchError(FcrkitError, RuntimeError):
    """After data-parallel training the replicas' parameters differ (a bug: they must be identical)."""


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


def train_model(model: Any, plan: TrainingPlan, accelerator: str, devices: int | None) -> History:
    """Data-parallel training of a :class:`~fcrkit.models.base.Model` (its ``strategy="ddp"`` path).

    Inside a process group (torchrun, or one the caller initialised) this trains this rank's share
    and returns the history every rank shares; otherwise it spawns ``devices`` workers and loads
    rank 0's result into ``model``.
    """
    if plan.checkpoint_dir is not None:
        raise ConfigError("checkpoint_dir (and resume) are not supported with strategy='ddp' yet; train without "
                          "them, or with strategy='single' to checkpoint and resume.")
    if not dist.is_available():
        raise ConfigError("strategy='ddp' needs torch.distributed, which this torch build lacks; use "
                          "strategy='single'.")
    if dist.is_initialized() or launched_by_torchrun():
        world = dist.get_world_size() if dist.is_initialized() else _env_int("WORLD_SIZE", 1)
        if devices is not None and devices != world:
            raise ConfigError(f"devices={devices}, but this process is one of {world} launched together "
                              f"(WORLD_SIZE={world}); leave devices out under torchrun.")
        return _train_rank(model, plan, _rank_device(accelerator, _env_int("LOCAL_RANK", 0)))
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


def _train_rank(model: Any, plan: TrainingPlan, device: torch.device) -> History:
    """Train this rank's share of ``model`` (the process group is initialised here if needed)."""
    if not dist.is_initialized():  # torchrun's environment names the rendezvous (env://)
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    model.module.to(device)
    data = cell_data(model.adata, model.setup, device=device)  # streamed from disk when the AnnData is backed
    pairing = ControlPairing.for_mode(model.adata, model.setup, model.spec.control_pairing)
    return DistributedTrainer(model.module, data, plan, pairing).fit()


# -- the trainer ----------------------------------------------------------------------------------------------
class _Objective(nn.Module):
    """The training objective of one minibatch as a module, so that DDP's gradient hooks fire.

    ``forward`` returns ``(total, terms, context)``: the negative ELBO per cell plus the weighted
    regulariser terms (as :meth:`Trainer.step` adds them), the unweighted terms, and the context.
    """

    def __init__(self, trainer: Trainer):
        super().__init__()
        self.module = trainer.module  # registered: DDP reduces the gradients of its parameters
        self.trainer = trainer  # not a Module: a plain attribute

    def forward(self, batch: Batch, n_obs: int, epoch: float,
                generator: torch.Generator) -> tuple[Tensor, dict[str, Tensor], Any]:
        trainer = self.trainer
        terms, ctx = trainer._losses(batch, n_obs, epoch, with_terms=True, generator=generator)
        total = terms["elbo"]
        for name, term in terms.items():
            if name != "elbo":
                total = total + trainer.weights[name].weight_at(epoch) * term
        return total, terms, ctx


class DistributedTrainer(Trainer):
    """A :class:`Trainer` for one rank of a process group; see the module docstring.

    The process group must be initialised; ``data`` lives on this rank's device and holds all the
    cells (each rank picks its share of every batch).
    """

    def __init__(self, module: GenerativeModel, data: CellData, plan: TrainingPlan,
                 pairing: ControlPairing | None = None):
        if plan.checkpoint_dir is not None:
            raise ConfigError("checkpoint_dir (and resume) are not supported with strategy='ddp' yet; train "
                              "without them, or with strategy='single' to checkpoint and resume.")
        if not dist.is_initialized():
            raise ConfigError("DistributedTrainer needs an initialised torch.distributed process group; use "
                              "model.train(strategy='ddp', devices=N) or launch with torchrun.")
        super().__init__(module, data, plan, pairing)
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        # the fewest cells a rank's part of a batch may hold: batch normalisation cannot take one
        self.min_cells = MIN_BATCH_CELLS if _has_batch_norm(module) else 1
        _broadcast_module(module)  # the same start on every rank (adversaries included: DDP skips them)
        self.adversary_params = {name: list(self.regularizers[name].adversary.parameters())
                                 for name in self.adversaries}
        self.objective = _Objective(self)
        skip = {id(p) for params in self.adversary_params.values() for p in params}
        ignored = [name for name, p in self.objective.named_parameters() if id(p) in skip]
        DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(self.objective, ignored)
        cuda = data.device.type == "cuda"
        # batch-norm statistics are averaged once per epoch instead of synchronised at every forward
        buffers = {_BUFFER_SYNC: False}
        self.ddp = DistributedDataParallel(
            self.objective, device_ids=[data.device] if cuda else None, **buffers,
            find_unused_parameters=True,  # a component may leave parameters out of some steps' graphs
        )

    # -- one global minibatch -------------------------------------------------------------------------------
    def _shards(self, train_idx: Tensor, generator: torch.Generator) -> list[tuple[Tensor, float]]:
        """This rank's cells of each global batch of the epoch, with its share of that batch."""
        plan, world = self.plan, self.world
        order = torch.randperm(train_idx.numel(), generator=generator, device=generator.device)
        order = train_idx.index_select(0, order.to(train_idx.device))
        shards, start = [], 0
        for size in batch_sizes(order.numel(), plan.batch_size * world, drop_last=plan.drop_last,
                                min_cells=self.min_cells * world):
            cells = order[start:start + size]
            start += size
            mine = cells.tensor_split(world)[self.rank]
            shards.append((mine, mine.numel() / cells.numel()))
        return shards

    def _ddp_step(self, batch: Batch, n_obs: int, epoch: float, generator: torch.Generator,
                  share: float) -> dict[str, Tensor]:
        """One step on this rank's part of a global batch; returns its terms weighted by ``share``."""
        # DDP averages gradients over ranks: sum_r share_r * loss_r is the global batch's per-cell mean
        scale = share * self.world
        if self._adversary_epoch(int(epoch)):  # only adversaries learn: bypass DDP, no model gradients to reduce
            total, terms, ctx = self.objective(batch, n_obs, epoch, generator)
            total = total.detach()
        else:
            total, terms, ctx = self.ddp(batch, n_obs, epoch, generator)
            self.optimizer.zero_grad(set_to_none=True)
            (total * scale).backward()
            self.optimizer.step()
        self._step_adversaries(ctx, epoch, scale)
        return {"loss": total.detach() * share, **{k: v.detach() * share for k, v in terms.items()}}

    def _reduce_adversary_gradients(self, name: str) -> None:
        """Average adversary ``name``'s gradients over the processes (it is outside DDP's reduction)."""
        _average_gradients(self.adversary_params[name], self.world)

    def _validation(self, shard: Tensor, n_val: int) -> float:
        """The plain negative ELBO per validation cell, over all ranks' shards."""
        total = torch.zeros((), device=self.data.device)
        if shard.numel():
            total = self.validation_loss(shard) * shard.numel()
        dist.all_reduce(total)
        return float(total) / n_val

    # -- the loop -----------------------------------------------------------------------------------------------
    def _fit(self) -> History:
        """Train this rank's share; every rank returns the same History (see the module docstring)."""
        plan, module, data, rank, world = self.plan, self.module, self.data, self.rank, self.world
        seed = plan.seed if plan.seed is not None else _shared_random_seed(data.device)
        pyro.set_rng_seed(seed + rank)  # Monte Carlo samples and dropout: each rank its own
        shared = torch.Generator(device=data.device).manual_seed(seed)  # minibatch order: the same on every rank
        own = torch.Generator(device=data.device).manual_seed(seed + rank)  # control partners: each rank its own
        train_idx, val_idx = split_indices(data.n_obs, plan.validation_fraction, torch.Generator().manual_seed(seed))
        if len(train_idx) < world:
            raise ConfigError(f"{len(train_idx)} training cells cannot be shared by {world} processes; use fewer "
                              "devices or more cells.")
        train_idx, val_idx = train_idx.to(data.device), val_idx.to(data.device)
        val_shard = val_idx.tensor_split(world)[rank]
        if self.pairing is not None:
            self.sampler = self.pairing.sampler(train_idx, data.device)
        n_train = len(train_idx)
        self._check_batches(n_train, self.min_cells * world, world)

        history = History()
        stop: dict = {"best": math.inf, "waited": 0, "best_state": None}
        last_good = self._state(_snapshot(module, self.optimizer), shared, history, stop)
        show = progress.enabled(plan.progress_bar) and rank == 0
        bar = tqdm(range(plan.max_epochs), total=plan.max_epochs, disable=not show, desc=f"training ({world} ddp)",
                   unit="epoch", leave=False)
        start = time.perf_counter()
        for epoch in bar:
            module.train()
            epoch_start = time.perf_counter()
            shards = self._shards(train_idx, shared)
            n_steps = max(1, len(shards))
            totals = EpochTotals()
            try:
                for step, (cells, share) in enumerate(shards):
                    totals.add(self._ddp_step(data.gather(cells), n_train, epoch + step / n_steps, own, share))
            except (ValueError, RuntimeError) as err:
                # a non-finite step poisons the (identical) parameters of every rank alike
                bar.close()
                self._raise_if_not_finite(totals.means(n_steps), epoch, last_good, totals, cause=err)
                raise
            module.eval()
            history.epoch_seconds.append(time.perf_counter() - epoch_start)
            _average_buffers(module, world)
            row = _reduce_row(totals.sums, n_steps)  # the one host sync of the epoch
            if len(val_idx):
                row["validation_loss"] = self._validation(val_shard, len(val_idx))
            self._raise_if_not_finite(row, epoch, last_good, totals)
            improved = self._record(history, row, stop, epoch)
            history.seconds = time.perf_counter() - start
            weights = _snapshot(module, self.optimizer)
            if improved:
                stop["best_state"] = weights
            last_good = self._state(weights, shared, history, stop)
            bar.set_postfix(loss=f"{row['loss']:.4g}", refresh=False)
            if history.stopped_early:
                break
        bar.close()
        if stop["best_state"] is not None:
            _restore(module, self.optimizer, stop["best_state"])
        spread = replica_spread(module)
        if spread != 0:
            raise ReplicaMismatchError(f"after data-parallel training the {world} replicas differ by up to {spread:g} "
                                       "in a parameter or buffer; please report this as an fcrkit bug.")
        history.cells_per_second = n_train * len(history) / max(history.seconds, 1e-9)
        return history


# -- collectives ----------------------------------------------------------------------------------------------
def _broadcast_module(module: nn.Module) -> None:
    """Give every rank rank 0's parameters and buffers."""
    with torch.no_grad():
        for tensor in module.state_dict().values():
            dist.broadcast(tensor, src=0)


def _flat_all_reduce(tensors: list[Tensor], divide: int) -> None:
    """Sum ``tensors`` over ranks in place (one collective for all of them), divided by ``divide``."""
    if not tensors:
        return
    flat = torch.cat([t.reshape(-1) for t in tensors])
    dist.all_reduce(flat)
    flat /= divide
    offset = 0
    for tensor in tensors:
        tensor.copy_(flat[offset:offset + tensor.numel()].view_as(tensor))
        offset += tensor.numel()


def _average_gradients(params: list[nn.Parameter], world: int) -> None:
    """Average the gradients of ``params`` over ranks (those without a gradient have none on any rank)."""
    _flat_all_reduce([p.grad for p in params if p.grad is not None], world)


def _average_buffers(module: nn.Module, world: int) -> None:
    """Average floating-point buffers (batch-norm running statistics) over ranks; counters agree already."""
    with torch.no_grad():
        _flat_all_reduce([b for b in module.buffers() if b.is_floating_point()], world)


def _reduce_row(sums: dict[str, Tensor], n_steps: int) -> dict[str, float]:
    """The epoch's mean terms over global batches: each rank's share-weighted sums, summed over ranks."""
    keys = list(sums)  # the same keys in the same order on every rank
    if not keys:
        return {}
    values = torch.stack([sums[k].float() for k in keys])
    dist.all_reduce(values)
    return dict(zip(keys, values.div(n_steps).tolist()))


def _shared_random_seed(device: torch.device) -> int:
    """A random seed drawn on rank 0 and given to every rank."""
    seed = torch.randint(2**31, (), device=device)
    dist.broadcast(seed, src=0)
    return int(seed.item())


def replica_spread(module: nn.Module) -> float:
    """The largest difference between ranks of any parameter or floating buffer (0: replicas identical).

    Collective: every rank of the process group must call it.
    """
    with torch.no_grad():
        tensors = [t for t in module.state_dict().values() if t.is_floating_point()]
        if not tensors:
            return 0.0
        high = torch.cat([t.reshape(-1).float() for t in tensors])
        low = high.clone()
        dist.all_reduce(high, op=dist.ReduceOp.MAX)
        dist.all_reduce(low, op=dist.ReduceOp.MIN)
        return float((high - low).max())


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
    if plan.seed is None:  # drawn here, so that the run's seed is one every worker knows
        plan = replace(plan, seed=int(torch.randint(2**31, ()).item()))
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
