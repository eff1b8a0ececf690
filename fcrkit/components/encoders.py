"""Built-in encoders: amortised Gaussian posteriors of a latent block.

* ``mlp``: ``q(z | y, labels)`` from an MLP on the cell's expression and its labels;
* ``basal_mlp``: SAMS-VAE's correlated guide for a basal block, ``q(z_basal | y, s)`` where
  ``s = Σ_p d_p (m_p ⊙ e_p)`` is the cell's treatment shift read from global blocks.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from fcrkit.components.combiners import shift_blocks, shift_table, treatment_shifts
from fcrkit.components.nn import mlp, mlp_width, positive, total_width, with_labels
from fcrkit.errors import ConfigError
from fcrkit.hookspecs import hookimpl
from fcrkit.protocols import LabelDims, Labels


class MLPEncoder(nn.Module):
    """MLP Gaussian encoder q(z | y, labels): an MLP trunk with a mean and a scale head.

    Args:
        n_input: number of genes.
        n_output: latent dimension of the block.
        label_dims: widths of the labels the encoder also sees (its spec ``conditions``); they are
            appended to the input.
        n_hidden: width of each hidden layer.
        n_layers: number of hidden layers.
        norm: ``"batch"``, ``"layer"`` or ``"none"``.
        dropout: dropout rate after each hidden layer.
        activation: ``"relu"``, ``"leaky_relu"``, ``"elu"``, ``"gelu"``, ``"tanh"`` or ``"softplus"``.
        min_scale: floor of the posterior standard deviation.
    """

    def __init__(
        self,
        n_input: int,
        n_output: int,
        label_dims: LabelDims,
        *,
        n_hidden: int = 128,
        n_layers: int = 1,
        norm: str = "batch",
        dropout: float = 0.1,
        activation: str = "relu",
        min_scale: float = 1e-4,
    ):
        super().__init__()
        self.conditions = tuple(label_dims)
        n_in = n_input + total_width(label_dims)
        self.trunk = mlp(n_in, n_hidden, n_layers, norm=norm, dropout=dropout, activation=activation)
        width = mlp_width(n_in, n_hidden, n_layers)
        self.loc = nn.Linear(width, n_output)
        self.scale = nn.Linear(width, n_output)
        self.min_scale = float(min_scale)

    def forward(self, y: Tensor, labels: Labels) -> tuple[Tensor, Tensor]:
        """Posterior ``(loc, scale)`` of the block for inputs ``y`` and the encoder's labels."""
        h = self.trunk(with_labels(y, labels, self.conditions))
        return self.loc(h), positive(self.scale(h), self.min_scale)


class BasalMLPEncoder(MLPEncoder):
    """SAMS-VAE's correlated encoder of a basal latent: ``q(z_basal | y, s)`` with ``s`` the cell's treatment shift.

    ``s = Σ_p d_p (m_p ⊙ e_p)`` is gathered from the cell's treatment entries (an embedding bag) and the
    values of the global blocks ``embedding`` and ``mask``, which the encoder lists among its conditions
    with ``"t"``. The MLP sees ``[y, s]`` (and any other labels it conditions on); its mean estimates
    the whole latent ``z = z_basal + s``, and the basal mean is that minus ``s``: the basal latent is
    what is left after the perturbation, so the posterior of ``z`` follows the data while the KL of
    ``z_basal`` to its prior pulls the embeddings towards the cells' shifts (Bereket & Karaletsos 2023).

    Args:
        n_input: number of genes.
        n_output: dimension of the basal block (that of the embeddings and masks).
        label_dims: ``"t"``, the global blocks and any other labels the MLP also sees.
        embedding: the global block of per-treatment embeddings ``e_p``.
        mask: the global block of per-treatment masks ``m_p`` (None: the embeddings unmasked).
        **options: those of the ``mlp`` encoder (``n_hidden``, ``n_layers``, ``norm``, ``dropout`` ...).
    """

    def __init__(self, n_input: int, n_output: int, label_dims: LabelDims, *, embedding: str = "embedding",
                 mask: str | None = "mask", **options: Any):
        if "t" not in label_dims:
            raise ConfigError("encoder 'basal_mlp' sees the cells' treatment shifts, so it needs the treatment: give "
                              f"it conditions = ['t', {embedding!r}{'' if mask is None else f', {mask!r}'}].")
        self.embedding, self.mask = shift_blocks(label_dims, n_output, "encoder 'basal_mlp'", embedding, mask)
        read = {"t", self.embedding, self.mask}
        super().__init__(n_input + n_output, n_output, {k: v for k, v in label_dims.items() if k not in read},
                         **options)

    def shift(self, labels: Labels, n_cells: int) -> Tensor:
        """The cells' treatment shifts ``Σ_p d_p (m_p ⊙ e_p)``, ``(n_cells, dim)``."""
        return treatment_shifts(labels, shift_table(labels, self.embedding, self.mask), n_cells)

    def forward(self, y: Tensor, labels: Labels) -> tuple[Tensor, Tensor]:
        """Posterior ``(loc, scale)`` of the basal block: the MLP's estimate of ``z`` from ``[y, s]``, minus ``s``."""
        s = self.shift(labels, y.shape[0])
        loc, scale = super().forward(torch.cat([y, s], dim=-1), {k: labels[k] for k in self.conditions})
        return loc - s, scale


@hookimpl
def fcrkit_register_components(registry) -> None:
    """Register the ``mlp`` and ``basal_mlp`` encoders."""
    registry.encoder("mlp", MLPEncoder)
    registry.encoder("basal_mlp", BasalMLPEncoder)
