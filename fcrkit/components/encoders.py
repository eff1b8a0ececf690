"""Built-in encoders: amortised Gaussian posteriors of a latent block."""

from __future__ import annotations

from torch import Tensor, nn

from fcrkit.components.nn import mlp, mlp_width, positive, total_width, with_labels
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


@hookimpl
def fcrkit_register_components(registry) -> None:
    """Register the ``mlp`` encoder."""
    registry.encoder("mlp", MLPEncoder)
