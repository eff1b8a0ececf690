"""fcrkit-template: an L1 penalty on a latent block, the copyable example of an fcrkit plugin.

A plugin is a module with a function marked ``@fcrkit.hookimpl`` that registers components; the
``fcrkit`` entry point in ``pyproject.toml`` points fcrkit at this module.
"""

from __future__ import annotations

import torch

import fcrkit
from fcrkit.errors import ConfigError
from fcrkit.protocols import Context, ModelInfo

__version__ = "0.1.0"


class L1Block:
    """L1 penalty on one block's posterior means: ``mean over cells of sum_j |loc_j|``.

    Args:
        info: the model the regulariser joins (fcrkit passes it).
        block: the block to penalise.
    """

    def __init__(self, info: ModelInfo, *, block: str):
        if block not in info.block_dims:
            raise ConfigError(f"regularizer 'template_l1': unknown block {block!r}; "
                              f"blocks of this model: {sorted(info.block_dims)}.")
        self.block = block

    def loss(self, ctx: Context) -> torch.Tensor:
        """A scalar per-cell mean; fcrkit multiplies it by the spec's weight and adds it to the loss."""
        return ctx.loc[self.block].abs().sum(dim=1).mean()


@fcrkit.hookimpl
def fcrkit_register_components(registry) -> None:
    registry.regularizer("template_l1", L1Block)
