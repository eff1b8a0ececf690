"""Stochastic variational inference for a :class:`~fcrkit.model.GenerativeModel`.

Each step computes ``elbo.differentiable_loss(model, guide)`` (per cell) under the regularisers'
effects, adds ``weight * loss(ctx)`` for each regulariser with a loss, and steps one torch
optimiser over the model's parameters. Regularisers that own an adversary get their own optimiser
and ``adversary_steps`` steps per model step on detached latents. Losses stay on the device and are
read back once per epoch.
"""

from __future__ import annotations

import copy
import math
import sys
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field

import pyro
import torch
from pyro import poutine
from pyro.infer import ELBO, Trace_ELBO, TraceMeanField_ELBO
from torch import Tensor
from tqdm.auto import tqdm

from fcrkit.data.loaders import Batch, CellData
from fcrkit.data.pairing import ControlPairing, PairSampler
from fcrkit.errors import ConfigError, NonFiniteLossError, listing
from fcrkit.model import GenerativeModel

ELBOS: dict[str, Callable[[], ELBO]] = {
    "trace_meanfield": TraceMeanField_ELBO,
    "trace": Trace_ELBO,
}
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


def resolve_elbo(elbo: str | ELBO) -> ELBO:
    """A Pyro ELBO from its name (see :data:`ELBOS`) or as given."""
    if isinstance(elbo, ELBO):
        return elbo
    if elbo not in ELBOS:
        raise ConfigError(f"elbo={elbo!r} is not one of {listing(ELBOS)} (or pass a pyro.infer.ELBO).")
    return ELBOS[elbo]()


@dataclass
class TrainingPlan:
    """Settings of one training run (the keyword arguments of ``Model.train``)."""

    max_epochs: int = 100
    batch_size: int = 512
    lr: float = 1e-3
    weight_decay: float = 0.0
    elbo: str | ELBO = "trace_meanfield"
    validation_fraction: float = 0.1
    early_stopping: bool = False
    patience: int = 10
    min_delta: float = 0.0
    seed: int | None = None
    progress_bar: bool | None = None  # None: shown on a terminal only
    drop_last: bool = False

    def __post_init__(self) -> None:
        for key in ("max_epochs", "batch_size", "patience"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{key}={value!r} must be a positive integer.")
        if not (isinstance(self.lr, (int, float)) and self.lr > 0 and math.isfinite(self.lr)):
            raise ConfigError(f"lr={self.lr!r} must be a positive number.")
        if not 0.0 <= self.validation_fraction < 1.0:
            raise ConfigError(f"validation_fraction={self.validation_fraction!r} must be in [0, 1).")
        if self.early_stopping and self.validation_fraction == 0:
            raise ConfigError("early_stopping=True needs validation cells: set validation_fraction > 0.")


@dataclass
class History:
    """Per-epoch training record: ``history["elbo"]`` etc. are lists with one value per epoch.

    ``loss`` is the total objective, ``elbo`` the negative ELBO per cell (under the regularisers'
    effects), one entry per regulariser with a loss (unweighted), and ``validation_loss`` the
    plain negative ELBO per validation cell.
    """

    values: dict[str, list[float]] = field(default_factory=dict)
    stopped_early: bool = False
    best_epoch: int | None = None
    seconds: float = 0.0
    cells_per_second: float = 0.0

    def add(self, row: dict[str, float]) -> None:
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
    n_val = int(round(n * validation_fraction))
    if n - n_val < 1:
        raise ConfigError(f"only {n} cells: nothing left to train on with validation_fraction={validation_fraction}.")
    return order[n_val:].sort().values, order[:n_val].sort().values


class Trainer:
    """Runs a :class:`TrainingPlan` on a model and its data; see the module docstring."""

    def __init__(self, module: GenerativeModel, data: CellData, plan: TrainingPlan,
                 pairing: ControlPairing | None = None):
        if module.spec.control_pairing != "none" and pairing is None:
            raise ConfigError(f"model {module.spec.name!r} pairs cells with controls: pass a ControlPairing.")
        self.module, self.data, self.plan, self.pairing = module, data, plan, pairing
        self.sampler: PairSampler | None = None
        self.elbo = resolve_elbo(plan.elbo)
        self.regularizers = module.regularizers
        self.weights = {r.key: r for r in module.spec.regularizers}
        adversary_params = {id(p) for r in self.regularizers.values()
                            if getattr(r, "adversary", None) is not None for p in r.adversary.parameters()}
        model_params = [p for p in module.parameters() if id(p) not in adversary_params]
        self.optimizer = torch.optim.Adam(model_params, lr=plan.lr, weight_decay=plan.weight_decay)
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
        """
        pairs, plate = 0, n_obs
        if self.sampler is not None:
            pairs, plate = batch.y.shape[0], 2 * n_obs
            batch = Batch.concat(batch, self.data.gather(self.sampler.sample(batch.index, generator)))
        with ExitStack() as effects:
            for name, reg in self.regularizers.items():
                if callable(getattr(reg, "handler", None)):
                    effects.enter_context(reg.handler(self.weights[name].weight_at(epoch)))
            guide = poutine.trace(self.module.guide)
            terms = {"elbo": self.elbo.differentiable_loss(self.module.model, guide, batch, plate) / n_obs}
        ctx = self.module.context(guide.trace, batch, plate, int(epoch), epoch / self.plan.max_epochs, pairs)
        if with_terms:
            for name, reg in self.regularizers.items():
                if callable(getattr(reg, "loss", None)):
                    terms[name] = reg.loss(ctx)
        return terms, ctx

    def _step(self, batch: Batch, n_obs: int, epoch: float, generator: torch.Generator) -> dict[str, Tensor]:
        terms, ctx = self._losses(batch, n_obs, epoch, with_terms=True, generator=generator)
        total = terms["elbo"]
        for name, term in terms.items():
            if name != "elbo":
                total = total + self.weights[name].weight_at(epoch) * term
        adversary_epoch = self._adversary_epoch(int(epoch))
        if adversary_epoch:  # an alternating adversary's epoch: only adversaries learn
            total = total.detach()
        else:
            self.optimizer.zero_grad(set_to_none=True)
            total.backward()
            self.optimizer.step()
        detached = ctx.detached()
        for name, optimizer in self.adversaries.items():
            reg = self.regularizers[name]
            if int(getattr(reg, "alternate_every", 0)) and not _owns_epoch(reg, int(epoch)):
                continue
            for _ in range(int(getattr(reg, "adversary_steps", 1))):
                optimizer.zero_grad(set_to_none=True)
                reg.adversary_loss(detached).backward()
                optimizer.step()
        return {"loss": total.detach(), **{k: v.detach() for k, v in terms.items()}}

    def _raise_if_not_finite(self, row: dict[str, float], epoch: int, last_good: tuple[dict, dict],
                             cause: BaseException | None = None) -> None:
        """Restore the last good state and raise, naming the term, if a loss or a parameter is not finite."""
        bad = [k for k, v in row.items() if not math.isfinite(v)]
        if not bad and bool(torch.stack([torch.isfinite(p).all() for p in self.module.parameters()]).all()):
            return  # one host sync for all parameters
        term = next((k for k in bad if k not in ("loss", "validation_loss")), bad[0] if bad else "parameters")
        _restore(self.module, self.optimizer, last_good)
        raise NonFiniteLossError(term, epoch, row.get(term, float("nan"))) from cause

    def _adversary_epoch(self, epoch: int) -> bool:
        """Whether an adversary with an alternating schedule (``alternate_every``) owns this epoch."""
        return any(_owns_epoch(self.regularizers[name], epoch) for name in self.adversaries)

    @torch.no_grad()
    def validation_loss(self, index: Tensor) -> Tensor:
        """The plain negative ELBO per cell on ``index`` (no regulariser effects)."""
        total = torch.zeros((), device=self.data.device)
        for batch in self.data.iter_batches(index, self.plan.batch_size, shuffle=False):
            total = total + self.elbo.differentiable_loss(self.module.model, self.module.guide, batch, len(index))
        return total / len(index)

    # -- the loop -----------------------------------------------------------------------------------------
    def fit(self) -> History:
        plan, module, data = self.plan, self.module, self.data
        seed = plan.seed if plan.seed is not None else int(torch.randint(2**62, ()).item())
        pyro.set_rng_seed(seed)  # torch, numpy and random: Monte Carlo samples and dropout
        generator = torch.Generator(device=data.device).manual_seed(seed)  # minibatch order
        train_idx, val_idx = split_indices(data.n_obs, plan.validation_fraction, torch.Generator().manual_seed(seed))
        train_idx, val_idx = train_idx.to(data.device), val_idx.to(data.device)
        if self.pairing is not None:
            self.sampler = self.pairing.sampler(train_idx, data.device)
        n_train = len(train_idx)
        n_batches = max(1, n_train // plan.batch_size if plan.drop_last else math.ceil(n_train / plan.batch_size))

        history = History()
        last_good = _snapshot(module, self.optimizer)
        best, best_state, waited = math.inf, None, 0
        show = sys.stderr.isatty() if plan.progress_bar is None else plan.progress_bar
        bar = tqdm(range(plan.max_epochs), disable=not show, desc="training", unit="epoch", leave=False)
        start = time.perf_counter()
        for epoch in bar:
            module.train()
            sums: dict[str, Tensor] = {}
            try:
                for step, batch in enumerate(data.iter_batches(train_idx, plan.batch_size, shuffle=True,
                                                               generator=generator, drop_last=plan.drop_last)):
                    for key, value in self._step(batch, n_train, epoch + step / n_batches, generator).items():
                        sums[key] = sums[key] + value if key in sums else value
            except (ValueError, RuntimeError) as err:
                # a non-finite step poisons the parameters; the next step then fails inside Pyro or torch
                bar.close()
                self._raise_if_not_finite(_read_back(sums, n_batches), epoch, last_good, cause=err)
                raise
            module.eval()
            row = _read_back(sums, n_batches)  # the one host sync of the epoch
            if len(val_idx):
                row["validation_loss"] = float(self.validation_loss(val_idx))
            self._raise_if_not_finite(row, epoch, last_good)
            history.add(row)
            last_good = _snapshot(module, self.optimizer)
            bar.set_postfix(loss=f"{row['loss']:.4g}", refresh=False)
            if plan.early_stopping:
                if row["validation_loss"] < best - plan.min_delta:
                    best, best_state, waited, history.best_epoch = row["validation_loss"], last_good, 0, epoch
                else:
                    waited += 1
                    if waited >= plan.patience:
                        history.stopped_early = True
                        break
        bar.close()
        if best_state is not None:
            _restore(module, self.optimizer, best_state)
        history.seconds = time.perf_counter() - start
        history.cells_per_second = n_train * len(history) / max(history.seconds, 1e-9)
        return history


def _owns_epoch(regularizer: object, epoch: int) -> bool:
    """Alternating adversaries (``alternate_every = k``) own the k-th, 2k-th ... epochs."""
    every = int(getattr(regularizer, "alternate_every", 0))
    return every > 0 and (epoch + 1) % every == 0


def _read_back(sums: dict[str, Tensor], n_batches: int) -> dict[str, float]:
    keys = list(sums)
    if not keys:
        return {}
    values = torch.stack([sums[k].float() for k in keys]).div(n_batches).tolist()
    return dict(zip(keys, values))


def _snapshot(module: torch.nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    return copy.deepcopy(module.state_dict()), copy.deepcopy(optimizer.state_dict())


def _restore(module: torch.nn.Module, optimizer: torch.optim.Optimizer, state: tuple[dict, dict]) -> None:
    module.load_state_dict(state[0])
    optimizer.load_state_dict(state[1])


def train(module: GenerativeModel, data: CellData, plan: TrainingPlan | None = None, **settings: object) -> History:
    """Train ``module`` on ``data``; ``settings`` are :class:`TrainingPlan` fields."""
    return Trainer(module, data, plan or TrainingPlan(**settings)).fit()

