"""Labels held as indices and doses; a minibatch's treatments read as entries (cell, treatment, dose).

A label (the covariates ``"x"``, the treatments ``"t"``) is stored as two ``(cells, k)`` arrays: the
vocabulary positions of each cell's entries and their values (doses; 1 for a covariate level), ``k``
being the most entries any cell has (the number of covariate columns; the most parts of a
combination). Unused slots hold position ``-1`` and value 0. Memory is ``O(cells × k)``, never
``cells × vocabulary``: 50,000 cells with single perturbations out of 20,000 take 600 kB, not 4 GB.

- :class:`EncodedLabel`: one label of many cells as numpy arrays, what
  :meth:`~fcrkit.data.anndata.AnnDataSetup.encode_labels` returns.
- :class:`IndexedLabels`: the labels of a set of cells as tensors (what ``CellData`` keeps and each
  ``Batch`` carries). It is the ``Labels`` mapping components receive: ``labels["t"]`` is the dense
  dose-weighted multi-hot ``(cells, vocabulary)`` float32 tensor, built on first access and kept
  for the rest of the minibatch (a component that wants one-hot pays for it per minibatch).
- :func:`treatment_entries`: components that combine per-treatment parameters (an embedding per
  perturbation, a mask per perturbation) read only the few non-zero entries of each cell, straight
  from the stored indices; their cost is ``O(entries × dims)``, never ``cells × treatments × dims``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from fcrkit.errors import DataError
from fcrkit.protocols import Labels

#: Position of an unused slot (its value is 0).
PAD = -1


@dataclass(frozen=True)
class EncodedLabel:
    """One label of ``n`` cells as ``(n, k)`` vocabulary positions and values (see the module docstring).

    Attributes:
        index: ``(n, k)`` int64 positions in the vocabulary, :data:`PAD` in unused slots; within a
            row the positions are distinct and ascending, used slots first.
        value: ``(n, k)`` float32 value of each entry (the dose; 1 for a covariate level), 0 in
            unused slots and never 0 in a used one.
        width: size of the vocabulary (the width of the dense form).
    """

    index: np.ndarray
    value: np.ndarray
    width: int

    @classmethod
    def from_entries(cls, rows: Any, positions: Any, values: Any, n_rows: int, width: int) -> EncodedLabel:
        """From parallel 1-D arrays of entries: row ``rows[i]`` has ``values[i]`` at ``positions[i]``.

        Entries repeated at one (row, position) are summed (``A+A`` is ``2 × A``, as in the dense sum);
        entries whose value is then 0 are dropped (a dose of 0 adds nothing). Vectorised: no Python loop
        over cells or over the vocabulary.
        """
        rows, positions = np.asarray(rows, dtype=np.int64), np.asarray(positions, dtype=np.int64)
        values = np.asarray(values, dtype=np.float64)
        order = np.lexsort((positions, rows))
        rows, positions, values = rows[order], positions[order], values[order]
        if rows.size:
            first = np.r_[True, (rows[1:] != rows[:-1]) | (positions[1:] != positions[:-1])]
            values = np.bincount(np.cumsum(first) - 1, weights=values)
            rows, positions = rows[first], positions[first]
        kept = values != 0
        rows, positions, values = rows[kept], positions[kept], values[kept]
        counts = np.bincount(rows, minlength=n_rows)
        k = int(counts.max()) if n_rows else 0
        slot = np.arange(rows.size) - np.repeat(np.cumsum(counts) - counts, counts)  # rank within its row
        index = np.full((n_rows, k), PAD, dtype=np.int64)
        value = np.zeros((n_rows, k), dtype=np.float32)
        index[rows, slot], value[rows, slot] = positions, values
        return cls(index, value, int(width))

    @classmethod
    def from_dense(cls, array: Any) -> EncodedLabel:
        """From a dense ``(n, width)`` array (a 1-D array is one column); its non-zero entries are kept."""
        array = np.asarray(array, dtype=np.float32)
        if array.ndim == 1:
            array = array[:, None]
        if array.ndim != 2:
            raise DataError(f"a dense label must be a (cells, width) array, got shape {array.shape}.")
        rows, columns = np.nonzero(array)
        return cls.from_entries(rows, columns, array[rows, columns], array.shape[0], array.shape[1])

    @property
    def shape(self) -> tuple[int, int]:
        """``(cells, width)``: the shape of the dense form."""
        return (self.index.shape[0], self.width)

    @property
    def dtype(self) -> np.dtype:
        """float32, the dtype of the values and of the dense form."""
        return self.value.dtype

    @property
    def nbytes(self) -> int:
        """Bytes held: those of ``index`` and ``value``."""
        return self.index.nbytes + self.value.nbytes

    def __len__(self) -> int:
        """Number of cells."""
        return self.index.shape[0]

    def counts(self) -> np.ndarray:
        """``(n,)`` number of entries of each cell (0 for a control's treatment)."""
        return (self.index != PAD).sum(1)

    def dense(self) -> np.ndarray:
        """The dense ``(n, width)`` float32 array (dose-weighted multi-hot); ``n × width`` floats, use sparingly."""
        out = np.zeros(self.shape, dtype=np.float32)
        rows, slots = np.nonzero(self.index != PAD)
        out[rows, self.index[rows, slots]] = self.value[rows, slots]
        return out

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        """The dense form, so that ``np.asarray(label)`` gives the ``(n, width)`` array."""
        out = self.dense()
        return out if dtype is None else out.astype(dtype, copy=False)


class IndexedLabels(Mapping[str, Tensor]):
    """The labels of a set of cells held as index and value tensors; a ``Labels`` mapping of dense views.

    ``labels[key]`` is the dense ``(cells, width)`` float32 tensor, built with one scatter on first
    access and cached in this object (a minibatch's labels are read by several components), so
    read it from minibatches: on the labels of a whole data set it builds the ``cells × width``
    matrix the index form avoids. :meth:`entries` reads the stored entries without a dense form.

    Args:
        index: per label, ``(n, k)`` int64 positions, :data:`PAD` in unused slots.
        value: per label, ``(n, k)`` float32 values, 0 in unused slots.
        widths: per label, its vocabulary size.
    """

    def __init__(self, index: Mapping[str, Tensor], value: Mapping[str, Tensor], widths: Mapping[str, int]):
        self.index, self.value = dict(index), dict(value)
        self.widths = {key: int(widths[key]) for key in self.index}
        self._dense: dict[str, Tensor] = {}
        self._entries: dict[str, tuple[Tensor, Tensor, Tensor]] = {}
        self._values: dict[str, Tensor] = {}  # ready tensors beside the labels (global blocks' values)

    @classmethod
    def from_encoded(cls, labels: Mapping[str, EncodedLabel | np.ndarray], n_obs: int,
                     device: torch.device | str = "cpu") -> IndexedLabels:
        """Tensors on ``device`` of encoded labels (or dense arrays, converted), each with ``n_obs`` rows."""
        index, value, widths = {}, {}, {}
        for key, label in labels.items():
            if not isinstance(label, EncodedLabel):
                label = EncodedLabel.from_dense(label)
            if len(label) != n_obs:
                raise DataError(f"labels[{key!r}] has shape {label.shape}; expected one row per cell ({n_obs}).")
            index[key] = torch.as_tensor(label.index, dtype=torch.int64).to(device)
            value[key] = torch.as_tensor(label.value, dtype=torch.float32).to(device)
            widths[key] = label.width
        return cls(index, value, widths)

    # -- the Mapping: dense views -------------------------------------------------------------------

    def __getitem__(self, key: str) -> Tensor:
        """The dense ``(n, width)`` float32 tensor of label ``key`` (built once, then cached), or a value
        added with :meth:`with_values`."""
        if key in self._values:
            return self._values[key]
        if key not in self.index:
            raise KeyError(key)
        dense = self._dense.get(key)
        if dense is None:
            index, value = self.index[key], self.value[key]
            dense = value.new_zeros(index.shape[0], self.widths[key])
            dense.scatter_add_(1, index.clamp_min(0), value)  # unused slots add 0 to column 0
            self._dense[key] = dense
        return dense

    def __contains__(self, key: object) -> bool:
        """Whether ``key`` is a label or an added value (without building a dense view)."""
        return key in self.index or key in self._values

    def __iter__(self) -> Iterator[str]:
        """The label names (``"x"``, ``"t"``), then the names of added values."""
        return iter([*self.index, *self._values])

    def __len__(self) -> int:
        """Number of labels and added values."""
        return len(self.index) + len(self._values)

    def __repr__(self) -> str:
        shapes = ", ".join(f"{k!r}: {v.shape[0]} cells x {self.widths[k]}, {v.shape[1]} slot(s) per cell"
                           for k, v in self.index.items())
        return f"IndexedLabels({shapes})"

    # -- the index form -----------------------------------------------------------------------------

    @property
    def n_obs(self) -> int:
        """Number of cells (0 without labels)."""
        return next(iter(self.index.values())).shape[0] if self.index else 0

    @property
    def nbytes(self) -> int:
        """Bytes of the stored index and value tensors (dense views built on access not counted)."""
        tensors = [*self.index.values(), *self.value.values()]
        return sum(t.numel() * t.element_size() for t in tensors)

    def entries(self, key: str) -> tuple[Tensor, Tensor, Tensor]:
        """``(cells, positions, values)`` of label ``key``'s entries, row-major (see :func:`treatment_entries`)."""
        found = self._entries.get(key)
        if found is None:  # once per minibatch: nonzero() syncs with the device
            index, value = self.index[key], self.value[key]
            cells, slots = (index != PAD).nonzero(as_tuple=True)  # row-major: each cell's entries contiguous
            found = self._entries[key] = (cells, index[cells, slots], value[cells, slots])
        return found

    def take(self, rows: Tensor) -> IndexedLabels:
        """The labels of the cells at ``rows`` (int64, on the labels' device; repeats allowed)."""
        return IndexedLabels({k: v.index_select(0, rows) for k, v in self.index.items()},
                             {k: v.index_select(0, rows) for k, v in self.value.items()}, self.widths)

    def subset(self, keys: Any) -> IndexedLabels:
        """The labels ``keys`` only, sharing this object's cached dense views (``KeyError`` for an absent one)."""
        keys = list(keys)
        for key in keys:
            if key not in self.index and key not in self._values:
                raise KeyError(key)
        labels = [k for k in keys if k in self.index]
        out = IndexedLabels({k: self.index[k] for k in labels}, {k: self.value[k] for k in labels}, self.widths)
        out._dense = self._dense  # one dense view per minibatch, whichever component asks first
        out._entries = self._entries  # and one list of entries
        out._values = {k: self._values[k] for k in keys if k in self._values}
        return out

    def with_values(self, values: Mapping[str, Tensor]) -> IndexedLabels:
        """These labels plus ready tensors under new names (the model adds the global blocks' values, which
        components read by name like a label), sharing this object's cached dense views."""
        out = self.subset(list(self.index))
        out._values = {**self._values, **values}
        return out

    @staticmethod
    def concat(first: IndexedLabels, second: IndexedLabels) -> IndexedLabels:
        """The cells of ``first`` followed by those of ``second`` (slots padded to the wider of the two)."""
        index, value = {}, {}
        for key in first.index:
            k = max(first.index[key].shape[1], second.index[key].shape[1])
            index[key] = torch.cat([_pad(first.index[key], k, PAD), _pad(second.index[key], k, PAD)])
            value[key] = torch.cat([_pad(first.value[key], k, 0.0), _pad(second.value[key], k, 0.0)])
        return IndexedLabels(index, value, first.widths)

    def to(self, device: torch.device | str) -> IndexedLabels:
        """The same labels on ``device``."""
        return IndexedLabels({k: v.to(device) for k, v in self.index.items()},
                             {k: v.to(device) for k, v in self.value.items()}, self.widths)


def _pad(tensor: Tensor, k: int, fill: float) -> Tensor:
    """``tensor`` widened to ``k`` slots with ``fill``."""
    missing = k - tensor.shape[1]
    if missing <= 0:
        return tensor
    return torch.cat([tensor, tensor.new_full((tensor.shape[0], missing), fill)], dim=1)


def take_rows(labels: Labels, rows: Tensor) -> Labels:
    """The labels of the cells at ``rows``: index form kept for :class:`IndexedLabels`, else each tensor's rows."""
    if isinstance(labels, IndexedLabels):
        return labels.take(rows)
    return {key: value.index_select(0, rows) for key, value in labels.items()}


def with_values(labels: Labels, values: Mapping[str, Tensor]) -> Labels:
    """``labels`` plus ``values`` under their names, without densifying an index form."""
    if isinstance(labels, IndexedLabels):
        return labels.with_values(values)
    return {**labels, **values}


def select_labels(labels: Labels, keys: Any) -> Labels:
    """The labels ``keys`` of ``labels`` (what one component sees), without densifying an index form."""
    if isinstance(labels, IndexedLabels):
        return labels.subset(keys)
    return {key: labels[key] for key in keys}


def n_cells(labels: Labels) -> int:
    """The number of cells a minibatch's labels describe, without building a dense view."""
    if isinstance(labels, IndexedLabels):
        return labels.n_obs
    return next(labels[key] for key in ("t", "x") if key in labels).shape[0]


def treatment_entries(labels: Labels) -> tuple[Tensor, Tensor, Tensor]:
    """The non-zero treatment entries of a minibatch: ``(cells, treatments, doses)``, three 1-D tensors.

    ``cells`` are row numbers in the batch, in ascending order (each cell's entries are contiguous),
    ``treatments`` positions in the treatment vocabulary (ascending within a cell), ``doses`` the
    (float) doses. Controls have no entries. Read from the stored indices when ``labels`` is an
    :class:`IndexedLabels` (no dense row is built); from the dense ``labels["t"]`` otherwise.
    """
    if isinstance(labels, IndexedLabels):
        return labels.entries("t")
    t = labels["t"]
    cells, treatments = t.nonzero(as_tuple=True)  # row-major: each cell's entries are contiguous
    return cells, treatments, t[cells, treatments]


@dataclass(frozen=True)
class EntryDraws:
    """A global block's value drawn once per treatment entry of a minibatch, not once per step.

    What the model hands the components that read a global block with ``draws = "per_entry"``
    (:class:`~fcrkit.spec.BlockSpec`) while training: ``values[e]`` is an independent draw of row
    ``rows[e]`` of the block, for the ``e``-th entry of :func:`treatment_entries` of the minibatch.
    Read it with :func:`entry_rows`, which also reads a plain ``(vocabulary, dim)`` value.

    Attributes:
        rows: ``(entries,)`` vocabulary positions, those of :func:`treatment_entries`, in its order.
        values: ``(entries, dim)`` the entries' draws.
    """

    rows: Tensor
    values: Tensor


def entry_rows(value: Tensor | EntryDraws, rows: Tensor) -> Tensor:
    """A global block's rows for a minibatch's treatment entries ``rows`` (from :func:`treatment_entries`):
    ``value[rows]`` of a ``(vocabulary, dim)`` value, or the entries' own draws of an :class:`EntryDraws`."""
    if not isinstance(value, EntryDraws):
        return value[rows]
    if value.rows.shape != rows.shape or not torch.equal(value.rows, rows):
        raise DataError(f"entry_rows(): the global block was drawn for {value.rows.numel()} treatment entries, which "
                        f"are not the {rows.numel()} asked for; pass the rows of treatment_entries(labels) of the "
                        "same minibatch.")
    return value.values
