"""Small neural-network pieces shared by the built-in components."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from fcrkit.errors import ConfigError, check_choice
from fcrkit.protocols import Labels

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "leaky_relu": nn.LeakyReLU,
    "elu": nn.ELU,
    "gelu": nn.GELU,
    "tanh": nn.Tanh,
    "softplus": nn.Softplus,
}
NORMS = ("batch", "layer", "none")


def _check_int(option: str, value: int, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"option {option}={value!r} must be an integer >= {minimum}.")


class FlatBatchNorm(nn.BatchNorm1d):
    """BatchNorm over the last dimension that also accepts leading sample dimensions.

    Vectorised ELBO particles give decoders inputs of shape ``(particles, cells, features)``;
    statistics are then taken over particles and cells together.
    """

    def forward(self, inputs: Tensor) -> Tensor:
        """Batch norm over the last dimension, for inputs with any number of leading dimensions."""
        if inputs.dim() <= 2:
            return super().forward(inputs)
        return super().forward(inputs.reshape(-1, inputs.shape[-1])).reshape(inputs.shape)


def mlp(
    n_input: int,
    n_hidden: int,
    n_layers: int,
    *,
    norm: str = "batch",
    dropout: float = 0.0,
    activation: str = "relu",
) -> nn.Sequential:
    """``n_layers`` blocks of Linear -> norm -> activation -> dropout (empty when ``n_layers == 0``).

    The output width is ``n_hidden``, or ``n_input`` when ``n_layers == 0``.
    """
    _check_int("n_hidden", n_hidden, 1)
    _check_int("n_layers", n_layers, 0)
    check_choice("norm", norm, NORMS)
    check_choice("activation", activation, tuple(ACTIVATIONS))
    if not 0.0 <= float(dropout) < 1.0:
        raise ConfigError(f"option dropout={dropout!r} must be in [0, 1).")
    layers: list[nn.Module] = []
    width = n_input
    for _ in range(n_layers):
        layers.append(nn.Linear(width, n_hidden))
        if norm == "batch":
            # scvi-tools' settings: a BatchNorm that adapts quickly and tolerates small batches
            layers.append(FlatBatchNorm(n_hidden, momentum=0.01, eps=1e-3))
        elif norm == "layer":
            layers.append(nn.LayerNorm(n_hidden, elementwise_affine=False))
        layers.append(ACTIVATIONS[activation]())
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        width = n_hidden
    return nn.Sequential(*layers)


def mlp_width(n_input: int, n_hidden: int, n_layers: int) -> int:
    """Output width of :func:`mlp` with these sizes."""
    return n_hidden if n_layers > 0 else n_input


def with_labels(inputs: Tensor, labels: Labels, keys: Sequence[str]) -> Tensor:
    """``inputs`` with the label tensors named by ``keys`` appended as columns."""
    if not keys:
        return inputs
    return torch.cat([inputs, *(labels[k] for k in keys)], dim=-1)


def label_matrix(labels: Labels, keys: Sequence[str]) -> Tensor:
    """The label tensors named by ``keys`` side by side."""
    return torch.cat([labels[k] for k in keys], dim=-1)


def positive(raw: Tensor, minimum: float) -> Tensor:
    """A strictly positive scale from an unconstrained output (softplus, floored)."""
    return nn.functional.softplus(raw) + minimum


def total_width(label_dims: Mapping[str, int]) -> int:
    """Total width of the labels a component sees (the sum of their dimensions)."""
    return int(sum(label_dims.values()))


#: Counts per cell after normalisation in :func:`lognormalize` (scanpy's ``normalize_total`` default).
LOGNORM_TARGET_SUM = 1e4


def lognormalize(counts: Tensor, target_sum: float = LOGNORM_TARGET_SUM) -> Tensor:
    """``log1p(counts / cell total * target_sum)`` per row (a cell of total 0 stays 0)."""
    total = counts.sum(-1, keepdim=True).clamp_min(torch.finfo(counts.dtype).tiny)
    return torch.log1p(counts * (target_sum / total))


@contextmanager
def frozen_norm_statistics(module: nn.Module) -> Iterator[None]:
    """Batch norms still normalise with the batch's statistics, but do not update their running ones.

    Inputs the model generated itself (a counterfactual, decoded rather than observed) must not shift the
    statistics used at prediction.
    """
    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in norms]
    for m in norms:
        m.momentum = 0.0  # running = (1 - 0) * running + 0 * batch
    try:
        yield
    finally:
        for m, momentum in zip(norms, saved):
            m.momentum = momentum
