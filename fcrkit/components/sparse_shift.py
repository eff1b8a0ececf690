"""The sparse mechanism shift of sVAE (Lopez et al., CLeaR 2023): a prior and its sparsity term.

- ``sparse_shift`` (prior): ``z ~ N(γ_a ⊙ μ_a, I)`` for a cell with treatment ``a``: a learned mean
  shift ``μ_a`` per treatment, switched on or off per latent dimension by a binary mask ``γ_a``
  whose probabilities ``σ(log_alpha[a])`` are learned (a relaxed Bernoulli, sampled per cell with a
  straight-through Gumbel-sigmoid during training).
- ``mask_sparsity`` (regulariser): pushes the mask probabilities to zero, so that each treatment
  shifts few latent dimensions: ``mean σ(log_alpha)`` (sVAE, weighted by λ) or the Beta(1, K)
  hyperprior ``−Σ log Beta(σ(log_alpha); 1, K) / N`` (sVAE+). It reaches the masks through the
  model (``ctx.module``), like ``condition_kl`` reaches the priors.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import pyro.distributions as dist
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fcrkit.errors import ConfigError, check_choice, did_you_mean, listing
from fcrkit.hookspecs import hookimpl
from fcrkit.protocols import Context, LabelDims, Labels, ModelInfo

EVAL_MASKS = ("hard", "expected", "sample")
HYPERPRIORS = ("none", "beta")
_UNIFORM_EPS = 1e-6  # keeps the logistic noise finite


class _StraightThrough(torch.autograd.Function):
    """Forward: the hard ``soft > 0.5`` (exactly 0 or 1); backward: the gradient of ``soft``."""

    @staticmethod
    def forward(ctx, soft: Tensor) -> Tensor:
        return (soft > 0.5).to(soft.dtype)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        return grad


class SparseShift(nn.Module):
    """Sparse mechanism-shift prior N(γ_a ⊙ μ_a, I) of sVAE: per-treatment mean shifts, sparse masks.

    For a cell with (dose-weighted, multi-hot) treatment labels ``t`` the prior mean is
    ``Σ_a t_a · γ_a ⊙ μ_a`` (a combination adds its parts' shifts; the scale is 1). Row ``a`` of
    ``mean`` is ``μ_a`` (initialised at 0) and row ``a`` of ``log_alpha`` the logits of the mask
    probabilities (initialised at ``init_log_alpha = 5``, i.e. p ≈ 0.99, as in sVAE).

    **Controls.** With ``learn_control=True`` (the default, as in sVAE, where the control is one more
    label) controls (``t = 0``) have a row of their own, the last one, with its own ``μ`` and mask;
    with ``learn_control=False`` their prior is N(0, I).

    **The mask.** Training (``module.train()``): one mask per cell and treatment, drawn with the
    straight-through Gumbel-sigmoid at ``temperature``: ``soft = σ((log_alpha + logistic noise) / τ)``,
    the forward value is the hard ``soft > 0.5`` (a Bernoulli(σ(log_alpha)) draw) and the
    gradient is that of ``soft``, so it reaches ``log_alpha``. Evaluation (``module.eval()``), by
    ``eval_mask``: ``"hard"`` the binarised ``σ(log_alpha) > 0.5`` (default), ``"expected"``
    ``σ(log_alpha)`` (the mean of the training draw), ``"sample"`` a draw as in training. After
    :meth:`binarize` (the transfer protocol) the mask is fixed to its binarised value everywhere
    and ``log_alpha`` no longer enters the model.

    The prior samples its mask at every ``distribution`` call; the model calls it once per step,
    and under ``TraceMeanField_ELBO`` the KL to it is analytic given that draw.

    Args:
        dim: latent dimension of the block.
        label_dims: must be exactly ``{"t": n_treatments}`` (spec ``conditions = ["t"]``).
        init_log_alpha: initial mask logits.
        temperature: τ of the Gumbel-sigmoid.
        learn_control: give controls a learned shift and mask (see above).
        eval_mask: ``"hard"``, ``"expected"`` or ``"sample"``.
    """

    def __init__(
        self,
        dim: int,
        label_dims: LabelDims,
        *,
        init_log_alpha: float = 5.0,
        temperature: float = 1.0,
        learn_control: bool = True,
        eval_mask: str = "hard",
    ):
        super().__init__()
        if set(label_dims) != {"t"}:
            raise ConfigError(
                f"prior 'sparse_shift' conditions on the treatment only, but the spec gives it "
                f"{listing(label_dims) if label_dims else 'no conditions'}; use conditions = ['t']."
            )
        check_choice("eval_mask", eval_mask, EVAL_MASKS, owner="prior 'sparse_shift'")
        if not float(temperature) > 0:
            raise ConfigError(f"prior 'sparse_shift': temperature={temperature!r} must be positive.")
        self.dim = int(dim)
        self.n_treatments = int(label_dims["t"])
        self.learn_control = bool(learn_control)
        self.temperature = float(temperature)
        self.eval_mask = eval_mask
        self.init_log_alpha = float(init_log_alpha)
        rows = self.n_treatments + int(self.learn_control)
        self.mean = nn.Parameter(torch.zeros(rows, self.dim))
        self.log_alpha = nn.Parameter(torch.full((rows, self.dim), self.init_log_alpha))
        # the state of the transfer protocol, saved with the weights
        self.register_buffer("fixed_mask", torch.ones(rows, self.dim))
        self.register_buffer("frozen", torch.zeros((), dtype=torch.bool))

    @property
    def n_rows(self) -> int:
        """Treatments, plus the control row with ``learn_control``."""
        return self.mean.shape[0]

    @property
    def is_binarized(self) -> bool:
        """Whether the masks are fixed to their binarised values (:meth:`binarize`)."""
        return bool(self.frozen)

    def row_weights(self, labels: Labels) -> Tensor:
        """How much of each row's shift a cell gets, ``(B, n_rows)``: its doses, and 1 in the control row."""
        t = labels["t"]
        if not self.learn_control:
            return t
        return torch.cat([t, (t.abs().sum(-1, keepdim=True) == 0).to(t.dtype)], dim=-1)

    def sample_mask(self, n: int) -> Tensor:
        """Straight-through Gumbel-sigmoid masks, one per cell and row: ``(n, n_rows, dim)``."""
        u = torch.rand(n, *self.log_alpha.shape, device=self.log_alpha.device, dtype=self.log_alpha.dtype)
        u = u.clamp(_UNIFORM_EPS, 1.0 - _UNIFORM_EPS)
        soft = torch.sigmoid((self.log_alpha + torch.log(u) - torch.log1p(-u)) / self.temperature)
        return _StraightThrough.apply(soft)

    def current_mask(self) -> Tensor | None:
        """The mask used for every cell, ``(n_rows, dim)``, or None when it is drawn per cell."""
        if self.is_binarized:
            return self.fixed_mask
        if self.training or self.eval_mask == "sample":
            return None
        probs = torch.sigmoid(self.log_alpha)
        return (probs > 0.5).to(probs.dtype) if self.eval_mask == "hard" else probs

    def distribution(self, labels: Labels, n: int) -> dist.Distribution:
        """``N(Σ_a t_a · γ_a ⊙ μ_a, I)`` for the ``n`` cells of ``labels`` (masks drawn while training)."""
        w = self.row_weights(labels)
        mask = self.current_mask()
        if mask is not None:
            loc = w @ (mask * self.mean)
        else:  # a mask per cell and row (rows a cell does not use get weight 0)
            loc = torch.einsum("br,brd,rd->bd", w, self.sample_mask(n), self.mean)
        return dist.Normal(loc, torch.ones_like(loc)).to_event(1)

    # -- the masks --------------------------------------------------------------------------------------
    @torch.no_grad()
    def mask_probabilities(self) -> Tensor:
        """``σ(log_alpha)``, ``(n_rows, dim)``; after :meth:`binarize`, the fixed 0/1 mask."""
        return self.fixed_mask.clone() if self.is_binarized else torch.sigmoid(self.log_alpha).detach()

    @torch.no_grad()
    def binarize(self, threshold: float = 0.5) -> Tensor:
        """Fix every mask to ``σ(log_alpha) > threshold`` (train and eval alike); returns the mask."""
        if not self.is_binarized:
            self.fixed_mask.copy_((torch.sigmoid(self.log_alpha) > threshold).to(self.fixed_mask.dtype))
            self.frozen.fill_(True)
        return self.fixed_mask.clone()

    @torch.no_grad()
    def add_treatments(self, rows: Sequence[int]) -> None:
        """Start rows ``rows`` afresh as new treatments: ``μ = 0`` and an all-ones mask.

        The treatment vocabulary is fixed when the data are set up, so a treatment unseen in training
        already has a row; this resets it (sVAE's transfer protocol, stage 2).
        """
        index = torch.as_tensor(list(rows), dtype=torch.long, device=self.mean.device)
        if index.numel() and (index.min() < 0 or index.max() >= self.n_rows):
            raise ConfigError(f"prior 'sparse_shift': rows {list(rows)} outside 0..{self.n_rows - 1}.")
        self.mean[index] = 0.0
        self.log_alpha[index] = self.init_log_alpha
        self.fixed_mask[index] = 1.0


class MaskSparsity:
    """Sparsity of sVAE's treatment masks: mean σ(log_alpha) (sVAE) or a Beta(1, K) hyperprior (sVAE+).

    ``hyperprior="none"`` (sVAE): the loss is ``mean σ(log_alpha)`` over every mask entry, the
    spec's weight is λ. ``hyperprior="beta"`` (sVAE+): ``−Σ log Beta(σ(log_alpha); 1, K)`` summed
    over the entries and divided by the number of training cells ``N`` (a global term of the
    full-data objective spread over the per-cell loss, as sVAE+ adds it once to the summed ELBO);
    ``K = 1`` makes it constant (no sparsity pressure). Masks fixed by ``binarize`` are left out.

    It reads the masks of the model's ``sparse_shift`` priors through ``ctx.module``.

    Args:
        info: the model's blocks.
        blocks: the blocks whose masks are penalised (default: every block with a ``sparse_shift`` prior).
        hyperprior: ``"none"`` or ``"beta"``.
        K: the Beta(1, K) parameter of ``hyperprior="beta"``.
    """

    def __init__(self, info: ModelInfo, *, blocks: Sequence[str] | None = None, hyperprior: str = "none",
                 K: float = 1.0, start_epoch: float = 0.0):
        check_choice("hyperprior", hyperprior, HYPERPRIORS, owner="regularizer 'mask_sparsity'")
        if isinstance(K, bool) or not isinstance(K, (int, float)) or not K > 0:
            raise ConfigError(f"regularizer 'mask_sparsity': K={K!r} must be a positive number.")
        if blocks is not None:
            blocks = (blocks,) if isinstance(blocks, str) else tuple(blocks)
            for block in blocks:
                if block not in info.block_dims:
                    raise ConfigError(f"regularizer 'mask_sparsity': unknown block {block!r}."
                                      f"{did_you_mean(block, info.block_dims)} Blocks: {listing(info.block_dims)}.")
        self.blocks = blocks
        self.hyperprior = hyperprior
        self.K = float(K)
        if isinstance(start_epoch, bool) or not isinstance(start_epoch, (int, float)) or start_epoch < 0:
            raise ConfigError(f"regularizer 'mask_sparsity': start_epoch={start_epoch!r} must be a number >= 0.")
        self.start_epoch = float(start_epoch)

    def priors(self, module: nn.Module | None) -> list[SparseShift]:
        """The ``sparse_shift`` priors of ``module`` this term penalises."""
        priors = getattr(module, "priors", None)
        if priors is None:
            raise ConfigError("regularizer 'mask_sparsity' needs the model (ctx.module) to reach its priors.")
        names = list(priors) if self.blocks is None else list(self.blocks)
        found = [priors[b] for b in names if isinstance(priors[b], SparseShift)]
        wrong = [b for b in names if not isinstance(priors[b], SparseShift)] if self.blocks is not None else []
        if wrong or not found:
            raise ConfigError(f"regularizer 'mask_sparsity' penalises the masks of 'sparse_shift' priors, but "
                              f"{'block(s) ' + listing(wrong) if wrong else 'no block'} of this model has one: "
                              "give the block prior = {name = 'sparse_shift', conditions = ['t']}.")
        return found

    def loss(self, ctx: Context) -> Tensor:
        """The sparsity term of the masks (sVAE's mean probability, or sVAE+'s Beta hyperprior), once started."""
        priors = [p for p in self.priors(ctx.module) if not p.is_binarized]
        if not priors or ctx.epoch < self.start_epoch:
            return torch.zeros((), device=ctx.index.device)
        log_alpha = torch.cat([p.log_alpha.reshape(-1) for p in priors])
        if self.hyperprior == "none":
            return torch.sigmoid(log_alpha).mean()
        # log Beta(p; 1, K) = log K + (K - 1) log(1 - p), with log(1 - σ(a)) = logsigmoid(-a)
        log_density = math.log(self.K) + (self.K - 1.0) * F.logsigmoid(-log_alpha)
        return -log_density.sum() / ctx.n_obs


def sparse_shift_priors(module: nn.Module) -> dict[str, SparseShift]:
    """The blocks of ``module`` (a GenerativeModel) whose prior is ``sparse_shift``."""
    return {name: p for name, p in module.priors.items() if isinstance(p, SparseShift)}


@hookimpl
def fcrkit_register_components(registry) -> None:
    """Register the ``sparse_shift`` prior and the ``mask_sparsity`` regulariser."""
    registry.prior("sparse_shift", SparseShift)
    registry.regularizer("mask_sparsity", MaskSparsity)
