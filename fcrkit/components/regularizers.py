"""Built-in regularisers, and the Pyro effect the KL regulariser is made of.

A regulariser's weight comes from its spec entry (``weight``, with an optional linear
``warmup_epochs``); see :mod:`fcrkit.protocols` for the protocol.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

from pyro.poutine.messenger import Messenger

from fcrkit.errors import ConfigError, did_you_mean, listing
from fcrkit.hookspecs import hookimpl
from fcrkit.protocols import ModelInfo


class ScaleSites(Messenger):
    """Multiply the log-density of the named sample sites by ``scale`` (in model and guide alike).

    Under ``TraceMeanField_ELBO`` scaling a latent site scales its analytic KL term, which is how
    β-VAE weights and KL warm-up are applied without touching the model code.
    """

    def __init__(self, sites: Collection[str], scale: float):
        super().__init__()
        self.sites = frozenset(sites)
        self.scale = scale

    def _process_message(self, msg: dict) -> None:
        if msg["type"] == "sample" and msg["name"] in self.sites:
            msg["scale"] = msg["scale"] * self.scale


class KL:
    """β-weighted KL of latent blocks: the spec weight is β; warm it up with ``warmup_epochs``.

    Args:
        info: the model's blocks.
        blocks: the blocks whose KL is weighted (default: every per-cell block; a global block is
            weighted only when named).
    """

    def __init__(self, info: ModelInfo, *, blocks: Sequence[str] | None = None):
        known = [*info.block_dims, *info.global_dims]
        chosen = list(info.block_dims if blocks is None else blocks)
        for block in chosen:
            if block not in known:
                raise ConfigError(
                    f"regularizer 'kl': unknown block {block!r}.{did_you_mean(block, known)} "
                    f"Blocks of this model: {listing(known)}."
                )
        self.blocks = tuple(chosen)

    def handler(self, weight: float) -> ScaleSites:
        """Scale the KL of the chosen blocks by ``weight``."""
        return ScaleSites(self.blocks, weight)


@hookimpl
def fcrkit_register_components(registry) -> None:
    """Register the ``kl`` regulariser."""
    registry.regularizer("kl", KL)
