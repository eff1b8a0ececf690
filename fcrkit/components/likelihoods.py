"""Built-in likelihoods: observation models ``p(y | decoder output, library size)`` over genes.

Every class here honours :class:`fcrkit.protocols.Likelihood`: it is built as ``Cls(n_genes,
**options)``, declares ``input_kind`` and ``heads``, and returns from ``distribution(params,
library)`` a Pyro distribution with batch shape ``(B,)`` and event shape ``(n_genes,)``.

The count models share one parameterisation of the expected count, computed in log space::

    log mu = log(max(library, LIBRARY_MIN)) + log_softmax(params["mean"], dim=-1)

so the decoder only decides how a cell's counts are split between genes and the library size sets
their total. An empty cell (library 0) is given the library ``LIBRARY_MIN``: its expected counts are
then ~0 and an all-zero row has a finite log-probability close to 0.

They are registered under ``"nb"``, ``"zinb"``, ``"poisson"`` and ``"gaussian"`` by the hook at the
bottom of this module, exactly as a third-party plugin would register its own.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro.distributions import Distribution
from torch import Tensor, nn

from fcrkit.components.distributions import GeneNegativeBinomial
from fcrkit.errors import ConfigError, check_choice
from fcrkit.hookspecs import hookimpl
from fcrkit.protocols import InputKind

if TYPE_CHECKING:
    from fcrkit.registry import Registry

__all__ = [
    "LIBRARY_MIN",
    "THETA_MAX",
    "THETA_MIN",
    "Gaussian",
    "NegativeBinomial",
    "Poisson",
    "ZeroInflatedNegativeBinomial",
    "log_expected_counts",
]

#: Smallest library size used in ``log(library)``: an empty cell gets expected counts ~0, not NaN.
LIBRARY_MIN = 1e-8
#: Bounds of the NB inverse dispersion ``theta``; ``log_theta`` is clamped to ``[log THETA_MIN,
#: log THETA_MAX]`` (no gradient flows outside). Inside them ``theta == exp(log_theta)`` exactly.
THETA_MIN = 1e-6
THETA_MAX = 1e6
_LOG_THETA_MIN = math.log(THETA_MIN)
_LOG_THETA_MAX = math.log(THETA_MAX)


def _check_n_genes(owner: str, n_genes: Any) -> int:
    if isinstance(n_genes, bool) or not isinstance(n_genes, int) or n_genes < 1:
        raise ConfigError(f"{owner}: n_genes must be a positive integer, got {n_genes!r}.")
    return n_genes


def log_expected_counts(raw: Tensor, library: Tensor) -> Tensor:
    """``log(library * softmax(raw))`` computed in log space, ``(B, n_genes)``.

    ``raw`` is the decoder's ``"mean"`` head ``(B, n_genes)``; ``library`` the ``(B, 1)`` total
    counts, floored at :data:`LIBRARY_MIN` so that an empty cell stays finite.
    """
    return torch.log(library.clamp_min(LIBRARY_MIN)) + torch.log_softmax(raw, dim=-1)


class NegativeBinomial(nn.Module):
    """Negative binomial counts: mean library * softmax(decoder), learned per-gene dispersion.

    ``y_g ~ NB(mean mu_g, inverse dispersion theta_g)``, so ``Var y_g = mu_g + mu_g**2 / theta_g``;
    with ``log mu`` from :func:`log_expected_counts`, the distribution has the log-probability of
    ``pyro.distributions.NegativeBinomial(total_count=theta, logits=log mu - log theta)``.

    ``theta = exp(log_theta)`` with ``log_theta`` an ``nn.Parameter`` of shape ``(n_genes,)``
    initialised to 0 (``theta = 1``) and clamped to ``[THETA_MIN, THETA_MAX]`` = ``[1e-6, 1e6]``:
    small ``theta`` is overdispersed, large ``theta`` approaches a Poisson.

    Options:
        dispersion: ``"gene"`` (one ``theta`` per gene, shared by all cells); the only value so far.
    """

    input_kind: ClassVar[InputKind] = "counts"
    heads: tuple[str, ...] = ("mean",)

    def __init__(self, n_genes: int, *, dispersion: str = "gene") -> None:
        super().__init__()
        owner = f"{type(self).__name__} likelihood"
        self.n_genes = _check_n_genes(owner, n_genes)
        check_choice("dispersion", dispersion, ("gene",), owner=owner)
        self.dispersion = dispersion
        self.log_theta = nn.Parameter(torch.zeros(n_genes))

    def bounded_log_theta(self) -> Tensor:
        """``log theta`` ``(n_genes,)``: ``log_theta`` clamped to ``log [THETA_MIN, THETA_MAX]``."""
        return self.log_theta.clamp(_LOG_THETA_MIN, _LOG_THETA_MAX)

    @property
    def theta(self) -> Tensor:
        """Inverse dispersion per gene, ``(n_genes,)``."""
        return self.bounded_log_theta().exp()

    def nb_parameters(self, params: Mapping[str, Tensor], library: Tensor) -> tuple[Tensor, Tensor]:
        """NB ``(total_count, logits)``: ``theta`` ``(n_genes,)`` and ``log mu - log theta``."""
        log_theta = self.bounded_log_theta()
        return log_theta.exp(), log_expected_counts(params["mean"], library) - log_theta

    def distribution(self, params: Mapping[str, Tensor], library: Tensor) -> Distribution:
        """NB over genes with mean ``library × softmax(decoder)`` and per-gene inverse dispersion.

        A :class:`~fcrkit.components.distributions.GeneNegativeBinomial`: the same log-probability as
        ``pyro.distributions.NegativeBinomial(theta, logits).to_event(1)``, computed faster.
        """
        log_library = torch.log(library.clamp_min(LIBRARY_MIN))
        return GeneNegativeBinomial(params["mean"], log_library, self.bounded_log_theta())

    def mean(self, params: Mapping[str, Tensor], library: Tensor) -> Tensor:
        """Expected counts ``library × softmax(decoder)``."""
        return log_expected_counts(params["mean"], library).exp()


class ZeroInflatedNegativeBinomial(NegativeBinomial):
    """Zero-inflated negative binomial counts: the ``"nb"`` model plus a per-cell, per-gene gate.

    ``y_g = 0`` with probability ``pi_g = sigmoid(params["gate"])``, otherwise ``y_g ~ NB(mu_g,
    theta_g)`` exactly as in :class:`NegativeBinomial`; hence ``E y_g = (1 - pi_g) * mu_g``. The
    distribution is ``pyro.distributions.ZeroInflatedNegativeBinomial(total_count=theta,
    logits=log mu - log theta, gate_logits=params["gate"])``.

    Options:
        dispersion: ``"gene"`` (one ``theta`` per gene); the only value so far.
    """

    heads: tuple[str, ...] = ("mean", "gate")

    def distribution(self, params: Mapping[str, Tensor], library: Tensor) -> Distribution:
        """ZINB over genes: the NB of :class:`NegativeBinomial` with the decoder's gate logits."""
        theta, logits = self.nb_parameters(params, library)
        return dist.ZeroInflatedNegativeBinomial(
            total_count=theta, logits=logits, gate_logits=params["gate"]
        ).to_event(1)

    def mean(self, params: Mapping[str, Tensor], library: Tensor) -> Tensor:
        """Expected counts ``(1 − π) × library × softmax(decoder)``."""
        log_keep = F.logsigmoid(-params["gate"])  # log(1 - pi)
        return (log_keep + log_expected_counts(params["mean"], library)).exp()


class Poisson(nn.Module):
    """Poisson counts with rate library * softmax(decoder); no parameters of its own.

    ``y_g ~ Poisson(mu_g)`` with ``mu`` from :func:`log_expected_counts`. The rate is floored at the
    smallest positive normal number of its dtype (``torch.finfo(dtype).tiny``), so a rate that
    underflows to 0 still gives a finite log-probability.

    Options: none.
    """

    input_kind: ClassVar[InputKind] = "counts"
    heads: tuple[str, ...] = ("mean",)

    def __init__(self, n_genes: int) -> None:
        super().__init__()
        self.n_genes = _check_n_genes("Poisson likelihood", n_genes)

    def mean(self, params: Mapping[str, Tensor], library: Tensor) -> Tensor:
        """Expected counts ``library × softmax(decoder)`` (kept strictly positive)."""
        rate = log_expected_counts(params["mean"], library).exp()
        return rate.clamp_min(torch.finfo(rate.dtype).tiny)

    def distribution(self, params: Mapping[str, Tensor], library: Tensor) -> Distribution:
        """Poisson over genes with the expected counts as rates."""
        return dist.Poisson(self.mean(params, library)).to_event(1)


class Gaussian(nn.Module):
    """Gaussian real values with mean = decoder output and a per-gene (or per-cell) scale.

    ``y_g ~ Normal(params["mean"]_g, sigma_g)``, for log-normalised or other real-valued input; the
    library size is ignored.

    Options:
        scale: ``"gene"`` (default): ``sigma = exp(log_scale) + min_scale`` with ``log_scale`` an
            ``nn.Parameter`` of shape ``(n_genes,)`` initialised to 0; ``"gene-cell"``: the decoder
            also outputs a ``"scale"`` head and ``sigma = softplus(params["scale"]) + min_scale``.
        min_scale: floor added to ``sigma`` (default ``1e-4``) so that a constant gene cannot drive
            the density to infinity.
    """

    input_kind: ClassVar[InputKind] = "real"
    heads: tuple[str, ...] = ("mean",)

    def __init__(self, n_genes: int, *, scale: str = "gene", min_scale: float = 1e-4) -> None:
        super().__init__()
        owner = "Gaussian likelihood"
        self.n_genes = _check_n_genes(owner, n_genes)
        check_choice("scale", scale, ("gene", "gene-cell"), owner=owner)
        if (
            isinstance(min_scale, bool)
            or not isinstance(min_scale, (int, float))
            or not (0 < min_scale < math.inf)
        ):
            raise ConfigError(
                f"{owner}: option min_scale={min_scale!r} is not supported; allowed values: "
                "a finite number > 0 (e.g. 1e-4)."
            )
        self.scale_mode = scale
        self.min_scale = float(min_scale)
        self.heads = ("mean", "scale") if scale == "gene-cell" else ("mean",)
        self.log_scale: nn.Parameter | None = (
            nn.Parameter(torch.zeros(n_genes)) if scale == "gene" else None
        )

    def scale(self, params: Mapping[str, Tensor]) -> Tensor:
        """Standard deviation: ``(n_genes,)`` for ``scale="gene"``, ``(B, n_genes)`` otherwise."""
        if self.log_scale is not None:
            return self.log_scale.exp() + self.min_scale
        return F.softplus(params["scale"]) + self.min_scale

    def distribution(self, params: Mapping[str, Tensor], library: Tensor) -> Distribution:
        """Independent Normals over genes with the decoder's mean and the learned scale."""
        loc = params["mean"]
        return dist.Normal(loc, self.scale(params).expand_as(loc)).to_event(1)

    def mean(self, params: Mapping[str, Tensor], library: Tensor) -> Tensor:
        """The decoder's mean (the data's own scale)."""
        return params["mean"]


@hookimpl
def fcrkit_register_components(registry: Registry) -> None:
    registry.likelihood("nb", NegativeBinomial)
    registry.likelihood("zinb", ZeroInflatedNegativeBinomial)
    registry.likelihood("poisson", Poisson)
    registry.likelihood("gaussian", Gaussian)
