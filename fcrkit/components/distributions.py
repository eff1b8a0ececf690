"""Distributions written for speed where Pyro's general ones spend time a count model does not need.

:class:`GeneNegativeBinomial` is the negative binomial of the ``"nb"`` likelihood, with expected
counts ``mu = library * softmax(logits)`` and one inverse dispersion ``theta`` per gene (event shape
``(n_genes,)``). Its ``log_prob`` equals that of
``pyro.distributions.NegativeBinomial(total_count=theta, logits=log mu - log theta).to_event(1)``
at a fraction of the cost. With ``x = log mu - log theta``::

    log p(y) = sum_g [ y_g x_g - (theta_g + y_g) softplus(x_g) ]                       (rate terms)
             + sum_g [ lgamma(y_g + theta_g) - lgamma(theta_g) - lgamma(y_g + 1) ]     (count terms)

Why it is fast:

- the rate terms and the softmax that makes ``mu`` are one autograd node with a hand-written
  backward (``d/dx = y - (theta + y) sigmoid(x)``, then through the softmax), instead of a dozen
  elementwise nodes each saving its own intermediate;
- the count terms vanish where ``y_g = 0``: on the CPU, where ``lgamma`` and ``digamma`` dominate a
  step, they are evaluated at the non-zero counts only (single-cell matrices are typically 5-30%
  non-zero), and ``lgamma(theta)`` once per gene; on CUDA, where elementwise work is cheap and
  finding the non-zeros would cost a host synchronisation, densely.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from pyro.distributions import TorchDistribution
from torch import Tensor
from torch.distributions import constraints

__all__ = ["GeneNegativeBinomial", "nb_log_prob"]

#: softplus(x) is taken as x only above this: torch's default of 20 drops exp(-20) ~ 2e-9 per gene,
#: which a count of 1e4 multiplies into a visible error; exp(40) is still finite in float32.
SOFTPLUS_THRESHOLD = 40.0
_NO_SAMPLE_SHAPE = torch.Size()


class _RateTerms(torch.autograd.Function):
    """``sum_g y_g x_g - (theta_g + y_g) softplus(x_g)``, ``x = log_library + log_softmax(logits) - log_theta``."""

    @staticmethod
    def forward(ctx: Any, logits: Tensor, log_library: Tensor, log_theta: Tensor, value: Tensor) -> Tensor:
        log_softmax = torch.log_softmax(logits, dim=-1)
        x = log_softmax + (log_library - log_theta)
        theta = log_theta.exp()
        softplus = F.softplus(x, threshold=SOFTPLUS_THRESHOLD)
        ctx.save_for_backward(log_softmax, x, softplus, value, theta)
        return (value * x - (theta + value) * softplus).sum(-1)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        log_softmax, x, softplus, value, theta = ctx.saved_tensors
        grad = grad.unsqueeze(-1)
        grad_x = (value - (theta + value) * torch.sigmoid(x)) * grad
        grad_logits = grad_library = grad_theta = None
        if ctx.needs_input_grad[0]:  # through log_softmax
            grad_logits = grad_x - log_softmax.exp() * grad_x.sum(-1, keepdim=True)
        if ctx.needs_input_grad[1]:
            grad_library = grad_x.sum(-1, keepdim=True)
        if ctx.needs_input_grad[2]:  # x falls with log_theta, and theta itself multiplies -softplus(x)
            grad_theta = -(grad_x + grad * theta * softplus).reshape(-1, x.shape[-1]).sum(0)
        return grad_logits, grad_library, grad_theta, None


def nb_log_prob(value: Tensor, logits: Tensor, log_library: Tensor, log_theta: Tensor) -> Tensor:
    """``log NB(value | mean exp(log_library) * softmax(logits), inverse dispersion exp(log_theta))``.

    Args:
        value: counts ``(..., n_genes)``.
        logits: the decoder's gene logits, broadcastable with ``value``.
        log_library: log library size ``(..., 1)``.
        log_theta: log inverse dispersion per gene, ``(n_genes,)``.

    Returns:
        The log-probability of each cell (summed over genes): the broadcast shape of ``value`` and
        ``logits`` without the gene dimension.
    """
    shape = torch.broadcast_shapes(value.shape, logits.shape, log_library.shape)
    logits, library = logits.expand(shape), log_library.expand(shape[:-1] + (1,))
    rate = _RateTerms.apply(logits, library, log_theta, value.expand(shape))
    return rate + _count_terms(value, log_theta.exp())


def _count_terms(value: Tensor, theta: Tensor) -> Tensor:
    """``sum_g lgamma(y_g + theta_g) - lgamma(theta_g) - lgamma(y_g + 1)``, shape ``value.shape[:-1]``."""
    if value.device.type != "cpu":
        return (torch.lgamma(value + theta) - torch.lgamma(theta) - torch.lgamma(value + 1)).sum(-1)
    n_genes = value.shape[-1]
    flat = value.reshape(-1)
    where = (flat > 0).nonzero().squeeze(-1)
    counts, row, gene = flat.index_select(0, where), where // n_genes, where % n_genes
    with torch.no_grad():  # data only
        log_factorial = torch.lgamma(counts + 1)
    theta_g = theta.index_select(0, gene)
    # lgamma(theta) once per gene (and so digamma in the backward), then read at each non-zero
    per_entry = torch.lgamma(counts + theta_g) - torch.lgamma(theta).index_select(0, gene) - log_factorial
    per_row = torch.zeros(flat.numel() // n_genes, dtype=theta.dtype, device=theta.device).index_add(0, row, per_entry)
    return per_row.reshape(value.shape[:-1])


class GeneNegativeBinomial(TorchDistribution):
    """Negative binomial counts over genes with a per-gene inverse dispersion (event ``(n_genes,)``).

    Args:
        logits: gene logits ``(..., n_genes)``: ``mu = exp(log_library) * softmax(logits)``.
        log_library: log library size ``(..., 1)``.
        log_theta: log inverse dispersion ``(n_genes,)``.

    ``E y_g = mu_g`` and ``Var y_g = mu_g + mu_g**2 / theta_g``. Values are not checked against the
    support here: the data are checked to be counts once, when they are registered.
    """

    arg_constraints = {"logits": constraints.real, "log_library": constraints.real, "log_theta": constraints.real}
    support = constraints.independent(constraints.nonnegative_integer, 1)
    has_rsample = False

    def __init__(self, logits: Tensor, log_library: Tensor, log_theta: Tensor, validate_args: bool | None = None):
        if log_theta.dim() != 1 or log_theta.shape[0] != logits.shape[-1]:
            raise ValueError(f"log_theta must have shape ({logits.shape[-1]},) (one per gene), "
                             f"got {tuple(log_theta.shape)}.")
        self.logits, self.log_library, self.log_theta = logits, log_library, log_theta
        super().__init__(logits.shape[:-1], logits.shape[-1:], validate_args=False)

    def expand(self, batch_shape: torch.Size, _instance: GeneNegativeBinomial | None = None) -> GeneNegativeBinomial:
        """This distribution for more cells (parameters broadcast to ``batch_shape``)."""
        shape = torch.Size(batch_shape)
        return GeneNegativeBinomial(self.logits.expand(shape + self.event_shape),
                                    self.log_library.expand(shape + (1,)), self.log_theta)

    @property
    def log_mean(self) -> Tensor:
        """``log mu``, the log expected counts."""
        return self.log_library + torch.log_softmax(self.logits, dim=-1)

    @property
    def mean(self) -> Tensor:
        """Expected counts ``mu``."""
        return self.log_mean.exp()

    @property
    def variance(self) -> Tensor:
        """``mu + mu**2 / theta``."""
        mu = self.mean
        return mu + mu.square() / self.log_theta.exp()

    def sample(self, sample_shape: torch.Size = _NO_SAMPLE_SHAPE) -> Tensor:
        """Counts drawn as Poisson(Gamma(theta, theta / mu)) (no gradient)."""
        with torch.no_grad():
            shape = self._extended_shape(sample_shape)
            theta = self.log_theta.exp().expand(shape)
            rate = torch.distributions.Gamma(theta, theta / self.mean.expand(shape)).sample()
            return torch.poisson(rate)

    def log_prob(self, value: Tensor) -> Tensor:
        """Log-probability of the counts ``value``, summed over genes (see :func:`nb_log_prob`)."""
        return nb_log_prob(value, self.logits, self.log_library, self.log_theta)
