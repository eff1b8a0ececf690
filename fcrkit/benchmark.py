"""Recipes and baselines side by side on one data set and task: the work behind ``fcrkit benchmark``.

Every recipe and baseline (:mod:`fcrkit.models.baselines`) is trained on the same training cells of each
split (:mod:`fcrkit.tasks`) with the same settings, once per seed, and scored by the same code:

* ``mcc``: recovery of the true latents (simulated data), one square Hungarian match of all true
  dimensions against the model's whole latent (:func:`fcrkit.metrics.mcc`, Pearson);
* ``nmi_<label>``: k-means clusters of the whole latent against each covariate and the treatment;
* prediction of each held-out condition (a covariate value under a treatment) from the controls of
  that covariate value, :func:`condition_scores` averaged over the held-out conditions: ``pearson_delta``,
  ``pearson_delta20`` (top-20 DEGs), ``pearson_delta_pm`` (Systema: against the perturbed training mean),
  ``cosine_logfc``, ``rmse``, ``rmse20``, ``deg_direction20``, ``deg_overlap20``, ``energy_distance`` and
  ``mmd`` (sampled cells against the observed ones, in 50 PCs of the training cells), ``normalized_rank``
  (with two or more conditions), ``r2_all``, ``r2_top20``, ``r2_top50``, ``mse_top20``; NaN for a model that
  cannot predict a treatment (e.g. one never seen in training);
* ``train_s`` and ``cells_per_s``: wall-clock training time and training throughput.

The table is the mean over splits and seeds, ``sd`` the standard deviation. A config file
(``fcrkit benchmark bench.toml``)::

    seeds = [0, 1, 2]

    [data]
    path = "kang.h5ad"                             # or simulator = "interaction" (+ simulator_args)
    treatment_key = "label"
    control_value = "CTRL"
    covariate_keys = ["cell_type"]
    n_top_genes = 1000                             # chosen on cells no split holds out

    [task]                                         # or [data] hold_out = [{ key = ..., value = ..., treatment = ... }]
    kind = "covariate_transfer"                    # or "combinations", "unseen_perturbations"
    covariate_key = "cell_type"                    # the other keys: the arguments of fcrkit.tasks.<kind>
    treatment = "STIM"
    folds = true                                   # each cell type held out in turn

    [recipes]                                      # recipe name = its arguments ({} for the defaults)
    FCR = { n_latent = { x = 4, t = 4, tx = 4 } }

    [baselines]                                    # optional: default all four
    Additive = {}
    LinearRidge = { n_components = 10, ridge = 0.1 }

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
from fcrkit.tasks import TASKS, Split

__all__ = ["PREDICTION_COLUMNS", "SIMULATORS", "BenchmarkConfig", "BenchmarkResult", "HoldOut", "condition_scores",
           "run_benchmark", "simulated_data"]

#: The prediction scores of a run (means over its held-out conditions; see :func:`condition_scores`).
PREDICTION_COLUMNS = ("pearson_delta", "pearson_delta20", "pearson_delta_pm", "cosine_logfc", "rmse", "rmse20",
                      "deg_direction20", "deg_overlap20", "energy_distance", "mmd", "normalized_rank", "r2_all",
                      "r2_top20", "r2_top50", "mse_top20")

#: The simulators a benchmark can run on, with the keys their data are set up with.
SIMULATORS: dict[str, dict[str, Any]] = {
    "interaction": {"treatment_key": "treatment", "covariate_keys": ["covariate"], "control_value": "control"},
    "basic": {"treatment_key": "treatment", "covariate_keys": ["cell_type"], "control_value": "control"},
    "feature_effects": {"treatment_key": "treatment", "covariate_keys": ["covariate"], "control_value": "control"},
}
#: The held-out conditions of a simulator when the config names none: two (covariate, treatment) pairs.
DEFAULT_HOLD_OUT: dict[str, tuple[HoldOut, ...]] = {
    "interaction": (HoldOut("covariate", "cov_0", "drug_0"), HoldOut("covariate", "cov_1", "drug_1")),
    "basic": (HoldOut("cell_type", "type_0", "drug_0"),),
    "feature_effects": (HoldOut("covariate", "cov_0", "pert_0"),),
}


@dataclass
class BenchmarkResult:
    """The summary (mean over splits and seeds per recipe or baseline), its spread, the runs and the files.

    Attributes:
        table: one row per recipe, then per baseline: the mean of each score over every (split, seed) run.
        sd: the standard deviation (ddof=1) of the same (NaN with one run).
        runs: one row per (split, seed, model): the scores of that run (prediction scores averaged over
            its held-out conditions).
        conditions: one row per (split, seed, model, held-out condition): the prediction scores.
        models: the trained models of the last run of each name.
        files: what was written (``benchmark.csv``, ``benchmark_runs.csv``, ``benchmark_conditions.csv``,
            ``benchmark.png``).
    """

    table: pd.DataFrame
    sd: pd.DataFrame = field(default_factory=pd.DataFrame)
    runs: pd.DataFrame = field(default_factory=pd.DataFrame)
    conditions: pd.DataFrame = field(default_factory=pd.DataFrame)
    models: dict[str, Any] = field(default_factory=dict)
    files: dict[str, Path] = field(default_factory=dict)

    def summary(self, digits: int = 3) -> pd.DataFrame:
        """The table as strings ``mean ± sd`` (``mean`` alone with one run; ``–`` for NaN)."""
        def cell(mean: float, sd: float) -> str:
            if not np.isfinite(mean):
                return "–"
            return f"{mean:.{digits}f}" + (f" ± {sd:.{digits}f}" if np.isfinite(sd) else "")

        sd = self.sd.reindex_like(self.table) if not self.sd.empty else self.table * np.nan
        return pd.DataFrame({c: [cell(m, e) for m, e in zip(self.table[c], sd[c])] for c in self.table.columns},
                            index=self.table.index)


def simulated_data(name: str, **args: Any) -> tuple[AnnData, dict[str, Any]]:
    """Data from simulator ``name`` of :mod:`fcrkit.simulate` and the setup keys of its labels.

    A simulator that stores ``uns["treatment_features"]`` (``feature_effects``) has them in the setup too.
    """
    from fcrkit import simulate

    if name not in SIMULATORS:
        raise ConfigError(f"simulator {name!r} is not one of {listing(SIMULATORS)}.{did_you_mean(name, SIMULATORS)}")
    try:
        adata = getattr(simulate, name)(**args)
    except TypeError as err:
        raise ConfigError(f"simulator {name!r}: {err}; see help(fcrkit.simulate.{name}).") from None
    setup = dict(SIMULATORS[name])
    if "treatment_features" in adata.uns:
        setup["treatment_features"] = adata.uns["treatment_features"]
    return adata, setup


def _recipe_args(cls: type, given: Mapping[str, Any], adata: AnnData) -> dict[str, Any]:
    """``given``, plus latent sizes matching the true latents of simulated data when not given."""
    args = dict(given)
    if not hasattr(cls, "build_spec"):  # a baseline
        return args
    params = inspect.signature(cls.build_spec).parameters
    if "n_latent" in params and "n_latent" not in args and "z_true" in adata.obsm:
        blocks = {k[2:]: adata.obsm[k].shape[1] for k in adata.obsm if k.startswith("z_") and k != "z_true"}
        fcr_like = blocks and set(blocks) == {"x", "t", "tx"} and cls.__name__ == "FCR"
        args["n_latent"] = blocks if fcr_like else int(adata.obsm["z_true"].shape[1])
    return args


def _chosen(recipe_args: Mapping[str, Mapping[str, Any]] | None,
            baseline_args: Mapping[str, Mapping[str, Any]] | Sequence[str] | None) -> dict[str, tuple[type, dict]]:
    """Name -> (class, arguments) of the recipes, then the baselines, to run; unknown names are refused."""
    from fcrkit.models.baselines import baselines

    available, references = recipes(), baselines()
    chosen_recipes = dict(recipe_args) if recipe_args is not None else {name: {} for name in sorted(available)}
    if baseline_args is None:
        baseline_args = {name: {} for name in references}
    elif not isinstance(baseline_args, Mapping):
        baseline_args = {name: {} for name in baseline_args}
    out = {}
    for kind, names, known in (("recipe", chosen_recipes, available), ("baseline", baseline_args, references)):
        for name, args in names.items():
            if name not in known:
                raise ConfigError(f"unknown {kind} {name!r}.{did_you_mean(name, known)} {kind.capitalize()}s: "
                                  f"{listing(known)}.")
            out[name] = (known[name], dict(args))
    return out


def run_benchmark(
    adata: AnnData,
    setup: Mapping[str, Any],
    recipe_args: Mapping[str, Mapping[str, Any]] | None = None,
    *,
    hold_out: Sequence[HoldOut] = (),
    splits: Sequence[Split] | None = None,
    baselines: Mapping[str, Mapping[str, Any]] | Sequence[str] | None = None,
    train: Mapping[str, Any] | None = None,
    seed: int = 0,
    seeds: Sequence[int] | None = None,
    output: str | os.PathLike | None = None,
    progress: Callable[[str], None] | None = print,
) -> BenchmarkResult:
    """Train every recipe and baseline on each split with each seed; score them all alike.

    Args:
        adata: the data (counts); not modified.
        setup: keyword arguments of :func:`fcrkit.setup_anndata` (``treatment_key`` is required).
        recipe_args: recipe class name -> its arguments (default: every recipe of :mod:`fcrkit.models`).
            Latent sizes default to the true ones of simulated data.
        hold_out: conditions removed from training and predicted from their controls (one split).
        splits: instead of ``hold_out``, the splits of a task (:mod:`fcrkit.tasks`), each run in turn.
        baselines: the baselines to run (names, or name -> arguments; default all four of
            :mod:`fcrkit.models.baselines`; ``[]`` for none).
        train: keyword arguments of ``Model.train`` shared by every recipe (``seed`` is set per run).
        seed: the seed when ``seeds`` is not given.
        seeds: run everything once per seed (weight initialisation and training); the table is the mean
            over splits and seeds, ``sd`` the spread.
        output: folder for the CSV files and ``benchmark.png`` (None: write nothing).
        progress: called with a line per run (None: quiet).

    Returns:
        The :class:`BenchmarkResult` (see the module doc for the columns).
    """
    from fcrkit.data.anndata import setup_anndata

    chosen = _chosen(recipe_args, baselines)
    treatment_key = setup.get("treatment_key")
    if treatment_key is None:
        raise ConfigError("a benchmark needs setup['treatment_key']: the treatment column.")
    if splits is None:
        splits = [Split("; ".join(str(h) for h in hold_out) or "no hold-out", tuple(hold_out))]
    seeds = [seed] if seeds is None else [int(s) for s in seeds]
    runs, per_condition, models = [], [], {}
    shown = (train or {}).get("progress_bar")
    for split in splits:
        train_data = adata[~split.held_out_mask(adata.obs, treatment_key)].copy()
        setup_anndata(train_data, **setup)
        reference = _Reference(train_data, setup)
        conditions = _held_out_conditions(adata, split.hold_out, setup)
        for run_seed in seeds:
            for name, (cls, given) in chosen.items():
                model = cls(train_data, **_recipe_args(cls, given, train_data), seed=run_seed)
                fcrkit_progress.phase(f"{split.name}, seed {run_seed}: training {name}", shown)
                start = time.perf_counter()
                history = model.train(**{**(train or {}), "seed": run_seed})
                seconds = time.perf_counter() - start
                fcrkit_progress.phase(f"{split.name}, seed {run_seed}: scoring {name}", shown)
                found = _predictions(model, conditions, reference, run_seed)
                per_condition += [{"split": split.name, "seed": run_seed, "recipe": name, **row} for row in found]
                row = {"recipe": name, "split": split.name, "seed": run_seed,
                       **_latent_scores(model, train_data, setup, run_seed),
                       **_mean_prediction(found, len(conditions)), "train_s": seconds,
                       "cells_per_s": history.cells_per_second or np.nan, "epochs": len(history)}
                runs.append(row)
                models[name] = model
                if progress is not None:
                    progress(f"{split.name}, seed {run_seed}, {name}: " + ", ".join(
                        f"{k} {v:.3g}" for k, v in row.items() if isinstance(v, float) and np.isfinite(v)))
    run_table = pd.DataFrame(runs)
    scores = run_table.drop(columns=["split", "seed"])
    order = list(dict.fromkeys(scores["recipe"]))
    table = scores.groupby("recipe", sort=False).mean().reindex(order)
    sd = scores.groupby("recipe", sort=False).std(ddof=1).reindex(order)
    result = BenchmarkResult(table, sd, run_table, pd.DataFrame(per_condition), models)
    if output is not None:
        result.files = _write(result, Path(output), [n for n, (c, _) in chosen.items() if not hasattr(c, "build_spec")])
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


class _Reference:
    """What every prediction of one split is scored against: the perturbed training mean and a PCA of the cells."""

    MAX_CELLS = 500  # cells per set in the distribution distances (they are O(n²))

    def __init__(self, train_data: AnnData, setup: Mapping[str, Any]):
        from sklearn.decomposition import PCA

        from fcrkit import metrics
        from fcrkit.data.anndata import get_matrix

        self.layer = setup.get("layer")
        counts = get_matrix(train_data, self.layer)
        treated = train_data.obs[setup["treatment_key"]].astype(str).to_numpy() != str(setup.get("control_value",
                                                                                                   "control"))
        self.perturbed = metrics.mean_log_expression(counts[np.flatnonzero(treated)]) if treated.any() else None
        rows = np.random.default_rng(0).permutation(counts.shape[0])[:3000]
        sample = _dense(metrics.log_normalize(counts[np.sort(rows)]))
        self.pca = PCA(n_components=min(50, *sample.shape), random_state=0).fit(sample)

    def embed(self, counts: Any, seed: int) -> np.ndarray:
        """PCs of the log-normalised cells (at most MAX_CELLS of them, drawn with ``seed``)."""
        from fcrkit import metrics

        rows = np.random.default_rng(seed).permutation(counts.shape[0])[: self.MAX_CELLS]
        return self.pca.transform(_dense(metrics.log_normalize(counts[np.sort(rows)])))


def _dense(matrix: Any) -> np.ndarray:
    return matrix.toarray() if hasattr(matrix, "toarray") else np.asarray(matrix)


def _latent_scores(model: Any, train_data: AnnData, setup: Mapping[str, Any], seed: int) -> dict[str, float]:
    from fcrkit import metrics

    blocks = model.get_latent_representation(as_dict=True)
    if not blocks:  # a baseline
        return {}
    latent = np.hstack(list(blocks.values()))
    scores: dict[str, float] = {}
    if "z_true" in train_data.obsm:
        scores["mcc"] = float(metrics.mcc(train_data.obsm["z_true"], latent, seed=seed).value)
    for key in [*setup.get("covariate_keys", []), setup["treatment_key"]]:
        scores[f"nmi_{key}"] = metrics.cluster_scores(latent, train_data.obs[key].astype(str), seed=seed)["nmi"]
    return scores


def condition_scores(truth: Any, predicted: Any, sampled: Any, controls: Any, perturbed: np.ndarray | None,
                     embed: Callable[[Any], np.ndarray] | None = None) -> dict[str, float]:
    """Every prediction score of one held-out condition (the conventions of ``docs/metrics.md``).

    Args:
        truth: the observed cells of the condition (counts, cells x genes).
        predicted: the prediction (expected counts) from the controls.
        sampled: counts drawn from the predicted distribution (for the DEG overlap and the distances).
        controls: the controls of the condition's covariate value (counts).
        perturbed: the mean-log profile of all perturbed training cells (Systema's reference; None: NaN).
        embed: cells -> the embedding the distances are taken in (None: no distances).

    With ``t``, ``p``, ``c`` the mean-log vectors of ``truth``, ``predicted`` and ``controls`` and the DEGs
    of ``truth`` against ``controls`` (:func:`~fcrkit.metrics.rank_genes`): ``r2_all``, ``r2_top20``,
    ``r2_top50``, ``mse_top20`` (:func:`~fcrkit.metrics.prediction_scores`), ``pearson_delta`` (all genes) and
    ``pearson_delta20`` (top-20 DEGs) against ``c``, ``pearson_delta_pm`` against ``perturbed`` (Systema),
    ``cosine_logfc``, ``rmse`` and ``rmse20``, ``deg_direction20``, ``deg_overlap20`` (the top-20 DEGs of
    ``sampled`` against ``controls``), ``energy_distance`` and ``mmd`` between ``embed(sampled)`` and
    ``embed(truth)``.
    """
    from fcrkit import metrics

    m = metrics.mean_log_expression
    t, p, c = m(truth), m(predicted), m(controls)
    n_genes = len(t)
    degs = metrics.rank_genes(truth, controls, n_genes=n_genes)
    k = min(20, n_genes)
    top = degs[:k]
    base = metrics.prediction_scores(truth, control_counts=controls, pred_mean=p, degs=degs,
                                     top_k=sorted({min(20, n_genes), min(50, n_genes)}), mse_k=k)
    scores = {key: float(value) for key, value in base.items() if key.startswith(("r2_", "mse_"))}
    scores.update({
        "pearson_delta": metrics.pearson_delta(t, p, c), "pearson_delta20": metrics.pearson_delta(t, p, c, top),
        "pearson_delta_pm": metrics.pearson_delta(t, p, perturbed) if perturbed is not None else float("nan"),
        "cosine_logfc": metrics.cosine_logfc(t, p, c), "rmse": metrics.rmse(t, p), "rmse20": metrics.rmse(t, p, top),
        "deg_direction20": metrics.deg_direction(t, p, c, top),
    })
    if sampled is not None:
        scores["deg_overlap20"] = metrics.deg_overlap(degs, metrics.rank_genes(sampled, controls, n_genes=k), k)
        if embed is not None:
            a, b = embed(sampled), embed(truth)
            scores["energy_distance"], scores["mmd"] = metrics.energy_distance(a, b), metrics.mmd(a, b)
    return scores


def _predictions(model: Any, conditions: list[_Condition], reference: _Reference, seed: int) -> list[dict]:
    """Per condition, the scores of the model's prediction from its controls; [] when it cannot predict."""
    from fcrkit import metrics
    from fcrkit.data.anndata import get_matrix

    found, means = [], []
    for condition in conditions:
        try:
            predicted = model.predict(condition.controls, treatment=condition.treatment, seed=seed).X
            sampled = model.predict(condition.controls, treatment=condition.treatment, seed=seed, sample=True).X
        except FcrkitError:  # a model with no treatment-dependent part, or a treatment it never saw
            return []
        ctrl = get_matrix(condition.controls, reference.layer)
        scores = condition_scores(condition.truth, predicted, sampled, ctrl, reference.perturbed,
                                  lambda x: reference.embed(x, seed))
        found.append({"condition": condition.name, **scores})
        means.append(metrics.mean_log_expression(predicted))
    if len(found) > 1:  # PerturBench's rank: is each prediction closest to its own condition?
        true_means = np.stack([metrics.mean_log_expression(c.truth) for c in conditions])
        for row, rank in zip(found, metrics.normalized_rank(true_means, np.stack(means))):
            row["normalized_rank"] = float(rank)
    return found


def _mean_prediction(found: list[Mapping[str, Any]], n_conditions: int) -> dict[str, float]:
    keys = [k for k in (found[0] if found else {}) if k != "condition"]
    if not n_conditions:
        return {}
    if not found:
        return dict.fromkeys(PREDICTION_COLUMNS, float("nan"))
    return {k: float(np.nanmean([f.get(k, np.nan) for f in found])) if any(np.isfinite(f.get(k, np.nan))
            for f in found) else float("nan") for k in keys}


def _write(result: BenchmarkResult, out: Path, baseline_names: Sequence[str]) -> dict[str, Path]:
    from fcrkit.plotting import plot_benchmark

    out.mkdir(parents=True, exist_ok=True)
    files = {"table": out / "benchmark.csv", "sd": out / "benchmark_sd.csv", "runs": out / "benchmark_runs.csv",
             "conditions": out / "benchmark_conditions.csv", "plot": out / "benchmark.png"}
    result.table.to_csv(files["table"])
    result.sd.to_csv(files["sd"])
    result.runs.to_csv(files["runs"], index=False)
    result.conditions.to_csv(files["conditions"], index=False)
    plot_benchmark(result.table, files["plot"], errors=result.sd, baselines=baseline_names)
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
    seeds: tuple[int, ...] | None = None
    task: dict[str, Any] | None = None
    baselines: dict[str, dict[str, Any]] | None = None

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
        sections = ("data", "task", "recipes", "baselines", "train", "output", "seed", "seeds")
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
            hold_out = hold_out or (() if "task" in data else DEFAULT_HOLD_OUT[simulator])
        else:
            data_path, setup, hold_out, n_top = parser.data(table)
        task = _task(parser, parser.table(data, "task", False), hold_out) if "task" in data else None
        chosen = {}
        for name, args in parser.table(data, "recipes", True).items():
            section = f"recipes.{name}"
            if not isinstance(args, Mapping):
                raise parser.error("recipes", name, f"{name} must be a table of its arguments ({{}} for none).")
            recipe, recipe_args, _, _ = parser.model({"recipe": name, **args}, section)
            chosen[recipe] = recipe_args
        references = _baselines(parser, parser.table(data, "baselines", False)) if "baselines" in data else None
        train = parser.train(parser.table(data, "train", False))
        out_dir, _ = parser.output(parser.table(data, "output", output_dir is None), output_dir)
        seed = data.get("seed", 0)
        parser.check_type("", "seed", seed, int)
        seeds = data.get("seeds")
        if seeds is not None and (not isinstance(seeds, list) or not seeds
                                  or not all(isinstance(v, int) and not isinstance(v, bool) for v in seeds)):
            raise parser.error("", "seeds", f"seeds must be a non-empty list of integers, got {seeds!r}.")
        return cls(str(path), simulator, simulator_args, data_path, setup, hold_out, n_top, chosen, train, out_dir,
                   seed, tuple(seeds) if seeds else None, task, references)

    def splits(self, adata: AnnData) -> list[Split]:
        """The splits the config asks for: its [task] built on ``adata``'s labels, or one split of ``hold_out``."""
        if self.task is None:
            return [Split("; ".join(str(h) for h in self.hold_out) or "no hold-out", self.hold_out)]
        args = {k: (list(map(tuple, v)) if k == "pairs" else v) for k, v in self.task.items() if k != "kind"}
        return TASKS[self.task["kind"]](adata.obs, self.setup["treatment_key"],
                                        control_value=self.setup.get("control_value", "control"), **args)

    def load_data(self) -> AnnData:
        """The simulated or read data (the highly variable genes of the cells every split trains on, if asked)."""
        if self.simulator is not None:
            adata, setup = simulated_data(self.simulator, **self.simulator_args)
            if "treatment_features" in setup:  # known only once simulated (this config's own copy of the keys)
                self.setup["treatment_features"] = setup["treatment_features"]
            return adata
        from fcrkit.data.genes import highly_variable_genes
        from fcrkit.workflow import read_data

        assert self.data_path is not None
        adata = read_data(self.data_path)
        if self.n_top_genes is not None and self.n_top_genes < adata.n_vars:
            held = np.zeros(adata.n_obs, dtype=bool)
            for split in self.splits(adata):  # no split's held-out cells choose the genes
                held |= split.held_out_mask(adata.obs, self.setup["treatment_key"])
            genes = highly_variable_genes(adata[~held], self.n_top_genes, layer=self.setup.get("layer"), inplace=False)
            adata = adata[:, genes["highly_variable"].to_numpy()].copy()
        return adata


def _task(parser: _Parser, table: dict[str, Any], hold_out: tuple[HoldOut, ...]) -> dict[str, Any]:
    """The [task] table checked against its builder's arguments (see :mod:`fcrkit.tasks`)."""
    kind = parser.require(table, "kind", "task", f" Name the task: {listing(TASKS)}.")
    if kind not in TASKS:
        raise parser.error("task", "kind", f"kind {kind!r} is not one of {listing(TASKS)}.{did_you_mean(kind, TASKS)}")
    if hold_out:
        raise parser.error("data", "hold_out", "give either [data] hold_out or a [task], not both.")
    params = inspect.signature(TASKS[kind]).parameters
    allowed = [p for p in params if p not in ("obs", "treatment_key", "control_value")]
    parser.check_keys({k: v for k, v in table.items() if k != "kind"}, allowed, "task",
                      noun=f"keys (kind and the arguments of fcrkit.tasks.{kind})")
    if "covariate_key" not in table:
        raise parser.error("task", None, "[task] needs covariate_key: the covariate whose values are held out.")
    return table


def _baselines(parser: _Parser, table: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The [baselines] table: name = its arguments ({} for the defaults)."""
    from fcrkit.models.baselines import baselines

    known = baselines()
    out = {}
    for name, args in table.items():
        if name not in known:
            raise parser.error("baselines", name, f"unknown baseline {name!r}.{did_you_mean(name, known)} "
                               f"Baselines: {listing(known)}.")
        if not isinstance(args, Mapping):
            raise parser.error("baselines", name, f"{name} must be a table of its arguments ({{}} for none).")
        out[name] = dict(args)
    return out
