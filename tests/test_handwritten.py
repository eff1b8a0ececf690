"""The benchmarks' hand-written PyTorch steps (``benchmarks/handwritten.py``) are fcrkit's models.

``benchmarks/throughput.py`` holds each recipe's step to "within 1.15x / 1.3x of a hand-written
PyTorch step for exactly the same networks and loss". These tests make "exactly the same" a checked
fact: from the same weights, on the same minibatch (and the same control partners), one fcrkit
``Trainer.step`` and one hand-written step give the same loss and the same gradient for every
parameter. Randomness is pinned for both alike: no dropout, the latent draw at its mean, and one
fixed within-condition permutation.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import fcrkit
from fcrkit.data.backed import cell_data
from fcrkit.data.pairing import ControlPairing
from fcrkit.models.fcr import DEFAULT_WEIGHTS
from fcrkit.train.trainer import Trainer, TrainingPlan

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import handwritten  # noqa: E402  (a benchmarks/ module, not part of the package)
from common import simulated_counts  # noqa: E402

EPOCH = 4.5  # inside both recipes' KL warm-up, so the warm-up schedules are compared too
N_GENES = 60


@pytest.fixture
def pinned_randomness(monkeypatch):
    """Latent draws at their means; one fixed permutation per set of condition labels."""
    def at_mean(self, sample_shape=()):
        return self.loc.expand(self._extended_shape(torch.Size(sample_shape)))

    monkeypatch.setattr(torch.distributions.Normal, "rsample", at_mean)
    monkeypatch.setattr(handwritten.torch, "randn_like", torch.zeros_like)
    import fcrkit.components.structure as structure

    permute, fixed = structure.permute_within, {}

    def fixed_permutation(groups):
        key = tuple(groups.tolist())
        if key not in fixed:
            torch.manual_seed(len(fixed))
            fixed[key] = permute(groups)
        return fixed[key]

    monkeypatch.setattr(structure, "permute_within", fixed_permutation)
    monkeypatch.setattr(handwritten, "permute_within", fixed_permutation)


def _no_dropout(module: nn.Module) -> None:
    for layer in module.modules():
        if isinstance(layer, nn.Dropout):
            layer.p = 0.0


def _trainer(model) -> tuple[Trainer, object]:
    _no_dropout(model.module)
    model.module.train()
    data = cell_data(model.adata, model.setup, device=torch.device("cpu"))
    pairing = ControlPairing.for_mode(model.adata, model.setup, model.spec.control_pairing)
    return Trainer(model.module, data, TrainingPlan(validation_fraction=0.0, seed=0), pairing), data


def _assert_same_gradients(ours: dict[str, nn.Parameter], theirs: dict[str, nn.Parameter]) -> None:
    """Equal up to float32 rounding, relative to the largest gradient of the model (a bias that a
    batch norm follows has a gradient of exactly zero in theory, float noise of ~1e-7 in practice)."""
    assert ours.keys() == theirs.keys()
    assert all(p.grad is not None for p in (*ours.values(), *theirs.values()))
    scale = max(float(p.grad.abs().max()) for p in theirs.values())
    for name, param in ours.items():
        torch.testing.assert_close(param.grad, theirs[name].grad, rtol=1e-4, atol=1e-5 * scale,
                                   msg=lambda m, name=name: f"gradient of {name}: {m}")


def test_hand_written_scvi_step_is_the_scvi_recipe_step(pinned_randomness):
    adata = simulated_counts(256, N_GENES, seed=0)
    model = fcrkit.models.SCVI(adata, n_latent=10, n_hidden=128, n_layers=1, likelihood="nb", seed=0)
    trainer, data = _trainer(model)
    hand = handwritten.HandSCVI(N_GENES)
    _no_dropout(hand)
    names = {  # fcrkit's parameter -> the hand-written one
        "encoders.z.trunk.0": "encoder.0", "encoders.z.trunk.1": "encoder.1", "encoders.z.loc": "loc",
        "encoders.z.scale": "scale", "decoder.trunk.0": "decoder.0", "decoder.trunk.1": "decoder.1",
        "decoder.heads.mean": "decoder.3", "likelihood": ""}
    ours = dict(model.module.named_parameters())

    def hand_name(name: str) -> str:
        prefix = next(p for p in names if name.startswith(p + "."))
        return (names[prefix] + name[len(prefix):]).lstrip(".")

    hand_params = dict(hand.named_parameters())
    with torch.no_grad():
        for name, param in ours.items():
            hand_params[hand_name(name)].copy_(param)

    cells = torch.arange(0, 256, 2)
    batch = data.gather(cells)
    loss = trainer.step(batch, adata.n_obs, EPOCH, torch.Generator().manual_seed(0))["loss"]
    hand_loss = handwritten.scvi_step(hand, torch.optim.Adam(hand.parameters(), lr=1e-3), batch.y, batch.library,
                                      kl_weight=EPOCH / 20)
    torch.testing.assert_close(loss, hand_loss, rtol=1e-5, atol=0.0)
    _assert_same_gradients(ours, {name: hand_params[hand_name(name)] for name in ours})


class _Partners:
    """A stand-in pair sampler that hands out fixed control partners."""

    def __init__(self, cells: torch.Tensor, partners: torch.Tensor):
        self.by_cell = dict(zip(cells.tolist(), partners.tolist()))

    def sample(self, index: torch.Tensor, generator=None) -> torch.Tensor:
        return torch.tensor([self.by_cell[i] for i in index.tolist()])


def test_hand_written_fcr_step_is_the_fcr_recipe_step(pinned_randomness):
    adata = simulated_counts(256, N_GENES, seed=0)
    model = fcrkit.models.FCR(adata, seed=0)
    _no_dropout(model.module)
    twin = copy.deepcopy(model.module)  # the hand-written step trains this copy's layers
    trainer, data = _trainer(model)

    controls = torch.as_tensor((adata.obs["treatment"] == "control").to_numpy()).nonzero().squeeze(1)
    cells = torch.arange(0, 256, 2)
    partners = controls[torch.randint(len(controls), (len(cells),), generator=torch.Generator().manual_seed(1))]
    trainer.sampler = _Partners(cells, partners)
    loss = trainer.step(data.gather(cells), adata.n_obs, EPOCH, torch.Generator().manual_seed(0))["loss"]

    both = data.gather(torch.cat([cells, partners]))
    labels = {k: torch.as_tensor(v.dense()) for k, v in model.setup.encode_labels(adata.obs).items()}
    index = torch.cat([cells, partners])
    optimizer, adversaries = handwritten.fcr_optimizers(twin)
    weights = {k: v for k, v in DEFAULT_WEIGHTS.items() if k not in ("kl", "condition_kl")}
    hand_loss = handwritten.fcr_step(twin, optimizer, adversaries, both.y, both.library, labels["x"][index],
                                     labels["t"][index], weights, kl_weight=EPOCH / 10)

    torch.testing.assert_close(loss, hand_loss, rtol=1e-5, atol=0.0)
    _assert_same_gradients(dict(model.module.named_parameters()), dict(twin.named_parameters()))
