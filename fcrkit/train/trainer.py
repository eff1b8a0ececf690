"""Stochastic variational inference for a :class:`~fcrkit.program.GenerativeModel`.

Each step computes ``elbo.differentiable_loss(model, guide)`` (per cell) under the regularisers'
effects, adds ``weight * loss(ctx)`` for each regulariser with a loss, and steps one torch
optimiser over the model's parameters. Regularisers that own an adversary get their own optimiser
and ``adversary_steps`` steps per model step on detached latents. Losses stay on the device and are
read back once per epoch.

With a ``checkpoint_dir`` the trainer's whole state (weights, optimisers, history, early stopping,
random streams) is written atomically every ``checkpoint_every`` epochs (see
:mod:`fcrkit.train.checkpoint`), and ``resume=True`` continues it to exactly the result of an
uninterrupted run. Ctrl-C stops cleanly at the last finished epoch.
"""

from __future__ import annotations

import copy
import logging
import math
import os
import time
import warnings
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field

import pyro
import torch
from pyro import poutine
from pyro.infer import ELBO
from torch import Tensor
from tqdm.auto import tqdm

from fcrkit import progress
from fcrkit.data.loaders import MIN_BATCH_CELLS, Batch, CellData, batch_sizes
from fcrkit.data.pairing import ControlPairing, PairSampler
from fcrkit.errors import ConfigError, NonFiniteLossError, PluginError, UnknownComponentError
from fcrkit.program import GenerativeModel
from fcrkit.registry import get_registry
from fcrkit.train import checkpoint
from fcrkit.train.objectives import OBJECTIVES, evaluation_loss, objective_problems, resolve_objective
from fcrkit.train.strategy import SingleProcess, has_batch_norm, uses_global_batch

logger = logging.getLogger(__name__)

ELBOS = OBJECTIVES  # the objectives by name (see fcrkit.train.objectives)
# Pyro's JIT ELBOs are not offered: they trace tensor-only arguments and parameters held in Pyro's
# param store, while fcrkit passes a Batch and keeps parameters in torch modules.


def resolve_device(accelerator: str) -> torch.device:
    """``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``."""
    if accelerator == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if accelerator == "cpu" or accelerator.startswith("cuda"):
        if accelerator.startswith("cuda") and not torch.cuda.is_available():
            raise ConfigError(f"accelerator={accelerator!r} but CUDA is not available here; use 'auto' or 'cpu'.")
        return torch.device(accelerator)
    raise ConfigError(f"accelerator={accelerator!r} is not one of 'auto', 'cpu', 'cuda'.")


def resolve_elbo(elbo: str | ELBO, num_particles: int = 1) -> ELBO:
    """A Pyro ELBO from its name (see :mod:`fcrkit.train.objectives`) and ``num_particles``, or as given."""
    return resolve_objective(elbo, num_particles)


def check_objective(module: GenerativeModel, elbo: str | ELBO) -> None:
    """Refuse, naming the parts and the fix, a model that objective ``elbo`` cannot train."""
    enumerated = {b.name: b.prior.name for b in module.spec.blocks if b.name in module.enumerated_blocks}
    handlers = {r.key: (r.weight, r.warmup_epochs) for r in module.spec.regularizers
                if callable(getattr(module.regularizers[r.key], "handler", None))}
    sites = [name for name, params in module.globals.items() if not params.is_fixed]
    problems = objective_problems(elbo, enumerated, handlers, sites)
    if problems:
        name = elbo if isinstance(elbo, str) else type(elbo).__name__
        raise ConfigError(f"model {module.spec.name!r} cannot be trained with elbo={name!r}: "
                          + "; ".join(problems) + ".")


@dataclass
class TrainingPlan:
    """Settings of one training run (the keyword arguments of ``Model.train``)."""

    max_epochs: int = 100
    batch_size: int = 512
    lr: float = 1e-3
    weight_decay: float = 0.0
    elbo: str | ELBO = "trace_meanfield"
    num_particles: int = 1  # draws per cell: averaged by the ELBOs, the k of "iwae"
    validation_fraction: float = 0.1
    early_stopping: bool = False
    patience: int = 10
    min_delta: float = 0.0
    seed: int | None = None
    progress_bar: bool | None = None  # None: in notebooks and terminals, not in CI (see fcrkit.progress)
    drop_last: bool = False
    checkpoint_dir: str | os.PathLike | None = None
    checkpoint_every: int = 1
    resume: bool = False
    compile: bool = False  # torch.compile the networks (see Trainer)

    def __post_init__(self) -> None:
        for key in ("max_epochs", "batch_size", "patience", "checkpoint_every"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{key}={value!r} must be a positive integer.")
        if not (isinstance(self.lr, (int, float)) and self.lr > 0 and math.isfinite(self.lr)):
            raise ConfigError(f"lr={self.lr!r} must be a positive number.")
        if not 0.0 <= self.validation_fraction < 1.0:
            raise ConfigError(f"validation_fraction={self.validation_fraction!r} must be in [0, 1).")
        if self.early_stopping and self.validation_fraction == 0:
            raise ConfigError("early_stopping=True needs validation cells: set validation_fraction > 0.")
        if self.checkpoint_dir is not None and not isinstance(self.checkpoint_dir, (str, os.PathLike)):
            raise ConfigError(f"checkpoint_dir={self.checkpoint_dir!r} must be a directory path (str or Path).")
        if self.checkpoint_dir is not None and os.path.isfile(self.checkpoint_dir):
            raise ConfigError(f"checkpoint_dir={str(self.checkpoint_dir)!r} is a file; give a directory.")
        for key in ("resume", "compile"):
            if not isinstance(getattr(self, key), bool):
                raise ConfigError(f"{key}={getattr(self, key)!r} must be True or False.")
        if self.resume and self.checkpoint_dir is None:
            raise ConfigError("resume=True needs checkpoint_dir: the directory the run was checkpointed to.")


@dataclass
class History:
    """Per-epoch training record: ``history["elbo"]`` etc. are lists with one value per epoch.

    ``loss`` is the total objective, ``elbo`` the negative ELBO per cell (under the regularisers'
    effects), one entry per regulariser with a loss (unweighted), and ``validation_loss`` the
    plain negative ELBO per validation cell. ``interrupted`` is True when Ctrl-C stopped training
    (the model then holds the state after the last finished epoch). ``seconds`` is the wall time of
    the whole run, ``epoch_seconds`` that of each epoch's training steps (validation excluded): the
    throughput after the first, warm-up epoch is ``n_train / epoch_seconds[k]``.
    """

    values: dict[str, list[float]] = field(default_factory=dict)
    stopped_early: bool = False
    interrupted: bool = False
    best_epoch: int | None = None
    seconds: float = 0.0
    epoch_seconds: list[float] = field(default_factory=list)
    cells_per_second: float = 0.0

    def add(self, row: dict[str, float]) -> None:
        """Append one epoch's values (a new key starts its own column)."""
        for key, value in row.items():
            self.values.setdefault(key, []).append(value)

    def __getitem__(self, key: str) -> list[float]:
        return self.values[key]

    def __contains__(self, key: str) -> bool:
        return key in self.values

    def __len__(self) -> int:
        return len(self.values.get("loss", []))


def split_indices(n: int, validation_fraction: float, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """A random train / validation split of ``range(n)``."""
    order = torch.randperm(n, generator=generator)
    n_val = round(n * validation_fraction)
    if n - n_val < 1:
        raise ConfigError(f"only {n} cells: nothing left to train on with validation_fraction={validation_fraction}.")
    return order[n_val:].sort().values, order[:n_val].sort().values


class Trainer:
    """Runs a :class:`TrainingPlan` on a model and its data; see the module docstring.

    ``strategy`` says what one process and data-parallel training do differently
    (:mod:`fcrkit.train.strategy`; default: :class:`~fcrkit.train.strategy.SingleProcess`); the
    epoch loop is this class's, whatever the strategy. Under data parallelism ``data`` (and
    ``pairing``) hold this rank's shard of the cells.
    """

    def __init__(self, module: GenerativeModel, data: CellData, plan: TrainingPlan,
                 pairing: ControlPairing | None = None, strategy: SingleProcess | None = None):
        if module.spec.control_pairing != "none" and pairing is None:
            raise ConfigError(f"model {module.spec.name!r} pairs cells with controls: pass a ControlPairing.")
        self.module, self.data, self.plan, self.pairing = module, data, plan, pairing
        self.strategy = strategy if strategy is not None else SingleProcess()
        self._global_ctx: object | None = None  # the step's global-batch context (see _losses)
        if plan.compile:
            compile_networks(module)
        self.sampler: PairSampler | None = None
        self._validated = False  # Pyro's checks have run on a step (see _losses)
        self._terms_checked = False  # the regularisers' loss terms have been checked (see _check_term)
        self._adversaries_checked: set[str] = set()  # and the adversaries' losses, by regulariser key
        self.elbo = resolve_elbo(plan.elbo, plan.num_particles)
        check_objective(module, plan.elbo)
        self.regularizers = module.regularizers
        self.weights = {r.key: r for r in module.spec.regularizers}
        adversary_params = {id(p) for r in self.regularizers.values()
                            if getattr(r, "adversary", None) is not None for p in r.adversary.parameters()}
        self.model_params = [p for p in module.parameters() if id(p) not in adversary_params]
        self.optimizer = torch.optim.Adam(self.model_params, lr=plan.lr, weight_decay=plan.weight_decay)
        self.adversaries = {
            name: torch.optim.Adam(r.adversary.parameters(), lr=float(getattr(r, "adversary_lr", 1e-3)))
            for name, r in self.regularizers.items() if getattr(r, "adversary", None) is not None
        }

    # -- one minibatch --------------------------------------------------------------------------------
    def _losses(self, batch: Batch, n_obs: int, epoch: float, with_terms: bool,
                generator: torch.Generator | None = None) -> tuple[dict[str, Tensor], object]:
        """The negative ELBO per cell and each regulariser's loss term, and the context.

        With control pairing the batch is extended by each cell's paired control and the ELBO counts
        both branches: ``-(ELBO(y) + ELBO(y0))`` per cell.

        A regulariser that asks for the global batch (``global_batch = True``) gets the strategy's
        global context (:meth:`~fcrkit.train.strategy.DataParallel.global_context`; in one process
        the minibatch's own), kept in ``self._global_ctx`` for the adversaries' steps.

        Pyro's validation (every distribution's arguments and samples checked against their
        constraints, every site's log-density checked for NaN and inf) runs on a trainer's first
        step only: it catches a component's mistakes there, and after that would cost a few
        elementwise passes and host synchronisations per step (1.1 ms of a 43 ms SCVI step at
        batch 512 on two CPU cores). Non-finite losses and parameters are still caught at the end of each
        epoch (:class:`~fcrkit.errors.NonFiniteLossError`).
        """
        pairs, plate = 0, n_obs
        if self.sampler is not None:
            pairs, plate = batch.y.shape[0], 2 * n_obs
            batch = Batch.concat(batch, self.data.gather(self.sampler.sample(batch.index, generator)))
        with pyro.validation_enabled(not self._validated):
            self._validated = True
            with ExitStack() as effects:
                for name, reg in self.regularizers.items():
                    if callable(getattr(reg, "handler", None)):
                        effects.enter_context(reg.handler(self.weights[name].weight_at(epoch)))
                guide = poutine.trace(self.module.guide)
                terms = {"elbo": self.elbo.differentiable_loss(self.module.model, guide, batch, plate) / n_obs}
            ctx = self.module.context(guide.trace, batch, plate, int(epoch), epoch / self.plan.max_epochs, pairs)
            self._global_ctx = None
            if with_terms and any(uses_global_batch(reg) for reg in self.regularizers.values()):
                self._global_ctx = self.strategy.global_context(ctx)
            if with_terms:
                for name, reg in self.regularizers.items():
                    if callable(getattr(reg, "loss", None)):
                        terms[name] = reg.loss(self._global_ctx if uses_global_batch(reg) else ctx)
                        if not self._terms_checked:
                            self._check_term(name, "loss", terms[name])
                self._terms_checked = True
        return terms, ctx

    def _check_term(self, key: str, method: str, value: object) -> None:
        """Refuse a regulariser's ``loss`` / ``adversary_loss`` that is not a scalar float tensor (first step only).

        Anything else would fail later inside torch, or broadcast the objective to the wrong shape,
        with a message that names neither the regulariser nor its plugin.
        """
        if isinstance(value, Tensor) and value.shape == () and value.is_floating_point():
            return
        if isinstance(value, Tensor):
            got = f"a {value.dtype} tensor of shape {tuple(value.shape)}"
        else:
            got = "None" if value is None else f"a {type(value).__name__} ({value!r:.60})"
        spec = self.weights[key]
        try:
            record = get_registry().get("regularizer", spec.name)
            origin = f"plugin {record.plugin!r}" + (f" ({record.origin})" if record.origin else "")
        except UnknownComponentError:  # built outside the registry
            origin = "an unknown plugin"
        raise PluginError(
            f"regularizer {spec.name!r} (key {key!r}, from {origin}) returned {got} from {method}(ctx); it must "
            "return a scalar floating-point torch.Tensor (shape (), e.g. `values.mean()`) that depends on the "
            "context's tensors, so that it can be weighted, added to the objective and differentiated. Fix the "
            "regulariser (fcrkit.testing.check_component checks it), or leave it out of the spec."
        )

    def step(self, batch: Batch, n_obs: int, epoch: float, generator: torch.Generator,
             share: float = 1.0) -> dict[str, Tensor]:
        """One optimisation step on ``batch`` (what :meth:`fit` runs for every minibatch).

        ``n_obs`` is the number of training cells (the plate's size), ``epoch`` the fractional
        epoch (it sets the regularisers' weight schedules), ``generator`` the source of control
        partners, ``share`` this process's share of the global batch (1 in one process). With
        control pairing, :attr:`sampler` must be set (``fit`` sets it for its training split).
        Returns the loss and each term, weighted by ``share``, detached and still on the device.
        """
        terms, ctx = self._losses(batch, n_obs, epoch, with_terms=True, generator=generator)
        total = terms["elbo"]
        for name, term in terms.items():
            if name != "elbo":
                total = total + self.weights[name].weight_at(epoch) * term
        objective = total
        if share != 1.0:  # this process's part of the global objective (see fcrkit.train.strategy)
            objective = total * share
            for name, term in terms.items():  # a global-batch term counts whole on every process
                if name != "elbo" and uses_global_batch(self.regularizers[name]):
                    objective = objective + (1.0 - share) * self.weights[name].weight_at(epoch) * term
        adversary_epoch = self._adversary_epoch(int(epoch))
        if not adversary_epoch:  # an alternating adversary's epoch: only adversaries learn
            self.optimizer.zero_grad(set_to_none=True)
            objective.backward()
            self.strategy.reduce_gradients(self.model_params)
            self.optimizer.step()
        self._step_adversaries(ctx, epoch, share)
        if share != 1.0:
            return {"loss": total.detach() * share, **{k: v.detach() * share for k, v in terms.items()}}
        return {"loss": total.detach(), **{k: v.detach() for k, v in terms.items()}}

    def _step_adversaries(self, ctx: object, epoch: float, share: float = 1.0) -> None:
        """Each adversary's own steps on the detached latents (those whose schedule owns this epoch).

        An adversary of a global-batch regulariser trains on the global batch, the same on every
        process, and its gradients are averaged over processes; the others' are weighted by ``share``.
        """
        detached = ctx.detached() if self.adversaries else ctx
        global_ctx = self._global_ctx
        # in one process the global batch is the minibatch: its detached copy is made once
        global_detached = detached if global_ctx is ctx else global_ctx.detached() if global_ctx is not None else None
        for name, optimizer in self.adversaries.items():
            reg = self.regularizers[name]
            if int(getattr(reg, "alternate_every", 0)) and not _owns_epoch(reg, int(epoch)):
                continue
            whole = uses_global_batch(reg)
            scale = 1.0 / self.strategy.world if whole else share
            for _ in range(int(getattr(reg, "adversary_steps", 1))):
                optimizer.zero_grad(set_to_none=True)
                loss = reg.adversary_loss(global_detached if whole else detached)
                if name not in self._adversaries_checked:
                    self._check_term(name, "adversary_loss", loss)
                    self._adversaries_checked.add(name)
                (loss * scale if scale != 1.0 else loss).backward()
                self.strategy.reduce_gradients(list(reg.adversary.parameters()))
                optimizer.step()

    def _record(self, history: History, row: dict[str, float], stop: dict, epoch: int) -> bool:
        """Add an epoch's row to ``history`` and update early stopping; True if validation improved."""
        plan = self.plan
        history.add(row)
        improved = plan.early_stopping and row["validation_loss"] < stop["best"] - plan.min_delta
        if improved:
            stop["best"], stop["waited"], history.best_epoch = row["validation_loss"], 0, epoch
        elif plan.early_stopping:
            stop["waited"] += 1
            history.stopped_early = stop["waited"] >= plan.patience
        return improved

    def _raise_if_not_finite(self, row: dict[str, float], epoch: int, last_good: dict, totals: EpochTotals,
                             cause: BaseException | None = None) -> None:
        """Restore the last good state and raise, naming the term, if a loss or a parameter is not finite.

        ``epoch`` is the loop's 0-based index; the error names the epoch counting from 1.

        The term named is the one that went non-finite first (the one non-finite at the most steps):
        once a step has poisoned the parameters, every term after it is non-finite too.
        """
        bad = [k for k, v in row.items() if not math.isfinite(v)]
        if not bad and bool(torch.stack([torch.isfinite(p).all() for p in self.module.parameters()]).all()):
            return  # one host sync for all parameters
        term = totals.first_nonfinite() or next((k for k in bad if k not in ("loss", "validation_loss")),
                                                bad[0] if bad else "parameters")
        self._load_state(last_good)
        # epochs count from 1 in messages, as everywhere else; the error carries the finished epochs' history
        raise NonFiniteLossError(term, epoch + 1, row.get(term, float("nan")), _history(last_good)) from cause

    def _check_batches(self, n_train: int, per_batch: int = MIN_BATCH_CELLS) -> int:
        """The number of training steps per epoch; refuse a plan that would leave a step no cells to train on.

        A model with batch normalisation cannot train on a single cell per process: its layers
        need ``per_batch`` cells in every minibatch (:func:`~fcrkit.data.loaders.batch_sizes` merges
        a smaller remainder into the batch before it, so only a lone batch can be that small).
        """
        plan = self.plan
        sizes = batch_sizes(n_train, plan.batch_size, drop_last=plan.drop_last, min_cells=per_batch)
        if not sizes:
            raise ConfigError(f"drop_last=True with {n_train} training cells and batch_size={plan.batch_size} leaves "
                              "no full batch to train on; use a smaller batch_size or drop_last=False.")
        if has_batch_norm(self.module):
            if plan.batch_size < MIN_BATCH_CELLS:
                raise ConfigError(f"batch_size={plan.batch_size}: model {self.module.spec.name!r} uses batch "
                                  f"normalisation, which needs at least {MIN_BATCH_CELLS} cells per minibatch; use "
                                  "a larger batch_size.")
            if min(sizes) < per_batch:
                raise ConfigError(f"only {n_train} training cells (validation_fraction={plan.validation_fraction}): "
                                  f"model {self.module.spec.name!r} uses batch normalisation, which needs at least "
                                  f"{MIN_BATCH_CELLS} cells per minibatch; give it more cells (or a smaller "
                                  "validation_fraction).")
        return len(sizes)

    def _adversary_epoch(self, epoch: int) -> bool:
        """Whether an adversary with an alternating schedule (``alternate_every``) owns this epoch."""
        return any(_owns_epoch(self.regularizers[name], epoch) for name in self.adversaries)

    @torch.no_grad()
    def validation_loss(self, index: Tensor) -> Tensor:
        """The plain negative ELBO per cell on ``index`` (no regulariser effects).

        Without Pyro's validation, as training steps after the first run (see ``_losses``): after
        a non-finite step it comes out non-finite, and the epoch's check names the term.
        """
        total = torch.zeros((), device=self.data.device)
        with pyro.validation_enabled(False):
            for batch in self.data.iter_batches(index, self.plan.batch_size, shuffle=False):
                # plate size = the batch's own size (scale 1): each batch adds its cells' sum, whatever the batching
                total = total + evaluation_loss(self.elbo, self.module.model, self.module.guide, batch,
                                                len(batch.index))
        return total / len(index)

    # -- the loop -----------------------------------------------------------------------------------------
    def fit(self) -> History:
        """Run the plan; returns the History (checkpoints, resume and Ctrl-C: see the module doc).

        Denormal floats are flushed to zero while training (see :func:`flushed_denormals`).
        """
        with flushed_denormals():
            return self._fit()

    def _fit(self) -> History:
        plan, module, data, strategy = self.plan, self.module, self.data, self.strategy
        saved = checkpoint.load(plan.checkpoint_dir) if plan.resume else None
        if plan.resume and saved is None:  # resume=True is safe on a first run too
            logger.warning("no checkpoint in %r: training from the start.", str(plan.checkpoint_dir))
        seed = plan.seed if plan.seed is not None else (  # resuming adopts the checkpoint's seed
            saved["identity"]["seed"] if saved else strategy.draw_seed(data.device))
        pyro.set_rng_seed(seed + strategy.rank)  # torch, numpy and random: Monte Carlo samples and dropout
        # minibatch order and control partners (each rank shuffles its own shard)
        generator = torch.Generator(device=data.device).manual_seed(seed + strategy.rank)
        train_idx, val_idx, n_train, n_val = strategy.split(data.n_obs, plan.validation_fraction, seed, data.device)
        if self.pairing is not None:
            self.sampler = self.pairing.sampler(train_idx, data.device)
        n_batches = strategy.plan_steps(self, n_train)
        identity = checkpoint.identity(module, strategy.total_cells(data), plan, seed)
        identity["processes"] = strategy.world  # the random streams are per process

        history = History()
        stop: dict = {"best": math.inf, "waited": 0, "best_state": None}  # early stopping
        last_good = self._state(_snapshot(module, self.optimizer), generator, history, stop)
        if saved is not None:
            saved["identity"].setdefault("processes", 1)  # written before data parallelism could checkpoint
            checkpoint.check_identity(saved["identity"], identity, plan.checkpoint_dir)
            last_good = saved["state"]
            self._load_state(last_good, generator)
            history, stop = _history(last_good), dict(last_good["stopping"])
        first = len(history)
        last = first if history.stopped_early else plan.max_epochs
        # notebooks and terminals; not in CI (see fcrkit.progress); one bar for all processes
        show = progress.enabled(plan.progress_bar) and strategy.writes
        where = f" ({strategy.world} ddp)" if strategy.world > 1 else ""
        bar = tqdm(range(first, last), initial=first, total=plan.max_epochs, disable=not show,
                   desc=f"training{where}", unit="epoch", leave=False)
        start, seconds = time.perf_counter(), history.seconds
        try:
            for epoch in bar:
                module.train()
                totals = EpochTotals()
                epoch_start = time.perf_counter()
                try:
                    for step, (batch, share) in enumerate(strategy.batches(data, train_idx, plan, generator)):
                        totals.add(self.step(batch, n_train, epoch + step / n_batches, generator, share))
                except (ValueError, RuntimeError) as err:
                    # a non-finite step poisons the parameters; a later step may then fail inside Pyro or torch
                    bar.close()
                    self._raise_if_not_finite(totals.means(n_batches), epoch, last_good, totals, cause=err)
                    raise
                module.eval()
                strategy.reduce_buffers(module)
                row = strategy.reduce_row(totals, n_batches)  # the one host sync of the epoch
                history.epoch_seconds.append(time.perf_counter() - epoch_start)
                if n_val:
                    row["validation_loss"] = strategy.validation(self, val_idx, n_val)
                self._raise_if_not_finite(row, epoch, last_good, totals)
                improved = self._record(history, row, stop, epoch)
                history.seconds = seconds + time.perf_counter() - start
                weights = _snapshot(module, self.optimizer)
                if improved:
                    stop["best_state"] = weights
                last_good = self._state(weights, generator, history, stop)
                bar.set_postfix(loss=f"{row['loss']:.4g}", refresh=False)
                if plan.checkpoint_dir is not None and strategy.writes and (
                        (epoch + 1) % plan.checkpoint_every == 0 or epoch + 1 == plan.max_epochs
                        or history.stopped_early):
                    checkpoint.save(plan.checkpoint_dir, identity, last_good)
                if history.stopped_early:
                    break
        except KeyboardInterrupt:
            bar.close()
            return self._interrupted(last_good, generator, identity, n_train)
        bar.close()
        if stop["best_state"] is not None:
            _restore(module, self.optimizer, stop["best_state"])
        strategy.finish(module)
        history.cells_per_second = n_train * len(history) / max(history.seconds, 1e-9)
        return history

    def _interrupted(self, last_good: dict, generator: torch.Generator, identity: dict, n_train: int) -> History:
        """After Ctrl-C: go back to the end of the last finished epoch, checkpoint it, and warn."""
        self._load_state(last_good, generator)
        history = _history(last_good)
        history.interrupted = True
        history.cells_per_second = n_train * len(history) / max(history.seconds, 1e-9)
        if self.plan.checkpoint_dir is not None:
            if self.strategy.writes:
                checkpoint.save(self.plan.checkpoint_dir, identity, last_good)
            how = f"resume with train(..., checkpoint_dir={str(self.plan.checkpoint_dir)!r}, resume=True)"
        else:
            how = "pass checkpoint_dir= (and resume=True) to be able to resume a run"
        warnings.warn(f"training was interrupted during epoch {len(history) + 1}; the model holds the state "
                      f"after epoch {len(history)}; {how}.", stacklevel=4)
        return history

    def _state(self, weights: tuple[dict, dict], generator: torch.Generator, history: History, stop: dict) -> dict:
        """The loop's state at the end of an epoch: what a checkpoint holds (copied, so training can go on)."""
        return {
            "epoch": len(history),  # epochs finished
            "module": weights[0],
            "optimizer": weights[1],
            "adversaries": {name: copy.deepcopy(opt.state_dict()) for name, opt in self.adversaries.items()},
            "rng": self.strategy.rng_state(generator),  # every process's streams
            "history": {"values": {k: list(v) for k, v in history.values.items()}, "best_epoch": history.best_epoch,
                        "stopped_early": history.stopped_early, "seconds": history.seconds,
                        "epoch_seconds": list(history.epoch_seconds)},
            "stopping": dict(stop),
        }

    def _load_state(self, state: dict, generator: torch.Generator | None = None) -> None:
        """Put the weights and every optimiser back to ``state``; with ``generator``, the random streams too."""
        _restore(self.module, self.optimizer, (state["module"], state["optimizer"]))
        for name, optimizer in self.adversaries.items():
            optimizer.load_state_dict(copy.deepcopy(state["adversaries"][name]))
        if generator is not None:
            self.strategy.set_rng_state(state["rng"], generator)


class EpochTotals:
    """An epoch's running sum of each loss term, and the number of steps at which each was not finite.

    Both stay on the device (no host synchronisation per step); they are read once per epoch.
    """

    def __init__(self) -> None:
        self.sums: dict[str, Tensor] = {}
        self.nonfinite: dict[str, Tensor] = {}

    def add(self, terms: dict[str, Tensor]) -> None:
        """Add one step's terms."""
        for key, value in terms.items():
            bad = torch.isfinite(value).logical_not().to(torch.int32)
            if key in self.sums:
                self.sums[key], self.nonfinite[key] = self.sums[key] + value, self.nonfinite[key] + bad
            else:
                self.sums[key], self.nonfinite[key] = value, bad

    def means(self, n_steps: int) -> dict[str, float]:
        """Each term's mean over ``n_steps`` steps, read back to the host in one transfer."""
        if not self.sums:
            return {}
        keys = list(self.sums)
        return dict(zip(keys, torch.stack([self.sums[k].float() for k in keys]).div(n_steps).tolist()))

    def first_nonfinite(self) -> str | None:
        """The term (other than the total ``loss``) that was non-finite at the most steps, if any."""
        counts = {k: int(v) for k, v in self.nonfinite.items() if k != "loss"}
        worst = max(counts, key=counts.get, default=None)
        return worst if worst is not None and counts[worst] > 0 else None


@contextmanager
def flushed_denormals() -> Iterator[None]:
    """Flush denormal floats to zero (the CPU's FTZ/DAZ modes) inside the block, then restore.

    A decoder's softmax over thousands of genes yields probabilities and gradients far below the
    smallest normal float32 (1.2e-38) for genes a cell does not express; arithmetic on such
    denormals can take a slow path on x86 CPUs (how much depends on the CPU: on the AMD machine of
    docs/performance.md the effect was within the machine's drift). Treating them as 0 changes
    nothing a model can resolve. GPUs flush them anyway in most kernels; where the CPU has no such
    mode this does nothing.
    """
    flushing = bool(torch.tensor([1e-39]).mul(1.0)[0] == 0)  # the mode in force now (a denormal reads as 0)
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(flushing)


def compile_networks(module: GenerativeModel) -> None:
    """``torch.compile`` the encoders, priors and decoder of ``module`` in place (``plan.compile``).

    The Pyro model and guide stay eager; the weights and their names are unchanged, so saving,
    loading and checkpoints work as before. The first steps pay the compilation (about a minute on
    a 2-core CPU, and a C++ compiler is needed there). On the CPU, with fcrkit's fused NB kernel,
    it does not pay (docs/performance.md); it is there for accelerators, where fusing the networks'
    elementwise layers can.
    """
    for network in (*module.encoders.values(), *module.priors.values(), module.decoder):
        network.compile()


def _owns_epoch(regularizer: object, epoch: int) -> bool:
    """Alternating adversaries (``alternate_every = k``) own the k-th, 2k-th ... epochs."""
    every = int(getattr(regularizer, "alternate_every", 0))
    return every > 0 and (epoch + 1) % every == 0


def _snapshot(module: torch.nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    return copy.deepcopy(module.state_dict()), copy.deepcopy(optimizer.state_dict())


def _restore(module: torch.nn.Module, optimizer: torch.optim.Optimizer, state: tuple[dict, dict]) -> None:
    module.load_state_dict(state[0])
    optimizer.load_state_dict(copy.deepcopy(state[1]))  # the optimiser would step the snapshot's tensors in place


def _history(state: dict) -> History:
    """The History saved in a loop state (see ``Trainer._state``)."""
    saved = state["history"]
    return History(values={k: list(v) for k, v in saved["values"].items()}, stopped_early=saved["stopped_early"],
                   best_epoch=saved["best_epoch"], seconds=saved["seconds"],
                   epoch_seconds=list(saved.get("epoch_seconds", [])))


def train(module: GenerativeModel, data: CellData, plan: TrainingPlan | None = None, **settings: object) -> History:
    """Train ``module`` on ``data``; ``settings`` are :class:`TrainingPlan` fields."""
    return Trainer(module, data, plan or TrainingPlan(**settings)).fit()

