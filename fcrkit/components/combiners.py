"""Built-in combiners: how the latent blocks of a cell reach the decoder.

* ``concat`` (the default): the blocks side by side, in spec order;
* ``masked``: the same, with one block set to zero for control cells (contrastive models: the
  salient block of background cells is exactly zero);
* ``sparse_additive``: a basal block plus the cell's treatments' shifts,
  ``z_basal + Σ_p d_p (σ(m_p) ⊙ e_p)`` (SAMS-VAE's composition, with learned per-treatment
  embeddings ``e_p`` and soft masks ``m_p``), gathered from the cells' treatment indices with an
  embedding bag: memory ``O(batch × dims + treatments × dims)``, never ``batch × treatments × dims``.
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


class SparseAdditive(nn.Module):
    """``z_basal + Σ_p d_p (σ(m_p) ⊙ e_p)``, then the other blocks concatenated after it.

    Args:
        block_dims: the model's blocks and their sizes.
        label_dims: the combiner's labels (``"t"`` needed).
        basal: the block the treatment shifts are added to.
        init_mask_logit: initial logit of every mask entry (5: masks start open, σ(5) ≈ 0.99).
    """

    def __init__(self, block_dims: Mapping[str, int], label_dims: LabelDims, *, basal: str = "z",
                 init_mask_logit: float = 5.0):
        super().__init__()
        if "t" not in label_dims:
            raise ConfigError("combiner 'sparse_additive' adds the cells' treatment shifts, so it needs the "
                              "treatment: give it conditions = ['t'].")
        self.basal = _known_block(basal, block_dims, "sparse_additive")
        self.others = tuple(b for b in block_dims if b != basal)
        dim, n_treatments = block_dims[basal], label_dims["t"]
        self.embeddings = nn.Parameter(torch.zeros(n_treatments, dim))
        self.mask_logits = nn.Parameter(torch.full((n_treatments, dim), float(init_mask_logit)))
        self.n_output = sum(block_dims.values())

    def shifts(self, labels: Labels, n_cells: int) -> Tensor:
        """``Σ_p d_cp (σ(m_p) ⊙ e_p)`` for each of the ``n_cells`` cells of ``labels``, ``(n_cells, dim)``.

        An embedding bag over the cells' (few) non-zero treatment entries: no ``(B, P, dim)`` tensor.
        """
        cells, treatments, doses = treatment_entries(labels)
        counts = torch.bincount(cells, minlength=n_cells)
        offsets = torch.cumsum(counts, 0) - counts
        table = torch.sigmoid(self.mask_logits) * self.embeddings
        return F.embedding_bag(treatments, table, offsets, mode="sum", per_sample_weights=doses)

    def forward(self, z: Mapping[str, Tensor], labels: Labels) -> Tensor:
        """The shifted basal block, then the other blocks."""
        shifted = z[self.basal] + self.shifts(labels, z[self.basal].shape[0])
        return torch.cat([shifted, *(z[b] for b in self.others)], dim=-1)


@hookimpl
def fcrkit_register_components(registry) -> None:
    """Register the ``concat``, ``masked`` and ``sparse_additive`` combiners."""
    registry.combiner("concat", Concat)
    registry.combiner("masked", Masked)
    registry.combiner("sparse_additive", SparseAdditive)
