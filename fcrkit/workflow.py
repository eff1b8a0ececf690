"""The work behind ``fcrkit fit``, ``fcrkit predict`` and ``fcrkit evaluate``.

``fit`` reads a :class:`~fcrkit.runconfig.RunConfig`, trains and writes a run directory::

    run/
      model/          the model (Model.save): spec, data setup, genes, weights, history
      latents.h5ad    the modelled data with every block's latent in obsm (obs["fcrkit_split"]:
                      "train" or "held_out")
      history.csv     per-epoch losses
      config.toml     the config as given
      run.json        what the run resolved: data file, held-out cells, genes kept, timings

``predict`` and ``evaluate`` take the run directory (or the ``model/`` folder inside it) and an
.h5ad with the model's genes (a superset is narrowed to them, by name).
"""

from __future__ import annotations

import importlib
import json
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
from anndata import AnnData

from fcrkit import progress
from fcrkit.data.anndata import AnnDataSetup, check_unique_genes, get_matrix, setup_anndata, split_treatment
from fcrkit.data.genes import highly_variable_genes
from fcrkit.errors import ConfigError, DataError, FcrkitError, did_you_mean, listing
from fcrkit.runconfig import HoldOut, RunConfig

__all__ = ["FitResult", "RunConfig", "evaluate", "fit", "format_metrics", "load_run_model", "predict"]

MODEL_SUBDIR, RUN_FILE = "model", "run.json"
OUTPUTS = ("latents.h5ad", "history.csv", "config.toml", RUN_FILE, "metrics.csv")
SPLIT = "fcrkit_split"  # obs column of latents.h5ad: "train" or "held_out"


@dataclass
class FitResult:
    """What ``fit`` did: the trained model, the data with latents, and the files written."""

    output_dir: Path
    model: Any
    adata: AnnData
    files: dict[str, Path] = field(default_factory=dict)
    seconds: float = 0.0
    n_train: int = 0
    n_held_out: int = 0


# -- fit -----------------------------------------------------------------------------------------------


def fit(config: RunConfig | str | os.PathLike, *, output_dir: str | os.PathLike | None = None,
        overwrite: bool | None = None) -> FitResult:
    """Train the model a run config describes and write the run directory (see the module doc).

    ``output_dir`` and ``overwrite`` override the config's ``[output]``. The output directory is
    checked (empty, or ``overwrite = true``) before any data is read.
    """
    if not isinstance(config, RunConfig):
        config = RunConfig.from_toml(config, output_dir=output_dir)
    elif output_dir is not None:
        config = replace(config, output_dir=Path(output_dir))
    if overwrite is not None:
        config = replace(config, overwrite=overwrite)
    out = _check_output_dir(config)
    start = time.perf_counter()

    progress.phase(f"reading {str(config.data_path)!r}")
    adata = read_data(config.data_path)
    held = hold_out_mask(adata.obs, config.hold_out, config.setup.get("treatment_key"), config)
    if held.all():
        raise DataError(f"{config.line('data', 'hold_out')}: hold_out selects all {adata.n_obs} cells; nothing "
                        "is left to train on.")
    if config.n_top_genes is not None and config.n_top_genes < adata.n_vars:
        # the training cells choose the genes (Seurat v3's highly variable genes of their counts)
        genes = highly_variable_genes(adata[~held], config.n_top_genes, layer=config.setup.get("layer"), inplace=False)
        adata = adata[:, genes["highly_variable"].to_numpy()].copy()
    train = adata[~held].copy()
    try:
        setup_anndata(train, **config.setup)
    except FcrkitError as err:
        raise type(err)(f"{config.data_path} (set up as [data] of {config.line('data', 'path')} says): "
                        f"{err}") from None
    # a run is reproducible from its run.json: seeds the config leaves open are drawn here and recorded
    seeds = np.random.SeedSequence().generate_state(2)
    if config.model_seed is None:
        config = replace(config, model_seed=int(seeds[0]))
    settings = {"seed": int(seeds[1]), **config.train}
    model = config.build_model(train)
    progress.phase(f"training {type(model).__name__} on {train.n_obs} cells x {train.n_vars} genes",
                   settings.get("progress_bar"))
    model.train(**settings)

    progress.phase(f"writing the run to {str(out)!r}", settings.get("progress_bar"))
    adata, files = _write_run(out, config, model, adata, held, settings["seed"], start)
    seconds = time.perf_counter() - start
    return FitResult(out, model, adata, files, seconds, int(train.n_obs), int(held.sum()))


def _write_run(out: Path, config: RunConfig, model: Any, adata: AnnData, held: np.ndarray, train_seed: int,
               start: float) -> tuple[AnnData, dict[str, Path]]:
    """Write the run directory; returns the data with latents (cells the model cannot encode left out)."""
    out.mkdir(parents=True, exist_ok=True)
    files = {"model": model.save(out / MODEL_SUBDIR, overwrite=config.overwrite)}
    adata.obs[SPLIT] = pd.Categorical(np.where(held, "held_out", "train"), categories=["train", "held_out"])
    adata.uns["fcrkit"] = model.setup.to_dict()
    known = known_cells(model.setup, adata.obs)  # held-out cells of a label never trained on have no latent
    if not known.all():
        adata = adata[known].copy()
    adata.obsm.update(model.get_latent_representation(adata, as_dict=True))
    files["latents"] = out / "latents.h5ad"
    adata.write_h5ad(files["latents"])
    files["history"] = out / "history.csv"
    history_frame(model.history.values).to_csv(files["history"], index_label="epoch")
    files["config"] = out / "config.toml"
    files["config"].write_text(config.text or "# (built from a dict, not a file)\n")
    info = {"config": config.source, "data": str(config.data_path), "hold_out": [vars(h) for h in config.hold_out],
            "n_train": int((~held).sum()), "n_held_out": int(held.sum()), "n_genes": int(adata.n_vars),
            "recipe": config.recipe, "model_seed": config.model_seed, "train_seed": train_seed,
            "epochs": len(model.history), "seconds": round(time.perf_counter() - start, 1)}
    files["run"] = out / RUN_FILE
    files["run"].write_text(json.dumps(info, indent=1))
    (out / "metrics.csv").unlink(missing_ok=True)  # a stale evaluation of an earlier run would mislead
    return adata, files


def _check_output_dir(config: RunConfig) -> Path:
    out = config.output_dir
    if out is None:
        raise ConfigError(f"{config.source}: [output] missing required key 'dir' (or pass an output directory).")
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{config.line('output', 'dir')}: [output] dir {str(out)!r} exists and is not a folder.")
    if out.is_dir() and any(out.iterdir()) and not config.overwrite:
        raise ConfigError(f"{config.line('output', 'dir')}: [output] dir {str(out)!r} is not empty; choose another "
                          "folder, empty it, or set overwrite = true in [output] (fcrkit fit --overwrite).")
    return out


def hold_out_mask(obs: pd.DataFrame, hold_out: Sequence[HoldOut], treatment_key: str | None,
                  config: RunConfig | None = None) -> np.ndarray:
    """Cells selected by any of the ``hold_out`` entries (covariate value AND treatment)."""
    mask = np.zeros(len(obs), dtype=bool)
    where = f"[data] hold_out of {config.line('data', 'hold_out')}" if config else "hold_out"
    for h in hold_out:
        assert treatment_key is not None  # the config refuses hold_out without treatment_key
        selected = np.ones(len(obs), dtype=bool)
        for key, value in ((h.key, h.value), (treatment_key, h.treatment)):
            if key not in obs.columns:
                raise DataError(f"{where}: {key!r} is not an obs column of the data.{did_you_mean(key, obs.columns)} "
                                f"Columns: {listing(obs.columns)}.")
            column = obs[key].astype(str).to_numpy()
            if value not in set(column):
                raise DataError(f"{where}: no cell has {key} = {value!r}.{did_you_mean(value, set(column))} "
                                f"Values: {listing(sorted(set(column))[:30])}.")
            selected &= column == value
        if not selected.any():
            raise DataError(f"{where}: no cell has {h}; nothing would be held out.")
        mask |= selected
    return mask


def history_frame(values: Mapping[str, Sequence[float]]) -> pd.DataFrame:
    """The per-epoch losses as a table (epochs from 1; a shorter series is padded with NaN)."""
    frame = pd.DataFrame({k: pd.Series(v, dtype=float) for k, v in values.items()})
    frame.index = pd.RangeIndex(1, len(frame) + 1)
    return frame


# -- loading -------------------------------------------------------------------------------------------


def read_data(path: str | os.PathLike) -> AnnData:
    """Read an .h5ad file; a missing or unreadable file, or duplicated gene names, is a DataError naming it."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data file {str(path)!r} does not exist.")
    try:
        adata = ad.read_h5ad(path)
    except (OSError, KeyError, ValueError, TypeError) as err:  # h5py and anndata raise many kinds
        raise DataError(f"cannot read {str(path)!r} as an .h5ad file: {err}") from None
    check_unique_genes(adata, f"data file {str(path)!r}")  # genes are selected and matched by name
    return adata


def resolve_run(path: str | os.PathLike) -> tuple[Path, dict[str, Any]]:
    """The model folder of a run directory (or a model folder itself) and the run's ``run.json``."""
    path = Path(path)
    model_dir = path / MODEL_SUBDIR if (path / MODEL_SUBDIR / "model.json").is_file() else path
    if not (model_dir / "model.json").is_file():
        raise ConfigError(f"{str(path)!r} is neither an fcrkit run directory (with {MODEL_SUBDIR}/) nor a model "
                          "folder (with model.json); pass the output dir of fcrkit fit.")
    run_file = model_dir.parent / RUN_FILE
    info = json.loads(run_file.read_text()) if run_file.is_file() else {}
    return model_dir, info


def load_run_model(path: str | os.PathLike, adata: AnnData, *, accelerator: str = "cpu") -> tuple[Any, AnnData]:
    """Load a saved model (as its own recipe class) bound to ``adata`` narrowed to the model's genes.

    The data need no ``setup_anndata``: the model's saved setup is used.
    """
    from fcrkit.models import Model

    model_dir, _ = resolve_run(path)
    meta = json.loads((model_dir / "model.json").read_text())
    cls: type = Model
    module, _, name = str(meta.get("class", "")).rpartition(".")
    try:
        found = getattr(importlib.import_module(module), name)
        cls = found if isinstance(found, type) and issubclass(found, Model) else Model
    except (ImportError, AttributeError, ValueError):
        pass  # a class from a plugin that is gone: the generic Model still predicts and encodes
    genes = [str(g) for g in meta.get("var_names", [])]
    names = [str(g) for g in adata.var_names]
    if names != genes and set(genes) <= set(names):
        adata = adata[:, genes].copy()
    return cls.load(model_dir, adata, accelerator=accelerator), adata


def known_cells(setup: AnnDataSetup, obs: pd.DataFrame) -> np.ndarray:
    """Cells whose covariate levels and treatments the model's setup knows (others cannot be encoded)."""
    mask = np.ones(len(obs), dtype=bool)
    for key in setup.covariate_keys:
        if key not in obs.columns:
            raise DataError(f"covariate column {key!r} of the model is not in the data."
                            f"{did_you_mean(key, obs.columns)}")
        mask &= obs[key].astype(str).isin(setup.covariate_levels[key]).to_numpy()
    if setup.treatment_key is not None:
        if setup.treatment_key not in obs.columns:
            raise DataError(f"treatment column {setup.treatment_key!r} of the model is not in the data."
                            f"{did_you_mean(setup.treatment_key, obs.columns)}")
        known = set(setup.treatments) | {setup.control_value}
        labels = obs[setup.treatment_key].astype(str)
        ok = {label: set(split_treatment(label)) <= known for label in labels.unique()}
        mask &= labels.map(ok).to_numpy(dtype=bool)
    return mask


# -- predict -------------------------------------------------------------------------------------------


def predict(model_dir: str | os.PathLike, data_path: str | os.PathLike, treatment: str, dose: float | str = 1.0,
            output: str | os.PathLike | None = None, *, where: Mapping[str, str] | None = None,
            seed: int = 0) -> AnnData:
    """Counterfactual expression of cells of ``data_path`` under ``treatment`` (see Model.predict).

    The cells are the controls (treatment column = the control value), narrowed by ``where``
    (``{obs column: value}``, all must hold); a ``where`` on the treatment column replaces the
    control default, so ``{"sample": "STIM"}`` predicts from treated cells. Writes ``output`` (.h5ad)
    when given and returns the predictions (same cells and genes; X on the data's scale).
    """
    adata = read_data(data_path)
    model, adata = load_run_model(model_dir, adata)
    setup = model.setup
    if setup.treatment_key is None:
        raise ConfigError(f"the model in {str(model_dir)!r} was set up without a treatment; it cannot predict one.")
    where = dict(where or {})
    if setup.treatment_key not in where:
        where[setup.treatment_key] = setup.control_value
    cells = np.ones(adata.n_obs, dtype=bool)
    for key, value in where.items():
        if key not in adata.obs.columns:
            raise DataError(f"--where {key}={value}: {key!r} is not an obs column of {str(data_path)!r}."
                            f"{did_you_mean(key, adata.obs.columns)} Columns: {listing(adata.obs.columns)}.")
        column = adata.obs[key].astype(str).to_numpy()
        if value not in set(column):
            raise DataError(f"--where {key}={value}: no cell of {str(data_path)!r} has {key} = {value!r}."
                            f"{did_you_mean(value, set(column))}")
        cells &= column == str(value)
    if not cells.any():
        raise DataError(f"no cell of {str(data_path)!r} has {listing(f'{k}={v}' for k, v in where.items())} together.")
    unknown = sorted(set(split_treatment(treatment)) - set(setup.treatments) - {setup.control_value})
    if unknown:
        raise DataError(f"treatment {treatment!r}: {listing(unknown)} not seen in training."
                        f"{did_you_mean(unknown[0], setup.treatments)} "
                        f"Known treatments: {listing(setup.treatments)}.")
    result = model.predict(adata[cells].copy(), treatment=treatment, dose=dose, seed=seed)
    if output is not None:
        Path(output).parent.mkdir(parents=True, exist_ok=True)
        result.write_h5ad(output)
    return result


# -- evaluate ------------------------------------------------------------------------------------------


def evaluate(model_dir: str | os.PathLike, data_path: str | os.PathLike, output: str | os.PathLike | None = None,
             *, seed: int = 0, min_cells: int = 2) -> pd.DataFrame:
    """Score a trained model on ``data_path``; returns (and writes to ``output``) a tidy metrics table.

    Columns ``metric, block, target, value, split``:

    * ``nmi`` / ``ari`` of k-means clusters of each block (k = number of labels) against each
      covariate and the treatment (``split`` = ``all``: every cell whose labels the model knows);
    * with true latents in ``obsm`` (the simulators' ``z_true`` and ``z_<block>``): ``mcc`` of each
      true block from one square match against all learned blocks (``block`` = ``all``), and
      ``block_r2_linear`` (held-out linear R² of each true block from each learned block);
    * for a count model that can predict a treatment: for every treated condition (covariates x
      treatment) with at least ``min_cells`` treated and control cells, the scores of
      :func:`fcrkit.metrics.prediction_scores` of the prediction from that condition's controls
      (``prediction_<score>``) and of the no-change baseline, the controls' own mean
      (``no_change_<score>``) and, with one covariate, of the additive baseline (the controls shifted
      by the treatment's mean effect in the other covariate levels, ``additive_<score>``); ``target``
      names the condition, ``split`` says ``held_out`` (held out by the run's config) or ``train``.
    """
    from fcrkit import metrics

    adata = read_data(data_path)
    model, adata = load_run_model(model_dir, adata)
    _, info = resolve_run(model_dir)
    setup = model.setup
    adata = adata[known_cells(setup, adata.obs)].copy()
    if adata.n_obs < 2:
        raise DataError(f"{str(data_path)!r} has fewer than 2 cells with labels the model knows.")
    progress.phase(f"evaluating on {adata.n_obs} cells: encoding")
    latents = model.get_latent_representation(adata, as_dict=True)
    blocks = {name: latents[model.spec.obsm_key(name)] for name in model.spec.cell_block_dims}  # per-cell blocks
    rows: list[dict[str, Any]] = []

    keys = [*setup.covariate_keys, *([setup.treatment_key] if setup.treatment_key else [])]
    labels = {k: adata.obs[k].astype(str).to_numpy() for k in keys if adata.obs[k].nunique() > 1}
    if labels:
        progress.phase("evaluating: clustering scores of each block")
        table = metrics.block_cluster_scores(blocks, labels, seed=seed)
        for block, row in table.iterrows():
            for column, value in row.items():
                metric, target = str(column).split("_", 1)
                rows.append(_row(metric, block, target, value))

    true = {k: np.asarray(v) for k, v in adata.obsm.items() if k.startswith("z_") and k != "z_true"}
    if not true and "z_true" in adata.obsm:
        true = {"z_true": np.asarray(adata.obsm["z_true"])}
    if true:
        progress.phase("evaluating: identifiability against the true latents")
        for target, value in metrics.block_mcc(true, np.hstack(list(blocks.values())), seed=seed).items():
            rows.append(_row("mcc", "all", target, value))
        r2 = metrics.block_r2(true, blocks, seed=seed)
        for target, row in r2.iterrows():
            for block, value in row.items():
                rows.append(_row("block_r2_linear", block, target, value))

    can_predict = setup.treatment_key is not None and any("t" in b.prior.conditions for b in model.spec.blocks)
    if can_predict and model.module.likelihood.input_kind == "counts":
        held = {(h["key"], str(h["value"]), str(h["treatment"])) for h in info.get("hold_out", [])}
        progress.phase("evaluating: predictions of every treated condition from its controls")
        rows += _prediction_rows(model, adata, held, seed, min_cells)
    frame = pd.DataFrame(rows, columns=["metric", "block", "target", "value", "split"])
    if output is not None:
        Path(output).parent.mkdir(parents=True, exist_ok=True)
        frame.to_csv(output, index=False)
    return frame


def _row(metric: str, block: str, target: str, value: Any, split: str = "all") -> dict[str, Any]:
    return {"metric": metric, "block": str(block), "target": str(target), "value": float(value), "split": split}


def _prediction_rows(model: Any, adata: AnnData, held: set[tuple[str, str, str]], seed: int,
                     min_cells: int) -> list[dict[str, Any]]:
    """Prediction and no-change scores of every treated condition with enough cells."""
    from fcrkit.metrics import additive_baseline, mean_log_expression, prediction_scores

    setup = model.setup
    n_genes = adata.n_vars
    top_k = tuple(k for k in (20, 50) if k <= n_genes) or (n_genes,)
    mse_k = min(20, n_genes)
    rows = []
    for target, split, treated, control, label, dose, others in _conditions(setup, adata.obs, held):
        if treated.sum() < min_cells or control.sum() < min_cells:
            continue
        controls = adata[control].copy()
        predicted = model.predict(controls, treatment=label, dose=dose, seed=seed)
        truth, ctrl = get_matrix(adata[treated], setup.layer), get_matrix(controls, setup.layer)
        scores = prediction_scores(truth, predicted.X, ctrl, top_k=top_k, mse_k=mse_k)
        baseline = prediction_scores(truth, control_counts=ctrl, pred_mean=mean_log_expression(ctrl),
                                     top_k=top_k, mse_k=mse_k)
        found_all = [(scores, "prediction"), (baseline, "no_change")]
        pairs = [(get_matrix(adata[t], setup.layer), get_matrix(adata[c], setup.layer)) for t, c in others
                 if t.sum() >= min_cells and c.sum() >= min_cells]
        if pairs:
            additive = additive_baseline(ctrl, pairs)
            found_all.append((prediction_scores(truth, control_counts=ctrl, pred_mean=additive, top_k=top_k,
                                                mse_k=mse_k), "additive"))
        for found, prefix in found_all:
            for metric, value in found.items():
                if metric.startswith(("r2", "mse", "delta")):
                    rows.append(_row(f"{prefix}_{metric}", "all", target, value, split))
        rows.append(_row("n_cells_true", "all", target, int(treated.sum()), split))
    return rows


def _conditions(setup: AnnDataSetup, obs: pd.DataFrame, held: set[tuple[str, str, str]]) -> list[tuple]:
    """``(target, split, treated, control, treatment, dose, others)`` of each treated condition.

    The conditions are the (covariates, treatment[, dose]) combinations; a held-out selection on a
    column that is not a covariate is added as a condition of its own. ``treated`` and ``control``
    are cell masks; ``others`` the (treated, control) masks of the same treatment in the other levels
    of a single covariate, for the additive baseline (empty with several covariates).
    """
    treatment = obs[setup.treatment_key].astype(str).to_numpy()
    is_control = treatment == setup.control_value
    covs = {k: obs[k].astype(str).to_numpy() for k in setup.covariate_keys}
    doses = obs[setup.dose_key].astype(str).to_numpy() if setup.dose_key else None
    columns = [*covs.values(), treatment] + ([doses] if doses is not None else [])
    frame = pd.DataFrame({f"k{i}": c for i, c in enumerate(columns)})
    out = []
    for key, index in frame.groupby(list(frame.columns), sort=True).indices.items():
        key = key if isinstance(key, tuple) else (key,)
        values, label = dict(zip(covs, key[: len(covs)])), key[len(covs)]
        if label == setup.control_value:
            continue
        treated = np.zeros(len(obs), dtype=bool)
        treated[index] = True
        control = is_control.copy()
        for k, v in values.items():
            control &= covs[k] == v
        parts = [f"{k}={v}" for k, v in values.items()] + [f"{setup.treatment_key}={label}"]
        if doses is not None:
            parts.append(f"{setup.dose_key}={key[-1]}")
        split = "held_out" if any((k, v, label) in held for k, v in values.items()) else "train"
        others = []
        if len(covs) == 1:
            (name, column), = covs.items()
            same = (treatment == label) & (doses == key[-1] if doses is not None else True)
            others = [(same & (column == level), is_control & (column == level))
                      for level in np.unique(column) if level != values[name]]
        dose = _number(key[-1]) if doses is not None else 1.0
        out.append((", ".join(parts), split, treated, control, label, dose, others))
    for key, value, label in sorted(held):
        if key in covs or key not in obs.columns:
            continue
        column = obs[key].astype(str).to_numpy() == value
        out.append((f"{key}={value}, {setup.treatment_key}={label}", "held_out", column & (treatment == label),
                    column & is_control, label, 1.0, []))
    return out


def _number(value: Any) -> float | str:
    try:
        return float(value)
    except (TypeError, ValueError):
        return str(value)  # "1.0+0.5": one dose per part of a combination


def format_metrics(frame: pd.DataFrame) -> str:
    """The metrics of :func:`evaluate` as readable tables (clustering, identifiability, prediction)."""
    parts = []
    cluster = frame[frame.metric.isin(["nmi", "ari"])]
    if len(cluster):
        table = cluster.pivot_table(index="block", columns=["metric", "target"], values="value", sort=False)
        table.columns = [f"{m} {t}" for m, t in table.columns]
        parts.append("Blocks clustered (k-means) against the labels:\n" + table.to_string(float_format="{:.3f}".format))
    ident = frame[frame.metric.isin(["mcc", "block_r2_linear"])]
    if len(ident):
        table = ident.pivot_table(index="target", columns=["metric", "block"], values="value", sort=False)
        table.columns = [f"{m} {b}" for m, b in table.columns]
        parts.append("Recovery of the true latents (rows: true block):\n"
                     + table.to_string(float_format="{:.3f}".format))
    pred = frame[frame.metric.str.startswith(("prediction_", "no_change_", "additive_"))]
    if len(pred):
        wanted = [m for m in ("prediction_r2_all", "no_change_r2_all", "additive_r2_all", "prediction_r2_top50",
                              "no_change_r2_top50", "additive_r2_top50", "prediction_delta_pearson")
                  if m in set(pred.metric)]
        table = pred[pred.metric.isin(wanted)].pivot_table(index=["split", "target"], columns="metric",
                                                           values="value", sort=False)[wanted]
        table.columns = [c.replace("prediction_", "pred ").replace("no_change_", "no-change ")
                         .replace("additive_", "additive ") for c in table.columns]
        parts.append("Prediction from each condition's controls (R² of log mean expression; no-change = the "
                     "controls themselves; additive = the controls plus the mean effect in the other levels):\n"
                     + table.sort_index().to_string(float_format="{:.3f}".format))
    return "\n\n".join(parts) if parts else "(no metrics)"
