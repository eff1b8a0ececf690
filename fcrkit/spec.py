"""Declarative model specs: which parts a model is made of.

A :class:`ModelSpec` names latent blocks (each with a prior and an encoder), a decoder, a
likelihood and regularisers; :func:`fcrkit.compose` turns it into a trainable model. Specs come
from Python, from a dict, or from TOML::

    name = "my_vae"
    likelihood = "nb"

    [[blocks]]
    name = "z"
    dim = 10
    encoder = { name = "mlp", n_hidden = 128 }
    posterior = { name = "flow", n_flows = 2 }     # optional; default "normal"

    [[regularizers]]
    name = "kl"
    weight = 4.0          # beta
    warmup_epochs = 20

A component is given as its registered name, or as a table with ``name``, optional
``conditions`` (the labels it sees: ``"x"`` covariates, ``"t"`` treatment, or the name of a global
block, whose ``(vocabulary, dim)`` value it then reads) and its options.

A block lives per cell (``plate = "cells"``, the default: amortised by an encoder) or is *global*
over a label's vocabulary (``plate = "t"``: one row per treatment, ``plate = "x"``: one per
covariate level), with its own variational parameters and no encoder::

    [[blocks]]
    name = "mask"
    dim = 10
    plate = "t"
    prior = { name = "bernoulli", probs = 0.5 }
    posterior = { name = "relaxed_bernoulli", temperature = 1.0 }
"""

from __future__ import annotations

import math
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from fcrkit.errors import ConfigError, did_you_mean, listing

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

#: Labels a component may condition on.
CONDITIONS: tuple[str, ...] = ("x", "t")
#: Names a block may not take (they are other sites of the Pyro model).
RESERVED_BLOCK_NAMES = frozenset({"y", "cells"})
#: Where a block may live: per cell, or one row per entry of a label's vocabulary (a global block).
PLATES: tuple[str, ...] = ("cells", "t", "x")
ENCODER_INPUTS = ("auto", "log1p", "lognorm", "identity")
CONTROL_PAIRINGS = ("none", "covariates", "any")
#: How a global block's value reaches the cells' terms while training: its one draw per step, or a draw per
#: treatment entry of the minibatch (local reparameterisation; see :class:`BlockSpec`).
DRAWS: tuple[str, ...] = ("site", "per_entry")
#: The posterior family of a block that names none (a diagonal Normal).
DEFAULT_POSTERIOR = "normal"
#: How the blocks reach the decoder when a spec names no combiner (concatenated in spec order).
DEFAULT_COMBINER = "concat"


def _check_keys(data: Mapping[str, Any], allowed: Sequence[str], where: str) -> None:
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where} must be a table/dict, got {type(data).__name__} {data!r}.")
    for key in data:
        if key not in allowed:
            raise ConfigError(
                f"{where}: unknown key {key!r}.{did_you_mean(key, allowed)} Allowed keys: {listing(allowed)}."
            )


def _require(data: Mapping[str, Any], key: str, where: str) -> Any:
    if key not in data:
        raise ConfigError(f"{where}: missing required key {key!r}.")
    return data[key]


def check_latent_size(value: Any, argument: str) -> int:
    """``value`` if it is a positive int, else a ConfigError naming ``argument`` (e.g. ``"n_latent"``).

    Recipes call this so the message names their argument rather than the block it becomes.
    """
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"{argument}={value!r} must be a positive integer (the size of a latent block).")
    return value


def check_weight(value: Any, argument: str) -> float:
    """``value`` as a float if it is a finite number >= 0, else a ConfigError naming ``argument``.

    Recipes call this for the weights of their terms (``beta``, ``gamma`` ...).
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ConfigError(f"{argument}={value!r} must be a finite number >= 0 (the weight of a term).")
    return float(value)


def _name(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{where}: name must be a non-empty string, got {value!r}.")
    return value


def _unknown_condition(component: str, condition: Any, global_blocks: Sequence[str]) -> str:
    known = [*CONDITIONS, *global_blocks]
    blocks = f", or a global block ({listing(global_blocks)})" if global_blocks else ""
    return (f"component {component!r}: unknown condition {condition!r}.{did_you_mean(str(condition), known)} "
            f"Conditions are 'x' (covariates) and 't' (treatment){blocks}.")


@dataclass(frozen=True)
class ComponentSpec:
    """A registered component by name, the labels it sees, and its options."""

    name: str
    conditions: tuple[str, ...] = ()
    options: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _name(self.name, "component")
        conditions = (self.conditions,) if isinstance(self.conditions, str) else tuple(self.conditions)
        for c in conditions:  # a global block's name may be a condition too: the model spec checks those
            if c not in CONDITIONS and not (isinstance(c, str) and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", c)):
                raise ConfigError(_unknown_condition(self.name, c, ()))
        if len(set(conditions)) != len(conditions):
            raise ConfigError(f"component {self.name!r}: conditions {list(conditions)} repeat a label.")
        object.__setattr__(self, "conditions", conditions)
        object.__setattr__(self, "options", dict(self.options))

    @classmethod
    def parse(cls, value: Any, where: str) -> ComponentSpec:
        """From a name, a dict ``{"name": ..., "conditions": [...], **options}`` or a ComponentSpec."""
        if isinstance(value, ComponentSpec):
            return value
        if isinstance(value, str):
            return cls(value)
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where} must be a component name or a table with 'name', got {value!r}.")
        options = {k: v for k, v in value.items() if k not in ("name", "conditions")}
        name = _require(value, "name", where)  # its message already says where
        try:
            return cls(name, value.get("conditions", ()), options)
        except ConfigError as err:
            raise ConfigError(f"{where}: {err}") from None

    def to_dict(self) -> dict[str, Any]:
        """The component as a plain dict: ``name``, and ``conditions`` and options when set."""
        out: dict[str, Any] = {"name": self.name}
        if self.conditions:
            out["conditions"] = list(self.conditions)
        out.update(self.options)
        return out


@dataclass(frozen=True)
class BlockSpec:
    """A latent block: its name (also its Pyro site), dimension, prior, encoder, posterior family and plate.

    ``posterior`` is a registered posterior family (``"normal"``, ``"flow"``, ``"delta"``,
    ``"relaxed_bernoulli"`` ...; see :mod:`fcrkit.components.posteriors`) that turns the encoder's
    output into ``q(z | y)``; it sees no labels (give those to the encoder).

    ``plate`` says where the block lives: ``"cells"`` (default) one value per cell, inferred by the
    encoder; ``"t"`` or ``"x"`` a *global* block, one row per entry of that label's vocabulary
    (treatments, covariate levels), sampled in its own ``pyro.plate`` outside the cells plate (so
    not rescaled by the minibatch subsampling), inferred by variational parameters of its own
    (one ``(loc, scale)`` row per entry, fed to the posterior family): it has no encoder (``encoder``
    stays None). A component reads a global block by listing its name among its ``conditions``.

    ``draws`` (a global block over ``"t"`` only) says which value of it the cells' terms (priors,
    decoder, likelihood) see while training: ``"site"`` (default) the block's one draw per step,
    ``"per_entry"`` an independent draw of the posterior for each (cell, treatment) entry of the
    minibatch (local reparameterisation, Kingma, Salimans & Welling 2015: the same objective, a
    lower-variance gradient; see :mod:`fcrkit.program`). Components that read such a block take
    its rows with :func:`fcrkit.data.labels.entry_rows`.
    """

    name: str
    dim: int
    prior: ComponentSpec = field(default_factory=lambda: ComponentSpec("standard_normal"))
    encoder: ComponentSpec | None = None  # None: "mlp" for a per-cell block, nothing for a global one
    posterior: ComponentSpec = field(default_factory=lambda: ComponentSpec(DEFAULT_POSTERIOR))
    plate: str = "cells"
    draws: str = "site"

    def __post_init__(self) -> None:
        where = f"block {self.name!r}"
        _name(self.name, "block")
        if self.name in RESERVED_BLOCK_NAMES or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", self.name):
            raise ConfigError(f"{where}: use an identifier other than {listing(RESERVED_BLOCK_NAMES)}.")
        if isinstance(self.dim, bool) or not isinstance(self.dim, int) or self.dim <= 0:
            raise ConfigError(f"{where}: dim must be a positive integer, got {self.dim!r}.")
        if self.plate not in PLATES:
            raise ConfigError(f"{where}: plate={self.plate!r} is not one of {listing(PLATES)} ('cells': one value per "
                              "cell; 't' / 'x': one row per treatment / covariate level).")
        if self.draws not in DRAWS:
            raise ConfigError(f"{where}: draws={self.draws!r} is not one of {listing(DRAWS)}.")
        if self.draws != "site" and self.plate != "t":
            raise ConfigError(f"{where}: draws={self.draws!r} draws the block once per treatment entry of a "
                              f"minibatch, so it needs plate = 't' (got plate={self.plate!r}); use draws = 'site'.")
        object.__setattr__(self, "prior", ComponentSpec.parse(self.prior, f"{where} prior"))
        if self.is_global and self.encoder is not None:
            raise ConfigError(f"{where}: a global block (plate={self.plate!r}) has its own variational parameters, "
                              "one row per vocabulary entry, and no encoder: remove its encoder (or use plate "
                              "'cells').")
        if not self.is_global:
            encoder = ComponentSpec("mlp") if self.encoder is None else self.encoder
            object.__setattr__(self, "encoder", ComponentSpec.parse(encoder, f"{where} encoder"))
        posterior = ComponentSpec.parse(self.posterior, f"{where} posterior")
        if posterior.conditions:
            raise ConfigError(f"{where} posterior {posterior.name!r}: a posterior family sees the encoder's output, "
                              "not labels; give the conditions to the block's encoder instead.")
        object.__setattr__(self, "posterior", posterior)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BlockSpec:
        """A block from its dict form (``name``, ``dim``, ``prior``, ``encoder``, ``posterior``, ``plate``,
        ``draws``), validated."""
        where = f"block {data.get('name', '?')!r}" if isinstance(data, Mapping) else "block"
        _check_keys(data, ("name", "dim", "prior", "encoder", "posterior", "plate", "draws"), where)
        fields = {k: data[k] for k in ("prior", "encoder", "posterior", "plate", "draws") if k in data}
        return cls(_require(data, "name", where), _require(data, "dim", where), **fields)

    @property
    def is_global(self) -> bool:
        """Whether the block is global over a label's vocabulary (``plate`` other than ``"cells"``)."""
        return self.plate != "cells"

    def to_dict(self) -> dict[str, Any]:
        """The block as a plain dict (the inverse of :meth:`from_dict`); the default posterior, plate and draws are
        left out, and a global block has no encoder."""
        out = {"name": self.name, "dim": self.dim, "prior": self.prior.to_dict()}
        if self.encoder is not None:
            out["encoder"] = self.encoder.to_dict()
        if self.posterior != ComponentSpec(DEFAULT_POSTERIOR):
            out["posterior"] = self.posterior.to_dict()
        if self.is_global:
            out["plate"] = self.plate
        if self.draws != "site":
            out["draws"] = self.draws
        return out


@dataclass(frozen=True)
class RegularizerSpec:
    """A registered regulariser with its weight, linear warm-up (in epochs) and options.

    ``start_epoch``: no term (weight 0) before this epoch; the warm-up, if any, counts from it.
    """

    name: str
    weight: float = 1.0
    warmup_epochs: float = 0.0
    options: Mapping[str, Any] = field(default_factory=dict)
    key: str | None = None  # an alias: the same component twice, e.g. two discriminators
    start_epoch: float = 0.0

    def __post_init__(self) -> None:
        where = f"regularizer {self.name!r}"
        _name(self.name, "regularizer")
        if self.key is None:
            object.__setattr__(self, "key", self.name)
        _name(self.key, f"{where} key")
        for key in ("weight", "warmup_epochs", "start_epoch"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ConfigError(f"{where}: {key} must be a finite number, got {value!r}.")
        for key in ("warmup_epochs", "start_epoch"):
            if getattr(self, key) < 0:
                raise ConfigError(f"{where}: {key} must be >= 0, got {getattr(self, key)!r}.")
        object.__setattr__(self, "weight", float(self.weight))
        object.__setattr__(self, "warmup_epochs", float(self.warmup_epochs))
        object.__setattr__(self, "start_epoch", float(self.start_epoch))
        object.__setattr__(self, "options", dict(self.options))

    @classmethod
    def parse(cls, value: Any) -> RegularizerSpec:
        """A regulariser entry from a name, a dict or a RegularizerSpec, validated."""
        if isinstance(value, RegularizerSpec):
            return value
        if isinstance(value, str):
            return cls(value)
        if not isinstance(value, Mapping):
            raise ConfigError(f"a regularizer must be a name or a table with 'name', got {value!r}.")
        where = f"regularizer {value.get('name', '?')!r}"
        fields = ("name", "weight", "warmup_epochs", "key", "start_epoch")
        options = {k: v for k, v in value.items() if k not in fields}
        return cls(_require(value, "name", where), value.get("weight", 1.0), value.get("warmup_epochs", 0.0), options,
                   value.get("key"), value.get("start_epoch", 0.0))

    def weight_at(self, epoch_progress: float) -> float:
        """The weight after ``epoch_progress`` epochs (fractional): 0 before ``start_epoch``, then the linear
        warm-up."""
        if epoch_progress < self.start_epoch:
            return 0.0
        if self.warmup_epochs <= 0:
            return self.weight
        return self.weight * min(1.0, (epoch_progress - self.start_epoch) / self.warmup_epochs)

    def to_dict(self) -> dict[str, Any]:
        """The entry as a plain dict: ``name``, ``weight``, ``warmup_epochs``, options, and ``key`` and
        ``start_epoch`` when set."""
        out = {"name": self.name, "weight": self.weight, "warmup_epochs": self.warmup_epochs, **self.options}
        if self.key != self.name:
            out["key"] = self.key
        if self.start_epoch:
            out["start_epoch"] = self.start_epoch
        return out


@dataclass(frozen=True)
class ModelSpec:
    """A whole model: blocks, decoder, likelihood, regularisers.

    Attributes:
        name: the model's name; latents go to ``obsm["X_<name>"]`` (one block) or
            ``obsm["X_<name>_<block>"]``.
        blocks: the latent blocks, in the order the combiner reads them (concatenated by default).
        decoder, likelihood: components.
        regularizers: extra terms and effects, each with its weight.
        encoder_input: what encoders see: ``"log1p"`` of counts, ``"lognorm"`` (``log1p`` of counts
            normalised to 1e4 per cell), the values (``"identity"``), or ``"auto"`` (the likelihood's
            ``encoder_input`` attribute if it has one, else ``log1p`` for count likelihoods, values otherwise).
        joint_encoder: one encoder for all blocks, whose output is split into them (then the
            blocks' own ``encoder`` entries are not used); None for one encoder per block.
        combiner: how the blocks reach the decoder (``"concat"``, the default; ``"masked"``;
            ``"sparse_additive"``; see :mod:`fcrkit.components.combiners`).
        control_pairing: ``"none"``; ``"covariates"`` pairs each training cell with a random control
            of the same covariate combination (drawn afresh at every step), whose ELBO is added
            (FCR's control branch); ``"any"`` pairs with any control.
    """

    name: str
    blocks: tuple[BlockSpec, ...]
    decoder: ComponentSpec = field(default_factory=lambda: ComponentSpec("mlp"))
    likelihood: ComponentSpec = field(default_factory=lambda: ComponentSpec("nb"))
    regularizers: tuple[RegularizerSpec, ...] = ()
    encoder_input: str = "auto"
    control_pairing: str = "none"
    joint_encoder: ComponentSpec | None = None
    combiner: ComponentSpec = field(default_factory=lambda: ComponentSpec(DEFAULT_COMBINER))

    def __post_init__(self) -> None:
        _name(self.name, "model")
        if not re.fullmatch(r"[A-Za-z0-9_]+", self.name):
            raise ConfigError(f"model name {self.name!r} must be letters, digits and '_' (it names obsm keys).")
        blocks = tuple(b if isinstance(b, BlockSpec) else BlockSpec.from_dict(b) for b in self.blocks)
        if not blocks:
            raise ConfigError(f"model {self.name!r} has no latent blocks; give at least one in 'blocks'.")
        names = [b.name for b in blocks]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ConfigError(f"model {self.name!r}: block name(s) {listing(repeated)} used more than once.")
        regs = tuple(RegularizerSpec.parse(r) for r in self.regularizers)
        reg_keys = [r.key for r in regs]
        repeated = sorted({n for n in reg_keys if reg_keys.count(n) > 1})
        if repeated:
            raise ConfigError(f"model {self.name!r}: regularizer(s) {listing(repeated)} listed more than once; "
                              "give each a distinct key = '...'.")
        if self.control_pairing not in CONTROL_PAIRINGS:
            raise ConfigError(f"control_pairing={self.control_pairing!r} is not one of {listing(CONTROL_PAIRINGS)}.")
        if self.encoder_input not in ENCODER_INPUTS:
            raise ConfigError(f"encoder_input={self.encoder_input!r} is not one of {listing(ENCODER_INPUTS)}.")
        object.__setattr__(self, "blocks", blocks)
        object.__setattr__(self, "regularizers", regs)
        object.__setattr__(self, "decoder", ComponentSpec.parse(self.decoder, "decoder"))
        object.__setattr__(self, "likelihood", ComponentSpec.parse(self.likelihood, "likelihood"))
        object.__setattr__(self, "combiner", ComponentSpec.parse(self.combiner, "combiner"))
        if self.joint_encoder is not None:
            object.__setattr__(self, "joint_encoder", ComponentSpec.parse(self.joint_encoder, "joint_encoder"))
        if not self.cell_block_dims:
            raise ConfigError(f"model {self.name!r} has only global blocks; give at least one per-cell block "
                              "(plate 'cells').")
        self._check_conditions()

    def _check_conditions(self) -> None:
        """Every condition is a label or a global block; a global block's prior reads only earlier global blocks."""
        global_names = list(self.global_block_dims)
        order = {name: i for i, name in enumerate(global_names)}
        for _, comp, where in self.components():
            for c in comp.conditions:
                if c in CONDITIONS or c in order:
                    continue
                hint = (f" Block {c!r} is per cell; only a global block (plate 't' or 'x') can be read as a "
                        "condition." if c in self.block_dims else "")
                raise ConfigError(f"{where}: {_unknown_condition(comp.name, c, global_names)}{hint}")
        for b in self.blocks:
            if not b.is_global:
                continue
            late = [c for c in b.prior.conditions if c in order and order[c] >= order[b.name]]
            if late:
                raise ConfigError(f"block {b.name!r} prior reads global block(s) {listing(late)}, which must come "
                                  f"before {b.name!r} in 'blocks' (global blocks are sampled in spec order).")
        if self.joint_encoder is not None and any(c in order for c in self.joint_encoder.conditions):
            raise ConfigError("joint encoder: an encoder cannot read a global block; give it labels only.")

    @property
    def block_dims(self) -> dict[str, int]:
        """Size of each latent block, by name, in spec order (per-cell and global blocks)."""
        return {b.name: b.dim for b in self.blocks}

    @property
    def cell_block_dims(self) -> dict[str, int]:
        """Size of each per-cell block (``plate = "cells"``), by name, in spec order."""
        return {b.name: b.dim for b in self.blocks if not b.is_global}

    @property
    def global_block_dims(self) -> dict[str, int]:
        """Size of each global block (one row per vocabulary entry of its plate's label), in spec order."""
        return {b.name: b.dim for b in self.blocks if b.is_global}

    def obsm_key(self, block: str) -> str:
        """Where the latent of (per-cell) ``block`` goes in ``adata.obsm``."""
        return f"X_{self.name}" if len(self.cell_block_dims) == 1 else f"X_{self.name}_{block}"

    def components(self) -> list[tuple[str, ComponentSpec, str]]:
        """Every (kind, component, where) the spec uses, for validation against a registry."""
        out = [("likelihood", self.likelihood, "likelihood"), ("decoder", self.decoder, "decoder")]
        if self.combiner != ComponentSpec(DEFAULT_COMBINER):  # the built-in default is always there
            out.append(("combiner", self.combiner, "combiner"))
        for b in self.blocks:
            out.append(("prior", b.prior, f"block {b.name!r} prior"))
            if self.joint_encoder is None and b.encoder is not None:
                out.append(("encoder", b.encoder, f"block {b.name!r} encoder"))
            out.append(("posterior", b.posterior, f"block {b.name!r} posterior"))
        if self.joint_encoder is not None:
            out.append(("encoder", self.joint_encoder, "joint encoder"))
        out += [("regularizer", ComponentSpec(r.name, (), r.options), f"regularizer {r.key!r}")
                for r in self.regularizers]
        return out

    def with_posterior(self, posterior: str | Mapping[str, Any] | ComponentSpec) -> ModelSpec:
        """The same spec with every per-cell block's posterior family set to ``posterior`` (a name or a table).

        Global blocks keep theirs (a recipe's masks keep their ``relaxed_bernoulli`` family).
        """
        family = ComponentSpec.parse(posterior, "posterior")
        return replace(self, blocks=tuple(b if b.is_global else replace(b, posterior=family) for b in self.blocks))

    # -- (de)serialisation ------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelSpec:
        """Build from a plain dict (the shape of the TOML file)."""
        _check_keys(data, ("name", "blocks", "decoder", "likelihood", "regularizers", "encoder_input",
                           "control_pairing", "joint_encoder", "combiner"), "model spec")
        blocks = _require(data, "blocks", "model spec")
        if not isinstance(blocks, Sequence) or isinstance(blocks, (str, bytes)):
            raise ConfigError(f"model spec: 'blocks' must be a list of tables, got {blocks!r}.")
        regs = data.get("regularizers", ())
        if isinstance(regs, (str, Mapping)) or not isinstance(regs, Sequence):
            raise ConfigError(f"model spec: 'regularizers' must be a list, got {regs!r}.")
        fields = {k: data[k] for k in ("decoder", "likelihood", "encoder_input", "control_pairing", "joint_encoder",
                                       "combiner") if k in data}
        return cls(_require(data, "name", "model spec"), tuple(blocks), regularizers=tuple(regs), **fields)

    @classmethod
    def from_toml(cls, path: str | Path) -> ModelSpec:
        """Read a spec from a TOML file; errors name the file (and the line of an unknown key)."""
        path = Path(path)
        try:
            text = path.read_text()
        except OSError as err:
            raise ConfigError(f"cannot read model spec {str(path)!r}: {err.strerror}.") from None
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as err:
            raise ConfigError(f"{path}: not valid TOML: {err}.") from None
        try:
            return cls.from_dict(data)
        except ConfigError as err:
            raise ConfigError(f"{path}{line_of(text, str(err))}: {err}") from None

    def to_dict(self) -> dict[str, Any]:
        """The spec as a plain dict (the inverse of :meth:`from_dict`; what ``model.json`` stores)."""
        return {
            "name": self.name,
            "blocks": [b.to_dict() for b in self.blocks],
            "decoder": self.decoder.to_dict(),
            "likelihood": self.likelihood.to_dict(),
            "regularizers": [r.to_dict() for r in self.regularizers],
            "encoder_input": self.encoder_input,
            "control_pairing": self.control_pairing,
            **({"joint_encoder": self.joint_encoder.to_dict()} if self.joint_encoder is not None else {}),
            **({"combiner": self.combiner.to_dict()} if self.combiner != ComponentSpec(DEFAULT_COMBINER) else {}),
        }


def line_of(text: str, message: str) -> str:
    """``":LINE"`` of the unknown key (or component option) a message names, when found in the TOML text."""
    match = re.search(r"(?:unknown key|unexpected keyword argument) '([^']+)'", message)
    if not match:
        return ""
    # the key starts a line, or sits in an inline table: encoder = { name = "mlp", n_hiden = 8 }
    key = re.compile(rf"(?:^|[{{,])\s*{re.escape(match.group(1))}\s*=")
    for number, line in enumerate(text.splitlines(), start=1):
        if key.search(line):
            return f":{number}"
    return ""
