"""What one process and several do differently in the one training loop (:meth:`Trainer.fit`).

The trainer runs the same epoch loop whatever the number of processes; a *strategy* supplies the
few steps that differ:

========================  ==========================  ===============================================
step                      :class:`SingleProcess`      :class:`DataParallel` (rank ``r`` of ``W``)
========================  ==========================  ===============================================
cells                     all of them                 a contiguous shard of rows (see below)
seed drawn (no ``seed``)  here                        on rank 0, broadcast
random streams            ``seed``                    ``seed + r`` (Monte Carlo, dropout, order)
minibatches               ``batch_size`` cells        ``batch_size`` of the shard's cells a step;
                                                      the global batch is the union over ranks
gradients                 as they are                 summed over ranks (each rank's loss is its
                                                      share of the global batch's objective)
batch-norm statistics     as they are                 averaged over ranks after each epoch
global-batch terms        the minibatch               the latents of all ranks' cells (``all_gather``)
epoch metrics             means over steps            summed over ranks, then means over steps
checkpoint written by     this process                rank 0 (every rank resumes from it)
========================  ==========================  ===============================================

**Shards.** Rank ``r`` owns rows ``[r n / W, (r + 1) n / W)`` of the data and builds its
:class:`~fcrkit.data.loaders.CellData` (or backed reader) on those rows only, so its memory holds
``n / W`` cells (a backed file: ``n / W`` cells' per-cell vectors and one chunk). The train /
validation split is drawn from the seed over all ``n`` row numbers (indices only, no data) and each
rank keeps the rows it owns. Each epoch every rank shuffles its own training cells with its own
seeded generator (a full permutation in memory, the block shuffle on a backed file): nothing of
the other ranks' data is needed. Every rank can compute every rank's number of training cells from
the split, hence the same number of steps and each rank's share of every global batch
(:func:`rank_batch_sizes`). Because shards are contiguous, a file sorted by condition gives ranks
biased shards (and, with control pairing, partners come from the rank's own shard): shuffle the
rows once when writing such a file.

**Objective.** With ``share`` = this rank's cells / the global batch's cells, a rank back-propagates
``share * (per-cell terms) + (global-batch terms)``; summing the gradients over ranks gives the
gradient of the global batch's objective: per-cell terms are means over the global batch, and a
global-batch term's gradient reaches every rank's encoders through that rank's own cells.

**Global-batch terms.** A regulariser whose class sets ``global_batch = True`` (HSIC, FCR's
permutation discriminators) compares cells of one minibatch with each other; under data
parallelism it receives a context holding every rank's cells (:meth:`DataParallel.global_context`:
the latents, moments, labels and global row numbers of the whole global batch; only this rank's
rows carry gradients; ``y`` and ``library`` are None). In one process it receives the minibatch
as every other regulariser does.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import replace
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from fcrkit.data.loaders import MIN_BATCH_CELLS, Batch, CellData, batch_sizes
from fcrkit.errors import ConfigError, FcrkitError
from fcrkit.protocols import BlockMoments, Context
from fcrkit.train import checkpoint


class ReplicaMismatchError(FcrkitError, RuntimeError):
    """After data-parallel training the replicas' parameters differ (a bug: they must be identical)."""


def has_batch_norm(module: nn.Module) -> bool:
    """Whether ``module`` has a batch-normalisation layer (which needs at least two cells per minibatch)."""
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in module.modules())


def uses_global_batch(regularizer: object) -> bool:
    """Whether ``regularizer`` asks for the global batch (its ``global_batch`` attribute is True)."""
    return bool(getattr(regularizer, "global_batch", False))


class SingleProcess:
    """The strategy of training in this one process: every step of the loop as it is.

    Attributes:
        rank: 0.
        world: 1.
        writes: True: this process writes checkpoints and shows the progress bar.
    """

    rank, world, writes = 0, 1, True

    def draw_seed(self, device: torch.device) -> int:
        """A random seed for a run without one."""
        return int(torch.randint(2**32, ()).item())

    def total_cells(self, data: CellData) -> int:
        """The number of cells of the whole data set (what a checkpoint's identity records)."""
        return data.n_obs

    def split(self, n_obs: int, fraction: float, seed: int, device: torch.device) -> tuple[Tensor, Tensor, int, int]:
        """``(train, validation, n_train, n_validation)``: this process's row numbers and the global counts."""
        from fcrkit.train.trainer import split_indices  # the trainer imports this module

        train, val = split_indices(n_obs, fraction, torch.Generator().manual_seed(seed))
        return train.to(device), val.to(device), len(train), len(val)

    def batches(self, data: CellData, index: Tensor, plan: Any, generator: torch.Generator
                ) -> Iterator[tuple[Batch, float]]:
        """The epoch's minibatches of ``index`` (shuffled by ``generator``), each with this process's share (1)."""
        for batch in data.iter_batches(index, plan.batch_size, shuffle=True, generator=generator,
                                       drop_last=plan.drop_last):
            yield batch, 1.0

    def plan_steps(self, trainer: Any, n_train: int) -> int:
        """The number of steps an epoch takes; refuses a plan that leaves a step without cells."""
        return trainer._check_batches(n_train)

    def validation(self, trainer: Any, index: Tensor, n_val: int) -> float:
        """The plain negative ELBO per validation cell."""
        return float(trainer.validation_loss(index))

    def reduce_gradients(self, params: Sequence[nn.Parameter]) -> None:
        """Combine the gradients of ``params`` over processes: nothing to do in one."""

    def reduce_buffers(self, module: nn.Module) -> None:
        """Combine batch-norm statistics over processes: nothing to do in one."""

    def reduce_row(self, totals: Any, n_steps: int) -> dict[str, float]:
        """The epoch's mean terms (one host transfer)."""
        return totals.means(n_steps)

    def reduce_sum(self, value: Tensor) -> Tensor:
        """``value`` summed over processes: itself."""
        return value

    def global_context(self, ctx: Context) -> Context:
        """The context of the global batch: in one process, the minibatch's own."""
        return ctx

    def rng_state(self, generator: torch.Generator) -> dict[str, Any]:
        """Every random stream of the run (see :func:`fcrkit.train.checkpoint.rng_state`)."""
        return checkpoint.rng_state(generator)

    def set_rng_state(self, state: dict[str, Any], generator: torch.Generator) -> None:
        """Restore the streams saved by :meth:`rng_state`."""
        checkpoint.set_rng_state(state, generator)

    def finish(self, module: nn.Module) -> None:
        """Checks at the end of training: none in one process."""


class DataParallel(SingleProcess):
    """Rank ``rank`` of ``world`` processes of an initialised ``torch.distributed`` group (see the module doc).

    Args:
        n_obs: the number of cells of the whole data set (this rank holds :attr:`rows` of them).
        rank: this process's rank (default: the process group's).
        world: the group's size (default: the process group's).

    Attributes:
        rows: ``(start, stop)``, the rows of the data this rank owns.
        sizes: after :meth:`plan_steps`, each rank's batch sizes of an epoch (one list per rank).
    """

    def __init__(self, n_obs: int, rank: int | None = None, world: int | None = None):
        if not dist.is_available() or not dist.is_initialized():
            raise ConfigError("data-parallel training needs an initialised torch.distributed process group; use "
                              "model.train(strategy='ddp', devices=N) or launch with torchrun.")
        self.rank = dist.get_rank() if rank is None else rank
        self.world = dist.get_world_size() if world is None else world
        self.writes = self.rank == 0
        self.n_obs = int(n_obs)
        if self.n_obs < self.world:
            raise ConfigError(f"{self.n_obs} cells cannot be shared by {self.world} processes; use fewer devices or "
                              "more cells.")
        self.bounds = [self.n_obs * r // self.world for r in range(self.world + 1)]
        self.rows = (self.bounds[self.rank], self.bounds[self.rank + 1])
        self.counts: list[int] = []
        self.sizes: list[list[int]] = []
        self._step_sizes: list[int] = []

    def draw_seed(self, device: torch.device) -> int:
        """A random seed drawn on rank 0 and given to every rank."""
        seed = torch.randint(2**31, (), device=device)
        dist.broadcast(seed, src=0)
        return int(seed.item())

    def total_cells(self, data: CellData) -> int:
        """The number of cells of the whole data set; this rank's data holds only its shard."""
        return self.n_obs

    def split(self, n_obs: int, fraction: float, seed: int, device: torch.device) -> tuple[Tensor, Tensor, int, int]:
        """The global split of all cells' row numbers; this rank's rows of each, numbered within its shard.

        ``n_obs`` is the number of cells this rank's data holds (its shard's).
        """
        if n_obs != self.local_rows():  # a bug: the data must be this rank's shard
            raise ConfigError(f"the data holds {n_obs} cells, but rank {self.rank}'s shard is rows {self.rows}.")
        from fcrkit.train.trainer import split_indices

        train, val = split_indices(self.n_obs, fraction, torch.Generator().manual_seed(seed))
        self.counts = [int(c) for c in torch.searchsorted(train, torch.tensor(self.bounds)).diff()]
        start, stop = self.rows
        mine = [(idx[(idx >= start) & (idx < stop)] - start).to(device) for idx in (train, val)]
        return mine[0], mine[1], len(train), len(val)

    def local_rows(self) -> int:
        """The number of rows this rank owns."""
        return self.rows[1] - self.rows[0]

    def plan_steps(self, trainer: Any, n_train: int) -> int:
        """Each rank's batch sizes for an epoch (:func:`rank_batch_sizes`); returns the number of steps.

        Refuses a plan that leaves no step, or (with batch normalisation) a rank a single cell.
        """
        plan, min_cells = trainer.plan, MIN_BATCH_CELLS
        batch_norm = has_batch_norm(trainer.module)
        self.sizes = rank_batch_sizes(self.counts, plan.batch_size, drop_last=plan.drop_last, min_cells=min_cells)
        if not self.sizes[0]:
            raise ConfigError(f"{min(self.counts)} training cells on a rank with batch_size={plan.batch_size} per "
                              f"process and drop_last={plan.drop_last} leave no step to train on; use a smaller "
                              "batch_size, fewer processes or drop_last=False.")
        smallest = min(min(s) for s in self.sizes)
        if smallest < 1 or (batch_norm and smallest < min_cells):
            raise ConfigError(f"a rank's share of a minibatch would hold {smallest} cell(s) ({sum(self.counts)} "
                              f"training cells over {self.world} processes); models with batch normalisation need "
                              f"at least {min_cells}: give it more cells or use fewer processes.")
        return len(self.sizes[0])

    def batches(self, data: CellData, index: Tensor, plan: Any, generator: torch.Generator
                ) -> Iterator[tuple[Batch, float]]:
        """This rank's minibatches of the epoch, each with its share of the global batch."""
        mine = self.sizes[self.rank]
        batches = data.iter_batches(index, plan.batch_size, shuffle=True, generator=generator,
                                    drop_last=plan.drop_last, sizes=list(mine))
        for step, batch in enumerate(batches):
            self._step_sizes = [sizes[step] for sizes in self.sizes]
            yield batch, mine[step] / sum(self._step_sizes)

    def validation(self, trainer: Any, index: Tensor, n_val: int) -> float:
        """The plain negative ELBO per validation cell, over every rank's validation cells."""
        total = torch.zeros((), device=trainer.data.device)
        if index.numel():
            total = trainer.validation_loss(index) * index.numel()
        return float(self.reduce_sum(total)) / n_val

    def reduce_gradients(self, params: Sequence[nn.Parameter]) -> None:
        """Sum the gradients of ``params`` over ranks (one collective; a gradient missing here counts as 0).

        A parameter without a gradient on every rank keeps none (the optimiser then skips it, as it
        would in one process).
        """
        params = list(params)
        present = torch.tensor([p.grad is not None for p in params], dtype=torch.int32,
                               device=params[0].device if params else None)
        dist.all_reduce(present, op=dist.ReduceOp.MAX)
        grads = []
        for param, flag in zip(params, present.tolist()):
            if flag and param.grad is None:
                param.grad = torch.zeros_like(param)
            if flag:
                grads.append(param.grad)
        _flat_all_reduce(grads)

    def reduce_buffers(self, module: nn.Module) -> None:
        """Average floating-point buffers (batch-norm running statistics) over ranks; counters agree already."""
        with torch.no_grad():
            buffers = [b for b in module.buffers() if b.is_floating_point()]
            _flat_all_reduce(buffers)
            for buffer in buffers:
                buffer /= self.world

    def reduce_row(self, totals: Any, n_steps: int) -> dict[str, float]:
        """The epoch's mean terms over global batches: each rank's share-weighted sums, summed over ranks."""
        keys = list(totals.sums)  # the same keys in the same order on every rank
        if not keys:
            return {}
        values = torch.stack([totals.sums[k].float() for k in keys])
        dist.all_reduce(values)
        return dict(zip(keys, values.div(n_steps).tolist()))

    def reduce_sum(self, value: Tensor) -> Tensor:
        """``value`` summed over ranks."""
        value = value.clone()
        dist.all_reduce(value)
        return value

    def global_context(self, ctx: Context) -> Context:
        """The context of the global batch: every rank's cells in rank order (see the module doc).

        With control pairing the global batch holds every rank's cells followed by every rank's
        paired controls, so that :meth:`Context.unpaired` works on it as on a minibatch.
        """
        sizes = self._step_sizes or [len(ctx.index) // (2 if ctx.pairs else 1)] * self.world
        start = self.rows[0]

        def gather(t: Tensor) -> Tensor:
            if not ctx.pairs:
                return _gather_rows(t, sizes, self.rank)
            n = ctx.pairs
            return torch.cat([_gather_rows(t[:n], sizes, self.rank), _gather_rows(t[n:2 * n], sizes, self.rank)])

        def gather_all(d: Any) -> Any:
            return d.map(gather) if isinstance(d, BlockMoments) else {k: gather(v) for k, v in d.items()}

        return replace(ctx, z=gather_all(ctx.z), loc=gather_all(ctx.loc), scale=gather_all(ctx.scale),
                       labels={k: gather(ctx.labels[k]) for k in ctx.labels}, index=gather(ctx.index + start),
                       pairs=sum(sizes) if ctx.pairs else 0, y=None, library=None)

    def rng_state(self, generator: torch.Generator) -> dict[str, Any]:
        """Every rank's random streams (one entry per rank; collective)."""
        states: list[Any] = [None] * self.world
        dist.all_gather_object(states, checkpoint.rng_state(generator))
        return {"ranks": states}

    def set_rng_state(self, state: dict[str, Any], generator: torch.Generator) -> None:
        """Restore this rank's streams from :meth:`rng_state`'s entry for it."""
        checkpoint.set_rng_state(state["ranks"][self.rank], generator)

    def finish(self, module: nn.Module) -> None:
        """Refuse replicas that differ in any parameter or buffer (collective)."""
        spread = replica_spread(module)
        if spread != 0:
            raise ReplicaMismatchError(f"after data-parallel training the {self.world} replicas differ by up to "
                                       f"{spread:g} in a parameter or buffer; please report this as an fcrkit bug.")


def rank_batch_sizes(counts: Sequence[int], batch_size: int, *, drop_last: bool = False,
                     min_cells: int = MIN_BATCH_CELLS) -> list[list[int]]:
    """Each rank's minibatch sizes for one epoch, given each rank's number of training cells ``counts``.

    Every rank takes the same number of steps. Without ``drop_last`` that is the most steps any rank
    needs at ``batch_size`` (:func:`~fcrkit.data.loaders.batch_sizes`); a rank that would need fewer
    cuts its cells into that many nearly equal parts instead, so every cell is visited once an
    epoch. With ``drop_last`` every rank takes as many full batches as the rank with the fewest
    cells can. One rank's sizes are exactly those of single-process training.
    """
    if drop_last:
        steps = min(int(c) // batch_size for c in counts)
        return [[batch_size] * steps for _ in counts]
    own = [batch_sizes(int(c), batch_size, min_cells=min_cells) for c in counts]
    steps = max(len(s) for s in own)
    return [s if len(s) == steps else _even_parts(int(c), steps) for s, c in zip(own, counts)]


def _even_parts(n: int, parts: int) -> list[int]:
    """``n`` cut into ``parts`` sizes that differ by at most one."""
    return [n // parts + (1 if i < n % parts else 0) for i in range(parts)]


def _gather_rows(local: Tensor, sizes: Sequence[int], rank: int) -> Tensor:
    """Every rank's ``local`` rows in rank order; only this rank's part carries gradients (autograd)."""
    longest = max(sizes)
    padded = local.detach()
    if padded.shape[0] < longest:
        padded = torch.cat([padded, padded.new_zeros((longest - padded.shape[0], *padded.shape[1:]))])
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded.contiguous())
    parts = [part[:size] for part, size in zip(parts, sizes)]
    parts[rank] = local
    return torch.cat(parts)


def _flat_all_reduce(tensors: list[Tensor]) -> None:
    """Sum ``tensors`` over ranks in place, with one collective for all of them."""
    if not tensors:
        return
    flat = torch.cat([t.reshape(-1) for t in tensors])
    dist.all_reduce(flat)
    offset = 0
    for tensor in tensors:
        tensor.copy_(flat[offset:offset + tensor.numel()].view_as(tensor))
        offset += tensor.numel()


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


def broadcast_module(module: nn.Module) -> None:
    """Give every rank rank 0's parameters and buffers (collective)."""
    with torch.no_grad():
        for tensor in module.state_dict().values():
            dist.broadcast(tensor, src=0)
