"""Normalised HSIC between latent blocks (or a block and a label) as a minibatch regulariser."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch

from fcrkit.errors import ConfigError
from fcrkit.metrics import hsic_torch
from fcrkit.protocols import Context, ModelInfo


def normalized_hsic(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """``HSIC(a, b) / sqrt(HSIC(a, a) HSIC(b, b))``, in [0, 1]; differentiable in ``a`` and ``b``."""
    return hsic_torch(a, b) / torch.sqrt(hsic_torch(a, a) * hsic_torch(b, b) + eps)


class NormalizedHSIC:
    """Normalised HSIC between pairs of latent blocks, or a block and a label, averaged over the pairs.

    Args:
        info: the model the regulariser joins (fcrkit passes it).
        pairs: ``[[a, b], ...]``; each name is a block, or ``"label:x"`` / ``"label:t"`` for an
            observed label. Default: every pair of blocks.
        use: ``"z"`` (posterior samples, the default) or ``"loc"`` (posterior means).
    """

    def __init__(self, info: ModelInfo, *, pairs: Sequence[Sequence[str]] | None = None, use: str = "z"):
        if use not in ("z", "loc"):
            raise ConfigError(f"regularizer 'independence_nhsic': use={use!r} is not 'z' or 'loc'.")
        known = list(info.block_dims) + [f"label:{k}" for k in info.label_dims]
        chosen = [list(p) for p in (pairs if pairs is not None else itertools.combinations(info.block_dims, 2))]
        if not chosen:
            raise ConfigError("regularizer 'independence_nhsic': no pairs (the model has one block); "
                              "give pairs=[[block, 'label:t']].")
        for pair in chosen:
            if len(pair) != 2 or any(name not in known for name in pair):
                raise ConfigError(f"regularizer 'independence_nhsic': pair {pair!r} must be two of {known}.")
        self.pairs = [tuple(p) for p in chosen]
        self.use = use

    def _value(self, ctx: Context, name: str) -> torch.Tensor:
        if name.startswith("label:"):
            return ctx.labels[name.removeprefix("label:")]
        return (ctx.z if self.use == "z" else ctx.loc)[name]

    def loss(self, ctx: Context) -> torch.Tensor:
        """The mean normalised HSIC of the pairs on this minibatch."""
        values = [normalized_hsic(self._value(ctx, a), self._value(ctx, b)) for a, b in self.pairs]
        return torch.stack(values).mean()
