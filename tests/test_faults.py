"""Faults a user meets: a plugin regulariser returning the wrong thing, a full disk while saving, NaN doses
of controls, and a loss that goes non-finite. Each stops with an fcrkit error that names the culprit."""

from __future__ import annotations

import errno
import re
import types

import anndata as ad
import numpy as np
import pytest
import torch

import fcrkit
from fcrkit.errors import DataError, PluginError, WriteError
from fcrkit.testing import tiny_adata
from fcrkit.train import checkpoint

SPEC = {"name": "faulty", "blocks": [{"name": "z", "dim": 2, "encoder": {"name": "mlp", "n_hidden": 8}}],
        "decoder": {"name": "mlp", "n_hidden": 8}, "likelihood": "nb"}
TRAIN = {"batch_size": 64, "seed": 0, "accelerator": "cpu", "progress_bar": False}


def bad_regularizer_plugin(returned: object, *, adversary: bool = False) -> types.ModuleType:
    """A plugin module registering ``bad_term``, whose loss (or adversary's loss) returns ``returned(ctx)``."""

    class BadTerm(torch.nn.Module):
        """A regulariser that returns the wrong thing."""

        def __init__(self, info):
            super().__init__()
            if adversary:
                self.adversary = torch.nn.Linear(2, 1)

        def loss(self, ctx):
            return ctx.z["z"].pow(2).mean() if adversary else returned(ctx)

        def adversary_loss(self, ctx):
            return returned(ctx)

    plugin = types.ModuleType("badpkg")

    @fcrkit.hookimpl
    def fcrkit_register_components(registry):
        registry.regularizer("bad_term", BadTerm)

    plugin.fcrkit_register_components = fcrkit_register_components
    return plugin


BAD_RETURNS = {
    "None": (lambda ctx: None, "returned None"),
    "a float": (lambda ctx: 0.5, r"returned a float \(0\.5\)"),
    "a vector": (lambda ctx: ctx.z["z"].pow(2).sum(1), r"returned a torch.float32 tensor of shape \(\d+,\)"),
    "a (1,) tensor": (lambda ctx: ctx.z["z"].pow(2).mean().reshape(1), r"tensor of shape \(1,\)"),
    "an integer tensor": (lambda ctx: torch.tensor(3), r"returned a torch\.int64 tensor of shape \(\)"),
}


@pytest.mark.parametrize("adversary", [False, True], ids=["loss", "adversary_loss"])
@pytest.mark.parametrize("case", BAD_RETURNS)
def test_a_regularizer_returning_the_wrong_thing_is_named_on_the_first_step(fcrkit_plugin, case, adversary):
    returned, got = BAD_RETURNS[case]
    calls = []

    def counted(ctx):
        calls.append(1)
        return returned(ctx)

    fcrkit_plugin(bad_regularizer_plugin(counted, adversary=adversary), "badpkg")
    spec = {**SPEC, "regularizers": [{"name": "bad_term", "key": "my_term", "weight": 0.5}]}
    model = fcrkit.compose(spec, tiny_adata(100, 20), seed=0)
    with pytest.raises(PluginError) as caught:
        model.train(2, **TRAIN)
    message = str(caught.value)
    method = "adversary_loss" if adversary else "loss"
    for fragment in ("regularizer 'bad_term'", "key 'my_term'", "plugin 'badpkg'", f"from {method}(ctx)",
                     "must return a scalar floating-point torch.Tensor"):
        assert fragment in message, message
    assert re.search(got, message), message
    assert len(calls) == 1  # stopped at the first call, on the first step


# -- a full disk while saving ----------------------------------------------------------------------------
TORCH_FULL_DISK = RuntimeError("[enforce fail at inline_container.cc:672] . PytorchStreamWriter failed writing file "
                               "data/3: file write failed")
FULL_DISK = {"torch's writer": TORCH_FULL_DISK, "ENOSPC": OSError(errno.ENOSPC, "No space left on device")}


def failing_save(error: BaseException):
    def save(*args, **kwargs):
        raise error
    return save


@pytest.mark.parametrize("error", FULL_DISK.values(), ids=FULL_DISK)
def test_a_full_disk_while_saving_a_model_says_so_and_keeps_the_previous_model(tmp_path, monkeypatch, error):
    adata = tiny_adata(100, 20)
    model = fcrkit.models.SCVI(adata, n_latent=2, n_hidden=8, n_layers=1, seed=0)
    model.save(tmp_path / "run")
    saved = {k: v.clone() for k, v in model.module.state_dict().items()}
    model.train(1, **TRAIN)  # new weights, which the failed save must not half-write
    monkeypatch.setattr(torch, "save", failing_save(error))
    with pytest.raises(WriteError, match=r"writing the model to '.*run' failed for lack of space.*"
                                         r"the model saved in '.*run' before is intact") as caught:
        model.save(tmp_path / "run", overwrite=True)
    assert isinstance(caught.value, OSError)
    monkeypatch.undo()
    back = fcrkit.models.SCVI.load(tmp_path / "run", adata)
    assert all(torch.equal(saved[k], v) for k, v in back.module.state_dict().items())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # no staging directory left behind


@pytest.mark.parametrize("error", FULL_DISK.values(), ids=FULL_DISK)
def test_a_full_disk_while_checkpointing_says_so_and_keeps_the_previous_checkpoint(tmp_path, monkeypatch, error):
    model = fcrkit.models.SCVI(tiny_adata(100, 20), n_latent=2, n_hidden=8, n_layers=1, seed=0)
    model.train(2, checkpoint_dir=tmp_path, **TRAIN)
    monkeypatch.setattr(torch, "save", failing_save(error))
    with pytest.raises(WriteError, match=r"checkpoint after epoch 3 .* failed for lack of space.*previous "
                                         r"checkpoint \(after epoch 2\) is intact, and resume=True continues"):
        model.train(4, checkpoint_dir=tmp_path, resume=True, **TRAIN)
    monkeypatch.undo()
    assert checkpoint.load(tmp_path)["state"]["epoch"] == 2
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]  # no temporary file left behind


def test_another_os_error_while_saving_gives_the_os_reason(tmp_path, monkeypatch):
    model = fcrkit.models.SCVI(tiny_adata(100, 20), n_latent=2, n_hidden=8, n_layers=1, seed=0)
    monkeypatch.setattr(torch, "save", failing_save(PermissionError(errno.EACCES, "Permission denied")))
    with pytest.raises(WriteError, match=r"failed \(Permission denied\).*'.*new' was not created"):
        model.save(tmp_path / "new")
    assert not (tmp_path / "new").exists()


# -- doses: controls need none ---------------------------------------------------------------------------
def dosed(doses: list[float | None], treatments: list[str]) -> ad.AnnData:
    adata = ad.AnnData(np.ones((len(doses), 3), dtype=np.float32))
    adata.obs["treatment"] = treatments
    adata.obs["dose"] = doses
    return adata


def test_controls_need_no_dose_but_treated_cells_do():
    adata = dosed([np.nan, None, 0.5, 2.0], ["control", "control", "drug", "drug+control"])
    setup = fcrkit.setup_anndata(adata, treatment_key="treatment", dose_key="dose")
    np.testing.assert_array_equal(setup.encode_labels(adata.obs)["t"].dense()[:, 0], [0.0, 0.0, 0.5, 2.0])
    bad = dosed([np.nan, np.nan, 0.5], ["control", "drug", "drug"])
    with pytest.raises(DataError) as caught:
        fcrkit.setup_anndata(bad, treatment_key="treatment", dose_key="dose")
    message = str(caught.value)
    for fragment in ("1 missing value(s) (NaN) among treated cells", "cell '1', treatment 'drug'",
                     "control cells need no dose"):
        assert fragment in message, message
    assert "drop those cells" not in message  # that would drop every control too
