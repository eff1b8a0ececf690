"""The user's object: a composed model bound to an AnnData.

:class:`Model` gives every recipe the same surface: ``train``, ``get_latent_representation``,
``get_normalized_expression``, ``predict``, ``save`` and ``load``. A recipe is a subclass whose
``__init__`` writes a spec. Cells other than the training cells, given to any of them, are checked as
the training cells were (finite values of the kind the likelihood models, unique gene names).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import numpy as np
import pandas as pd
import torch
from anndata import AnnData

from fcrkit.data.anndata import (
    AnnDataSetup,
    check_new_cells,
    check_unique_genes,
    check_values,
    get_matrix,
    get_setup,
    parse_dose,
    split_treatment,
)
from fcrkit.data.backed import cell_data
from fcrkit.data.labels import IndexedLabels, take_rows, with_values
from fcrkit.data.loaders import Batch, CellData
from fcrkit.data.pairing import ControlPairing
from fcrkit.errors import (
    ConfigError,
    DataError,
    NonFiniteLossError,
    UnknownComponentError,
    did_you_mean,
    listing,
)
from fcrkit.models import persistence
from fcrkit.models.persistence import META_FILE, WEIGHTS_FILE
from fcrkit.program import GenerativeModel
from fcrkit.protocols import Labels
from fcrkit.spec import DEFAULT_POSTERIOR, ComponentSpec, ModelSpec, line_of
from fcrkit.train import distributed
from fcrkit.train.trainer import History, Trainer, TrainingPlan, resolve_device

M = TypeVar("M", bound="Model")


class Model:
    """A model composed from ``spec`` for the data in ``adata``.

    Args:
        adata: data registered with :func:`fcrkit.setup_anndata`.
        spec: a :class:`~fcrkit.spec.ModelSpec` or its dict form.
        seed: seed of the weight initialisation (None: torch's current state).
    """

    def __init__(self, adata: AnnData, spec: ModelSpec | Mapping[str, Any], *, seed: int | None = None):
        spec = spec if isinstance(spec, ModelSpec) else ModelSpec.from_dict(spec)
        _check_adata(adata)
        self._bind(adata, spec, get_setup(adata), seed)
        if spec.control_pairing != "none":  # depends on the data only: say so now, not after an epoch
            ControlPairing.from_anndata(adata, self.setup, spec.control_pairing).check_controls(spec.control_pairing)

    def _bind(self, adata: AnnData, spec: ModelSpec, setup: AnnDataSetup, seed: int | None) -> None:
        _check_adata(adata)
        _check_treated_cells(spec, setup)
        self.adata, self.spec, self.setup = adata, spec, setup
        self.module = self._build_module(seed)
        # weights chosen by the caller (a constructor seed, or loaded): train(seed=) then keeps them
        self._own_weights = seed is not None
        check_values(get_matrix(adata, setup.layer, stream=True), self.module.likelihood.input_kind,
                     likelihood=spec.likelihood.name, layer=setup.layer)
        self.var_names = [str(v) for v in adata.var_names]
        self.history = History()
        self.is_trained = False

    def _build_module(self, seed: int | None) -> GenerativeModel:
        """A freshly initialised module; with ``seed``, from that seed, leaving the global random state alone."""
        with torch.random.fork_rng(devices=[]):
            if seed is not None:
                torch.manual_seed(seed)
            return GenerativeModel(self.spec, self.setup.label_dims, self.adata.n_vars,
                                   label_groups=self.setup.label_groups,
                                   treatment_features=self.setup.feature_matrix())

    def __repr__(self) -> str:
        blocks = ", ".join(f"{b.name}={b.dim}" for b in self.spec.blocks)
        state = "trained" if self.is_trained else "untrained"
        return (f"{type(self).__name__}({self.adata.n_obs} cells x {self.adata.n_vars} genes, blocks: {blocks}, "
                f"likelihood: {self.spec.likelihood.name}, {state})")

    # -- training -----------------------------------------------------------------------------------------
    def train(
        self,
        max_epochs: int = 100,
        *,
        batch_size: int = 512,
        lr: float = 1e-3,
        accelerator: str = "auto",
        seed: int | None = None,
        checkpoint_dir: str | os.PathLike | None = None,
        checkpoint_every: int = 1,
        resume: bool = False,
        strategy: str = "auto",
        devices: int | None = None,
        chunk_cells: int | None = None,
        **settings: Any,
    ) -> History:
        """Fit the model by SVI; returns (and keeps in ``self.history``) the per-epoch losses.

        Args:
            max_epochs: epochs to train (with ``resume``, in total, counting the checkpoint's).
            batch_size: minibatch size.
            lr: Adam learning rate.
            accelerator: ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
            seed: seed of everything the run depends on: the initial weights, the train / validation
                split, the minibatch order, Monte Carlo samples, dropout and control partners. The same
                seed gives the same result on the same device (two models built alike and trained with
                ``seed=0`` give identical latents), whatever the global random state. The weights are
                drawn from ``seed`` only for a model that is untrained and was built without its own
                ``seed=`` (a constructor seed, a loaded model's or an earlier run's weights are kept).
                None: a random seed, and the weights the model was built with.
            checkpoint_dir: directory to keep ``checkpoint.pt`` in: the whole training state
                (weights, optimisers, history, early stopping, random streams), replaced atomically
                so a crash leaves a complete checkpoint. None: no checkpoints.
            checkpoint_every: write the checkpoint after every this many epochs (and at the end).
            resume: continue from the checkpoint in ``checkpoint_dir`` (to exactly the result of an
                uninterrupted run on CPU); it must come from this model, data and plan (else a
                ConfigError says what differs). Without a checkpoint there, training starts afresh,
                so ``resume=True`` is safe on a first run too. With ``resume=False`` an existing
                checkpoint is overwritten.
            strategy: ``"single"`` (this process), ``"ddp"`` (data-parallel over processes with
                DistributedDataParallel, see :mod:`fcrkit.train.distributed`; ``batch_size`` is then
                per process) or ``"auto"`` (``"ddp"`` when ``devices > 1`` or under torchrun).
            devices: with ``"ddp"`` outside torchrun, the number of worker processes to start (one
                GPU each on CUDA); their result is loaded back into this model.
            chunk_cells: for a backed AnnData (``anndata.read_h5ad(path, backed="r")``), the cells read
                into memory at a time; minibatches are block-shuffled within such chunks (see
                :mod:`fcrkit.data.backed`). None: chunks of about 64 MB. Ignored for in-memory data.

        Further settings (``weight_decay``, ``elbo`` and ``num_particles`` (the objective:
        ``"trace_meanfield"``, ``"trace"``, ``"iwae"`` or ``"trace_enum"``; see
        :mod:`fcrkit.train.objectives`), ``validation_fraction``, ``early_stopping``,
        ``patience``, ``min_delta``, ``progress_bar``, ``drop_last``, ``compile``) are those of
        :class:`~fcrkit.train.TrainingPlan`.

        Ctrl-C stops training cleanly: the model keeps the state after the last finished epoch
        (checkpointed when ``checkpoint_dir`` is set), ``history.interrupted`` is True and a
        warning says how to resume.
        """
        unknown = [k for k in settings if k not in TrainingPlan.__dataclass_fields__]
        if unknown:
            raise ConfigError(f"train() got unknown setting(s) {listing(unknown)}; "
                              f"settings are {listing(TrainingPlan.__dataclass_fields__)}.")
        plan = TrainingPlan(max_epochs=max_epochs, batch_size=batch_size, lr=lr, seed=seed,
                            checkpoint_dir=checkpoint_dir, checkpoint_every=checkpoint_every, resume=resume,
                            **settings)
        strategy = distributed.resolve_strategy(strategy, devices)
        if seed is not None and not (self.is_trained or getattr(self, "_own_weights", True)):
            # the initial weights are part of the run: draw them from its seed, not the global random state
            self.module.load_state_dict(self._build_module(seed).state_dict())
        try:
            if strategy == "ddp":
                self.history = distributed.train_model(self, plan, accelerator, devices, chunk_cells)
            else:
                device = resolve_device(accelerator)
                self.module.to(device)
                data = cell_data(self.adata, self.setup, device=device, chunk_cells=chunk_cells)  # streamed if backed
                pairing = ControlPairing.for_mode(self.adata, self.setup, self.spec.control_pairing)
                self.history = Trainer(self.module, data, plan, pairing).fit()
        except NonFiniteLossError as err:  # the model holds the epochs that finished: so does its history
            if err.history is not None:
                self.history = err.history
                self.is_trained = self.is_trained or len(self.history) > 0
            raise
        # an interrupt before the first epoch ended leaves the weights as they were
        self.is_trained = self.is_trained or len(self.history) > 0
        return self.history

    # -- inference ----------------------------------------------------------------------------------------
    @torch.no_grad()
    def get_latent_representation(
        self,
        adata: AnnData | None = None,
        *,
        block: str | None = None,
        give_mean: bool = True,
        batch_size: int = 1024,
        as_dict: bool = False,
    ) -> np.ndarray | dict[str, np.ndarray]:
        """Latent blocks of the cells of ``adata`` (default: the training data).

        Each block is a ``(n_cells, dim)`` array of posterior means (for a ``flow`` posterior, the flow's image of its
        base mean; see :meth:`fcrkit.protocols.Posterior.point`), or of one posterior sample with
        ``give_mean=False``. What comes back follows one rule for every model:

        * ``block="tx"``: that block's array (the block names are the spec's, e.g. ``"x"``, ``"t"``,
          ``"tx"`` for FCR and ``"z"`` for the one-block recipes);
        * otherwise, a model of one block (SCVI, BetaVAE, ...): its array, so that
          ``adata.obsm["X_scvi"] = model.get_latent_representation()`` works as with scvi-tools;
        * otherwise, a model of several blocks (FCR): a dict from ``obsm`` key (``X_<model>_<block>``)
          to array, stored in one go with ``adata.obsm.update(model.get_latent_representation())``;
        * ``as_dict=True``: that dict for any model (``{"X_<model>": array}`` for one block), for code
          that handles models of every shape.
        """
        names = list(self.spec.cell_block_dims)  # global blocks: get_global_latent
        if block is not None:
            if as_dict:
                raise ConfigError("get_latent_representation(): give block= (one block's array) or as_dict=True "
                                  "(every block), not both.")
            if block in self.spec.global_block_dims:
                raise ConfigError(f"get_latent_representation(): block {block!r} is global (one row per entry of "
                                  f"label {self.module.global_plates[block]!r}, not per cell): read it with "
                                  f"model.get_global_latent({block!r}).")
            if block not in names:
                raise ConfigError(f"get_latent_representation(): block={block!r} is not a block of model "
                                  f"{self.spec.name!r} (blocks: {listing(names)}).{did_you_mean(block, names)}")
        data = self._cell_data(adata)
        self.module.eval()
        out: dict[str, list[np.ndarray]] = {name: [] for name in names}
        index = torch.arange(data.n_obs, device=data.device)
        for batch in data.iter_batches(index, batch_size, shuffle=False):
            for name, z in self.module.latent(batch, mean=give_mean).items():
                out[name].append(z.cpu().numpy())
        blocks = {name: np.concatenate(parts) for name, parts in out.items()}
        if block is not None:
            return blocks[block]
        if len(blocks) == 1 and not as_dict:
            return next(iter(blocks.values()))
        return {self.spec.obsm_key(name): z for name, z in blocks.items()}

    @torch.no_grad()
    def get_global_latent(self, block: str, *, value: str = "point") -> pd.DataFrame:
        """A global block (``plate = "t"`` or ``"x"``) as a DataFrame: one row per vocabulary entry, one column
        per dimension (``<block>_0 ...``).

        Args:
            block: the global block's name.
            value: ``"point"`` its posterior family's point (a Normal's mean, a hard mask's most
                probable 0/1 value; what ``predict`` uses), ``"loc"`` / ``"scale"`` what the family
                exposes as such (a relaxed Bernoulli mask's ``loc`` is its probabilities). A block
                fixed by ``fix_global`` gives its fixed value for ``"point"`` and ``"loc"``.

        Rows are named by the treatments (plate ``"t"``) or by the covariate levels ``key=level``
        (plate ``"x"``).
        """
        module = self.module
        if block not in module.globals:
            known = list(module.globals)
            raise ConfigError(f"get_global_latent(): {block!r} is not a global block of model {self.spec.name!r} "
                              f"(global blocks: {listing(known) if known else 'none'}).{did_you_mean(block, known)}")
        if value == "point":
            values = module.global_point(block)
        else:
            moments = module.global_moments(block)
            if value not in moments:
                raise ConfigError(f"get_global_latent(): value={value!r} is not one of 'point', "
                                  f"{listing(list(moments))} for block {block!r}.")
            values = moments[value]
        plate = module.global_plates[block]
        setup = self.setup
        rows = (list(setup.treatments) if plate == "t" else
                [f"{key}={level}" for key in setup.covariate_keys for level in setup.covariate_levels[key]])
        return pd.DataFrame(values.detach().cpu().numpy(), index=pd.Index([str(r) for r in rows], name=plate),
                            columns=[f"{block}_{j}" for j in range(values.shape[1])])

    @torch.no_grad()
    def get_normalized_expression(
        self,
        adata: AnnData | None = None,
        indices: Sequence[int] | np.ndarray | None = None,
        *,
        gene_list: Sequence[str] | None = None,
        library_size: float | str | None = None,
        n_samples: int | None = None,
        return_numpy: bool = False,
        batch_size: int = 1024,
        seed: int | None = None,
    ) -> pd.DataFrame | np.ndarray:
        """Expected expression of each cell under its posterior, on a common scale (as scvi-tools' method).

        Each cell is encoded and decoded with its own labels; the decoder's expected value is returned.

        Args:
            adata: the cells (default: the training data); checked as :meth:`predict` checks its cells.
            indices: positions of the cells of ``adata`` to use (default: all).
            gene_list: names of the genes to return (default: all, in the model's order).
            library_size: count models: scale each cell's expected counts to sum to this number
                (default 1: expression frequencies), or ``"latent"``: each cell's own library size (its
                observed total counts), i.e. expected counts on the data's scale. Models of real values
                (a ``"gaussian"`` likelihood) return the expected values on the data's scale; they take
                no number here.
            n_samples: None: decode the posterior means (deterministic); a number: average the expected
                expression over that many posterior draws per cell (``seed`` seeds them).
            return_numpy: an array instead of a DataFrame (cells x genes, named by obs and var names).
            batch_size: cells per forward pass.
            seed: seed of the posterior draws (None: 0).

        For ``"nb"`` and ``"poisson"`` the rows at ``library_size=1`` are the decoder's frequencies, as
        scvi-tools' ``px_scale``; for ``"zinb"`` the expected counts include the zero-inflation gate
        (scvi-tools leaves it out), and are then scaled to ``library_size``.
        """
        counts = self.module.likelihood.input_kind == "counts"
        if library_size is None:
            library_size = 1.0 if counts else "latent"
        if library_size != "latent":
            if not counts:
                raise ConfigError(f"get_normalized_expression(): library_size={library_size!r}, but model "
                                  f"{self.spec.name!r} models real values (likelihood "
                                  f"{self.spec.likelihood.name!r}), which have no library size; leave it out.")
            if (isinstance(library_size, bool) or not isinstance(library_size, (int, float))
                    or not 0 < library_size < np.inf):
                raise ConfigError(f"get_normalized_expression(): library_size={library_size!r} must be a positive "
                                  "number (e.g. 1 or 1e4) or 'latent' (each cell's own library size).")
        if n_samples is not None and (isinstance(n_samples, bool) or not isinstance(n_samples, int)
                                      or n_samples < 1):
            raise ConfigError(f"get_normalized_expression(): n_samples={n_samples!r} must be a positive integer, "
                              "or None for the posterior means.")
        adata = self.adata if adata is None else adata
        data = self._cell_data(adata)
        rows = _positions(indices, data.n_obs)
        genes = self._gene_positions(gene_list)
        device = next(self.module.parameters()).device
        self.module.eval()
        out = []
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(0 if seed is None else seed)  # the posterior draws (n_samples), whatever the family
            for batch in data.iter_batches(torch.as_tensor(rows, device=data.device), batch_size, shuffle=False):
                library = batch.library if library_size == "latent" else torch.ones_like(batch.library)
                total = torch.zeros(())
                for _ in range(n_samples or 1):
                    mean = self.module.decode_mean(self.module.latent(batch, mean=n_samples is None), batch.labels,
                                                   library)
                    if library_size != "latent":
                        mean = mean / mean.sum(-1, keepdim=True) * float(library_size)
                    total = total + mean
                out.append((total / (n_samples or 1))[:, genes].cpu().numpy())
        values = np.concatenate(out).astype(np.float32)
        if return_numpy:
            return values
        return pd.DataFrame(values, index=adata.obs_names[rows], columns=[self.var_names[g] for g in genes])

    def _gene_positions(self, gene_list: Sequence[str] | None) -> np.ndarray:
        """Positions of the genes of ``gene_list`` among the model's genes (all genes for None)."""
        if gene_list is None:
            return np.arange(len(self.var_names))
        if isinstance(gene_list, str):
            gene_list = [gene_list]
        position = {g: i for i, g in enumerate(self.var_names)}
        unknown = [str(g) for g in gene_list if str(g) not in position]
        if unknown:
            raise DataError(f"gene_list: {listing(unknown[:5])} {'is' if len(unknown) == 1 else 'are'} not among "
                            f"the model's {len(position)} genes.{did_you_mean(unknown[0], position)}")
        return np.array([position[str(g)] for g in gene_list], dtype=np.int64)

    @torch.no_grad()
    def predict(
        self,
        adata: AnnData,
        treatment: str,
        dose: float | str = 1.0,
        *,
        counterfactual: str = "prior",
        from_prior: str = "sample",
        global_draws: int | None = None,
        batch_size: int = 1024,
        seed: int | None = None,
        sample: bool = False,
    ) -> AnnData:
        """Counterfactual expression of the cells of ``adata`` (typically controls) under ``treatment``.

        Each cell is encoded; the blocks whose prior conditions on the treatment (FCR's ``z_t`` and
        ``z_tx``) are moved to the target condition (the cell's own covariates with ``treatment`` at
        ``dose``), the other blocks keep their posterior means, and the decoder's expected value under
        the target labels is returned (a decoder that conditions on the treatment, as CPA's, thus sees
        the target treatment). Combinations are ``"A+B"``. Two ways to move a block:

        - ``counterfactual="prior"`` (default): replace it by a draw from its prior under the target
          condition (``from_prior="mean"``: by the prior mean). The cell keeps nothing of its own in
          that block: the prediction is the target condition's typical response on the cell's ``z_x``.
        - ``counterfactual="shift"``: keep the cell's posterior mean and add the difference of the
          prior means under the target and under the cell's own condition,
          ``z + μ_prior(target) − μ_prior(own)``: the cell keeps its deviation from its condition's
          mean in every block (``from_prior`` does not apply). Predicting a cell's own condition gives
          back its reconstruction.

        Which is better depends on the data; on Kang's held-out CD14 monocytes both are measured in
        docs/recipes/fcr.md.

        Global blocks (a treatment's mask or embedding) take their posterior points (the most probable
        mask, the mean embedding); ``global_draws=k`` instead averages the expected expression over
        ``k`` joint draws of them from their posterior (the posterior predictive), each given to the
        priors and the decoder alike, seeded by ``seed``.

        Returns:
            An AnnData with the same cells and genes whose ``X`` is the predicted mean on the scale of
            the data the model was set up with (expected counts, with each input cell's library size,
            for count likelihoods); ``obs`` says the predicted condition. With ``sample=True``, ``X`` is
            one draw per cell from the likelihood instead (counts with sampling zeros, for distribution
            metrics such as :func:`fcrkit.metrics.energy_distance`), seeded by ``seed``.
        """
        if counterfactual not in ("prior", "shift"):
            raise ConfigError(f"counterfactual={counterfactual!r} is not 'prior' (redraw the treatment blocks from "
                              "their priors) or 'shift' (shift the cell's posterior by the prior means' difference).")
        if from_prior not in ("sample", "mean"):
            raise ConfigError(f"from_prior={from_prior!r} is not 'sample' or 'mean'.")
        if global_draws is not None:
            if isinstance(global_draws, bool) or not isinstance(global_draws, int) or global_draws < 1:
                raise ConfigError(f"predict(): global_draws={global_draws!r} must be a positive integer, or None "
                                  "for the global blocks' posterior points.")
            if not self.module.globals:
                raise ConfigError(f"predict(): global_draws={global_draws} draws the global blocks, but model "
                                  f"{self.spec.name!r} has none; leave global_draws at None.")
        if self.setup.treatment_key is None:
            raise ConfigError("this model was set up without a treatment_key; it cannot predict a treatment.")
        swapped = [b.name for b in self.spec.blocks if "t" in b.prior.conditions and not b.is_global]
        if not swapped and "t" not in self.spec.decoder.conditions and "t" not in self.spec.combiner.conditions:
            raise ConfigError(f"neither a block prior nor the decoder of model {self.spec.name!r} depends on the "
                              "treatment, so it cannot predict one (FCR, iVAE-style, sVAE or CPA specs can).")
        self._check_target(treatment, dose)
        device = next(self.module.parameters()).device
        generator = torch.Generator(device=device).manual_seed(seed if seed is not None else 0)

        def to_target(batch: Batch, z: dict[str, torch.Tensor], labels: Labels, own: Labels) -> dict[str, Any]:
            """The cells' blocks with the treatment's blocks moved to ``labels`` (from ``own``)."""
            z = dict(z)
            for name in swapped:
                prior = self.module.prior_distribution(name, labels, len(batch.index))
                if counterfactual == "shift":
                    mine = self.module.prior_distribution(name, own, len(batch.index))
                    z[name] = z[name] + prior.mean - mine.mean
                elif from_prior == "mean":
                    z[name] = prior.mean
                else:
                    z[name] = torch.normal(prior.mean, prior.stddev, generator=generator)
            return z

        def decode(batch: Batch, labels: Labels) -> torch.Tensor:
            z = self.module.latent(batch)
            if draws is None:
                return self.module.decode_mean(to_target(batch, z, labels, batch.labels), labels, batch.library,
                                               sample=sample)
            total = 0.0
            for draw in draws:  # the draw of the global blocks reaches the priors (labels) and the combiner (z)
                target, own = with_values(labels, draw), with_values(batch.labels, draw)
                total = total + self.module.decode_mean({**to_target(batch, z, target, own), **draw}, target,
                                                        batch.library, sample=sample)
            return total / len(draws)

        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(seed if seed is not None else 0)  # the global blocks' and the likelihood's draws
            draws = None if global_draws is None else [self.module.global_sample() for _ in range(global_draws)]
            values = self._decode_cells(adata, decode, self._target_labels(adata, treatment, dose), batch_size)
        moved: dict[str, Any] = {"counterfactual": counterfactual, "sampled": sample,
                                 "global_draws": global_draws or 0}
        moved.update({"shifted_blocks": swapped} if counterfactual == "shift"
                     else {"redrawn_blocks": swapped, "from_prior": from_prior})
        return self._prediction(adata, values, treatment, dose, moved)

    # -- the pieces of a prediction (recipes with their own predict, as ScGen, use them too) ----------------
    def _target_obs(self, adata: AnnData, treatment: str, dose: float | str) -> Any:
        _check_adata(adata)
        obs = adata.obs.copy()
        obs[self.setup.treatment_key] = str(treatment)
        if self.setup.dose_key is not None:
            obs[self.setup.dose_key] = dose
        return obs

    def _target_labels(self, adata: AnnData, treatment: str, dose: float | str) -> IndexedLabels:
        """The labels of the cells of ``adata`` with their treatment set to ``treatment`` at ``dose``."""
        device = next(self.module.parameters()).device
        encoded = self.setup.encode_labels(self._target_obs(adata, treatment, dose))
        return IndexedLabels.from_encoded(encoded, adata.n_obs, device)  # indices: no cells x treatments matrix

    @torch.no_grad()
    def _decode_cells(self, adata: AnnData, decode: Callable[[Batch, Mapping[str, torch.Tensor]], torch.Tensor],
                      target: Mapping[str, torch.Tensor], batch_size: int) -> np.ndarray:
        """``decode(batch, the batch's rows of target)`` over the cells of ``adata``, concatenated."""
        data = self._cell_data(adata)
        self.module.eval()
        out = []
        for batch in data.iter_batches(torch.arange(data.n_obs, device=data.device), batch_size, shuffle=False):
            labels = take_rows(target, batch.index)
            out.append(decode(batch, labels).cpu().numpy())
        return np.concatenate(out).astype(np.float32)

    def _prediction(self, adata: AnnData, values: np.ndarray, treatment: str, dose: float | str,
                    info: Mapping[str, Any]) -> AnnData:
        """The predicted values as an AnnData of the cells of ``adata``; ``obs`` and ``uns`` say the target."""
        obs = self._target_obs(adata, treatment, dose)
        obs["fcrkit_prediction"] = f"{treatment} (dose {dose})"
        result = AnnData(values, obs=obs, var=adata.var.copy())
        result.uns["fcrkit_prediction"] = {"treatment": str(treatment), "dose": str(dose), "model": self.spec.name,
                                           **info}
        return result

    def _trained_treatments(self) -> set[str]:
        """The treatments (and the control) that training cells carry, alone or in a combination."""
        key = self.setup.treatment_key
        labels = pd.unique(self.adata.obs[key].astype(str))
        return {self.setup.control_value}.union(*(split_treatment(label, key) for label in labels))

    def _check_target(self, treatment: Any, dose: Any) -> None:
        """Refuse a predict() target the model cannot encode: an unknown treatment or a dose that is not one.

        Checked before any cell is encoded, so the message names the argument, not an obs column.
        """
        setup = self.setup
        if not isinstance(treatment, str):
            raise ConfigError(f"predict(): treatment={treatment!r} must be a treatment label, a str "
                              "('A+B' for a combination).")
        parts = split_treatment(treatment, setup.treatment_key)
        known = set(setup.treatments) | {setup.control_value}
        unknown = [p for p in parts if p not in known]
        if unknown:
            raise DataError(
                f"predict(): {listing(unknown)} in treatment={treatment!r} is not a treatment the model was set up "
                f"with (known treatments: {listing(setup.treatments)}; control: {setup.control_value!r})."
                f"{did_you_mean(unknown[0], known)}"
            )
        if setup.treatment_features is not None and not self.module.uses_treatment_features:
            # feature rows join the vocabulary, but only a model that embeds features has learned them
            seen = self._trained_treatments()
            unseen = [p for p in parts if p not in seen]
            if unseen:
                raise DataError(f"predict(): treatment {listing(unseen)} has features but no training cells, and "
                                f"model {self.spec.name!r} does not embed treatments from their features (FCR, CPA "
                                "and LinearRidge do); it can only predict treatments it was trained on.")
        if isinstance(dose, bool) or not isinstance(dose, (int, float, np.integer, np.floating, str)):
            raise ConfigError(f"predict(): dose={dose!r} ({type(dose).__name__}) must be a number, or one number "
                              "per part of a combination joined by '+' (e.g. '1.0+0.5').")
        try:
            doses = parse_dose(dose, len(parts), label=treatment, column=setup.dose_key, cell="(predicted)")
        except DataError:
            raise ConfigError(f"predict(): dose={dose!r} is not a dose of treatment {treatment!r}: give a finite "
                              "non-negative number, or one per part of a combination joined by '+' "
                              "(e.g. '1.0+0.5').") from None
        if setup.dose_key is None and any(d != 1.0 for d in doses):
            raise ConfigError(f"predict(): dose={dose!r}, but the model was set up without a dose_key, so every "
                              "dose is 1. Leave dose at 1, or set the data up with dose_key= to model doses.")

    def _cell_data(self, adata: AnnData | None) -> CellData:
        adata = self.adata if adata is None else adata
        _check_adata(adata)
        check_genes(self.var_names, adata)
        if adata is not self.adata:  # the model's own cells were checked when it was built
            self._check_new_cells(adata)
        device = next(self.module.parameters()).device
        return cell_data(adata, self.setup, device=device)  # streamed from disk for a backed AnnData

    def _check_new_cells(self, adata: AnnData) -> None:
        """Refuse new cells whose values are not of the kind the model was trained on (as training does)."""
        where = "adata.X" if self.setup.layer is None else f"adata.layers[{self.setup.layer!r}]"
        kind = self.module.likelihood.input_kind
        if kind == "counts":
            fix = (f"{type(self).__name__} was trained on raw counts in {where}: give it the raw counts of these "
                   f"cells in {where} too, not log-normalised or scaled values (e.g. adata.X = "
                   "adata.layers[\"counts\"], or the cells as read from the original file).")
        else:
            fix = (f"{type(self).__name__} was trained on real values (e.g. log-normalised) in {where}: give it "
                   "these cells transformed the same way as the training cells.")
        check_new_cells(adata, self.setup.layer, kind, likelihood=self.spec.likelihood.name, fix=fix)

    # -- persistence ----------------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
        """Write the model to directory ``path`` (spec, data setup, genes, weights, history)."""
        path = Path(path)
        if path.exists() and any(path.iterdir()) and not overwrite:
            raise ConfigError(f"{str(path)!r} exists and is not empty; pass overwrite=True to replace it.")
        meta = {
            "class": f"{type(self).__module__}.{type(self).__qualname__}",
            "spec": self.spec.to_dict(),
            "setup": self.setup.to_dict(),
            "var_names": self.var_names,
            "components": persistence.component_origins(self.spec),
            "history": self.history.values,
            "is_trained": self.is_trained,
        }
        state = {k: v.detach().cpu() for k, v in self.module.state_dict().items()}
        return persistence.write(path, meta, state)

    @classmethod
    def load(cls: type[M], path: str | os.PathLike, adata: AnnData, *, accelerator: str = "cpu") -> M:
        """Load a model saved with :meth:`save`, bound to ``adata`` (which must have the same genes).

        Raises:
            ConfigError: ``path`` is not a saved model, model.json or model.pt is damaged, or its format
                version is not the one this fcrkit reads.
            UnknownComponentError: a component's plugin is not installed here (named with its plugin and
                distribution).
            DataError: ``adata``'s genes differ from the model's.
        """
        path = Path(path)
        meta = persistence.read_meta(path)
        saved_class = str(meta["class"])
        if not saved_class.endswith(f".{cls.__qualname__}") and cls is not Model:
            raise ConfigError(f"{str(path)!r} holds a {saved_class}; load it with that class (or fcrkit.models.Model).")
        _check_adata(adata)
        check_genes(meta["var_names"], adata)
        try:
            spec = ModelSpec.from_dict(meta["spec"])
        except ConfigError as err:
            raise ConfigError(f"{str(path / META_FILE)!r} holds an invalid spec: {err}") from None
        persistence.check_components_installed(path, spec, meta.get("components"))
        model = cls.__new__(cls)
        Model._bind(model, adata, spec, AnnDataSetup.from_dict(meta["setup"]), None)
        state = persistence.read_weights(path / WEIGHTS_FILE, meta.get("weights_sha256"))
        try:
            model.module.load_state_dict(state)
        except RuntimeError as err:  # torch lists every missing/unexpected key: keep the first line
            raise ConfigError(
                f"{str(path / WEIGHTS_FILE)!r} does not fit the model described by {META_FILE} "
                f"({str(err).splitlines()[0]}); the two files come from different saves: save the model again."
            ) from None
        model.module.to(resolve_device(accelerator))
        model.history = History(values={k: list(v) for k, v in meta.get("history", {}).items()})
        model.is_trained = bool(meta.get("is_trained", False))
        model._own_weights = True  # the saved weights: train(seed=) does not redraw them
        return model


class Recipe(Model):
    """A model whose spec is written by ``build_spec``; the recipe takes that function's arguments.

    A subclass sets ``build_spec = staticmethod(my_spec_function)`` and documents the arguments; its
    signature (shown by ``help`` and IDEs) becomes ``(adata, <build_spec's arguments>,
    *, likelihood_options=None, posterior="normal", seed=None)``.

    Two options apply to every recipe alike; they are added to ``build_spec`` itself (see
    :func:`with_recipe_options`), so a run config's ``[model]`` table and the benchmark's recipe
    tables accept them too:

    - ``likelihood_options``: keyword options of its likelihood component, e.g.
      ``FCR(adata, likelihood="gaussian", likelihood_options={"scale": "gene-cell"})`` for a per-cell scale;
    - ``posterior``: the posterior family of all its blocks (``"normal"``, the default, ``"flow"``,
      ``"delta"`` or any registered family; a name or a table with options such as
      ``{"name": "flow", "n_flows": 4}``). See the Inference page of the docs.
    """

    build_spec: ClassVar[Callable[..., ModelSpec]]

    def __init__(self, adata: AnnData, *args: Any, seed: int | None = None, **kwargs: Any):
        super().__init__(adata, self.build_spec(*args, **kwargs), seed=seed)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "build_spec" in cls.__dict__:
            cls.build_spec = staticmethod(with_recipe_options(cls.__dict__["build_spec"].__func__))
        kinds = inspect.Parameter
        adata = kinds("adata", kinds.POSITIONAL_OR_KEYWORD, annotation=AnnData)
        seed = kinds("seed", kinds.KEYWORD_ONLY, default=None, annotation=int | None)
        arguments = inspect.signature(cls.build_spec).parameters.values()
        cls.__signature__ = inspect.Signature([adata, *arguments, seed])


def _positions(indices: Sequence[int] | np.ndarray | None, n_obs: int) -> np.ndarray:
    """Cell positions from ``indices`` (None: all ``n_obs``), refusing ones out of range or not integers."""
    if indices is None:
        return np.arange(n_obs)
    rows = np.asarray(indices)
    if rows.ndim != 1 or rows.size == 0 or not np.issubdtype(rows.dtype, np.integer):
        raise ConfigError(f"indices must be a non-empty list of integer cell positions, got {indices!r:.80}.")
    if rows.min() < -n_obs or rows.max() >= n_obs:
        raise ConfigError(f"indices: position {int(rows.max() if rows.max() >= n_obs else rows.min())} is out of "
                          f"range for {n_obs} cells.")
    return rows % n_obs


def _apply_likelihood_options(spec: ModelSpec, options: Mapping[str, Any] | None) -> ModelSpec:
    if options is None:
        return spec
    if not isinstance(options, Mapping) or not all(isinstance(k, str) for k in options):
        raise ConfigError(f"likelihood_options={options!r} must be a dict of the likelihood's "
                          f"options, e.g. {{'scale': 'gene-cell'}} for likelihood 'gaussian'.")
    lik = spec.likelihood
    return dataclasses.replace(spec, likelihood=ComponentSpec(lik.name, lik.conditions, {**lik.options, **options}))


def with_recipe_options(build: Callable[..., ModelSpec]) -> Callable[..., ModelSpec]:
    """``build`` with the options every recipe takes, ``likelihood_options`` and ``posterior`` (keyword-only).

    ``likelihood_options`` are merged into the spec's likelihood; ``posterior`` becomes every block's
    posterior family (:meth:`~fcrkit.spec.ModelSpec.with_posterior`).
    """
    if getattr(build, "_adds_recipe_options", False):  # a subclass reusing a parent's build_spec
        return build

    @functools.wraps(build)
    def spec_with_recipe_options(*args: Any, likelihood_options: Mapping[str, Any] | None = None,
                                 posterior: str | Mapping[str, Any] = DEFAULT_POSTERIOR, **kwargs: Any) -> ModelSpec:
        spec = _apply_likelihood_options(build(*args, **kwargs), likelihood_options)
        return spec if posterior == DEFAULT_POSTERIOR else spec.with_posterior(posterior)

    try:
        signature = inspect.signature(build, eval_str=True)
    except (NameError, TypeError, AttributeError, SyntaxError):
        signature = inspect.signature(build)
    params = list(signature.parameters.values())
    keyword = inspect.Parameter.KEYWORD_ONLY
    options = [inspect.Parameter("likelihood_options", keyword, default=None, annotation=Mapping[str, Any] | None),
               inspect.Parameter("posterior", keyword, default=DEFAULT_POSTERIOR, annotation=str | Mapping[str, Any])]
    at = next((i for i, p in enumerate(params) if p.kind is inspect.Parameter.VAR_KEYWORD), len(params))
    spec_with_recipe_options.__signature__ = signature.replace(parameters=[*params[:at], *options, *params[at:]])
    spec_with_recipe_options._adds_recipe_options = True
    return spec_with_recipe_options


def _check_adata(adata: Any, argument: str = "adata") -> None:
    """Refuse anything but a non-empty AnnData before any of it is read."""
    if not isinstance(adata, AnnData):
        raise DataError(f"{argument} must be an AnnData, got a {type(adata).__name__}.")
    if adata.n_obs == 0 or adata.n_vars == 0:
        raise DataError(f"{argument} is empty ({adata.n_obs} cells x {adata.n_vars} genes); fcrkit needs at "
                        "least one cell and one gene. Check the filtering that produced it.")


def _check_treated_cells(spec: ModelSpec, setup: AnnDataSetup) -> None:
    """Refuse a spec that uses the treatment when the treatment column holds nothing but controls.

    Without treated cells the treatment vocabulary is empty and ``t`` has no width, so nothing that
    conditions on it can be built (the component would otherwise ask for a treatment_key that was given).
    """
    if setup.treatment_key is None or setup.treatments:
        return
    users = [where for _, comp, where in spec.components() if "t" in comp.conditions]
    if spec.control_pairing != "none":
        users.append(f"control_pairing={spec.control_pairing!r}")
    if users:
        raise DataError(
            f"treatment column {setup.treatment_key!r} holds only the control {setup.control_value!r}: no cell is "
            f"treated, but model {spec.name!r} learns treatment effects ({', '.join(users[:3])} use the "
            "treatment). It needs treated and control cells; check the treatment column and control_value."
        )


def check_genes(expected: list[str], adata: AnnData) -> None:
    """Refuse ``adata`` unless its genes are ``expected``, in order; name the difference."""
    check_unique_genes(adata)
    genes = [str(v) for v in adata.var_names]
    if genes == expected:
        return
    missing = [g for g in expected if g not in set(genes)]
    extra = [g for g in genes if g not in set(expected)]
    parts = []
    if missing:
        parts.append(f"{len(missing)} gene(s) of the model are missing ({listing(missing[:5])}"
                     f"{' ...' if len(missing) > 5 else ''})")
    if extra:
        parts.append(f"{len(extra)} gene(s) are not in the model ({listing(extra[:5])}"
                     f"{' ...' if len(extra) > 5 else ''})")
    if not parts:
        first = next(i for i, (a, b) in enumerate(zip(expected, genes)) if a != b)
        parts.append(f"the genes are in another order (position {first}: {genes[first]!r}, "
                     f"model has {expected[first]!r}); reorder with adata[:, model.var_names]")
    raise DataError("the AnnData's genes differ from the model's: " + "; ".join(parts) + ".")


def compose(spec: ModelSpec | Mapping[str, Any] | str | os.PathLike, adata: AnnData, *,
            seed: int | None = None) -> Model:
    """A trainable model of ``adata`` from a spec (a ModelSpec, its dict, or a TOML path)."""
    if not isinstance(spec, (str, os.PathLike)):
        return Model(adata, spec, seed=seed)
    path = Path(spec)
    spec = ModelSpec.from_toml(path)
    try:
        return Model(adata, spec, seed=seed)
    except (ConfigError, UnknownComponentError) as err:  # e.g. an option no factory takes: say where it is written
        raise type(err)(f"{path}{line_of(path.read_text(), str(err))}: {err}") from None
