"""Regularisers that decide which latent block holds what (FCR's Figure 2c, usable by any model).

- ``label_classifier``: predict a label (``t`` or ``x``) from chosen blocks, trained with the model;
  FCR's causal-structure classifier ``f_ct(z_t, z_tx) -> t`` and covariate classifier ``z_x -> x``.
- ``permutation_discriminator``: an adversary telling real ``(z_a, z_b)`` pairs from pairs whose
  ``z_b`` was permuted among cells of the same condition; the encoders are trained to fool it.
- ``control_similarity``: ``cos(z_t, z_t⁰) − cos(z_x, z_x⁰)`` between a cell and its paired control.
- ``condition_kl``: KL between the per-condition averages of posterior and prior ("marginal" KL).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fcrkit.components.nn import mlp, mlp_width
from fcrkit.errors import ConfigError, did_you_mean, listing
from fcrkit.hookspecs import hookimpl
from fcrkit.protocols import Context, ModelInfo


def _check_blocks(info: ModelInfo, blocks: Sequence[str], who: str) -> tuple[str, ...]:
    blocks = (blocks,) if isinstance(blocks, str) else tuple(blocks)
    if not blocks:
        raise ConfigError(f"regularizer {who!r}: give at least one block.")
    for block in blocks:
        if block not in info.block_dims:
            raise ConfigError(f"regularizer {who!r}: unknown block {block!r}.{did_you_mean(block, info.block_dims)} "
                              f"Blocks of this model: {listing(info.block_dims)}.")
    return blocks


def _check_label(info: ModelInfo, label: str, who: str) -> None:
    if label not in info.label_dims:
        raise ConfigError(f"regularizer {who!r}: the data has no {label!r} labels (it has {listing(info.label_dims)}); "
                          "register them with fcrkit.setup_anndata.")


def condition_ids(ctx: Context) -> Tensor:
    """An integer id per cell of its condition: its (covariates, treatment) label row."""
    rows = torch.cat([ctx.labels[k] for k in sorted(ctx.labels)], dim=-1)
    return torch.unique(rows, dim=0, return_inverse=True)[1]


def permute_within(groups: Tensor) -> Tensor:
    """A random permutation that moves each cell to another cell of its group (if it has one)."""
    n = groups.numel()
    position = torch.arange(n, device=groups.device)
    order = torch.argsort(groups.double() * 2 + torch.rand(n, device=groups.device))  # groups contiguous, shuffled
    ordered = groups[order]
    first = torch.ones(n, dtype=torch.bool, device=groups.device)
    first[1:] = ordered[1:] != ordered[:-1]
    last = torch.ones_like(first)
    last[:-1] = first[1:]
    start = torch.cummax(torch.where(first, position, torch.zeros_like(position)), dim=0).values
    successor = torch.where(last, start, position + 1)  # next cell of the same group, cyclically
    permutation = torch.empty_like(order)
    permutation[order] = order[successor]
    return permutation


def _head(n_input: int, n_output: int, n_hidden: int, n_layers: int) -> nn.Sequential:
    trunk = mlp(n_input, n_hidden, n_layers, norm="none")
    return nn.Sequential(trunk, nn.Linear(mlp_width(n_input, n_hidden, n_layers), n_output))


class LabelClassifier(nn.Module):
    """Classify a label from latent blocks (trained with the model); FCR's f_ct and z_x -> x.

    A label made of one-hot columns (the covariates: one column per covariate key, see
    ``ModelInfo.label_groups``) gets one softmax head per column and the cross-entropy of each
    column, summed over columns and averaged over cells: each column is one categorical choice. A
    multi-hot label (the treatment, whose combinations switch several entries on; controls none)
    gets the binary cross-entropy summed over its entries.

    Args:
        blocks: the blocks the classifier reads (concatenated).
        label: ``"t"`` (treatment) or ``"x"`` (covariates).
        n_hidden: width of the classifier MLP.
        n_layers: hidden layers of the classifier MLP.
        use: ``"z"`` (posterior samples) or ``"loc"`` (posterior means).
    """

    def __init__(self, info: ModelInfo, *, blocks: Sequence[str] = ("t",), label: str = "t",
                 n_hidden: int = 64, n_layers: int = 1, use: str = "z"):
        super().__init__()
        self.blocks = _check_blocks(info, blocks, "label_classifier")
        _check_label(info, label, "label_classifier")
        if use not in ("z", "loc"):
            raise ConfigError(f"regularizer 'label_classifier': use={use!r} is not 'z' or 'loc'.")
        self.label, self.use = label, use
        n_in = sum(info.block_dims[b] for b in self.blocks)
        self.classifier = _head(n_in, info.label_dims[label], n_hidden, n_layers)
        self.groups = tuple(info.label_groups.get(label, ()))  # empty: a multi-hot label
        if self.groups and sum(self.groups) != info.label_dims[label]:
            raise ConfigError(f"regularizer 'label_classifier': label {label!r} is {info.label_dims[label]} wide, but "
                              f"its one-hot columns {list(self.groups)} add up to {sum(self.groups)}.")

    def logits(self, ctx: Context) -> Tensor:
        """The classifier's logits of the label from the chosen blocks."""
        latents = getattr(ctx, self.use)
        return self.classifier(torch.cat([latents[b] for b in self.blocks], dim=-1))

    def loss(self, ctx: Context) -> Tensor:
        """Cross-entropy per one-hot column (BCE per entry for a multi-hot label), summed, averaged over cells."""
        ctx = ctx.unpaired()  # each cell once, not again as another cell's paired control
        logits, label = self.logits(ctx), ctx.labels[self.label]
        if not self.groups:
            target = (label > 0).to(logits.dtype)
            return F.binary_cross_entropy_with_logits(logits, target, reduction="none").sum(-1).mean()
        total = logits.new_zeros(())
        for column, target in zip(logits.split(self.groups, -1), label.split(self.groups, -1)):
            total = total + F.cross_entropy(column, target.argmax(-1))
        return total


class PermutationDiscriminator(nn.Module):
    """Adversary: real (z_a, z_b) pairs vs pairs with z_b permuted within a condition; encoders fool it.

    Within a condition the blocks should be independent, so the permutation must be undetectable.
    Cells alone in their condition in the minibatch are left out (they cannot be permuted). The
    discriminator trains on detached latents with its own optimiser; the model's term is
    ``-BCE`` of the discriminator (weight ``λ_perm``), so its gradient reaches the encoders.

    Args:
        blocks: ``(a, b)``; ``b`` is permuted.
        n_hidden: width of the discriminator MLP.
        n_layers: hidden layers of the discriminator MLP.
        adversary_lr: its learning rate.
        adversary_steps: its steps per model step.
        alternate_every: if > 0, the discriminator trains only in every ``alternate_every``-th
            epoch, and the model does not step in those epochs (the authors' one-in-eight schedule).
        published_noop: compute the model's term without gradient, as both published versions of the
            FCR code did by mistake (for comparison only).
    """

    global_batch = True  # it compares cells of a minibatch: under data parallelism, of the whole global batch

    def __init__(self, info: ModelInfo, *, blocks: Sequence[str] = ("t", "tx"), n_hidden: int = 64,
                 n_layers: int = 2, adversary_lr: float = 1e-3, adversary_steps: int = 1,
                 alternate_every: int = 0, published_noop: bool = False):
        super().__init__()
        self.blocks = _check_blocks(info, blocks, "permutation_discriminator")
        if len(self.blocks) != 2:
            raise ConfigError(f"regularizer 'permutation_discriminator': blocks={list(self.blocks)} "
                              "must name two blocks.")
        self.adversary = _head(sum(info.block_dims[b] for b in self.blocks), 1, n_hidden, n_layers)
        self.adversary_lr, self.adversary_steps = float(adversary_lr), int(adversary_steps)
        self.alternate_every, self.published_noop = int(alternate_every), bool(published_noop)

    def _bce(self, ctx: Context) -> Tensor:
        """BCE over the cells that share their condition with another cell of the minibatch.

        A cell alone in its condition cannot be permuted: its "permuted" pair would be its real pair
        labelled fake, a contradiction the discriminator would be trained on (with many conditions,
        as sciPlex's ~2,000 (x, t, dose) triples against 1,024 cells a batch, most cells are alone).
        Such cells are left out of both the real and the permuted half; with none left the term is 0.
        """
        ctx = ctx.unpaired()
        a, b = (ctx.z[name] for name in self.blocks)
        permutation = permute_within(condition_ids(ctx))
        moved = permutation != torch.arange(len(permutation), device=permutation.device)
        keep = moved.to(a.dtype)
        real = self.adversary(torch.cat([a, b], dim=-1)).squeeze(-1)
        fake = self.adversary(torch.cat([a, b.index_select(0, permutation)], dim=-1)).squeeze(-1)
        bce = (F.binary_cross_entropy_with_logits(real, torch.ones_like(real), reduction="none")
               + F.binary_cross_entropy_with_logits(fake, torch.zeros_like(fake), reduction="none"))
        return (bce * keep).sum() / keep.sum().clamp_min(1.0)  # no host sync: an all-alone batch gives 0

    def adversary_loss(self, ctx: Context) -> Tensor:
        """The discriminator's BCE, real pairs against pairs permuted within conditions."""
        return self._bce(ctx)

    def loss(self, ctx: Context) -> Tensor:
        """The model's term, ``-BCE`` of the discriminator (no gradient with ``published_noop``)."""
        if self.published_noop:
            with torch.no_grad():
                return -self._bce(ctx)
        return -self._bce(ctx)


class ControlSimilarity:
    """cos(z_t, z_t⁰) over treated cells − cos(z_x, z_x⁰) over all cells, on posterior means.

    ``z⁰`` is the encoding of the cell's paired control (``control_pairing`` in the spec): the
    treatment block is pushed away from its control's, the covariate block towards it.
    """

    needs_control_pairing = True

    def __init__(self, info: ModelInfo, *, treatment_block: str = "t", covariate_block: str = "x"):
        self.treatment_block, self.covariate_block = _check_blocks(
            info, (treatment_block, covariate_block), "control_similarity")
        _check_label(info, "t", "control_similarity")

    def loss(self, ctx: Context) -> Tensor:
        """``mean cos(z_t, z_t⁰)`` over treated cells minus ``mean cos(z_x, z_x⁰)`` (posterior means)."""
        n = ctx.pairs
        t, x = ctx.loc[self.treatment_block], ctx.loc[self.covariate_block]
        treated = (ctx.labels["t"][:n].sum(-1) > 0).to(t.dtype)
        cos_t = F.cosine_similarity(t[:n], t[n:2 * n], dim=-1)
        cos_x = F.cosine_similarity(x[:n], x[n:2 * n], dim=-1)
        return (cos_t * treated).sum() / treated.sum().clamp_min(1.0) - cos_x.mean()


class ConditionKL:
    """KL between per-condition averages of posterior and prior Gaussians, summed over conditions.

    Within the minibatch, cells are grouped by condition; the posterior means and scales, and the
    prior means and scales, are averaged per group, and ``KL(avg posterior || avg prior)`` is summed
    over dimensions, blocks and the groups present, as the authors' "marginal" KL is (a sum over
    groups, ``../shared/reference/FCR.md``). A sum, not a mean: each condition present pulls its
    average posterior to its prior whatever the number of other conditions in the batch; the price is
    that the term grows with the number of conditions a minibatch holds, so its weight depends on
    the data (a mean would divide it by that number).
    """

    def __init__(self, info: ModelInfo, *, blocks: Sequence[str] | None = None):
        self.blocks = _check_blocks(info, list(info.block_dims) if blocks is None else blocks, "condition_kl")

    def loss(self, ctx: Context) -> Tensor:
        """``Σ_conditions Σ_blocks KL(avg posterior || avg prior)`` over the minibatch's conditions."""
        ctx = ctx.unpaired()
        groups = condition_ids(ctx)
        n_groups = int(groups.max()) + 1
        ones = torch.ones_like(groups, dtype=torch.float32)
        counts = torch.zeros(n_groups, device=groups.device).index_add_(0, groups, ones)

        def average(values: Tensor) -> Tensor:
            total = torch.zeros(n_groups, values.shape[-1], device=values.device, dtype=values.dtype)
            return total.index_add_(0, groups, values) / counts[:, None]

        total = torch.zeros((), device=groups.device)
        for block in self.blocks:
            prior = ctx.prior(block, ctx.labels, len(groups))
            q = torch.distributions.Normal(average(ctx.loc[block]), average(ctx.scale[block]))
            p = torch.distributions.Normal(average(prior.loc.expand_as(ctx.loc[block])),
                                           average(prior.scale.expand_as(ctx.scale[block])))
            total = total + torch.distributions.kl_divergence(q, p).sum()
        return total


@hookimpl
def fcrkit_register_components(registry) -> None:
    """Register FCR's structure regularisers."""
    registry.regularizer("label_classifier", LabelClassifier)
    registry.regularizer("permutation_discriminator", PermutationDiscriminator)
    registry.regularizer("control_similarity", ControlSimilarity)
    registry.regularizer("condition_kl", ConditionKL)
