"""The user's object: a composed model bound to an AnnData.

:class:`Model` gives every recipe the same surface: ``train``, ``get_latent_representation``,
``save`` and ``load``. A recipe is a subclass whose ``__init__`` writes a spec.
"""

from __future__ import annotations

import inspect
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import numpy as np
import torch
from anndata import AnnData

import fcrkit
from fcrkit.data.anndata import AnnDataSetup, check_values, get_matrix, get_setup
from fcrkit.data.loaders import CellData
from fcrkit.data.pairing import ControlPairing
from fcrkit.errors import ConfigError, DataError, listing
from fcrkit.model import GenerativeModel
from fcrkit.registry import get_registry
from fcrkit.spec import ModelSpec
from fcrkit.train.trainer import History, Trainer, TrainingPlan, resolve_device

FORMAT = "fcrkit-model"
FORMAT_VERSION = 1
META_FILE, WEIGHTS_FILE = "model.json", "model.pt"

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
        self._bind(adata, spec, get_setup(adata), seed)

    def _bind(self, adata: AnnData, spec: ModelSpec, setup: AnnDataSetup, seed: int | None) -> None:
        if not isinstance(adata, AnnData):
            raise DataError(f"expected an AnnData, got {type(adata).__name__}.")
        if adata.n_obs == 0 or adata.n_vars == 0:
            raise DataError(f"the AnnData is empty ({adata.n_obs} cells x {adata.n_vars} genes).")
        self.adata, self.spec, self.setup = adata, spec, setup
        with torch.random.fork_rng(devices=[]):
            if seed is not None:
                torch.manual_seed(seed)
            self.module = GenerativeModel(spec, setup.label_dims, adata.n_vars)
        check_values(get_matrix(adata, setup.layer), self.module.likelihood.input_kind,
                     likelihood=spec.likelihood.name, layer=setup.layer)
        self.var_names = [str(v) for v in adata.var_names]
        self.history = History()
        self.is_trained = False

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
        **settings: Any,
    ) -> History:
        """Fit the model by SVI; returns (and keeps in ``self.history``) the per-epoch losses.

        Further settings (``weight_decay``, ``elbo``, ``validation_fraction``, ``early_stopping``,
        ``patience``, ``min_delta``, ``progress_bar``, ``drop_last``) are those of
        :class:`~fcrkit.train.TrainingPlan`.
        """
        unknown = [k for k in settings if k not in TrainingPlan.__dataclass_fields__]
        if unknown:
            raise ConfigError(f"train() got unknown setting(s) {listing(unknown)}; "
                              f"settings are {listing(TrainingPlan.__dataclass_fields__)}.")
        plan = TrainingPlan(max_epochs=max_epochs, batch_size=batch_size, lr=lr, seed=seed, **settings)
        device = resolve_device(accelerator)
        self.module.to(device)
        data = CellData.from_anndata(self.adata, self.setup, device=device)
        pairing = None
        if self.spec.control_pairing != "none":
            pairing = ControlPairing.from_anndata(self.adata, self.setup, self.spec.control_pairing)
        self.history = Trainer(self.module, data, plan, pairing).fit()
        self.is_trained = True
        return self.history

    # -- inference ----------------------------------------------------------------------------------------
    @torch.no_grad()
    def get_latent_representation(
        self, adata: AnnData | None = None, *, give_mean: bool = True, batch_size: int = 1024
    ) -> dict[str, np.ndarray]:
        """Latent blocks of the cells of ``adata`` (default: the training data).

        Returns a dict from ``obsm`` key (``X_<model>`` or ``X_<model>_<block>``) to a
        ``(n_cells, dim)`` array: posterior means, or one posterior sample with ``give_mean=False``.
        Put them in the AnnData with ``adata.obsm.update(...)``.
        """
        data = self._cell_data(adata)
        self.module.eval()
        out: dict[str, list[np.ndarray]] = {b.name: [] for b in self.spec.blocks}
        index = torch.arange(data.n_obs, device=data.device)
        for batch in data.iter_batches(index, batch_size, shuffle=False):
            for name, (loc, scale) in self.module.encode(batch).items():
                z = loc if give_mean else loc + scale * torch.randn_like(loc)
                out[name].append(z.cpu().numpy())
        return {self.spec.obsm_key(name): np.concatenate(parts) for name, parts in out.items()}

    @torch.no_grad()
    def predict(
        self,
        adata: AnnData,
        treatment: str,
        dose: float | str = 1.0,
        *,
        from_prior: str = "sample",
        batch_size: int = 1024,
        seed: int | None = None,
    ) -> AnnData:
        """Counterfactual expression of the cells of ``adata`` (typically controls) under ``treatment``.

        Each cell is encoded; every block whose prior conditions on the treatment is replaced by a
        draw from its prior under the target condition (the cell's own covariates with ``treatment``
        at ``dose``; ``from_prior="mean"`` takes the prior mean instead); the other blocks keep their
        posterior means; the decoder's expected value is returned. Combinations are ``"A+B"``.

        Returns:
            An AnnData with the same cells and genes whose ``X`` is the predicted mean on the scale of
            the data the model was set up with (expected counts, with each input cell's library size,
            for count likelihoods); ``obs`` says the predicted condition.
        """
        if from_prior not in ("sample", "mean"):
            raise ConfigError(f"from_prior={from_prior!r} is not 'sample' or 'mean'.")
        if self.setup.treatment_key is None:
            raise ConfigError("this model was set up without a treatment_key; it cannot predict a treatment.")
        swapped = [b.name for b in self.spec.blocks if "t" in b.prior.conditions]
        if not swapped:
            raise ConfigError(f"no block of model {self.spec.name!r} has a prior that depends on the treatment, "
                              "so it cannot predict one (FCR, iVAE-style or sVAE specs can).")
        data = self._cell_data(adata)
        target_obs = adata.obs.copy()
        target_obs[self.setup.treatment_key] = str(treatment)
        if self.setup.dose_key is not None:
            target_obs[self.setup.dose_key] = dose
        target = {k: torch.as_tensor(v, device=data.device) for k, v in self.setup.encode_labels(target_obs).items()}
        generator = torch.Generator(device=data.device).manual_seed(seed if seed is not None else 0)
        self.module.eval()
        out = []
        for batch in data.iter_batches(torch.arange(data.n_obs, device=data.device), batch_size, shuffle=False):
            labels = {k: v.index_select(0, batch.index) for k, v in target.items()}
            z = {name: loc for name, (loc, _) in self.module.encode(batch).items()}
            for name in swapped:
                prior = self.module.prior_distribution(name, labels, len(batch.index))
                z[name] = prior.mean if from_prior == "mean" else torch.normal(prior.mean, prior.stddev, generator=generator)
            out.append(self.module.decode_mean(z, labels, batch.library).cpu().numpy())
        obs = adata.obs.copy()
        obs[self.setup.treatment_key] = str(treatment)
        if self.setup.dose_key is not None:
            obs[self.setup.dose_key] = dose
        obs["fcrkit_prediction"] = f"{treatment} (dose {dose})"
        result = AnnData(np.concatenate(out).astype(np.float32), obs=obs, var=adata.var.copy())
        result.uns["fcrkit_prediction"] = {"treatment": str(treatment), "dose": str(dose), "model": self.spec.name,
                                           "redrawn_blocks": swapped, "from_prior": from_prior}
        return result

    def _cell_data(self, adata: AnnData | None) -> CellData:
        adata = self.adata if adata is None else adata
        check_genes(self.var_names, adata)
        device = next(self.module.parameters()).device
        return CellData.from_anndata(adata, self.setup, device=device)

    # -- persistence ----------------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
        """Write the model to directory ``path`` (spec, data setup, genes, weights, history)."""
        path = Path(path)
        if path.exists() and any(path.iterdir()) and not overwrite:
            raise ConfigError(f"{str(path)!r} exists and is not empty; pass overwrite=True to replace it.")
        meta = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "fcrkit_version": fcrkit.__version__,
            "class": f"{type(self).__module__}.{type(self).__qualname__}",
            "spec": self.spec.to_dict(),
            "setup": self.setup.to_dict(),
            "var_names": self.var_names,
            "components": component_origins(self.spec),
            "history": self.history.values,
            "is_trained": self.is_trained,
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
        try:  # write everything, then swap it in: a crash never leaves half a model
            (staging / META_FILE).write_text(json.dumps(meta, indent=1))
            state = {k: v.detach().cpu() for k, v in self.module.state_dict().items()}
            torch.save(state, staging / WEIGHTS_FILE)
            if path.exists():
                shutil.rmtree(path)
            staging.rename(path)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return path

    @classmethod
    def load(cls: type[M], path: str | os.PathLike, adata: AnnData, *, accelerator: str = "cpu") -> M:
        """Load a model saved with :meth:`save`, bound to ``adata`` (which must have the same genes)."""
        path = Path(path)
        meta_path = path / META_FILE
        if not meta_path.is_file() or not (path / WEIGHTS_FILE).is_file():
            raise ConfigError(f"{str(path)!r} is not an fcrkit model directory (no {META_FILE} and {WEIGHTS_FILE}).")
        try:
            meta = json.loads(meta_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ConfigError(f"{str(meta_path)!r} is corrupt: {err}.") from None
        if meta.get("format") != FORMAT or meta.get("format_version") != FORMAT_VERSION:
            raise ConfigError(
                f"{str(path)!r} has format {meta.get('format')!r} version {meta.get('format_version')!r}; this "
                f"fcrkit {fcrkit.__version__} reads {FORMAT!r} version {FORMAT_VERSION}."
            )
        saved_class = meta["class"]
        if not saved_class.endswith(f".{cls.__qualname__}") and cls is not Model:
            raise ConfigError(f"{str(path)!r} holds a {saved_class}; load it with that class (or fcrkit.models.Model).")
        check_genes(meta["var_names"], adata)
        model = cls.__new__(cls)
        Model._bind(model, adata, ModelSpec.from_dict(meta["spec"]), AnnDataSetup.from_dict(meta["setup"]), None)
        state = torch.load(path / WEIGHTS_FILE, map_location="cpu", weights_only=True)
        model.module.load_state_dict(state)
        model.module.to(resolve_device(accelerator))
        model.history = History(values={k: list(v) for k, v in meta.get("history", {}).items()})
        model.is_trained = bool(meta.get("is_trained", False))
        return model


class Recipe(Model):
    """A model whose spec is written by ``build_spec``; the recipe takes that function's arguments.

    A subclass sets ``build_spec = staticmethod(my_spec_function)`` and documents the arguments; its
    signature (shown by ``help`` and IDEs) becomes ``(adata, <build_spec's arguments>, *, seed=None)``.
    """

    build_spec: ClassVar[Callable[..., ModelSpec]]

    def __init__(self, adata: AnnData, *args: Any, seed: int | None = None, **kwargs: Any):
        super().__init__(adata, self.build_spec(*args, **kwargs), seed=seed)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        kinds = inspect.Parameter
        adata = kinds("adata", kinds.POSITIONAL_OR_KEYWORD, annotation=AnnData)
        seed = kinds("seed", kinds.KEYWORD_ONLY, default=None, annotation=int | None)
        arguments = inspect.signature(cls.build_spec).parameters.values()
        cls.__signature__ = inspect.Signature([adata, *arguments, seed])


def check_genes(expected: list[str], adata: AnnData) -> None:
    """Refuse ``adata`` unless its genes are ``expected``, in order; name the difference."""
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


def component_origins(spec: ModelSpec) -> dict[str, str]:
    """``"kind:name" -> "plugin (origin)"`` for each component the spec uses (saved with a model)."""
    registry = get_registry()
    out = {}
    for kind, comp, _ in spec.components():
        record = registry.get(kind, comp.name)
        out[f"{kind}:{comp.name}"] = f"{record.plugin} ({record.origin})"
    return out


def compose(spec: ModelSpec | Mapping[str, Any] | str | os.PathLike, adata: AnnData, *, seed: int | None = None) -> Model:
    """A trainable model of ``adata`` from a spec (a ModelSpec, its dict, or a TOML path)."""
    if isinstance(spec, (str, os.PathLike)):
        spec = ModelSpec.from_toml(spec)
    return Model(adata, spec, seed=seed)
