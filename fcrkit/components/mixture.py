"""A Gaussian-mixture prior whose component is a discrete latent summed out by enumeration.

Per cell, ``c ~ Categorical(π)`` and ``z | c ~ N(μ_c, diag σ_c²)``, with ``π``, ``μ`` and ``σ`` learned.
The prior is a small Pyro program (:meth:`GaussianMixturePrior.sample`): the component is a sample
site ``"<block>_component"`` marked for parallel enumeration, which ``TraceEnum_ELBO`` (``elbo=
"trace_enum"``) sums out exactly, so no guide for it is needed and no gradient estimator of a discrete
draw is involved. Its :meth:`~GaussianMixturePrior.distribution` is the same prior with the component
marginalised in closed form (what ``predict`` and the likelihood metrics use).
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from torch import Tensor, nn

from fcrkit.components.nn import positive
from fcrkit.errors import ConfigError, listing
from fcrkit.hookspecs import hookimpl
from fcrkit.protocols import LabelDims, Labels


class GaussianMixturePrior(nn.Module):
    """Mixture of ``n_components`` diagonal Gaussians, its component summed out (``elbo="trace_enum"``).

    Args:
        dim: latent dimension of the block.
        label_dims: must be empty (the mixture conditions on nothing).
        n_components: number of mixture components.
        init_spread: standard deviation of the initial component means (spread apart so that the
            components start distinct).
        min_scale: floor of the components' standard deviations.
    """

    def __init__(self, dim: int, label_dims: LabelDims, *, n_components: int = 5, init_spread: float = 1.0,
                 min_scale: float = 1e-2):
        super().__init__()
        if label_dims:
            raise ConfigError(f"prior 'gaussian_mixture' conditions on nothing, but the spec gives it conditions "
                              f"{listing(label_dims)}; remove them.")
        if isinstance(n_components, bool) or not isinstance(n_components, int) or n_components < 2:
            raise ConfigError(f"prior 'gaussian_mixture': n_components={n_components!r} must be an integer >= 2.")
        self.dim, self.n_components, self.min_scale = dim, n_components, float(min_scale)
        self.logits = nn.Parameter(torch.zeros(n_components))
        # a fixed generator: the initial means do not consume (or depend on) the global random stream
        start = torch.randn(n_components, dim, generator=torch.Generator().manual_seed(0)) * init_spread
        self.locs = nn.Parameter(start)
        self.raw_scales = nn.Parameter(torch.zeros(n_components, dim))

    @property
    def scales(self) -> Tensor:
        """Component standard deviations, ``(n_components, dim)``."""
        return positive(self.raw_scales, self.min_scale)

    def sample(self, name: str, labels: Labels, n: int) -> Tensor:
        """The prior as a program: component site ``<name>_component`` (enumerated), then the block's site."""
        component = pyro.sample(f"{name}_component", dist.Categorical(logits=self.logits),
                                infer={"enumerate": "parallel"})
        return pyro.sample(name, dist.Normal(self.locs[component], self.scales[component]).to_event(1))

    def distribution(self, labels: Labels, n: int) -> dist.Distribution:
        """The mixture with its component marginalised: batch ``(n,)``, event ``(dim,)``."""
        mixing = dist.Categorical(logits=self.logits.expand(n, self.n_components))
        components = dist.Normal(self.locs.expand(n, -1, -1), self.scales.expand(n, -1, -1)).to_event(1)
        return dist.MixtureSameFamily(mixing, components)

    def responsibilities(self, z: Tensor) -> Tensor:
        """``p(c | z)`` for values ``z`` ``(B, dim)`` of the block: ``(B, n_components)``, rows summing to 1."""
        log_joint = torch.log_softmax(self.logits, -1) + dist.Normal(self.locs, self.scales).log_prob(
            z.unsqueeze(-2)).sum(-1)
        return torch.softmax(log_joint, dim=-1)


@hookimpl
def fcrkit_register_components(registry) -> None:
    """Register the ``gaussian_mixture`` prior."""
    registry.prior("gaussian_mixture", GaussianMixturePrior)
