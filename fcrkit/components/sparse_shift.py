"""The sparse mechanism shift of sVAE (Lopez et al., CLeaR 2023): a prior and its sparsity term.

- ``sparse_shift`` (prior): ``z ~ N(Σ_a d_a · γ_a ⊙ μ_a, I)`` for a cell with treatments ``a`` at
  doses ``d_a``: a learned mean shift ``μ_a`` per treatment, switched on or off per latent
  dimension by a binary mask ``γ_a``. The masks are a *global* block (``plate = "t"``, one mask per
  treatment, not per cell) that the prior reads through its conditions, e.g.
  ``conditions = ["t", "mask"]`` with ``mask = "mask"``; the block's posterior is typically
  ``relaxed_bernoulli`` (straight-through 0/1 draws).
- ``mask_sparsity`` (regulariser): sVAE's ``λ · mean σ(logit γ)``: the mean probability of the
  masks' entries being on, read from the regulariser context (``ctx.global_loc``), pushing each
  treatment to shift few latent dimensions. sVAE+'s Beta(1, K) hyperprior is no term here but a
  real site: a global block with a ``beta`` prior that the masks' ``bernoulli`` prior conditions on
  (see :func:`fcrkit.models.svae.svae_spec`).
"""

from __future__ import annotations

from collections.abc import Sequence

import pyro.distributions as dist
import torch
from torch import Tensor, nn

from fcrkit.data.labels import EntryDraws, entry_rows, treatment_entries
from fcrkit.errors import ConfigError, did_you_mean, listing
from fcrkit.hookspecs import hookimpl
from fcrkit.protocols import Context, LabelDims, Labels, ModelInfo


class SparseShift(nn.Module):
    """Sparse mechanism-shift prior N(Σ_a d_a · γ_a ⊙ μ_a, I) of sVAE: per-treatment mean shifts, sparse masks.

    Row ``a`` of ``mean`` is ``μ_a`` (initialised at 0). The mask ``γ`` is the global block named by
    ``mask`` (its ``(treatments, dim)`` value: a draw of its posterior while training, its point,
    e.g. the binarised ``σ(logit) > 0.5``, in ``predict``); without ``mask`` every shift is on.
    A cell's shift is gathered from its few treatment entries
    (:func:`fcrkit.data.labels.treatment_entries`): memory ``O(entries × dim)``, never
    ``cells × treatments × dim``; a combination adds its parts' shifts.

    **Controls.** With ``learn_control=True`` (sVAE's choice, where the control is one more label)
    controls (no treatment) have a row of their own, the last one, with its own ``μ`` and no mask;
    with ``learn_control=False`` their prior is N(0, I).

    Args:
        dim: latent dimension of the block.
        label_dims: ``{"t": n_treatments}``, plus the mask block when ``mask`` is set (spec
            ``conditions = ["t", "<mask block>"]``).
        mask: the name of the global block holding the masks (None: no masks).
        learn_control: give controls a learned shift (see above).
    """

    #: The mask's rows are read with entry_rows(), so the mask block may be drawn per treatment entry.
    reads_entry_draws = True

    def __init__(self, dim: int, label_dims: LabelDims, *, mask: str | None = None, learn_control: bool = True):
        super().__init__()
        blocks = [c for c in label_dims if c not in ("x", "t")]
        if "t" not in label_dims or "x" in label_dims:
            raise ConfigError(
                f"prior 'sparse_shift' conditions on the treatment only, but the spec gives it "
                f"{listing(label_dims) if label_dims else 'no conditions'}; use conditions = ['t'] (and the mask "
                "block, e.g. ['t', 'mask'])."
            )
        if mask is None and blocks:
            raise ConfigError(f"prior 'sparse_shift' reads global block(s) {listing(blocks)} but names none as its "
                              f"mask: set mask = {blocks[0]!r}.")
        if mask is not None and (mask not in blocks or len(blocks) > 1):
            raise ConfigError(f"prior 'sparse_shift': mask={mask!r} must be the one global block among its "
                              f"conditions (got {listing(blocks) if blocks else 'none'}); give conditions = "
                              f"['t', {mask!r}].")
        if mask is not None and label_dims[mask] != dim:
            raise ConfigError(f"prior 'sparse_shift': the mask block {mask!r} has dimension {label_dims[mask]}, the "
                              f"latent {dim}; they must match (one mask entry per latent dimension).")
        self.dim = int(dim)
        self.n_treatments = int(label_dims["t"])
        self.mask = mask
        self.learn_control = bool(learn_control)
        self.mean = nn.Parameter(torch.zeros(self.n_treatments + int(self.learn_control), self.dim))

    def distribution(self, labels: Labels, n: int) -> dist.Distribution:
        """``N(Σ_a d_a · γ_a ⊙ μ_a, I)`` for the ``n`` cells of ``labels``."""
        cells, rows, doses = treatment_entries(labels)
        table = self.mean[: self.n_treatments]
        mask = labels[self.mask] if self.mask is not None else None
        if isinstance(mask, EntryDraws):  # each entry's own draw of its treatment's mask (draws = "per_entry")
            shifts = entry_rows(mask, rows) * table[rows]
        else:  # one (treatments, dim) mask, or none
            shifts = (table if mask is None else mask * table)[rows]
        loc = self.mean.new_zeros(n, self.dim).index_add(0, cells, doses.unsqueeze(-1) * shifts)
        if self.learn_control:
            treated = torch.zeros(n, dtype=torch.bool, device=loc.device).index_fill(0, cells, True)
            loc = loc + (~treated).unsqueeze(-1).to(loc.dtype) * self.mean[-1]
        return dist.Normal(loc, torch.ones_like(loc)).to_event(1)

    @torch.no_grad()
    def add_treatments(self, rows: Sequence[int]) -> None:
        """Start the shifts of rows ``rows`` afresh (``μ = 0``): new treatments (sVAE's transfer protocol).

        The treatment vocabulary is fixed when the data are set up, so a treatment unseen in training
        already has a row; this resets it.
        """
        index = torch.as_tensor(list(rows), dtype=torch.long, device=self.mean.device)
        if index.numel() and (index.min() < 0 or index.max() >= self.n_treatments):
            raise ConfigError(f"prior 'sparse_shift': rows {list(rows)} outside 0..{self.n_treatments - 1}.")
        self.mean[index] = 0.0


class MaskSparsity:
    """sVAE's sparsity term: ``mean σ(logit γ)``, the mean probability of the masks' entries being on.

    The spec's weight is λ. The probabilities are what the mask blocks' posterior family exposes
    as ``loc`` (``ctx.global_loc``; a ``relaxed_bernoulli`` block's ``σ(logits)``), averaged over
    every entry of the chosen blocks. A block fixed with ``fix_global`` (sVAE's binarised masks) is
    no site and is left out.

    Start it late with the spec entry's ``start_epoch`` (see :class:`fcrkit.models.SVAE`).

    Args:
        info: the model's blocks.
        blocks: the global mask blocks (default: every global block).
    """

    def __init__(self, info: ModelInfo, *, blocks: Sequence[str] | None = None):
        known = list(info.global_dims)
        if blocks is None:
            blocks = known
        blocks = (blocks,) if isinstance(blocks, str) else tuple(blocks)
        if not blocks:
            raise ConfigError("regularizer 'mask_sparsity' penalises the masks of global blocks, but this model has "
                              "none: add a block with plate = 't' and posterior 'relaxed_bernoulli'.")
        for block in blocks:
            if block not in known:
                hint = " (it is per cell; the masks are a global block)" if block in info.block_dims else ""
                raise ConfigError(f"regularizer 'mask_sparsity': {block!r} is not a global block{hint}."
                                  f"{did_you_mean(block, known)} Global blocks: {listing(known) or 'none'}.")
        self.blocks = blocks

    def loss(self, ctx: Context) -> Tensor:
        """The mean mask probability of the blocks that are sites (0 when every one is fixed)."""
        probs = [ctx.global_loc[b].reshape(-1) for b in self.blocks if b in ctx.global_loc]
        if not probs:
            return torch.zeros((), device=ctx.index.device)
        return torch.cat(probs).mean()


@hookimpl
def fcrkit_register_components(registry) -> None:
    """Register the ``sparse_shift`` prior and the ``mask_sparsity`` regulariser."""
    registry.prior("sparse_shift", SparseShift)
    registry.regularizer("mask_sparsity", MaskSparsity)
