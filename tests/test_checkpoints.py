"""Checkpoints, exact resume, clean Ctrl-C and run-to-run determinism of training.

The subprocess tests run a small training script in fresh interpreters (one torch thread each): a
run killed with SIGKILL and resumed must end exactly where an uninterrupted run ends, and two fresh
processes with the same seeds must agree bit for bit.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import anndata as ad
import numpy as np
import pytest
import torch

import fcrkit
from fcrkit.errors import ConfigError
from fcrkit.models import FCR, SCVI
from fcrkit.train import TrainingPlan, checkpoint
from fcrkit.train.trainer import Trainer

ROOT = Path(__file__).resolve().parents[1]
FAST = {"batch_size": 64, "seed": 1, "progress_bar": False, "accelerator": "cpu"}  # 270 training cells: 5 steps

# A training run in a fresh interpreter; its settings come as JSON in argv[1].
SCRIPT = textwrap.dedent("""
    import json, os, sys, time
    import numpy as np
    import torch
    torch.set_num_threads(1)
    import fcrkit
    from fcrkit.train import checkpoint

    cfg = json.loads(sys.argv[1])
    adata = fcrkit.simulate.basic(n_cells=300, n_genes=30, seed=0)
    fcrkit.setup_anndata(adata, treatment_key="treatment", covariate_keys=["cell_type"], control_value="control")
    if cfg.get("sleep"):  # slow the run down after each checkpoint so the parent can kill it mid-way
        save = checkpoint.save
        def slow_save(*args, **kwargs):
            path = save(*args, **kwargs)
            time.sleep(cfg["sleep"])
            return path
        checkpoint.save = slow_save
    out = {}
    for kind in cfg["models"]:
        if kind == "fcr":
            model = fcrkit.models.FCR(adata, likelihood="nb", n_latent={"x": 3, "t": 3, "tx": 3}, n_hidden=32, seed=0)
        else:
            model = fcrkit.models.SCVI(adata, likelihood="nb", n_latent=4, n_hidden=32, seed=0)
        history = model.train(cfg["epochs"], batch_size=64, seed=1, progress_bar=False, accelerator="cpu",
                              **cfg.get("train", {}))
        torch.save({k: v.clone() for k, v in model.module.state_dict().items()}, f"{cfg['out']}_{kind}.pt")
        np.savez(f"{cfg['out']}_{kind}.npz", **model.get_latent_representation(as_dict=True))
        out[kind] = {k: list(v) for k, v in history.values.items()}
    with open(f"{cfg['out']}.json", "w") as file:
        json.dump(out, file)
""")


@pytest.fixture
def adata() -> ad.AnnData:
    """300 cells x 30 genes: every training run here takes a fraction of a second per epoch."""
    adata = fcrkit.simulate.basic(n_cells=300, n_genes=30, seed=0)
    fcrkit.setup_anndata(adata, treatment_key="treatment", covariate_keys=["cell_type"], control_value="control")
    return adata


def small_fcr(adata: ad.AnnData) -> FCR:
    return FCR(adata, likelihood="nb", n_latent={"x": 3, "t": 3, "tx": 3}, n_hidden=32, seed=0)


def small_scvi(adata: ad.AnnData, n_latent: int = 4) -> SCVI:
    return SCVI(adata, likelihood="nb", n_latent=n_latent, n_hidden=32, seed=0)


def state_of(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.module.state_dict().items()}


def assert_same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], atol: float = 1e-6) -> None:
    assert a.keys() == b.keys()
    for name, value in a.items():
        assert torch.allclose(value, b[name], atol=atol, rtol=0), f"parameter {name} differs"


def launch(tmp_path: Path, name: str, **cfg) -> subprocess.Popen:
    """Start the training script in a fresh interpreter with one thread."""
    script = tmp_path / "train_script.py"
    if not script.exists():
        script.write_text(SCRIPT)
    cfg["out"] = str(tmp_path / name)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "FCRKIT_DISABLE_PLUGINS": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    return subprocess.Popen([sys.executable, str(script), json.dumps(cfg)], env=env, cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(process: subprocess.Popen, timeout: float = 240) -> None:
    output, _ = process.communicate(timeout=timeout)
    assert process.returncode == 0, output


def checkpoint_epoch(directory: Path) -> int | None:
    payload = checkpoint.load(directory)
    return None if payload is None else payload["state"]["epoch"]


# -- the plan ----------------------------------------------------------------------------------------------
def test_plan_validates_the_checkpoint_settings(tmp_path):
    with pytest.raises(ConfigError, match="checkpoint_every=0"):
        TrainingPlan(checkpoint_dir=tmp_path, checkpoint_every=0)
    with pytest.raises(ConfigError, match="resume=True needs checkpoint_dir"):
        TrainingPlan(resume=True)
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match="is a file"):
        TrainingPlan(checkpoint_dir=tmp_path / "file")


# -- writing -----------------------------------------------------------------------------------------------
def test_checkpoint_is_written_atomically_and_holds_the_epoch(adata, tmp_path, monkeypatch):
    model = small_scvi(adata)
    model.train(3, checkpoint_dir=tmp_path, checkpoint_every=2, **FAST)
    assert os.listdir(tmp_path) == ["checkpoint.pt"]  # no temp file left behind
    payload = checkpoint.load(tmp_path)
    assert payload["format"] == checkpoint.FORMAT
    assert payload["state"]["epoch"] == 3  # every 2nd epoch and at the end
    assert payload["state"]["history"]["values"]["loss"] == model.history["loss"]
    assert_same_state(payload["state"]["module"], state_of(model), atol=0)

    # a write that dies half-way leaves the previous checkpoint intact and no temp file
    def torn_save(obj, file, *args, **kwargs):
        file.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint.torch, "save", torn_save)
    with pytest.raises(OSError, match="disk full"):
        checkpoint.save(tmp_path, payload["identity"], payload["state"])
    monkeypatch.undo()
    assert os.listdir(tmp_path) == ["checkpoint.pt"]
    assert checkpoint.load(tmp_path)["state"]["epoch"] == 3


# -- resuming ------------------------------------------------------------------------------------------------
def test_resume_refuses_a_checkpoint_of_another_run(adata, tmp_path):
    small_scvi(adata).train(1, checkpoint_dir=tmp_path, **FAST)
    with pytest.raises(ConfigError, match=r"batch_size=64 in the checkpoint, 32 here.*resume=False"):
        small_scvi(adata).train(2, checkpoint_dir=tmp_path, resume=True, **{**FAST, "batch_size": 32})
    with pytest.raises(ConfigError, match=r"spec differs in blocks.*parameter .* has shape"):
        small_scvi(adata, n_latent=5).train(2, checkpoint_dir=tmp_path, resume=True, **FAST)
    with pytest.raises(ConfigError, match=r"seed=1 in the checkpoint, 2 here"):
        small_scvi(adata).train(2, checkpoint_dir=tmp_path, resume=True, **{**FAST, "seed": 2})


def test_resume_without_a_checkpoint_starts_afresh_and_a_finished_one_returns_at_once(adata, tmp_path, monkeypatch):
    plain = small_scvi(adata)
    plain.train(2, **FAST)
    fresh = small_scvi(adata)
    fresh.train(2, checkpoint_dir=tmp_path / "new", resume=True, **FAST)  # safe on a first run
    assert_same_state(state_of(fresh), state_of(plain), atol=0)
    assert fresh.history.values == plain.history.values

    def no_step(*args, **kwargs):
        raise AssertionError("a finished checkpoint must not train again")

    monkeypatch.setattr(Trainer, "step", no_step)
    again = small_scvi(adata)
    history = again.train(2, checkpoint_dir=tmp_path / "new", resume=True, **FAST)
    assert history.values == plain.history.values and again.is_trained
    assert_same_state(state_of(again), state_of(plain), atol=0)


# -- Ctrl-C --------------------------------------------------------------------------------------------------
def test_ctrl_c_keeps_the_last_finished_epoch_and_resume_finishes_the_run_exactly(adata, tmp_path, monkeypatch):
    uninterrupted = small_fcr(adata)
    uninterrupted.train(5, **FAST)

    at_epoch_end: list[dict[str, torch.Tensor]] = []  # weights after each epoch's steps
    calls = {"steps": 0}
    step, validation_loss = Trainer.step, Trainer.validation_loss

    def interrupting_step(self, *args, **kwargs):
        calls["steps"] += 1
        if calls["steps"] == 2 * 5 + 3:  # the 3rd step of the 3rd epoch (5 steps an epoch)
            raise KeyboardInterrupt
        return step(self, *args, **kwargs)

    def recording_validation_loss(self, index):
        at_epoch_end.append({k: v.detach().clone() for k, v in self.module.state_dict().items()})
        return validation_loss(self, index)

    monkeypatch.setattr(Trainer, "step", interrupting_step)
    monkeypatch.setattr(Trainer, "validation_loss", recording_validation_loss)
    model = small_fcr(adata)
    with pytest.warns(UserWarning, match=r"interrupted during epoch 3.*after epoch 2.*resume=True"):
        history = model.train(5, checkpoint_dir=tmp_path, **FAST)
    monkeypatch.undo()

    assert history.interrupted and len(history) == 2 and model.is_trained
    assert history.values == {k: v[:2] for k, v in uninterrupted.history.values.items()}
    assert_same_state(state_of(model), at_epoch_end[1], atol=0)  # the end of epoch 2, not mid-epoch 3
    assert checkpoint_epoch(tmp_path) == 2

    resumed = small_fcr(adata)
    history = resumed.train(5, checkpoint_dir=tmp_path, resume=True, **FAST)
    assert not history.interrupted
    assert history.values.keys() == uninterrupted.history.values.keys()
    for key, values in history.values.items():
        np.testing.assert_allclose(values, uninterrupted.history[key], atol=1e-6, err_msg=key)
    assert_same_state(state_of(resumed), state_of(uninterrupted))


def test_early_stopping_state_survives_an_interrupt_and_resume(adata, tmp_path, monkeypatch):
    settings = {**FAST, "early_stopping": True, "patience": 2, "lr": 0.05}  # a large lr: stops after 3 epochs
    uninterrupted = small_scvi(adata)
    uninterrupted.train(40, **settings)
    assert uninterrupted.history.stopped_early and uninterrupted.history.best_epoch == 0

    step, calls = Trainer.step, {"steps": 0}

    def interrupting_step(self, *args, **kwargs):
        calls["steps"] += 1
        if calls["steps"] == 2 * 5 + 1:  # the first step of the 3rd epoch: one epoch waited so far
            raise KeyboardInterrupt
        return step(self, *args, **kwargs)

    monkeypatch.setattr(Trainer, "step", interrupting_step)
    with pytest.warns(UserWarning, match="interrupted"):
        assert len(small_scvi(adata).train(40, checkpoint_dir=tmp_path, checkpoint_every=5, **settings)) == 2
    monkeypatch.undo()
    resumed = small_scvi(adata)
    history = resumed.train(40, checkpoint_dir=tmp_path, resume=True, **settings)
    assert history.stopped_early and history.best_epoch == 0 and len(history) == len(uninterrupted.history)
    assert_same_state(state_of(resumed), state_of(uninterrupted))  # the best epoch's weights, restored


def test_ctrl_c_in_the_first_epoch_leaves_the_model_untrained(adata, monkeypatch):
    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    model = small_scvi(adata)
    before = state_of(model)
    monkeypatch.setattr(Trainer, "step", interrupt)
    with pytest.warns(UserWarning, match="pass checkpoint_dir"):
        history = model.train(3, **FAST)
    assert history.interrupted and len(history) == 0 and not model.is_trained
    assert_same_state(state_of(model), before, atol=0)


# -- fresh processes -------------------------------------------------------------------------------------------
def test_a_run_killed_with_sigkill_resumes_to_the_uninterrupted_result(tmp_path):
    epochs, directory = 10, tmp_path / "checkpoints"
    plan = {"checkpoint_dir": str(directory), "checkpoint_every": 1}
    reference = launch(tmp_path, "reference", models=["fcr"], epochs=epochs)
    victim = launch(tmp_path, "victim", models=["fcr"], epochs=epochs, sleep=0.3, train=plan)
    try:
        deadline = time.monotonic() + 180
        while (checkpoint_epoch(directory) or 0) < 3:
            assert victim.poll() is None, victim.communicate()[0]
            assert time.monotonic() < deadline, "the training subprocess never reached epoch 3"
            time.sleep(0.05)
        os.kill(victim.pid, signal.SIGKILL)
        victim.wait(timeout=60)
    finally:
        if victim.poll() is None:
            victim.kill()
    killed_at = checkpoint_epoch(directory)
    assert 3 <= killed_at < epochs - 1, f"the run was killed after epoch {killed_at}: nothing left to resume"

    finish(launch(tmp_path, "resumed", models=["fcr"], epochs=epochs, train={**plan, "resume": True}))
    finish(reference)
    resumed = torch.load(tmp_path / "resumed_fcr.pt", weights_only=True)
    expected = torch.load(tmp_path / "reference_fcr.pt", weights_only=True)
    assert_same_state(resumed, expected)
    resumed_history = json.loads((tmp_path / "resumed.json").read_text())["fcr"]
    expected_history = json.loads((tmp_path / "reference.json").read_text())["fcr"]
    assert len(resumed_history["loss"]) == len(expected_history["loss"]) == epochs
    np.testing.assert_allclose(resumed_history["loss"], expected_history["loss"], atol=1e-6)


def test_two_fresh_processes_with_the_same_seeds_agree_exactly(tmp_path):
    runs = [launch(tmp_path, name, models=["scvi", "fcr"], epochs=3) for name in ("first", "second")]
    for run in runs:
        finish(run)
    for kind in ("scvi", "fcr"):
        first, second = np.load(tmp_path / f"first_{kind}.npz"), np.load(tmp_path / f"second_{kind}.npz")
        assert first.files == second.files and first.files
        for key in first.files:
            assert np.array_equal(first[key], second[key]), f"{kind} latent {key} differs between processes"


def test_training_without_a_seed_draws_one_and_learns(adata):
    # the drawn seed also seeds numpy through pyro.set_rng_seed, which accepts only seeds below 2**32
    model = small_scvi(adata)
    history = model.train(max_epochs=3, batch_size=128, accelerator="cpu")
    assert len(history) == 3 and history["loss"][-1] < history["loss"][0]
