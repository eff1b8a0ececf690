"""Built-in decoders: latent blocks to the likelihood's raw per-gene parameters."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from fcrkit.components.nn import mlp, mlp_width, total_width, with_labels
from fcrkit.hookspecs import hookimpl
from fcrkit.protocols import LabelDims, Labels


class MLPDecoder(nn.Module):
    """MLP decoder: a shared trunk on [z, labels] and one linear head per likelihood parameter.

    Args:
        n_input: total latent dimension (all blocks, concatenated in spec order).
        n_output: number of genes.
        heads: the raw parameters the likelihood needs (e.g. ``("mean", "gate")``).
        label_dims: labels appended to the latent (its spec ``conditions``), e.g. a batch covariate.
        n_hidden: as for the ``mlp`` encoder.
        n_layers: as for the ``mlp`` encoder.
        norm: as for the ``mlp`` encoder.
        dropout: as for the ``mlp`` encoder.
        activation: as for the ``mlp`` encoder.
    """

    def __init__(
        self,
        n_input: int,
        n_output: int,
        heads: Sequence[str],
        label_dims: LabelDims,
        *,
        n_hidden: int = 128,
        n_layers: int = 1,
        norm: str = "batch",
        dropout: float = 0.0,
        activation: str = "relu",
    ):
        super().__init__()
        self.conditions = tuple(label_dims)
        n_in = n_input + total_width(label_dims)
        self.trunk = mlp(n_in, n_hidden, n_layers, norm=norm, dropout=dropout, activation=activation)
        width = mlp_width(n_in, n_hidden, n_layers)
        self.heads = nn.ModuleDict({head: nn.Linear(width, n_output) for head in heads})

    def forward(self, z: Tensor, labels: Labels) -> dict[str, Tensor]:
        """The likelihood's raw parameters, one ``(cells, genes)`` tensor per head."""
        h = self.trunk(with_labels(z, labels, self.conditions))
        return {name: head(h) for name, head in self.heads.items()}


@hookimpl
def fcrkit_register_components(registry) -> None:
    """Register the ``mlp`` decoder."""
    registry.decoder("mlp", MLPDecoder)
