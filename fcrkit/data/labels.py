"""Reading a minibatch's treatments as entries (cell, treatment, dose) rather than as a dense row.

Components that combine per-treatment parameters (an embedding per perturbation, a mask per
perturbation) need only the few non-zero treatment entries of each cell. They read them with
:func:`treatment_entries`, so their cost is ``O(entries × dims)``, never ``cells × treatments × dims``,
whatever form the labels are held in.
"""

from __future__ import annotations

from torch import Tensor

from fcrkit.protocols import Labels


def treatment_entries(labels: Labels) -> tuple[Tensor, Tensor, Tensor]:
    """The non-zero treatment entries of a minibatch: ``(cells, treatments, doses)``, three 1-D tensors.

    ``cells`` are row numbers in the batch, in ascending order (each cell's entries are contiguous),
    ``treatments`` positions in the treatment vocabulary, ``doses`` the (float) doses. Controls
    have no entries.
    """
    t = labels["t"]
    cells, treatments = t.nonzero(as_tuple=True)  # row-major: each cell's entries are contiguous
    return cells, treatments, t[cells, treatments]
