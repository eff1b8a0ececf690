"""The run configuration of ``fcrkit fit``: one TOML file that says what data, which model, how to train.

::

    [data]
    path = "cells.h5ad"             # relative to this file (or absolute)
    treatment_key = "sample"        # the other keys are the arguments of fcrkit.setup_anndata
    control_value = "CTRL"
    covariate_keys = ["cell_type"]
    n_top_genes = 1000              # optional: keep the highly variable genes (Seurat v3) of the training cells
    hold_out = { key = "cell_type", value = "CD14 Mono", treatment = "STIM" }

    [model]
    recipe = "FCR"                  # a recipe of fcrkit.models; its arguments follow
    likelihood = "nb"
    n_latent = { x = 10, t = 10, tx = 10 }
    seed = 0                        # seed of the weight initialisation
    # or, instead of a recipe:  spec = "my_model.toml"  or an inline [model.spec] table

    [train]                         # the keyword arguments of Model.train
    max_epochs = 40
    accelerator = "cpu"

    [output]
    dir = "run"                     # relative to this file; must be empty unless overwrite = true

``hold_out`` (one table, or a list of them) removes the cells whose ``key`` column equals ``value``
AND whose treatment equals ``treatment`` from training; ``fcrkit evaluate`` then scores the
prediction of exactly those cells from their controls.

Everything that can be checked without the data is checked when the file is read (section and key
names, types, the recipe and its argument names, the spec and its components, the training
settings, that the data file exists), so a typo fails at once rather than after hours of training.
Each error names the file, the line, the section and the key.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
import sys
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from anndata import AnnData

from fcrkit.errors import ConfigError, FcrkitError, did_you_mean, listing

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

SECTIONS = ("data", "model", "train", "output")
#: Keys of [data] and their types (those of :func:`fcrkit.setup_anndata`, plus ours).
DATA_KEYS: dict[str, Any] = {
    "path": str,
    "layer": str,
    "treatment_key": str,
    "dose_key": str,
    "covariate_keys": str | list,
    "control_value": str,
    "n_top_genes": int,
    "hold_out": dict | list,
    "treatment_features": str,
}
SETUP_KEYS = ("layer", "treatment_key", "dose_key", "covariate_keys", "control_value")
HOLD_OUT_KEYS: dict[str, Any] = {"key": str, "value": str | int, "treatment": str | int}
OUTPUT_KEYS: dict[str, Any] = {"dir": str, "overwrite": bool}


@dataclass(frozen=True)
class HoldOut:
    """Cells whose obs column ``key`` is ``value`` and whose treatment is ``treatment``."""

    key: str
    value: str
    treatment: str

    def __str__(self) -> str:
        return f"{self.key}={self.value}, treatment={self.treatment}"


@dataclass(frozen=True)
class RunConfig:
    """A validated run configuration (see the module doc for the file format).

    Attributes:
        source: the config file (for messages and relative paths), or a description.
        text: the TOML text (``fit`` copies it into the output directory).
        data_path: the .h5ad file, resolved.
        setup: keyword arguments of :func:`fcrkit.setup_anndata`.
        hold_out: the held-out selections (empty: train on every cell).
        n_top_genes: keep this many highly variable genes of the training cells (None: all), chosen by
            :func:`fcrkit.data.highly_variable_genes`.
        recipe: name of the recipe class in :mod:`fcrkit.models`, or None when ``spec`` is given.
        recipe_args: the recipe's arguments.
        spec: the :class:`~fcrkit.spec.ModelSpec` (given, or written by the recipe).
        model_seed: seed of the weight initialisation.
        train: keyword arguments of :meth:`fcrkit.models.Model.train`.
        output_dir: where ``fit`` writes, resolved (None: not given).
        overwrite: allow a non-empty ``output_dir``.
    """

    source: str
    text: str
    data_path: Path
    setup: dict[str, Any]
    hold_out: tuple[HoldOut, ...]
    n_top_genes: int | None
    recipe: str | None
    recipe_args: dict[str, Any]
    spec: Any  # ModelSpec; typed loosely so importing this module stays light
    model_seed: int | None
    train: dict[str, Any]
    output_dir: Path | None
    overwrite: bool = False
    lines: dict[str, int] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_toml(cls, path: str | Path, *, output_dir: str | Path | None = None) -> RunConfig:
        """Read and validate a config file; ``output_dir`` overrides its ``[output] dir``."""
        path = Path(path)
        try:
            text = path.read_text()
        except OSError as err:
            raise ConfigError(f"cannot read run config {str(path)!r}: {err.strerror}.") from None
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as err:
            raise ConfigError(f"{path}: not valid TOML: {err}.") from None
        return cls.from_dict(data, base_dir=path.resolve().parent, source=str(path), text=text,
                             output_dir=output_dir)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, base_dir: str | Path = ".", source: str = "<config>",
                  text: str = "", output_dir: str | Path | None = None) -> RunConfig:
        """Validate the dict form of a config file; relative paths are taken from ``base_dir``."""
        return _Parser(source, text, Path(base_dir)).parse(data, output_dir)

    def build_model(self, adata: AnnData) -> Any:
        """The untrained model of ``adata`` (already set up with :func:`fcrkit.setup_anndata`)."""
        from fcrkit.models import Model

        if self.recipe is None:
            return Model(adata, self.spec, seed=self.model_seed)
        return recipes()[self.recipe](adata, **self.recipe_args, seed=self.model_seed)

    def line(self, section: str, key: str) -> str:
        """``"FILE:LINE"`` of a key (``"FILE"`` when unknown), for messages raised after parsing."""
        number = _find_line(self.text, section, key)
        return f"{self.source}:{number}" if number else self.source


def recipes() -> dict[str, type]:
    """The registered recipe classes by name: fcrkit's own (FCR, SCVI, BetaVAE ...) and the plugins'."""
    from fcrkit.registry import get_registry

    return get_registry().recipes()


class _Parser:
    """Validates one config; every error names the file, the line, the section and the key."""

    def __init__(self, source: str, text: str, base_dir: Path):
        self.source, self.text, self.base_dir = source, text, base_dir

    # -- messages ---------------------------------------------------------------------------------
    def error(self, section: str, key: str | None, message: str) -> ConfigError:
        number = _find_line(self.text, section, key) if key else _find_line(self.text, section, None)
        where = f"{self.source}:{number}" if number else self.source
        return ConfigError(f"{where}: [{section}] {message}" if section else f"{where}: {message}")

    def check_keys(self, table: Mapping[str, Any], allowed: Any, section: str, noun: str = "keys") -> None:
        allowed = list(allowed)
        for key in table:
            if key not in allowed:
                raise self.error(section, key, f"unknown key {key!r}.{did_you_mean(key, allowed)} "
                                 f"Allowed {noun}: {listing(allowed)}.")

    def require(self, table: Mapping[str, Any], key: str, section: str, hint: str = "") -> Any:
        if key not in table:
            raise self.error(section, None, f"missing required key {key!r}.{hint}")
        return table[key]

    def check_type(self, section: str, key: str, value: Any, expected: Any) -> None:
        if not _matches(value, expected):
            raise self.error(section, key, f"{key} must be {_describe(expected)}, got {value!r} ({_toml_type(value)}).")

    def table(self, data: Mapping[str, Any], section: str, required: bool) -> dict[str, Any]:
        if section not in data:
            if required:
                raise ConfigError(f"{self.source}: missing required section [{section}].")
            return {}
        value = data[section]
        if not isinstance(value, Mapping):
            raise self.error("", section, f"{section} must be a table ([{section}]), got {value!r}.")
        return dict(value)

    # -- sections ---------------------------------------------------------------------------------
    def parse(self, data: Mapping[str, Any], output_dir: str | Path | None) -> RunConfig:
        for key in data:
            if key not in SECTIONS:
                number = _find_line(self.text, "", key) or _header_line(self.text, key)
                where = f"{self.source}:{number}" if number else self.source
                raise ConfigError(f"{where}: unknown section or key {key!r} at the top level."
                                  f"{did_you_mean(key, SECTIONS)} Sections: {listing(SECTIONS)}.")
        data_path, setup, hold_out, n_top = self.data(self.table(data, "data", True))
        recipe, recipe_args, spec, seed = self.model(self.table(data, "model", True))
        train = self.train(self.table(data, "train", False))
        out_dir, overwrite = self.output(self.table(data, "output", output_dir is None), output_dir)
        return RunConfig(self.source, self.text, data_path, setup, hold_out, n_top, recipe, recipe_args, spec,
                         seed, train, out_dir, overwrite)

    def data(self, table: dict[str, Any]) -> tuple[Path, dict[str, Any], tuple[HoldOut, ...], int | None]:
        self.check_keys(table, DATA_KEYS, "data")
        for key, value in table.items():
            self.check_type("data", key, value, DATA_KEYS[key])
        raw = self.require(table, "path", "data", " Give the .h5ad file, e.g. path = \"cells.h5ad\".")
        path = (Path(raw) if Path(raw).is_absolute() else self.base_dir / raw).resolve()
        if not path.is_file():
            raise self.error("data", "path", f"path: data file {str(path)!r} does not exist (paths are relative to "
                             "the config file's folder).")
        covariates = table.get("covariate_keys", [])
        if isinstance(covariates, list) and not all(isinstance(c, str) for c in covariates):
            raise self.error("data", "covariate_keys",
                             f"covariate_keys must be a column name or a list of them, got {covariates!r}.")
        n_top = table.get("n_top_genes")
        if n_top is not None and n_top < 1:
            raise self.error("data", "n_top_genes", f"n_top_genes must be a positive integer, got {n_top!r}.")
        setup = {k: table[k] for k in SETUP_KEYS if k in table}
        if "treatment_features" in table:  # a CSV: first column the treatment names, then numeric features
            setup["treatment_features"] = self.features_table(table["treatment_features"])
        held = table.get("hold_out", [])
        hold_out = tuple(self.hold_out(h) for h in (held if isinstance(held, list) else [held]))
        if hold_out and "treatment_key" not in table:
            raise self.error("data", "hold_out", "hold_out needs treatment_key in [data] (it holds out cells of one "
                             "covariate value under one treatment).")
        return path, setup, hold_out, n_top

    def features_table(self, raw: str) -> Any:
        """The ``[data] treatment_features`` CSV (relative to the config's folder) as a DataFrame."""
        import pandas as pd

        path = (Path(raw) if Path(raw).is_absolute() else self.base_dir / raw).resolve()
        if not path.is_file():
            raise self.error("data", "treatment_features", f"treatment_features: file {str(path)!r} does not exist "
                             "(a CSV whose first column names the treatments; paths are relative to the config "
                             "file's folder).")
        return pd.read_csv(path, index_col=0)

    def hold_out(self, table: Any) -> HoldOut:
        section = "data.hold_out"
        if not isinstance(table, Mapping):
            raise self.error("data", "hold_out",
                             f"hold_out must be a table like {{ key = \"cell_type\", value = \"B\", "
                             f"treatment = \"stimulated\" }} (or a list of them), got {table!r}.")
        self.check_keys(table, HOLD_OUT_KEYS, section)
        for key, expected in HOLD_OUT_KEYS.items():
            self.check_type(section, key, self.require(table, key, section), expected)
        return HoldOut(table["key"], str(table["value"]), str(table["treatment"]))

    def model(self, table: dict[str, Any],
              section: str = "model") -> tuple[str | None, dict[str, Any], Any, int | None]:
        from fcrkit.spec import ModelSpec

        seed = table.pop("seed", None)
        if seed is not None:
            self.check_type(section, "seed", seed, int)
        if "spec" in table:
            extra = [k for k in table if k != "spec"]
            if extra:
                raise self.error(section, extra[0],
                                 f"key {extra[0]!r}: a [model] with a spec takes only 'spec' and 'seed'; put the "
                                 "model's options into the spec, or use recipe = ... instead of spec.")
            spec = self.spec(table["spec"], ModelSpec)
            return None, {}, spec, seed
        available = recipes()
        name = self.require(table, "recipe", section, f" Name a recipe ({listing(available)}) or give spec = "
                            "\"spec.toml\" / a [model.spec] table.")
        self.check_type(section, "recipe", name, str)
        by_lower = {n.lower(): n for n in available}
        if name not in available and name.lower() not in by_lower:
            raise self.error(section, "recipe", f"recipe: unknown recipe {name!r}.{did_you_mean(name, available)} "
                             f"Available recipes: {listing(available)}.")
        name = name if name in available else by_lower[name.lower()]
        args = {k: v for k, v in table.items() if k != "recipe"}
        build = available[name].build_spec
        params = _parameters(build)
        self.check_keys(args, [*params, "recipe", "seed"], section, noun=f"keys (recipe, seed and {name}'s arguments)")
        for key, value in args.items():
            self.check_type(section, key, value, params[key].annotation)
        missing = [p for p, info in params.items() if info.default is inspect.Parameter.empty and p not in args]
        if missing:
            raise self.error(section, None, f"recipe {name} needs argument(s) {listing(missing)}.")
        try:
            spec = build(**args)
        except FcrkitError as err:
            named = next((k for k in args if re.search(rf"\b{re.escape(k)}\b", str(err))), None)
            raise self.error(section, named, f"recipe {name}: {err}") from None
        self.components(spec, section, None)
        return name, args, spec, seed

    def spec(self, value: Any, spec_cls: type) -> Any:
        if isinstance(value, str):
            path = Path(value) if Path(value).is_absolute() else self.base_dir / value
            spec = spec_cls.from_toml(path)  # its errors name that file and line
            self.components(spec, "model", "spec")
            return spec
        if not isinstance(value, Mapping):
            raise self.error("model", "spec", f"spec must be a spec file name or a [model.spec] table, got {value!r}.")
        try:
            spec = spec_cls.from_dict(value)
        except FcrkitError as err:
            match = re.search(r"unknown key '([^']+)'", str(err))
            number = _find_line(self.text, "model.spec", match.group(1)) if match else None
            number = number or _header_line(self.text, "model.spec")
            where = f"{self.source}:{number}" if number else self.source
            raise ConfigError(f"{where}: [model.spec]: {err}") from None
        self.components(spec, "model.spec", None)
        return spec

    def components(self, spec: Any, section: str, key: str | None) -> None:
        """Every component the spec names must be registered (plugins included)."""
        from fcrkit.registry import get_registry

        registry = get_registry()
        for kind, comp, where in spec.components():
            try:
                registry.get(kind, comp.name)
            except FcrkitError as err:
                named = key or ("likelihood" if kind == "likelihood" else None)
                raise self.error(section, named, f"{where}: {err}") from None

    def train(self, table: dict[str, Any]) -> dict[str, Any]:
        from fcrkit.train.trainer import TrainingPlan, resolve_device

        hints = _type_hints(TrainingPlan)
        allowed = {f.name: hints.get(f.name, Any) for f in dataclasses.fields(TrainingPlan)}
        allowed["accelerator"] = str
        self.check_keys(table, allowed, "train", noun="keys (the arguments of Model.train)")
        for key, value in table.items():
            self.check_type("train", key, value, allowed[key])
        try:
            TrainingPlan(**{k: v for k, v in table.items() if k != "accelerator"})
            resolve_device(table.get("accelerator", "auto"))
        except FcrkitError as err:
            named = next((k for k in table if re.search(rf"\b{re.escape(k)}\b", str(err))), None)
            raise self.error("train", named, f"{err}") from None
        for key, value in table.items():  # folders (checkpoint_dir) are relative to the config, as all paths
            if key.endswith("_dir") and isinstance(value, str) and not Path(value).is_absolute():
                table[key] = str(self.base_dir / value)
        return table

    def output(self, table: dict[str, Any], override: str | Path | None) -> tuple[Path | None, bool]:
        self.check_keys(table, OUTPUT_KEYS, "output")
        for key, value in table.items():
            self.check_type("output", key, value, OUTPUT_KEYS[key])
        overwrite = bool(table.get("overwrite", False))
        if override is not None:
            return Path(override), overwrite
        raw = self.require(table, "dir", "output", " Name the folder to write to, e.g. dir = \"run\".")
        return (Path(raw) if Path(raw).is_absolute() else self.base_dir / raw), overwrite


# -- types ------------------------------------------------------------------------------------------


def _parameters(func: Any) -> dict[str, inspect.Parameter]:
    """The parameters of ``func`` with evaluated annotations where that works."""
    try:
        sig = inspect.signature(func, eval_str=True)
    except (NameError, TypeError, AttributeError, SyntaxError):  # annotations that cannot be evaluated:
        # skip the type checks, keep the names
        sig = inspect.signature(func)
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return {name: p for name, p in sig.parameters.items() if p.kind in kinds}


def _type_hints(cls: type) -> dict[str, Any]:
    try:
        return typing.get_type_hints(cls)
    except (NameError, TypeError, AttributeError, SyntaxError):
        return {}


def _matches(value: Any, expected: Any) -> bool:
    """Whether a TOML value fits an annotation (loosely: unknown annotations accept anything)."""
    if expected is Any or expected is inspect.Parameter.empty or isinstance(expected, str):
        return True
    origin = typing.get_origin(expected)
    if origin is typing.Union or origin is types.UnionType:
        return any(_matches(value, arm) for arm in typing.get_args(expected))
    if expected is None or expected is type(None):
        return value is None
    if expected is bool:
        return isinstance(value, bool)
    if expected is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if expected is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if expected is str:
        return isinstance(value, str)
    target = origin or expected
    if target in (dict, Mapping) or (isinstance(target, type) and issubclass(target, Mapping)):
        return isinstance(value, Mapping)
    if target in (list, tuple) or target in (typing.Sequence, typing.Iterable) or \
            getattr(target, "__module__", "") == "collections.abc":
        return isinstance(value, list)
    return True


def _describe(expected: Any) -> str:
    origin = typing.get_origin(expected)
    if origin is typing.Union or origin is types.UnionType:
        arms = [_describe(a) for a in typing.get_args(expected) if a is not type(None)]
        return " or ".join(dict.fromkeys(arms))
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string",
             dict: "a table", list: "a list"}
    if expected in names:
        return names[expected]
    target = origin or expected
    if isinstance(target, type) and issubclass(target, Mapping):
        return "a table"
    return "a list" if getattr(target, "__module__", "") == "collections.abc" else str(expected)


def _toml_type(value: Any) -> str:
    names = {bool: "boolean", int: "integer", float: "float", str: "string", list: "array", dict: "table"}
    return next((n for t, n in names.items() if isinstance(value, t)), type(value).__name__)


# -- lines ------------------------------------------------------------------------------------------

_HEADER = re.compile(r"^\s*\[\[?\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")


def _sections(text: str) -> list[tuple[int, str, str]]:
    """``(line number, section, line)`` for every line, the section being the last header above."""
    out, current = [], ""
    for number, line in enumerate(text.splitlines(), start=1):
        match = _HEADER.match(line)
        if match:
            current = re.sub(r"\s+|\"|'", "", match.group(1))
        out.append((number, current, line))
    return out


def _header_line(text: str, section: str) -> int | None:
    return next((n for n, s, line in _sections(text) if s == section and _HEADER.match(line)), None)


def _find_line(text: str, section: str, key: str | None) -> int | None:
    """The line of ``key`` in ``section`` (``"data"``, ``"data.hold_out"`` ...), or of the section header.

    Looks for ``key =`` under the section's header, then as a dotted key (``data.key =``), then anywhere
    in the section or its sub-tables (a key of an inline table such as ``hold_out = { ... }``).
    """
    if not text:
        return None
    lines = _sections(text)
    if key is None:  # the header; for an inline table (data.hold_out) the line of its key in the parent
        parent, _, last = section.rpartition(".")
        return _header_line(text, section) or (_find_line(text, parent, last) if parent else None)
    name = re.escape(key)
    exact = re.compile(rf"^\s*[\"']?{name}[\"']?\s*=")
    for number, current, line in lines:
        if current == section and exact.match(line):
            return number
    parts = section.split(".") if section else []
    for depth in range(len(parts)):  # dotted keys: [data] hold_out.key = ... or data.key = ... at the top
        prefix, rest = ".".join(parts[:depth]), ".".join(parts[depth:] + [key])
        dotted = re.compile(rf"^\s*{re.escape(rest)}\s*=")
        for number, current, line in lines:
            if current == prefix and dotted.match(line):
                return number
    top = parts[0] if parts else ""
    loose = re.compile(rf"(^|[{{,\s]){name}\s*=")
    for number, current, line in lines:
        if (current == top or current.startswith(f"{top}.")) and loose.search(line.split("#")[0]):
            return number
    return _header_line(text, section) if section else None
