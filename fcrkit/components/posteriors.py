"""Built-in posterior families: how a block's encoder output becomes ``q(z | y)``.

An encoder returns a ``(loc, scale)`` pair per cell; the block's posterior part turns it into the
distribution the guide samples:

* ``normal``: the diagonal Normal ``N(loc, diag scale²)`` (the default; analytic KL under
  ``TraceMeanField_ELBO`` against a Normal prior);
* ``flow``: that Normal pushed through affine autoregressive transforms (inverse autoregressive
  flows, Kingma et al. 2016) whose shifts and scales are conditioned, per cell, on the encoder
  output, so the posterior can be skewed and correlated across the block's dimensions;
* ``delta``: a point mass at ``loc`` (MAP-style inference of the block; ``scale`` is unused).

What a regulariser's :class:`~fcrkit.protocols.Context` reads of a block (``ctx.loc``,
``ctx.scale``) is what the family declares in ``moments``: the Normal's exact parameters, the flow's
*base* Normal (the encoder's Gaussian before the flow, not the flow's moments), the point of a delta
(which has no scale: a regulariser reading ``ctx.scale`` of such a block is refused by name).
"""

from __future__ import annotations

import pyro.distributions as dist
import torch
from pyro.distributions.transforms import conditional_affine_autoregressive
from torch import Tensor, nn

from fcrkit.errors import ConfigError
from fcrkit.hookspecs import hookimpl


def _independent_normal(fn: dist.Distribution) -> dist.Normal:
    """The Normal inside a guide site's ``Normal(...).to_event(1)`` (possibly expanded by particles)."""
    while isinstance(fn, (dist.Independent, dist.TransformedDistribution)):
        fn = fn.base_dist
    return fn


class NormalPosterior(nn.Module):
    """Diagonal Normal posterior ``N(loc, diag scale²)``: the encoder's output as it is."""

    moments = ("loc", "scale")

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim

    def distribution(self, loc: Tensor, scale: Tensor) -> dist.Distribution:
        """``Normal(loc, scale)`` with event shape ``(dim,)``."""
        return dist.Normal(loc, scale).to_event(1)

    def point(self, loc: Tensor, scale: Tensor) -> Tensor:
        """The posterior mean, ``loc``."""
        return loc

    def read_moments(self, fn: dist.Distribution) -> dict[str, Tensor]:
        """``loc`` and ``scale`` of a distribution this part made."""
        normal = _independent_normal(fn)
        return {"loc": normal.loc, "scale": normal.scale}


class FlowPosterior(nn.Module):
    """The diagonal Normal followed by ``n_flows`` affine autoregressive transforms (an IAF).

    Each transform ``z -> μ(z, c) + σ(z, c) ⊙ z`` is autoregressive in ``z`` (so its Jacobian is
    triangular and ``log q`` exact) and conditioned on the cell's encoder output
    ``c = [loc, log scale]``. Sampling and scoring the drawn value are exact and cheap; scoring an
    arbitrary value (which fcrkit never needs) would invert the flow.

    Args:
        dim: the block's dimension.
        n_flows: number of autoregressive transforms (each with a fresh random variable order).
        n_hidden: hidden width of each transform's masked MLP (at least ``dim``; default ``4 * dim``,
            at least 16).
    """

    moments = ("loc", "scale")  # of the base Normal: see the module docstring

    def __init__(self, dim: int, *, n_flows: int = 2, n_hidden: int | None = None):
        super().__init__()
        if isinstance(n_flows, bool) or not isinstance(n_flows, int) or n_flows < 1:
            raise ConfigError(f"posterior 'flow': n_flows={n_flows!r} must be a positive integer.")
        hidden = max(16, 4 * dim) if n_hidden is None else n_hidden
        if isinstance(hidden, bool) or not isinstance(hidden, int) or hidden < dim:
            raise ConfigError(f"posterior 'flow': n_hidden={n_hidden!r} must be an integer >= the block's "
                              f"dimension ({dim}).")
        self.dim = dim
        # pyro's transform networks are nn.Modules: held in a ModuleList they are saved with the model
        self.flows = nn.ModuleList(
            conditional_affine_autoregressive(dim, 2 * dim, hidden_dims=[hidden, hidden]) for _ in range(n_flows)
        )

    def _transforms(self, loc: Tensor, scale: Tensor) -> list:
        context = torch.cat([loc, scale.log()], dim=-1)
        return [flow.condition(context) for flow in self.flows]

    def distribution(self, loc: Tensor, scale: Tensor) -> dist.Distribution:
        """``Normal(loc, scale)`` pushed through the cell-conditioned transforms."""
        return dist.TransformedDistribution(dist.Normal(loc, scale).to_event(1), self._transforms(loc, scale))

    def point(self, loc: Tensor, scale: Tensor) -> Tensor:
        """The image of the base mean ``loc`` under the flow (a point of high posterior density)."""
        z = loc
        for transform in self._transforms(loc, scale):
            z = transform(z)
        return z

    def read_moments(self, fn: dist.Distribution) -> dict[str, Tensor]:
        """``loc`` and ``scale`` of the base Normal of a distribution this part made."""
        normal = _independent_normal(fn)
        return {"loc": normal.loc, "scale": normal.scale}


class DeltaPosterior(nn.Module):
    """A point mass at the encoder's ``loc`` (amortised MAP inference of the block)."""

    moments = ("loc",)

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim

    def distribution(self, loc: Tensor, scale: Tensor) -> dist.Distribution:
        """``Delta(loc)`` with event shape ``(dim,)``; ``scale`` is ignored."""
        return dist.Delta(loc, event_dim=1)

    def point(self, loc: Tensor, scale: Tensor) -> Tensor:
        """The point, ``loc``."""
        return loc

    def read_moments(self, fn: dist.Distribution) -> dict[str, Tensor]:
        """The point as ``loc`` (a point mass has no scale)."""
        return {"loc": fn.v}


@hookimpl
def fcrkit_register_components(registry) -> None:
    """Register the ``normal``, ``flow`` and ``delta`` posterior families."""
    registry.posterior("normal", NormalPosterior)
    registry.posterior("flow", FlowPosterior)
    registry.posterior("delta", DeltaPosterior)
