"""``fcrkit benchmark``: several recipes on one split, scored alike; the config file and its errors."""

from __future__ import annotations

import math
import re
import textwrap

import numpy as np
import pandas as pd
import pytest

import fcrkit
import fcrkit.cli
from fcrkit import tasks
from fcrkit.benchmark import BenchmarkConfig, HoldOut, condition_scores, run_benchmark, simulated_data
from fcrkit.errors import ConfigError
from fcrkit.metrics import cluster_scores, mcc, prediction_scores

FAST = {"max_epochs": 4, "batch_size": 128, "accelerator": "cpu"}


def test_recipes_and_baselines_are_scored_alike_on_one_split(tmp_path):
    """Every number in the table is reproduced from the returned models by the metric it names."""
    adata, setup = simulated_data("interaction", n_cells=600, n_genes=60, seed=0)
    before = adata.copy()
    result = run_benchmark(adata, setup, {"SCVI": {}, "FCR": {}}, train=FAST, progress=None,
                           hold_out=[HoldOut("covariate", "cov_0", "drug_0"), HoldOut("covariate", "cov_1", "drug_1")],
                           output=tmp_path / "bench")
    table = result.table
    assert list(table.index) == ["SCVI", "FCR", "NoChange", "PerturbedMean", "Additive", "LinearRidge"]
    obs = adata.obs
    held = ((obs["covariate"] == "cov_0") & (obs["treatment"] == "drug_0")) | (
        (obs["covariate"] == "cov_1") & (obs["treatment"] == "drug_1"))
    for name in ("SCVI", "FCR"):
        model = result.models[name]
        assert model.adata.n_obs == adata.n_obs - held.sum()  # trained without the held-out conditions
        latent = np.hstack(list(model.get_latent_representation(as_dict=True).values()))
        assert table.loc[name, "mcc"] == pytest.approx(mcc(model.adata.obsm["z_true"], latent, seed=0).value)
        for key in ("covariate", "treatment"):
            nmi = cluster_scores(latent, model.adata.obs[key].astype(str), seed=0)["nmi"]
            assert table.loc[name, f"nmi_{key}"] == pytest.approx(nmi)
        assert table.loc[name, "epochs"] == 4
    # scVI has no treatment-dependent part: it cannot predict; FCR and the baselines can
    assert math.isnan(table.loc["SCVI", "pearson_delta20"]) and math.isnan(table.loc["SCVI", "r2_top50"])
    assert len(result.conditions) == 2 * 5  # two conditions for each model that predicts
    controls = adata[(obs["covariate"] == "cov_0") & (obs["treatment"] == "control")].copy()
    truth = adata[(obs["covariate"] == "cov_0") & (obs["treatment"] == "drug_0")].X
    m = fcrkit.metrics.mean_log_expression
    for row in ("FCR", "NoChange"):
        rows = result.conditions[result.conditions["recipe"] == row]
        assert table.loc[row, "rmse"] == pytest.approx(rows["rmse"].mean())  # the table averages the conditions
        pred = result.models[row].predict(controls, treatment="drug_0", seed=0).X
        first = rows.iloc[0]
        assert first["rmse"] == pytest.approx(fcrkit.metrics.rmse(m(truth), m(pred)), rel=1e-5)
        for key in ("r2_top50", "mse_top20"):
            expected = prediction_scores(truth, control_counts=controls.X, pred_mean=m(pred))[key]
            assert first[key] == pytest.approx(expected, rel=1e-5), (row, key)
    assert math.isnan(table.loc["NoChange", "pearson_delta"])  # no change: no correlation, NaN not 0
    # on a simulator with shared drug effects the additive answer beats no change by a wide margin
    assert table.loc["Additive", "rmse"] < 0.7 * table.loc["NoChange", "rmse"]
    # the latent sizes default to the true ones of the simulated data
    assert result.models["FCR"].spec.block_dims == {b: adata.obsm[f"z_{b}"].shape[1] for b in ("x", "t", "tx")}
    saved = pd.read_csv(result.files["table"], index_col="recipe")
    pd.testing.assert_frame_equal(saved, table, check_dtype=False)
    assert len(result.conditions) == 2 * 5  # two conditions for each model that predicts
    assert result.files["plot"].stat().st_size > 10_000
    assert adata.n_obs == before.n_obs and "fcrkit" not in adata.uns  # the caller's data is not modified


def test_condition_scores_follow_the_metric_definitions():
    rng = np.random.default_rng(0)
    controls = rng.poisson(5, (40, 30))
    truth = rng.poisson(np.r_[np.full(10, 15), np.full(20, 5)], (40, 30))
    m = fcrkit.metrics.mean_log_expression
    perfect = condition_scores(truth, truth, truth, controls, m(controls[:20]), lambda x: x[:, :5].astype(float))
    assert perfect["pearson_delta"] == pytest.approx(1) and perfect["pearson_delta20"] == pytest.approx(1)
    assert perfect["rmse"] == 0
    assert perfect["deg_overlap20"] == 1 and perfect["energy_distance"] == 0 and perfect["deg_direction20"] == 1
    degs = fcrkit.metrics.rank_genes(truth, controls, n_genes=30)[:20]
    half = (m(truth) + m(controls)) / 2
    scores = condition_scores(truth, controls, controls, controls, None)
    assert math.isnan(scores["pearson_delta_pm"]) and "energy_distance" not in scores
    assert scores["rmse20"] == pytest.approx(fcrkit.metrics.rmse(m(truth), m(controls), degs))
    assert scores["rmse20"] == pytest.approx(2 * fcrkit.metrics.rmse(m(truth), half, degs))


def test_seeds_and_task_splits_give_mean_and_sd(tmp_path):
    adata, setup = simulated_data("interaction", n_cells=400, n_genes=30, seed=0)
    splits = tasks.covariate_transfer(adata.obs, "treatment", "covariate", treatment="drug_0", n_pairs=2, folds=True,
                                      min_cells=10)
    result = run_benchmark(adata, setup, {"IVAE": {}}, splits=splits, baselines=["NoChange", "Additive"],
                           train={**FAST, "max_epochs": 2}, seeds=[0, 1], progress=None)
    assert list(result.runs["seed"]) == [0, 0, 0, 1, 1, 1] * 2 and result.runs["split"].nunique() == 2
    for name in ("IVAE", "Additive"):
        runs = result.runs[result.runs["recipe"] == name]
        assert table_value(result.table, name, "rmse") == pytest.approx(runs["rmse"].mean())
        assert table_value(result.sd, name, "rmse") == pytest.approx(runs["rmse"].std(ddof=1))
    assert "±" in result.summary().loc["IVAE", "rmse"]


def table_value(table, row, column):
    return float(table.loc[row, column])


def write(tmp_path, text: str):
    path = tmp_path / "bench.toml"
    path.write_text(textwrap.dedent(text))
    return path


def test_config_file_runs_through_the_cli(tmp_path, capsys):
    path = write(tmp_path, """
        [data]
        simulator = "interaction"
        simulator_args = { n_cells = 500, n_genes = 50 }

        [recipes]
        BetaVAE = { n_latent = 4 }

        [train]
        max_epochs = 2
        accelerator = "cpu"

        [output]
        dir = "out"
    """)
    assert fcrkit.cli.main(["benchmark", str(path)]) == 0
    out = capsys.readouterr().out
    assert "BetaVAE" in out and "NoChange" in out and "held out: covariate=cov_0, treatment=drug_0" in out
    assert (tmp_path / "out" / "benchmark.csv").is_file() and (tmp_path / "out" / "benchmark.png").is_file()


@pytest.mark.parametrize(("line", "expected"), [
    ("BetaVAAE = { n_latent = 4 }", "unknown recipe 'BetaVAAE'. Did you mean 'BetaVAE'?"),
    ("BetaVAE = { n_latnt = 4 }", "unknown key 'n_latnt'. Did you mean 'n_latent'?"),
    ("BetaVAE = 3", "BetaVAE must be a table of its arguments"),
], ids=["unknown-recipe", "unknown-argument", "not-a-table"])
def test_config_errors_name_the_file_and_the_recipe(tmp_path, line, expected):
    path = write(tmp_path, f"""
        [data]
        simulator = "interaction"

        [recipes]
        SCVI = {{}}
        {line}

        [output]
        dir = "out"
    """)
    with pytest.raises(ConfigError) as err:
        BenchmarkConfig.from_toml(path)
    assert str(err.value).startswith(str(path)) and expected in str(err.value)


def test_unknown_simulator_is_named(tmp_path):
    path = write(tmp_path, """
        [data]
        simulator = "interactoin"
        [recipes]
        SCVI = {}
        [output]
        dir = "out"
    """)
    with pytest.raises(ConfigError, match="'interactoin'.*Did you mean 'interaction'"):
        BenchmarkConfig.from_toml(path)


def test_a_task_seeds_and_baselines_from_the_config(tmp_path, capsys):
    path = write(tmp_path, """
        seeds = [0, 1]

        [data]
        simulator = "interaction"
        simulator_args = { n_cells = 400, n_genes = 30 }

        [task]
        kind = "covariate_transfer"
        covariate_key = "covariate"
        treatment = "drug_0"
        folds = true
        min_cells = 10

        [recipes]

        [baselines]
        NoChange = {}
        LinearRidge = { n_components = 2 }

        [output]
        dir = "out"
    """)
    config = BenchmarkConfig.from_toml(path)
    assert config.seeds == (0, 1) and config.baselines == {"NoChange": {}, "LinearRidge": {"n_components": 2}}
    splits = config.splits(config.load_data())
    assert [s.hold_out[0].value for s in splits] == ["cov_0", "cov_1", "cov_2"]
    assert fcrkit.cli.main(["benchmark", str(path)]) == 0
    runs = pd.read_csv(tmp_path / "out" / "benchmark_runs.csv")
    assert len(runs) == 3 * 2 * 2 and set(runs["recipe"]) == {"NoChange", "LinearRidge"}
    assert "LinearRidge" in capsys.readouterr().out


@pytest.mark.parametrize(("section", "expected"), [
    ('[task]\nkind = "covariate_transfr"\ncovariate_key = "covariate"', "Did you mean 'covariate_transfer'?"),
    ('[task]\nkind = "combinations"\ncovariate_key = "covariate"\nfolds = true', "unknown key 'folds'"),
    ("[baselines]\nAdditve = {}", "Did you mean 'Additive'?"),
])
def test_task_and_baseline_errors_name_the_key(tmp_path, section, expected):
    path = tmp_path / "bench.toml"
    path.write_text(f'[data]\nsimulator = "interaction"\n\n[recipes]\n\n{section}\n\n[output]\ndir = "out"\n')
    with pytest.raises(ConfigError, match=re.escape(expected)):
        BenchmarkConfig.from_toml(path)
