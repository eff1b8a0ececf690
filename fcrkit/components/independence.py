"""Regularisers that push latents towards independence (FactorVAE's and HCV's terms, usable by any model).

- ``total_correlation``: the total correlation ``TC(z) = KL(q(z) || ∏_j q(z_j))`` of the aggregate
  posterior, estimated with the density-ratio trick of FactorVAE (Kim & Mnih, ICML 2018): an
  adversary ``D`` tells codes ``z ~ q(z)`` from codes whose dimensions were shuffled independently
  across the batch (samples of ``∏_j q(z_j)``); the model's term is ``mean logit D(z)``.
- ``hsic``: the Hilbert-Schmidt independence criterion between latent blocks and a nuisance label,
  the penalty of the HSIC-constrained VAE (HCV; Lopez et al., NeurIPS 2018).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fcrkit.components.nn import mlp, mlp_width
from fcrkit.components.structure import _check_blocks, _check_label
from fcrkit.errors import ConfigError
from fcrkit.hookspecs import hookimpl
from fcrkit.metrics.independence import hsic_torch
from fcrkit.protocols import Context, ModelInfo


def shuffle_dimensions(z: Tensor) -> Tensor:
    """``z`` with each column permuted independently across the rows (cells).

    If the rows are samples of ``q(z)``, the result's rows are samples of the product of its
    marginals ``∏_j q(z_j)`` (FactorVAE's ``permute_dims``).
    """
    order = torch.argsort(torch.rand(z.shape, device=z.device), dim=0)
    return z.gather(0, order)


class TotalCorrelation(nn.Module):
    """FactorVAE's total-correlation penalty, with its discriminator as an adversary.

    The discriminator ``D`` is an MLP (leaky-ReLU) on the concatenated chosen blocks with **one
    output logit** ``ℓ(z) = log D(z) - log(1 - D(z))``, ``D(z)`` the probability that ``z`` is a
    real code. It is trained (its own optimiser, on detached latents) with the binary cross-entropy

        ``L_D = ½ [BCE(ℓ(z), 1) + BCE(ℓ(z̃), 0)]``,  ``z̃ = shuffle_dimensions(z)``

    where ``z`` are the posterior samples of the minibatch and ``z̃`` the same codes with every
    dimension permuted independently across the cells. At its optimum ``D(z) = q(z) / (q(z) + q̄(z))``
    with ``q̄ = ∏_j q(z_j)``, so ``ℓ(z) = log q(z) / q̄(z)`` and

        ``TC(z) = KL(q(z) || q̄(z)) = E_q(z)[log q(z) / q̄(z)] ≈ mean_i ℓ(z_i)``.

    :meth:`loss` returns that estimate, ``mean ℓ(z)`` on the **real** codes only (Kim & Mnih 2018,
    eq. 3 and Algorithm 2; their two-logit form ``logit_0 − logit_1`` is the same quantity): the
    FactorVAE objective is ``ELBO − γ·TC``, so with the spec weight ``γ`` this term is added to the
    loss. Its gradient reaches the encoders through ``z`` (not detached). The discriminator's
    parameters also receive this gradient, but the trainer steps them only with their own optimiser
    on ``L_D`` (their gradients are reset before each adversary step).

    Differences from the reference implementation: ``z̃`` is shuffled from the same minibatch (the
    paper draws it from a second one), and the discriminator is smaller by default (the paper's has
    six hidden layers of 1000 units) and uses Adam with the trainer's default betas.

    Args:
        blocks: the blocks whose joint total correlation is penalised (default: all).
        n_hidden: width of the discriminator MLP.
        n_layers: hidden layers of the discriminator MLP.
        adversary_lr: the discriminator's learning rate.
        adversary_steps: its steps per model step.
    """

    def __init__(self, info: ModelInfo, *, blocks: Sequence[str] | None = None, n_hidden: int = 128,
                 n_layers: int = 3, adversary_lr: float = 1e-3, adversary_steps: int = 1):
        super().__init__()
        self.blocks = _check_blocks(info, list(info.block_dims) if blocks is None else blocks, "total_correlation")
        n_in = sum(info.block_dims[b] for b in self.blocks)
        if n_in < 2:
            raise ConfigError(f"regularizer 'total_correlation': blocks={list(self.blocks)} have {n_in} dimension "
                              "in all; total correlation needs at least two.")
        if not (isinstance(adversary_lr, (int, float)) and adversary_lr > 0):
            raise ConfigError(f"regularizer 'total_correlation': adversary_lr={adversary_lr!r} must be positive.")
        if isinstance(adversary_steps, bool) or not isinstance(adversary_steps, int) or adversary_steps < 1:
            raise ConfigError(f"regularizer 'total_correlation': adversary_steps={adversary_steps!r} must be a "
                              "positive integer.")
        trunk = mlp(n_in, n_hidden, n_layers, norm="none", activation="leaky_relu")
        self.adversary = nn.Sequential(trunk, nn.Linear(mlp_width(n_in, n_hidden, n_layers), 1))
        self.adversary_lr, self.adversary_steps = float(adversary_lr), int(adversary_steps)

    def codes(self, ctx: Context) -> Tensor:
        """The concatenated posterior samples of the chosen blocks, ``(B, dim)``, each cell once.

        With control pairing the paired controls are left out: as extra copies of control cells they
        would tilt the aggregate posterior whose total correlation is estimated.
        """
        z = ctx.unpaired().z
        return torch.cat([z[b] for b in self.blocks], dim=-1)

    def logit(self, z: Tensor) -> Tensor:
        """``ℓ(z) = log D(z) / (1 - D(z))`` per cell: the estimated ``log q(z) / ∏_j q(z_j)``."""
        return self.adversary(z).squeeze(-1)

    def adversary_loss(self, ctx: Context) -> Tensor:
        """The discriminator's BCE: real codes (label 1) against dimension-shuffled codes (label 0)."""
        z = self.codes(ctx)
        real, fake = self.logit(z), self.logit(shuffle_dimensions(z))
        return 0.5 * (F.binary_cross_entropy_with_logits(real, torch.ones_like(real))
                      + F.binary_cross_entropy_with_logits(fake, torch.zeros_like(fake)))

    def loss(self, ctx: Context) -> Tensor:
        """The TC estimate ``mean_i ℓ(z_i)`` on the minibatch's real codes (gradient reaches the encoders)."""
        return self.logit(self.codes(ctx)).mean()


class HSICPenalty:
    """HSIC between latent blocks and a nuisance label: HCV's independence penalty.

    The HSIC-constrained VAE (Lopez, Regier, Jordan & Yosef, "Information constraints on
    auto-encoding variational Bayes", NeurIPS 2018) maximises ``ELBO − λ·HSIC(z, s)`` for a
    nuisance variable ``s`` (batch, covariates) that the generative model also sees, so that the
    latent ``z`` carries no information about it. With the spec weight ``λ`` this term is

        ``HSIC_b(z, s) = n⁻² tr(K H L H)``,  ``K_ij = exp(-|z_i - z_j|² / m_z)``,
        ``L_ij = exp(-|s_i - s_j|² / m_s)``,  ``H = I - 11ᵀ/n``,

    over the ``n`` cells of the minibatch (:func:`fcrkit.metrics.hsic_torch`; ``m`` the median of
    the non-zero squared distances, a constant of the batch). ``z`` is the concatenation of the
    chosen blocks (posterior samples, or posterior means with ``use="loc"``) and ``s`` the label
    rows (one-hot covariates ``"x"``, or the dose-weighted treatment ``"t"``). For two variables
    the paper's dHSIC (Pfister et al. 2016) is this HSIC; several chosen blocks are treated as one
    variable (their dependence on each other is not penalised).

    Args:
        blocks: the latent blocks (default: all).
        label: the nuisance: ``"x"`` (covariates, default) or ``"t"`` (treatment).
        use: ``"z"`` (posterior samples, as in the paper) or ``"loc"`` (posterior means).
    """

    global_batch = True  # a kernel over the minibatch's cells: under data parallelism, the whole global batch

    def __init__(self, info: ModelInfo, *, blocks: Sequence[str] | None = None, label: str = "x", use: str = "z"):
        self.blocks = _check_blocks(info, list(info.block_dims) if blocks is None else blocks, "hsic")
        if label not in ("x", "t"):
            raise ConfigError(f"regularizer 'hsic': label={label!r} is not 'x' (covariates) or 't' (treatment).")
        _check_label(info, label, "hsic")
        if use not in ("z", "loc"):
            raise ConfigError(f"regularizer 'hsic': use={use!r} is not 'z' or 'loc'.")
        self.label, self.use = label, use

    def loss(self, ctx: Context) -> Tensor:
        """``HSIC_b`` between the chosen blocks and the label over the minibatch's own cells (not paired controls)."""
        ctx = ctx.unpaired()
        latents = getattr(ctx, self.use)
        z = torch.cat([latents[b] for b in self.blocks], dim=-1)
        return hsic_torch(z, ctx.labels[self.label].to(z.dtype))


@hookimpl
def fcrkit_register_components(registry) -> None:
    """Register the ``total_correlation`` and ``hsic`` regularisers."""
    registry.regularizer("total_correlation", TotalCorrelation)
    registry.regularizer("hsic", HSICPenalty)
