"""Tests of ``fcrkit fit / predict / evaluate`` (fcrkit.workflow, fcrkit.runconfig, fcrkit.cli).

(a) fit -> predict -> evaluate end to end on a small simulated h5ad, through Python and the CLI;
(b) every config mistake fails with file, line, section and key, before any data is read or any
training starts; (c) the Kang example config end to end (skipped without ../shared/data).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest

import fcrkit
import fcrkit.cli
from fcrkit import workflow
from fcrkit.errors import ConfigError, DataError
from fcrkit.models import Model
from fcrkit.runconfig import RunConfig, _find_line

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
HELD = {"key": "covariate", "value": "cov_0", "treatment": "drug_1"}

CONFIG = """\
# a small FCR run on the interaction simulator
[data]
path = "sim.h5ad"
treatment_key = "treatment"
covariate_keys = ["covariate"]
hold_out = { key = "covariate", value = "cov_0", treatment = "drug_1" }

[model]
recipe = "FCR"
likelihood = "nb"
n_latent = { x = 2, t = 2, tx = 3 }
n_hidden = 32
seed = 0

[train]
max_epochs = 3
batch_size = 128
seed = 0
accelerator = "cpu"
progress_bar = false

[output]
dir = "run"
"""


@pytest.fixture(scope="module")
def sim_path(tmp_path_factory) -> Path:
    """600 simulated cells x 60 genes with true blocks in obsm, written as sim.h5ad."""
    folder = tmp_path_factory.mktemp("sim")
    adata = fcrkit.simulate.interaction(n_cells=600, n_genes=60, seed=0)
    adata.write_h5ad(folder / "sim.h5ad")
    return folder / "sim.h5ad"


def write_config(folder: Path, sim_path: Path, text: str = CONFIG) -> Path:
    """The config in ``folder``, its data path pointing at the simulated file."""
    path = folder / "run.toml"
    path.write_text(text.replace('path = "sim.h5ad"', f'path = "{sim_path.as_posix()}"'))
    return path


# -- (a) end to end ----------------------------------------------------------------------------------


def test_fit_predict_evaluate_end_to_end(tmp_path, sim_path):
    config = write_config(tmp_path, sim_path)
    result = workflow.fit(config)
    out = tmp_path / "run"
    assert result.output_dir == out
    assert {p.name for p in out.iterdir()} == {"model", "latents.h5ad", "history.csv", "config.toml", "run.json"}
    assert (out / "config.toml").read_text() == config.read_text()

    data = ad.read_h5ad(sim_path)
    held = ((data.obs["covariate"] == "cov_0") & (data.obs["treatment"] == "drug_1")).to_numpy()
    assert result.n_held_out == held.sum() > 0 and result.n_train == data.n_obs - held.sum()
    run = json.loads((out / "run.json").read_text())
    assert run["hold_out"] == [HELD] and run["n_held_out"] == held.sum() and run["epochs"] == 3

    latents = ad.read_h5ad(out / "latents.h5ad")  # every cell, held-out ones included, with each block
    assert latents.n_obs == data.n_obs and list(latents.obs_names) == list(data.obs_names)
    assert {k: v.shape for k, v in latents.obsm.items() if k.startswith("X_fcr")} == {
        "X_fcr_x": (600, 2), "X_fcr_t": (600, 2), "X_fcr_tx": (600, 3)}
    assert (latents.obs[workflow.SPLIT] == "held_out").to_numpy().tolist() == held.tolist()
    assert np.isfinite(latents.obsm["X_fcr_tx"]).all()
    assert latents.uns["fcrkit"]["treatment_key"] == "treatment"

    history = pd.read_csv(out / "history.csv", index_col="epoch")
    assert list(history.index) == [1, 2, 3] and {"loss", "elbo"} <= set(history.columns)
    assert np.isfinite(history["loss"]).all()

    model, _ = workflow.load_run_model(out, data)  # loads as its recipe, no setup_anndata needed
    assert isinstance(model, fcrkit.models.FCR) and model.is_trained
    np.testing.assert_allclose(model.get_latent_representation(data)["X_fcr_x"], latents.obsm["X_fcr_x"], atol=1e-5)

    # predict: the controls of cov_0 under drug_1 (the held-out condition)
    pred = workflow.predict(out, sim_path, "drug_1", output=tmp_path / "pred.h5ad", where={"covariate": "cov_0"})
    controls = (data.obs["covariate"] == "cov_0") & (data.obs["treatment"] == "control")
    written = ad.read_h5ad(tmp_path / "pred.h5ad")
    assert written.shape == pred.shape == (controls.sum(), data.n_vars)
    assert list(written.obs_names) == list(data.obs_names[controls.to_numpy()])
    assert list(written.var_names) == list(data.var_names)
    assert (written.obs["treatment"] == "drug_1").all() and (written.X >= 0).all()
    everyone = workflow.predict(out, sim_path, "drug_0")  # default: all controls
    assert everyone.n_obs == (data.obs["treatment"] == "control").sum()

    # evaluate: tidy metrics, written and returned
    frame = workflow.evaluate(out, sim_path, tmp_path / "metrics.csv")
    metrics = pd.read_csv(tmp_path / "metrics.csv")
    assert list(metrics.columns) == ["metric", "block", "target", "value", "split"]
    nmi = metrics[metrics.metric == "nmi"]
    assert set(nmi.block) == {"x", "t", "tx"} and set(nmi.target) == {"covariate", "treatment"}
    assert nmi.value.between(0, 1).all()
    assert set(metrics[metrics.metric == "mcc"].target) == {"z_x", "z_t", "z_tx", "all"}  # true latents found
    assert len(metrics[metrics.metric == "block_r2_linear"]) == 9
    held_rows = metrics[(metrics.split == "held_out")]
    assert set(held_rows.target) == {"covariate=cov_0, treatment=drug_1"}
    assert {"prediction_r2_top50", "no_change_r2_top50", "additive_r2_top50"} <= set(held_rows.metric)
    assert len(metrics[metrics.metric == "prediction_r2_all"]) == 9  # 3 covariates x 3 drugs
    assert np.isfinite(metrics.value).all()
    assert len(frame) == len(metrics)
    text = workflow.format_metrics(frame)
    assert "nmi covariate" in text and "held_out" in text


def test_cli_fit_predict_evaluate(tmp_path, sim_path, capsys):
    text = CONFIG.replace("max_epochs = 3", "max_epochs = 1").replace("[model]", "n_top_genes = 40\n\n[model]")
    text = text.replace("seed = 0\n", "")  # no seeds: drawn by fit and recorded in run.json
    config = write_config(tmp_path, sim_path, text)
    out = tmp_path / "elsewhere"
    assert fcrkit.cli.main(["fit", str(config), "--output", str(out)]) == 0  # --output overrides [output] dir
    assert (out / "model" / "model.json").is_file() and not (tmp_path / "run").exists()
    assert "trained 1 epochs" in capsys.readouterr().out
    run = json.loads((out / "run.json").read_text())
    assert isinstance(run["model_seed"], int) and isinstance(run["train_seed"], int)
    assert fcrkit.cli.main(["fit", str(config), "--output", str(out)]) == 2  # not empty now
    assert "is not empty" in capsys.readouterr().err
    assert fcrkit.cli.main(["fit", str(config), "--output", str(out), "--overwrite"]) == 0
    capsys.readouterr()

    pred = tmp_path / "pred.h5ad"
    assert fcrkit.cli.main(["predict", str(out / "model"), str(sim_path), "--treatment", "drug_2",
                            "--where", "covariate=cov_1", "--output", str(pred)]) == 0
    data, predicted = ad.read_h5ad(sim_path), ad.read_h5ad(pred)
    assert predicted.n_obs == ((data.obs["covariate"] == "cov_1") & (data.obs["treatment"] == "control")).sum()
    genes = ad.read_h5ad(out / "latents.h5ad").var_names  # the 40 most variable of the 60: data narrowed by name
    assert predicted.n_vars == len(genes) == 40 and list(predicted.var_names) == list(genes)
    assert fcrkit.cli.main(["evaluate", str(out), str(sim_path)]) == 0
    printed = capsys.readouterr().out
    assert "Blocks clustered" in printed and "Prediction from each condition's controls" in printed
    assert (out / "metrics.csv").is_file()  # default: beside the model

    assert fcrkit.cli.main(["predict", str(out), str(sim_path), "--treatment", "drug_9", "--output", str(pred)]) == 2
    assert "'drug_9'" in capsys.readouterr().err
    assert fcrkit.cli.main(["predict", str(out), str(sim_path), "--treatment", "drug_1", "--where", "celltype=B",
                            "--output", str(pred)]) == 2
    assert "'celltype' is not an obs column" in capsys.readouterr().err


def test_a_spec_instead_of_a_recipe(tmp_path, sim_path):
    spec = """
[model.spec]
name = "vae"
likelihood = "nb"
[[model.spec.blocks]]
name = "z"
dim = 4
encoder = { name = "mlp", n_hidden = 16 }
"""
    text = CONFIG.replace('recipe = "FCR"\nlikelihood = "nb"\nn_latent = { x = 2, t = 2, tx = 3 }\nn_hidden = 32\n', "")
    text = text.replace("[train]", spec + "\n[train]").replace("max_epochs = 3", "max_epochs = 1")
    result = workflow.fit(write_config(tmp_path, sim_path, text))
    assert type(result.model) is Model and result.adata.obsm["X_vae"].shape == (600, 4)
    frame = workflow.evaluate(result.output_dir, sim_path)
    assert set(frame.metric) == {"nmi", "ari", "mcc", "block_r2_linear"}  # a standard-normal prior cannot predict


# -- (b) config errors, all before any data is read --------------------------------------------------


@pytest.fixture
def no_work(monkeypatch):
    """Fail the test if fit reads data or trains: config errors must come first."""
    def fail(*args, **kwargs):
        raise AssertionError("reached data reading or training before the config error")

    monkeypatch.setattr(workflow, "read_data", fail)
    monkeypatch.setattr(Model, "train", fail)


def _line(text: str, needle: str) -> int:
    return next(i for i, line in enumerate(text.splitlines(), start=1) if needle in line)


@pytest.mark.parametrize(("old", "new", "expected"), [
    ("treatment_key =", "treatmnt_key =", ["[data]", "unknown key 'treatmnt_key'", "Did you mean 'treatment_key'"]),
    ("n_hidden = 32", "n_hiden = 32", ["[model]", "unknown key 'n_hiden'", "Did you mean 'n_hidden'", "'n_layers'"]),
    ("max_epochs = 3", "max_epoch = 3", ["[train]", "unknown key 'max_epoch'", "Did you mean 'max_epochs'"]),
    ('dir = "run"', 'dirr = "run"', ["[output]", "unknown key 'dirr'", "Did you mean 'dir'"]),
    ('treatment = "drug_1" }', 'treatmnt = "drug_1" }', ["[data.hold_out]", "unknown key 'treatmnt'"]),
    ('recipe = "FCR"', 'recipe = "FRC"',
     ["unknown recipe 'FRC'", "Did you mean 'FCR'", "Available recipes: 'BetaVAE', 'CPA', 'ContrastiveVI', 'FCR'"]),
    ('likelihood = "nb"', 'likelihood = "nbb"', ["[model]", "unknown likelihood 'nbb'", "Did you mean 'nb'"]),
    ("n_latent = { x = 2, t = 2, tx = 3 }", "n_latent = { x = 2, t = 2, txx = 3 }", ["[model]", "n_latent", "'tx'"]),
    ("n_hidden = 32", 'n_hidden = "32"', ["[model] n_hidden must be an integer", "'32' (string)"]),
    ("max_epochs = 3", "max_epochs = 0", ["[train]", "max_epochs=0 must be a positive integer"]),
    ("batch_size = 128", "batch_size = 12.5", ["[train] batch_size must be an integer"]),
    ('accelerator = "cpu"', 'accelerator = "tpu"', ["[train]", "'tpu'"]),
    ("progress_bar = false", 'progress_bar = "no"', ["[train] progress_bar must be true or false"]),
    ('path = "sim.h5ad"', 'path = "missing.h5ad"', ["[data]", "missing.h5ad", "does not exist"]),
    ("[output]", "[outputs]", ["unknown section or key 'outputs'", "Did you mean 'output'"]),
])
def test_config_errors_name_key_section_file_and_line(tmp_path, sim_path, no_work, old, new, expected):
    assert old in CONFIG
    path = write_config(tmp_path, sim_path, CONFIG.replace(old, new, 1))
    start = time.perf_counter()
    with pytest.raises(ConfigError) as err:
        workflow.fit(path)
    message = str(err.value)
    assert message.startswith(f"{path}:{_line(path.read_text(), new.split(' =')[0].strip('[]'))}: "), message
    for part in expected:
        assert part in message, message
    assert time.perf_counter() - start < 5  # a typo fails at once, not after training


def test_missing_keys_and_sections(tmp_path, sim_path, no_work):
    cases = {
        CONFIG.replace('path = "sim.h5ad"\n', ""): ("[data] missing required key 'path'", "[data]"),
        CONFIG.replace('recipe = "FCR"\n', ""): ("[model] missing required key 'recipe'", "[model]"),
        CONFIG.replace('dir = "run"\n', ""): ("[output] missing required key 'dir'", "[output]"),
        CONFIG.replace('value = "cov_0", ', ""): ("[data.hold_out] missing required key 'value'", "hold_out ="),
    }
    for text, (expected, line) in cases.items():
        path = write_config(tmp_path, sim_path, text)
        with pytest.raises(ConfigError, match=r"missing required key") as err:
            workflow.fit(path)
        assert str(err.value).startswith(f"{path}:{_line(path.read_text(), line)}: {expected}"), str(err.value)
    path = tmp_path / "nomodel.toml"
    path.write_text(f'[data]\npath = "{sim_path.as_posix()}"\n[output]\ndir = "x"\n')
    with pytest.raises(ConfigError, match=r"missing required section \[model\]"):
        workflow.fit(path)


def test_spec_errors_name_the_line(tmp_path, sim_path, no_work):
    text = CONFIG.replace('recipe = "FCR"\nlikelihood = "nb"\nn_latent = { x = 2, t = 2, tx = 3 }\nn_hidden = 32\n', "")
    text = text.replace("[train]", '[model.spec]\nname = "v"\n[[model.spec.blocks]]\nname = "z"\ndim = 2\n'
                        'encodr = "mlp"\n\n[train]')
    path = write_config(tmp_path, sim_path, text)
    with pytest.raises(ConfigError, match="unknown key 'encodr'") as err:
        workflow.fit(path)
    assert str(err.value).startswith(f"{path}:{_line(text, 'encodr')}: [model.spec]")
    spec_file = tmp_path / "spec.toml"
    spec_file.write_text('name = "v"\nlikelihood = "nb"\n[[blocks]]\nname = "z"\ndim = 2\nprior = "uniform"\n')
    path.write_text(CONFIG.replace('path = "sim.h5ad"', f'path = "{sim_path.as_posix()}"').replace(
        'recipe = "FCR"\nlikelihood = "nb"\nn_latent = { x = 2, t = 2, tx = 3 }\nn_hidden = 32\n',
        'spec = "spec.toml"\n'))
    with pytest.raises(ConfigError, match="unknown prior 'uniform'") as err:  # the spec file, relative to the config
        workflow.fit(path)
    assert str(err.value).startswith(f"{path}:") and "block 'z' prior" in str(err.value)


def test_non_empty_output_dir_is_refused_before_reading_data(tmp_path, sim_path, no_work):
    path = write_config(tmp_path, sim_path)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "precious.txt").write_text("keep me")
    with pytest.raises(ConfigError, match=r"\[output\] dir .*run' is not empty.*overwrite = true") as err:
        workflow.fit(path)
    assert str(err.value).startswith(f"{path}:{_line(CONFIG, 'dir =')}:")
    assert (tmp_path / "run" / "precious.txt").read_text() == "keep me"


def test_data_errors_after_reading_name_the_config(tmp_path, sim_path, monkeypatch):
    monkeypatch.setattr(Model, "train", lambda *a, **k: pytest.fail("trained despite bad data settings"))
    path = write_config(tmp_path, sim_path, CONFIG.replace('value = "cov_0"', 'value = "cov_7"'))
    with pytest.raises(DataError, match=r"hold_out of .*run.toml:6: no cell has covariate = 'cov_7'"):
        workflow.fit(path)
    path = write_config(tmp_path, sim_path, CONFIG.replace('["covariate"]', '["cell_type"]'))
    with pytest.raises(DataError, match=r"set up as \[data\] of .*run.toml:\d+ says.*'cell_type' is not a column"):
        workflow.fit(path)


def test_find_line_handles_tables_inline_tables_and_dotted_keys():
    text = '[data]\npath = "a"\nhold_out = { key = "k", value = "v" }\n[model]\nrecipe = "FCR"\nmodel.seed = 1\n'
    assert _find_line(text, "data", "path") == 2
    assert _find_line(text, "data.hold_out", "value") == 3
    assert _find_line(text, "model", "recipe") == 5
    assert _find_line(text, "model", None) == 4
    assert _find_line(text, "train", "lr") is None
    config = RunConfig.from_dict({"data": {"path": __file__}, "model": {"recipe": "scvi", "n_latent": 3},
                                  "output": {"dir": "x"}}, base_dir="/tmp")
    assert config.recipe == "SCVI" and config.output_dir == Path("/tmp/x") and config.train == {}
    two = [{"key": "c", "value": "a", "treatment": "s"}, {"key": "c", "value": 2, "treatment": "s"}]
    config = RunConfig.from_dict({"data": {"path": __file__, "treatment_key": "t", "hold_out": two},
                                  "model": {"recipe": "FCR"}}, output_dir="y")
    assert [str(h) for h in config.hold_out] == ["c=a, treatment=s", "c=2, treatment=s"]
    with pytest.raises(ConfigError, match=r"hold_out needs treatment_key"):
        RunConfig.from_dict({"data": {"path": __file__, "hold_out": two[0]}, "model": {"recipe": "FCR"}},
                            output_dir="y")


# -- (c) the Kang example ------------------------------------------------------------------------------


def test_kang_example_predicts_the_held_out_cell_type(tmp_path, capsys):
    """examples/kang_fit.toml: FCR, CD14 Mono under STIM held out, 1000 genes, 30 epochs (about a minute).

    Measured (2 shared CPU cores, seed 0): held-out R² top-50 DEGs 0.77 (no change -2.98, additive
    0.46), all genes 0.65 (no change 0.52, additive 0.87); fit 46 s. At this budget FCR beats both
    baselines on the DEGs and the no-change baseline on all genes, not yet the additive one there
    (tests/test_fcr_kang.py trains longer on 2000 genes for that).
    """
    example = EXAMPLES / "kang_fit.toml"
    data = (example.parent / tomllib.loads(example.read_text())["data"]["path"]).resolve()
    if not data.is_file():
        pytest.skip(f"{data} not found: the real data sets live in ../shared/data beside the project")
    start = time.perf_counter()
    assert fcrkit.cli.main(["fit", str(example), "--output", str(tmp_path / "kang")]) == 0
    seconds = time.perf_counter() - start
    metrics = workflow.evaluate(tmp_path / "kang", data)
    held = metrics[metrics.split == "held_out"].set_index("metric")["value"]
    print(f"\nKang fit {seconds:.0f} s; held-out CD14 Mono STIM: R² top-50 {held['prediction_r2_top50']:.3f} "
          f"(no change {held['no_change_r2_top50']:.3f}, additive {held['additive_r2_top50']:.3f}), all genes "
          f"{held['prediction_r2_all']:.3f} (no change {held['no_change_r2_all']:.3f}, additive "
          f"{held['additive_r2_all']:.3f})")
    assert metrics[metrics.split == "held_out"].target.unique().tolist() == ["cell_type=CD14 Mono, sample=STIM"]
    assert held["prediction_r2_top50"] > held["no_change_r2_top50"] + 1.0
    assert held["prediction_r2_top50"] > held["additive_r2_top50"]
    assert held["prediction_r2_all"] > held["no_change_r2_all"]
    nmi = metrics[metrics.metric == "nmi"].set_index(["block", "target"])["value"]
    assert nmi["x", "cell_type"] > nmi["t", "cell_type"] and nmi["t", "sample"] > nmi["x", "sample"]
