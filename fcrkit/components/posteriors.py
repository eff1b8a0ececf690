"""Built-in posterior families: how a block's encoder output becomes ``q(z | y)``.

An encoder returns a ``(loc, scale)`` pair per cell; the block's posterior part turns it into the
distribution the guide samples:

* ``normal``: the diagonal Normal ``N(loc, diag scale²)`` (the default; analytic KL under
  ``TraceMeanField_ELBO`` against a Normal prior);
* ``flow``: that Normal pushed through affine autoregressive transforms (inverse autoregressive
  flows, Kingma et al. 2016) whose shifts and scales are conditioned, per cell, on the encoder
  output, so the posterior can be skewed and correlated across the block's dimensions;
* ``delta``: a point mass at ``loc`` (MAP-style inference of the block; ``scale`` is unused),
  optionally mapped into a support (``support = "unit_interval"`` for a probability,
  ``"positive"``);
* ``relaxed_bernoulli``: a binary mask relaxed at a ``temperature`` (Maddison et al. 2017; Jang et
  al. 2017) whose logits are ``loc``; with ``hard = True`` (default) its draws are exactly 0 or 1
  in the forward pass and carry the relaxed draw's gradient (straight-through).

A global block (``plate = "t"`` or ``"x"``) feeds the family the same way, from variational
parameters of its own (one ``(loc, scale)`` row per vocabulary entry) instead of an encoder; a
family may say where they start with the attributes ``init_loc`` and ``init_scale``.

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
from torch.distributions.utils import clamp_probs

from fcrkit.errors import ConfigError, check_choice
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


#: Where a ``delta`` posterior may put its point: ``loc`` as it is, squashed into (0, 1), or made positive.
DELTA_SUPPORTS = ("real", "unit_interval", "positive")


class DeltaPosterior(nn.Module):
    """A point mass at the encoder's ``loc`` (amortised MAP inference of the block).

    Args:
        dim: the block's dimension.
        support: ``"real"`` (the point is ``loc``), ``"unit_interval"`` (``σ(loc)``, kept off 0 and 1:
            a probability, e.g. under a Beta prior) or ``"positive"`` (``softplus(loc)``).
    """

    moments = ("loc",)

    def __init__(self, dim: int, *, support: str = "real"):
        super().__init__()
        check_choice("support", support, DELTA_SUPPORTS, owner="posterior 'delta'")
        self.dim = dim
        self.support = support

    def _map(self, loc: Tensor) -> Tensor:
        if self.support == "unit_interval":
            return clamp_probs(torch.sigmoid(loc))
        if self.support == "positive":
            return nn.functional.softplus(loc) + 1e-6
        return loc

    def distribution(self, loc: Tensor, scale: Tensor) -> dist.Distribution:
        """``Delta(point)`` with event shape ``(dim,)``; ``scale`` is ignored."""
        return dist.Delta(self._map(loc), event_dim=1)

    def point(self, loc: Tensor, scale: Tensor) -> Tensor:
        """The point (``loc`` mapped into the support)."""
        return self._map(loc)

    def read_moments(self, fn: dist.Distribution) -> dict[str, Tensor]:
        """The point as ``loc`` (a point mass has no scale)."""
        return {"loc": fn.v}


class RelaxedBernoulliPosterior(nn.Module):
    """A relaxed Bernoulli (binary Concrete) mask per entry, with logits ``loc`` (``scale`` is unused).

    A draw is ``σ((loc + L) / τ)`` with logistic noise ``L`` and temperature ``τ``. With ``hard``
    (default) the forward value is that draw rounded to 0 or 1 (a Bernoulli(σ(loc)) draw) and its
    gradient the relaxed draw's (straight-through, Pyro's ``RelaxedBernoulliStraightThrough``); its
    log-density is the relaxed draw's. What regularisers read as ``loc`` is the mean ``σ(loc)``, the
    probability that an entry is on.

    Args:
        dim: the block's dimension.
        temperature: τ > 0 (smaller: closer to binary, noisier gradients).
        hard: straight-through 0/1 draws (else the relaxed values in (0, 1)).
        init_logit: where a global block's logits start (5: masks start on, σ(5) ≈ 0.99, as sVAE's).
    """

    moments = ("loc",)

    def __init__(self, dim: int, *, temperature: float = 1.0, hard: bool = True, init_logit: float = 0.0):
        super().__init__()
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not temperature > 0:
            raise ConfigError(f"posterior 'relaxed_bernoulli': temperature={temperature!r} must be a positive number.")
        if not isinstance(hard, bool):
            raise ConfigError(f"posterior 'relaxed_bernoulli': hard={hard!r} must be true or false.")
        self.dim = dim
        self.hard = hard
        self.init_loc = float(init_logit)
        self.register_buffer("temperature", torch.tensor(float(temperature)), persistent=False)

    def distribution(self, loc: Tensor, scale: Tensor) -> dist.Distribution:
        """The relaxed (straight-through with ``hard``) Bernoulli of logits ``loc``, event shape ``(dim,)``."""
        family = dist.RelaxedBernoulliStraightThrough if self.hard else dist.RelaxedBernoulli
        return family(self.temperature.to(loc), logits=loc).to_event(1)

    def point(self, loc: Tensor, scale: Tensor) -> Tensor:
        """With ``hard``, the most probable mask ``σ(loc) > 0.5`` (0/1); else the mean ``σ(loc)``."""
        return (loc > 0).to(loc.dtype) if self.hard else torch.sigmoid(loc)

    def read_moments(self, fn: dist.Distribution) -> dict[str, Tensor]:
        """The probabilities ``σ(loc)`` of a distribution this part made, as ``loc``."""
        while isinstance(fn, dist.Independent):
            fn = fn.base_dist
        return {"loc": fn.probs}


@hookimpl
def fcrkit_register_components(registry) -> None:
    """Register the ``normal``, ``flow``, ``delta`` and ``relaxed_bernoulli`` posterior families."""
    registry.posterior("normal", NormalPosterior)
    registry.posterior("flow", FlowPosterior)
    registry.posterior("delta", DeltaPosterior)
    registry.posterior("relaxed_bernoulli", RelaxedBernoulliPosterior)
