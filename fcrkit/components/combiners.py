"""Built-in combiners: how the latent blocks of a cell reach the decoder.

* ``concat`` (the default): the blocks side by side, in spec order;
* ``masked``: the same, with one block set to zero for control cells (contrastive models: the
  salient block of background cells is exactly zero);
* ``sparse_additive``: a basal block plus the cell's treatments' shifts,
  ``z_basal + Σ_p d_p (m_p ⊙ e_p)`` (SAMS-VAE's composition), gathered from the cells' treatment
  indices with an embedding bag: memory ``O(batch × dims + treatments × dims)``, never
  ``batch × treatments × dims``. The embeddings ``e_p`` and masks ``m_p`` are point parameters of
  the combiner (soft masks ``σ(logits)``), or latent global blocks (``plate = "t"``) that the
  combiner names with ``embedding`` / ``mask`` and lists among its conditions (SAMS-VAE's priors
  and posteriors over them).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fcrkit.data.labels import treatment_entries
from fcrkit.errors import ConfigError, did_you_mean, listing
from fcrkit.hookspecs import hookimpl
from fcrkit.protocols import LabelDims, Labels


def _known_block(block: str, block_dims: Mapping[str, int], combiner: str) -> str:
    if block not in block_dims:
        known = list(block_dims)
        raise ConfigError(f"combiner {combiner!r}: unknown block {block!r}.{did_you_mean(block, known)} "
                          f"Blocks of this model: {listing(known)}.")
    return block


class Concat(nn.Module):
    """The blocks concatenated in spec order (what the decoder has always read)."""

    def __init__(self, block_dims: Mapping[str, int], label_dims: LabelDims):
        super().__init__()
        self.blocks = tuple(block_dims)
        self.n_output = sum(block_dims.values())

    def forward(self, z: Mapping[str, Tensor], labels: Labels) -> Tensor:
        """``[z_1, ..., z_B]`` along the last dimension."""
        return torch.cat([z[name] for name in self.blocks], dim=-1)


class Masked(Concat):
    """The blocks concatenated, with ``block`` zeroed for control cells (no treatment).

    Args:
        block_dims: the model's blocks and their sizes.
        label_dims: the combiner's labels (it needs ``"t"``: give it ``conditions = ["t"]``).
        block: the block that exists for treated ("target") cells only.
    """

    def __init__(self, block_dims: Mapping[str, int], label_dims: LabelDims, *, block: str):
        super().__init__(block_dims, label_dims)
        if "t" not in label_dims:
            raise ConfigError("combiner 'masked' zeroes a block for control cells, so it needs the treatment: "
                              "give it conditions = ['t'].")
        self.block = _known_block(block, block_dims, "masked")

    def forward(self, z: Mapping[str, Tensor], labels: Labels) -> Tensor:
        """The concatenation, ``z[block]`` multiplied by 0 for cells whose treatment row is all zeros."""
        treated = (labels["t"] != 0).any(-1, keepdim=True).to(z[self.block].dtype)
        return super().forward({**z, self.block: z[self.block] * treated}, labels)


def treatment_shifts(labels: Labels, table: Tensor, n_cells: int) -> Tensor:
    """``Σ_p d_cp table[p]`` for each of the ``n_cells`` cells of ``labels``: ``(n_cells, dim)``.

    ``table`` holds one row per treatment (e.g. ``m_p ⊙ e_p``). An embedding bag over the cells' (few)
    non-zero treatment entries (:func:`~fcrkit.data.labels.treatment_entries`): memory
    ``O(n_cells × dim + treatments × dim)``, no ``(cells, treatments, dim)`` tensor; controls get 0.
    """
    cells, treatments, doses = treatment_entries(labels)
    counts = torch.bincount(cells, minlength=n_cells)
    offsets = torch.cumsum(counts, 0) - counts
    return F.embedding_bag(treatments, table, offsets, mode="sum", per_sample_weights=doses.to(table.dtype))


def shift_table(values: Mapping[str, Tensor], embedding: str, mask: str | None) -> Tensor:
    """The per-treatment shifts ``m_p ⊙ e_p`` (or ``e_p`` without a mask), ``(treatments, dim)``, from the
    global blocks ``embedding`` and ``mask`` in ``values``."""
    return values[embedding] if mask is None else values[mask] * values[embedding]


def shift_blocks(label_dims: LabelDims, dim: int, owner: str, embedding: str | None,
                 mask: str | None) -> tuple[str | None, str | None]:
    """Check the global blocks ``embedding`` / ``mask`` a part reads its per-treatment shifts from.

    Each must be one of the part's conditions (so the model hands it the block's ``(treatments, dim)``
    value) with rows as wide as the shifted block (``dim``); a mask needs an embedding.
    """
    if mask is not None and embedding is None:
        raise ConfigError(f"{owner}: mask={mask!r} needs embedding= too (the mask switches embedding entries).")
    for option, block in (("embedding", embedding), ("mask", mask)):
        if block is None:
            continue
        if block not in label_dims:
            wanted = ["t", *(b for b in (embedding, mask) if b is not None)]
            raise ConfigError(f"{owner}: {option}={block!r} is read from a global block, so list it among the "
                              f"conditions: conditions = {wanted!r}.")
        if label_dims[block] != dim:
            raise ConfigError(f"{owner}: global block {block!r} ({option}) has dimension {label_dims[block]}, but the "
                              f"shifted block has {dim}; give them the same dim.")
    return embedding, mask


class SparseAdditive(nn.Module):
    """``z_basal + Σ_p d_p (m_p ⊙ e_p)``, then the other per-cell blocks concatenated after it.

    Without ``embedding``, ``e_p`` and the soft mask ``σ(logit_p)`` are point parameters of the combiner.
    With ``embedding`` (and optionally ``mask``), they are the values of those global blocks
    (``plate = "t"``, listed among the combiner's conditions), e.g. SAMS-VAE's latent embeddings
    and Bernoulli masks; without ``mask`` the embeddings are added unmasked.

    Args:
        block_dims: the model's per-cell blocks and their sizes.
        label_dims: the combiner's labels (``"t"`` needed, and the global blocks it reads).
        basal: the block the treatment shifts are added to.
        init_mask_logit: initial logit of every mask entry of the point parameters (5: masks start
            open, σ(5) ≈ 0.99).
        embedding: a global block holding the per-treatment embeddings ``e_p`` (None: point parameters).
        mask: a global block holding the per-treatment masks ``m_p`` (None: no mask, or the point
            parameters' soft masks when ``embedding`` is None).
    """

    def __init__(self, block_dims: Mapping[str, int], label_dims: LabelDims, *, basal: str = "z",
                 init_mask_logit: float = 5.0, embedding: str | None = None, mask: str | None = None):
        super().__init__()
        if "t" not in label_dims:
            raise ConfigError("combiner 'sparse_additive' adds the cells' treatment shifts, so it needs the "
                              "treatment: give it conditions = ['t'].")
        self.basal = _known_block(basal, block_dims, "sparse_additive")
        self.others = tuple(b for b in block_dims if b != basal)
        dim, n_treatments = block_dims[basal], label_dims["t"]
        self.embedding, self.mask = shift_blocks(label_dims, dim, "combiner 'sparse_additive'", embedding, mask)
        if self.embedding is None:
            self.embeddings = nn.Parameter(torch.zeros(n_treatments, dim))
            self.mask_logits = nn.Parameter(torch.full((n_treatments, dim), float(init_mask_logit)))
        self.n_output = sum(block_dims.values())

    def table(self, z: Mapping[str, Tensor]) -> Tensor:
        """The per-treatment shifts ``m_p ⊙ e_p``, ``(treatments, dim)``: from the global blocks in ``z`` when
        the combiner names them, else from its parameters."""
        if self.embedding is None:
            return torch.sigmoid(self.mask_logits) * self.embeddings
        return shift_table(z, self.embedding, self.mask)

    def shifts(self, labels: Labels, n_cells: int, z: Mapping[str, Tensor] | None = None) -> Tensor:
        """``Σ_p d_cp (m_p ⊙ e_p)`` for each of the ``n_cells`` cells of ``labels``, ``(n_cells, dim)``
        (``z``: the blocks, needed when the shifts come from global blocks)."""
        return treatment_shifts(labels, self.table(z or {}), n_cells)

    def forward(self, z: Mapping[str, Tensor], labels: Labels) -> Tensor:
        """The shifted basal block, then the other per-cell blocks."""
        shifted = z[self.basal] + self.shifts(labels, z[self.basal].shape[0], z)
        return torch.cat([shifted, *(z[b] for b in self.others)], dim=-1)


@hookimpl
def fcrkit_register_components(registry) -> None:
    """Register the ``concat``, ``masked`` and ``sparse_additive`` combiners."""
    registry.combiner("concat", Concat)
    registry.combiner("masked", Masked)
    registry.combiner("sparse_additive", SparseAdditive)
