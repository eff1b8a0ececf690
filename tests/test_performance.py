"""The fast path's promises that are not about speed: per-epoch timings, and a compiled step that
computes what the eager one does. (Speed itself is measured by benchmarks/, not by tests.)"""

from __future__ import annotations

import shutil

import numpy as np
import pytest

import fcrkit
from fcrkit.errors import ConfigError


@pytest.fixture
def counts():
    adata = fcrkit.simulate.basic(n_cells=300, n_genes=40, n_latent=3, seed=1)
    fcrkit.setup_anndata(adata, treatment_key="treatment", covariate_keys=["cell_type"], control_value="control")
    return adata


def _train(adata, **settings):
    # no dropout: compiled dropout draws its masks from another random stream than eager dropout
    model = fcrkit.models.SCVI(adata, n_latent=3, n_hidden=16, dropout_rate=0.0, seed=0)
    history = model.train(max_epochs=3, batch_size=64, seed=0, accelerator="cpu", progress_bar=False, **settings)
    return model, history


def test_epoch_seconds_time_the_training_steps_of_each_epoch(counts):
    _, history = _train(counts)
    assert len(history.epoch_seconds) == len(history) == 3
    assert all(0 < s for s in history.epoch_seconds)
    assert sum(history.epoch_seconds) <= history.seconds  # validation and bookkeeping come on top


@pytest.mark.skipif(shutil.which("cc") is None and shutil.which("g++") is None,
                    reason="torch.compile on the CPU needs a C++ compiler (cc or g++)")
def test_compiled_networks_train_to_the_eager_result(counts):
    eager_model, eager = _train(counts)
    compiled_model, compiled = _train(counts, compile=True)
    np.testing.assert_allclose(compiled["loss"], eager["loss"], rtol=1e-4)
    a = eager_model.get_latent_representation()
    b = compiled_model.get_latent_representation()
    np.testing.assert_allclose(a, b, atol=2e-2)  # float reassociation, compounded over 15 Adam steps
    assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.9999
    assert set(compiled_model.module.state_dict()) == set(eager_model.module.state_dict())  # saves alike


def test_compile_must_be_a_bool(counts):
    with pytest.raises(ConfigError, match="compile='yes' must be True or False"):
        _train(counts, compile="yes")


def _denormals_flushed() -> bool:
    import torch

    return bool(torch.tensor([1e-39]).mul(1.0)[0] == 0)


def test_denormals_are_flushed_while_training_and_the_mode_restored(counts, monkeypatch):
    import torch

    from fcrkit.train.trainer import Trainer, flushed_denormals

    for before in (False, True):
        torch.set_flush_denormal(before)
        with flushed_denormals():
            assert _denormals_flushed()
        assert _denormals_flushed() == before
    torch.set_flush_denormal(False)

    seen, step = [], Trainer.step

    def recording_step(self, *args, **kwargs):
        seen.append(_denormals_flushed())
        return step(self, *args, **kwargs)

    monkeypatch.setattr(Trainer, "step", recording_step)
    _train(counts)
    assert seen and all(seen)  # every training step ran with denormals flushed
    assert not _denormals_flushed()  # and the caller's mode is back


def test_pyro_validation_runs_on_the_first_step_only_and_the_setting_is_restored(counts, monkeypatch):
    import pyro
    from pyro.infer.util import is_validation_enabled

    seen = []

    def recording_guide(guide):
        def run(*args, **kwargs):
            seen.append(is_validation_enabled())
            return guide(*args, **kwargs)
        return run

    model = fcrkit.models.SCVI(counts, n_latent=3, n_hidden=16, seed=0)
    monkeypatch.setattr(model.module, "guide", recording_guide(model.module.guide))
    pyro.enable_validation(True)
    model.train(max_epochs=2, batch_size=64, validation_fraction=0.0, seed=0, accelerator="cpu", progress_bar=False)
    steps = 2 * -(-counts.n_obs // 64)
    assert seen[0] is True and seen[1:] == [False] * (steps - 1)  # the guide runs once per step
    assert is_validation_enabled()  # the caller's setting is back
