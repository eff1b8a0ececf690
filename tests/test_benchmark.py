"""``fcrkit benchmark``: several recipes on one split, scored alike; the config file and its errors."""

from __future__ import annotations

import math
import textwrap

import numpy as np
import pandas as pd
import pytest

import fcrkit.cli
from fcrkit.benchmark import BenchmarkConfig, HoldOut, run_benchmark, simulated_data
from fcrkit.errors import ConfigError
from fcrkit.metrics import cluster_scores, mcc, mean_log_expression, prediction_scores

FAST = {"max_epochs": 4, "batch_size": 128, "accelerator": "cpu"}


def test_recipes_are_scored_alike_on_one_split(tmp_path):
    """Every number in the table is reproduced from the returned models by the metric it names."""
    adata, setup = simulated_data("interaction", n_cells=600, n_genes=60, seed=0)
    before = adata.copy()
    result = run_benchmark(adata, setup, {"SCVI": {}, "FCR": {}}, train=FAST, progress=None,
                           hold_out=[HoldOut("covariate", "cov_0", "drug_0")], output=tmp_path / "bench")
    table = result.table
    assert list(table.index) == ["SCVI", "FCR", "no change"]
    obs = adata.obs
    held = (obs["covariate"] == "cov_0") & (obs["treatment"] == "drug_0")
    controls = adata[(obs["covariate"] == "cov_0") & (obs["treatment"] == "control")].copy()
    truth = adata[held].X
    for name in ("SCVI", "FCR"):
        model = result.models[name]
        assert model.adata.n_obs == adata.n_obs - held.sum()  # trained without the held-out condition
        latent = np.hstack(list(model.get_latent_representation().values()))
        assert table.loc[name, "mcc"] == pytest.approx(mcc(model.adata.obsm["z_true"], latent, seed=0).value)
        for key in ("covariate", "treatment"):
            nmi = cluster_scores(latent, model.adata.obs[key].astype(str), seed=0)["nmi"]
            assert table.loc[name, f"nmi_{key}"] == pytest.approx(nmi)
        assert table.loc[name, "epochs"] == 4
    # scVI has no treatment-dependent part: it cannot predict; FCR and the no-change answer can
    assert math.isnan(table.loc["SCVI", "r2_top50"])
    fcr = prediction_scores(truth, result.models["FCR"].predict(controls, treatment="drug_0", seed=0).X, controls.X)
    none = prediction_scores(truth, control_counts=controls.X, pred_mean=mean_log_expression(controls.X))
    for row, scores in (("FCR", fcr), ("no change", none)):
        for key in ("r2_top50", "mse_top20"):
            assert table.loc[row, key] == pytest.approx(scores[key], rel=1e-5), (row, key)
    # the latent sizes default to the true ones of the simulated data
    assert result.models["FCR"].spec.block_dims == {b: adata.obsm[f"z_{b}"].shape[1] for b in ("x", "t", "tx")}
    saved = pd.read_csv(result.files["table"], index_col="recipe")
    pd.testing.assert_frame_equal(saved, table, check_dtype=False)
    assert result.files["plot"].stat().st_size > 10_000
    assert adata.n_obs == before.n_obs and "fcrkit" not in adata.uns  # the caller's data is not modified


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
    assert "BetaVAE" in out and "no change" in out and "held out: covariate=cov_0, treatment=drug_0" in out
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
