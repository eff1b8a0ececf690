"""Several recipes side by side on one data set and one split: the work behind ``fcrkit benchmark``.

Every recipe is trained on the same training cells with the same settings and seed, and scored by
the same code:

* ``mcc``: recovery of the true latents (simulated data), one square Hungarian match of all true
  dimensions against the model's whole latent (:func:`fcrkit.metrics.mcc`, Pearson);
* ``nmi_<label>``: k-means clusters of the whole latent against each covariate and the treatment;
* ``r2_top50``, ``r2_all``, ``mse_top20``: prediction of each held-out condition (covariate value
  under a treatment, never seen in training) from the controls of that covariate value
  (:func:`fcrkit.metrics.prediction_scores`), averaged over the held-out conditions; NaN for a
  model that cannot predict a treatment; the row ``no change`` scores the controls themselves;
* ``train_s`` and ``cells_per_s``: wall-clock training time and training throughput.

A config file (``fcrkit benchmark bench.toml``)::

    [data]
    simulator = "interaction"                      # or path = "cells.h5ad" + the keys of fcrkit fit's [data]
    simulator_args = { n_cells = 3000, n_genes = 200 }
    hold_out = [{ key = "covariate", value = "cov_0", treatment = "drug_0" }]

    [recipes]                                      # recipe name = its arguments ({} for the defaults)
    FCR = { n_latent = { x = 4, t = 4, tx = 4 } }
    SCVI = {}

    [train]
    max_epochs = 40

    [output]
    dir = "bench"
"""

from __future__ import annotations

import inspect
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData

from fcrkit import progress as fcrkit_progress
from fcrkit.errors import ConfigError, DataError, FcrkitError, did_you_mean, listing
from fcrkit.runconfig import HoldOut, _Parser, recipes

__all__ = ["SIMULATORS", "BenchmarkConfig", "BenchmarkResult", "HoldOut", "run_benchmark", "simulated_data"]

#: The simulators a benchmark can run on, with the keys their data are set up with.
SIMULATORS: dict[str, dict[str, Any]] = {
    "interaction": {"treatment_key": "treatment", "covariate_keys": ["covariate"], "control_value": "control"},
    "basic": {"treatment_key": "treatment", "covariate_keys": ["cell_type"], "control_value": "control"},
}
#: The held-out conditions of a simulator when the config names none: two (covariate, treatment) pairs.
DEFAULT_HOLD_OUT: dict[str, tuple[HoldOut, ...]] = {
    "interaction": (HoldOut("covariate", "cov_0", "drug_0"), HoldOut("covariate", "cov_1", "drug_1")),
    "basic": (HoldOut("cell_type", "type_0", "drug_0"),),
}


@dataclass
class BenchmarkResult:
    """The table (one row per recipe, plus the no-change baseline), the trained models and the files written."""

    table: pd.DataFrame
    models: dict[str, Any] = field(default_factory=dict)
    files: dict[str, Path] = field(default_factory=dict)


def simulated_data(name: str, **args: Any) -> tuple[AnnData, dict[str, Any]]:
    """Data from simulator ``name`` of :mod:`fcrkit.simulate` and the setup keys of its labels."""
    from fcrkit import simulate

    if name not in SIMULATORS:
        raise ConfigError(f"simulator {name!r} is not one of {listing(SIMULATORS)}.{did_you_mean(name, SIMULATORS)}")
    try:
        adata = getattr(simulate, name)(**args)
    except TypeError as err:
        raise ConfigError(f"simulator {name!r}: {err}; see help(fcrkit.simulate.{name}).") from None
    return adata, dict(SIMULATORS[name])


def _recipe_args(cls: type, given: Mapping[str, Any], adata: AnnData) -> dict[str, Any]:
    """``given``, plus latent sizes matching the true latents of simulated data when not given."""
    args = dict(given)
    params = inspect.signature(cls.build_spec).parameters
    if "n_latent" in params and "n_latent" not in args and "z_true" in adata.obsm:
        blocks = {k[2:]: adata.obsm[k].shape[1] for k in adata.obsm if k.startswith("z_") and k != "z_true"}
        fcr_like = blocks and set(blocks) == {"x", "t", "tx"} and cls.__name__ == "FCR"
        args["n_latent"] = blocks if fcr_like else int(adata.obsm["z_true"].shape[1])
    return args


def run_benchmark(
    adata: AnnData,
    setup: Mapping[str, Any],
    recipe_args: Mapping[str, Mapping[str, Any]] | None = None,
    *,
    hold_out: Sequence[HoldOut] = (),
    train: Mapping[str, Any] | None = None,
    seed: int = 0,
    output: str | os.PathLike | None = None,
    progress: Callable[[str], None] | None = print,
) -> BenchmarkResult:
    """Train every recipe in ``recipe_args`` (default: all of :mod:`fcrkit.models`) on one split; score them.

    Args:
        adata: the data (counts); not modified.
        setup: keyword arguments of :func:`fcrkit.setup_anndata` (``treatment_key`` is required).
        recipe_args: recipe class name -> its arguments. Latent sizes default to the true ones of
            simulated data.
        hold_out: conditions removed from training and predicted from their controls.
        train: keyword arguments of ``Model.train`` shared by every recipe (``seed`` is set to ``seed``).
        seed: weight initialisation and training seed of every recipe.
        output: folder for ``benchmark.csv`` and ``benchmark.png`` (None: write nothing).
        progress: called with a line per recipe (None: quiet).

    Returns:
        The table (see the module doc for the columns) and the trained models.
    """
    from fcrkit.data.anndata import setup_anndata
    from fcrkit.workflow import hold_out_mask

    available = recipes()
    chosen = dict(recipe_args) if recipe_args is not None else {name: {} for name in sorted(available)}
    for name in chosen:
        if name not in available:
            raise ConfigError(f"unknown recipe {name!r}.{did_you_mean(name, available)} Recipes: {listing(available)}.")
    treatment_key = setup.get("treatment_key")
    if treatment_key is None:
        raise ConfigError("a benchmark needs setup['treatment_key']: the treatment column.")
    held = hold_out_mask(adata.obs, hold_out, treatment_key)
    train_data = adata[~held].copy()
    setup_anndata(train_data, **setup)
    conditions = _held_out_conditions(adata, hold_out, setup)
    settings = {**(train or {}), "seed": seed}
    rows, models = [], {}
    for name, given in chosen.items():
        cls = available[name]
        model = cls(train_data, **_recipe_args(cls, given, train_data), seed=seed)
        fcrkit_progress.phase(f"training {name} ({len(rows) + 1} of {len(chosen)})", settings.get("progress_bar"))
        start = time.perf_counter()
        history = model.train(**settings)
        fcrkit_progress.phase(f"scoring {name}", settings.get("progress_bar"))
        row = {"recipe": name, **_scores(model, train_data, conditions, setup, seed),
               "train_s": time.perf_counter() - start, "cells_per_s": history.cells_per_second,
               "epochs": len(history)}
        rows.append(row)
        models[name] = model
        if progress is not None:
            progress(f"{name}: " + ", ".join(f"{k} {v:.3g}" for k, v in row.items() if isinstance(v, float)))
    rows.append({"recipe": "no change", **_no_change(conditions)})
    table = pd.DataFrame(rows).set_index("recipe")
    result = BenchmarkResult(table, models)
    if output is not None:
        result.files = _write(table, Path(output))
    return result


@dataclass
class _Condition:
    name: str
    treatment: str
    truth: Any
    controls: AnnData


def _held_out_conditions(adata: AnnData, hold_out: Sequence[HoldOut], setup: Mapping[str, Any]) -> list[_Condition]:
    from fcrkit.data.anndata import get_matrix

    treatment = adata.obs[setup["treatment_key"]].astype(str).to_numpy()
    out = []
    for h in hold_out:
        level = adata.obs[h.key].astype(str).to_numpy() == h.value
        controls = adata[level & (treatment == str(setup.get("control_value", "control")))].copy()
        if controls.n_obs == 0:
            raise DataError(f"held-out condition {h}: no control cells with {h.key} = {h.value!r} to predict from.")
        truth = get_matrix(adata[level & (treatment == h.treatment)], setup.get("layer"))
        out.append(_Condition(str(h), h.treatment, truth, controls))
    return out


def _scores(model: Any, train_data: AnnData, conditions: list[_Condition], setup: Mapping[str, Any],
            seed: int) -> dict[str, float]:
    from fcrkit import metrics
    from fcrkit.data.anndata import get_matrix

    latent = np.hstack(list(model.get_latent_representation().values()))
    scores: dict[str, float] = {}
    if "z_true" in train_data.obsm:
        scores["mcc"] = float(metrics.mcc(train_data.obsm["z_true"], latent, seed=seed).value)
    for key in [*setup.get("covariate_keys", []), setup["treatment_key"]]:
        scores[f"nmi_{key}"] = metrics.cluster_scores(latent, train_data.obs[key].astype(str), seed=seed)["nmi"]
    found = []
    for condition in conditions:
        try:
            predicted = model.predict(condition.controls, treatment=condition.treatment, seed=seed)
        except FcrkitError:  # a model with no treatment-dependent part cannot predict one
            continue
        ctrl = get_matrix(condition.controls, setup.get("layer"))
        found.append(metrics.prediction_scores(condition.truth, predicted.X, ctrl))
    return {**scores, **_mean_prediction(found, len(conditions))}


def _no_change(conditions: list[_Condition]) -> dict[str, float]:
    """The controls as the prediction of their own treated cells."""
    from fcrkit import metrics

    found = [metrics.prediction_scores(c.truth, control_counts=c.controls.X,
                                       pred_mean=metrics.mean_log_expression(c.controls.X)) for c in conditions]
    return _mean_prediction(found, len(conditions))


def _mean_prediction(found: list[Mapping[str, Any]], n_conditions: int) -> dict[str, float]:
    keys = ("r2_top50", "r2_all", "mse_top20")
    if not n_conditions:
        return {}
    if len(found) < n_conditions:
        return dict.fromkeys(keys, float("nan"))
    return {k: float(np.mean([f[k] for f in found])) for k in keys}


def _write(table: pd.DataFrame, out: Path) -> dict[str, Path]:
    from fcrkit.plotting import plot_benchmark

    out.mkdir(parents=True, exist_ok=True)
    files = {"table": out / "benchmark.csv", "plot": out / "benchmark.png"}
    table.to_csv(files["table"])
    plot_benchmark(table, files["plot"])
    return files


# -- the config file ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class BenchmarkConfig:
    """A validated benchmark config (see the module doc for the file format)."""

    source: str
    simulator: str | None
    simulator_args: dict[str, Any]
    data_path: Path | None
    setup: dict[str, Any]
    hold_out: tuple[HoldOut, ...]
    n_top_genes: int | None
    recipes: dict[str, dict[str, Any]]
    train: dict[str, Any]
    output_dir: Path | None
    seed: int = 0

    @classmethod
    def from_toml(cls, path: str | os.PathLike, *, output_dir: str | os.PathLike | None = None) -> BenchmarkConfig:
        """Read and validate a benchmark config; every error names the file, line, section and key."""
        from fcrkit.runconfig import tomllib

        path = Path(path)
        try:
            text = path.read_text()
            data = tomllib.loads(text)
        except OSError as err:
            raise ConfigError(f"cannot read benchmark config {str(path)!r}: {err.strerror}.") from None
        except tomllib.TOMLDecodeError as err:
            raise ConfigError(f"{path}: not valid TOML: {err}.") from None
        parser = _Parser(str(path), text, path.resolve().parent)
        sections = ("data", "recipes", "train", "output", "seed")
        for key in data:
            if key not in sections:
                raise parser.error("", key, f"unknown section or key {key!r}.{did_you_mean(key, sections)} "
                                   f"Sections: {listing(sections)}.")
        table = parser.table(data, "data", True)
        simulator, simulator_args, data_path, setup, n_top = None, {}, None, {}, None
        if "simulator" in table:
            parser.check_keys(table, ("simulator", "simulator_args", "hold_out"), "data")
            simulator = str(table["simulator"])
            if simulator not in SIMULATORS:
                raise parser.error("data", "simulator", f"simulator {simulator!r} is not one of "
                                   f"{listing(SIMULATORS)}.{did_you_mean(simulator, SIMULATORS)}")
            simulator_args = dict(table.get("simulator_args", {}))
            setup = dict(SIMULATORS[simulator])
            held = table.get("hold_out", [])
            hold_out = tuple(parser.hold_out(h) for h in (held if isinstance(held, list) else [held]))
            hold_out = hold_out or DEFAULT_HOLD_OUT[simulator]
        else:
            data_path, setup, hold_out, n_top = parser.data(table)
        chosen = {}
        for name, args in parser.table(data, "recipes", True).items():
            section = f"recipes.{name}"
            if not isinstance(args, Mapping):
                raise parser.error("recipes", name, f"{name} must be a table of its arguments ({{}} for none).")
            recipe, recipe_args, _, _ = parser.model({"recipe": name, **args}, section)
            chosen[recipe] = recipe_args
        train = parser.train(parser.table(data, "train", False))
        out_dir, _ = parser.output(parser.table(data, "output", output_dir is None), output_dir)
        seed = data.get("seed", 0)
        parser.check_type("", "seed", seed, int)
        return cls(str(path), simulator, simulator_args, data_path, setup, hold_out, n_top, chosen, train, out_dir,
                   seed)

    def load_data(self) -> AnnData:
        """The simulated or read data (the most variable genes of the training cells, if asked)."""
        if self.simulator is not None:
            return simulated_data(self.simulator, **self.simulator_args)[0]
        from fcrkit.data.anndata import get_matrix
        from fcrkit.workflow import hold_out_mask, most_variable_genes, read_data

        assert self.data_path is not None
        adata = read_data(self.data_path)
        if self.n_top_genes is not None and self.n_top_genes < adata.n_vars:
            held = hold_out_mask(adata.obs, self.hold_out, self.setup.get("treatment_key"))
            genes = most_variable_genes(get_matrix(adata[~held], self.setup.get("layer")), self.n_top_genes)
            adata = adata[:, genes].copy()
        return adata
