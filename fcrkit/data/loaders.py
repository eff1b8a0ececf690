"""Cells as tensors on the training device, served as minibatches.

:class:`CellData` holds the modelled matrix, the encoded labels and the library sizes as tensors,
and slices minibatches by index where the data live, with no DataLoader and no per-cell Python:

- a dense matrix is stored once, as a float32 tensor;
- a CSR matrix is stored as its three arrays (row pointers, column indices, values) and each
  minibatch is densified on its own, with vectorised gathers and one scatter; the whole matrix is
  never densified. (Gathering a batch's nonzeros needs their number, so a sparse batch costs one
  host-device synchronisation on CUDA.)

Placement: labels and library sizes always live on ``device``. On CUDA, a matrix that would take
more than half of the free GPU memory stays on the host (pinned when possible): each minibatch is
gathered there and then copied over (for CSR only the batch's nonzeros travel; the scatter into
the dense batch happens on the GPU). ``CellData.storage_device`` says where the matrix is.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
from anndata import AnnData
from torch import Tensor

from fcrkit.data.anndata import AnnDataSetup, as_matrix, get_matrix
from fcrkit.data.disk import row_sums
from fcrkit.data.labels import EncodedLabel, IndexedLabels
from fcrkit.errors import ConfigError, DataError

#: Keep the matrix on the GPU only if it takes at most this fraction of the free GPU memory.
GPU_MEMORY_FRACTION = 0.5
#: The fewest cells a minibatch holds (unless the cells are fewer): batch normalisation in training
#: mode cannot normalise a single cell.
MIN_BATCH_CELLS = 2


def batch_sizes(n: int, batch_size: int, *, drop_last: bool = False, min_cells: int = MIN_BATCH_CELLS) -> list[int]:
    """The sizes of the consecutive minibatches that cut ``n`` cells into batches of ``batch_size``.

    The last batch holds the remainder, unless ``drop_last`` leaves it out. A remainder of fewer
    than ``min_cells`` cells is merged into the batch before it (which then holds up to
    ``batch_size + min_cells - 1`` cells), so that no batch but a lone one is smaller than
    ``min_cells``: merged rather than dropped, every cell is still visited once per pass.
    """
    full, rest = divmod(int(n), int(batch_size))
    sizes = [batch_size] * full
    if rest and not drop_last:
        if rest < min_cells and sizes:
            sizes[-1] += rest
        else:
            sizes.append(rest)
    return sizes


@dataclass
class Batch:
    """One minibatch of cells, every tensor on the data's device.

    Attributes:
        y: ``(B, G)`` float32 data values.
        library: ``(B, 1)`` float32 total of each cell's row over all genes of the matrix.
        labels: the keys that ``encode_labels`` gave, held as indices and values
            (:class:`~fcrkit.data.labels.IndexedLabels`); ``labels["x"]`` and ``labels["t"]`` are
            the dense ``(B, n_x)`` and ``(B, n_t)`` float32 views, built on first access.
        index: ``(B,)`` int64 row numbers of the cells within the :class:`CellData`.
    """

    y: Tensor
    library: Tensor
    labels: IndexedLabels
    index: Tensor

    @staticmethod
    def concat(first: Batch, second: Batch) -> Batch:
        """The cells of ``first`` followed by those of ``second`` (e.g. cells and their paired controls)."""
        return Batch(
            y=torch.cat([first.y, second.y]),
            library=torch.cat([first.library, second.library]),
            labels=IndexedLabels.concat(first.labels, second.labels),
            index=torch.cat([first.index, second.index]),
        )


class CellData:
    """A cells x genes matrix with its labels, held as tensors and served as minibatches.

    Args:
        matrix: dense ndarray or scipy CSR matrix of any numeric dtype (other sparse formats are
            converted to CSR). On CPU a float32 C-contiguous ndarray is shared, not copied: do not
            modify it while the CellData is in use.
        labels: encoded labels, one row per cell (see :meth:`AnnDataSetup.encode_labels`); a
            dense ``(cells, width)`` array is accepted too, and stored as its non-zero entries.
        device: where the batches are produced (``"cpu"``, ``"cuda"``, ``"cuda:1"`` ...).

    Attributes:
        n_obs, n_genes: shape of the matrix.
        device: the device of every :class:`Batch`.
        storage_device: where the matrix is kept (differs from ``device`` only for a matrix too
            large for the GPU, see the module docstring).
        labels: the encoded labels as index and value tensors on ``device``
            (:class:`~fcrkit.data.labels.IndexedLabels`: ``O(cells × entries per cell)`` memory,
            never ``cells × vocabulary``).
        library: ``(n_obs, 1)`` float32 row totals on ``device``.
    """

    def __init__(
        self, matrix: Any, labels: Mapping[str, EncodedLabel | np.ndarray], device: str | torch.device = "cpu"
    ):
        matrix = as_matrix(matrix)
        self.n_obs, self.n_genes = (int(n) for n in matrix.shape)
        self.device = torch.device(device)
        self.is_sparse = sp.issparse(matrix)
        self.storage_device = _storage_device(self.device, _nbytes(matrix))
        pin = self.storage_device.type == "cpu" and self.device.type == "cuda"
        rows_type = _CSRRows if self.is_sparse else _DenseRows
        self._rows: _DenseRows | _CSRRows = rows_type(matrix, self.storage_device, pin=pin)
        self.library = _to_tensor(_row_sums(matrix), self.device)
        self.labels = IndexedLabels.from_encoded(labels, self.n_obs, self.device)

    @classmethod
    def from_anndata(
        cls, adata: AnnData, setup: AnnDataSetup, device: str | torch.device = "cpu"
    ) -> CellData:
        """The registered matrix and encoded labels of ``adata`` (see :func:`setup_anndata`)."""
        return cls(get_matrix(adata, setup.layer), setup.encode_labels(adata.obs), device=device)

    def __len__(self) -> int:
        """Number of cells."""
        return self.n_obs

    def __repr__(self) -> str:
        kind = "CSR" if self.is_sparse else "dense"
        return (
            f"CellData({self.n_obs} cells x {self.n_genes} genes, {kind}, device={self.device}, "
            f"labels={self.labels.widths})"
        )

    def batch(self, index: Any) -> Batch:
        """The cells at row numbers ``index`` (a 1-D integer tensor, array or list; repeats allowed)."""
        return self.gather(self._check_index(index))

    def iter_batches(
        self,
        index: Any,
        batch_size: int,
        *,
        shuffle: bool,
        generator: torch.Generator | None = None,
        drop_last: bool = False,
        sizes: list[int] | None = None,
    ) -> Iterator[Batch]:
        """Minibatches over the cells at ``index``, each once per pass.

        Args:
            index: row numbers to iterate over (e.g. the training split).
            batch_size: cells per batch; the last batch may be smaller unless ``drop_last``, and a
                last batch of one cell is merged into the one before (see :func:`batch_sizes`).
            shuffle: visit ``index`` in a random order (``torch.randperm``).
            generator: source of that randomness; on the data's device, or on the CPU (the
                permutation is then drawn on the CPU and moved).
            drop_last: leave out the final incomplete batch.
            sizes: the batches' sizes, given (e.g. by data-parallel training, whose ranks must take
                the same number of steps); they may add up to fewer cells than ``index`` holds.
                None: :func:`batch_sizes` of ``batch_size`` and ``drop_last``.
        """
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}.")
        index = self._check_index(index)
        if shuffle:
            index = index.index_select(0, self._permutation(index.numel(), generator))
        start = 0
        for size in sizes if sizes is not None else batch_sizes(index.numel(), batch_size, drop_last=drop_last):
            yield self.gather(index[start : start + size])
            start += size

    def gather(self, index: Tensor) -> Batch:
        """Batch of rows ``index``, trusted: int64, valid and on ``self.device`` (no checks, no host sync)."""
        return Batch(
            y=self._rows.rows(index, self.device),
            library=self.library.index_select(0, index),
            labels=self.labels.take(index),
            index=index,
        )

    # -- internals ----------------------------------------------------------------------------------

    def _check_index(self, index: Any) -> Tensor:
        """``index`` as a 1-D int64 tensor on ``self.device``, every entry a valid row."""
        index = torch.as_tensor(index)
        if index.dtype in (torch.bool, torch.uint8) or index.is_floating_point() or index.is_complex():
            raise ConfigError(f"index must hold integer row numbers, got dtype {index.dtype}.")
        if index.ndim != 1:
            raise ConfigError(f"index must be 1-D, got shape {tuple(index.shape)}.")
        if index.numel():
            low, high = int(index.min()), int(index.max())
            if low < 0 or high >= self.n_obs:
                bad = low if low < 0 else high
                raise DataError(f"index holds row {bad}, outside 0..{self.n_obs - 1} of this CellData.")
        return index.to(device=self.device, dtype=torch.int64)

    def _permutation(self, n: int, generator: torch.Generator | None) -> Tensor:
        device = generator.device if generator is not None else self.device
        return torch.randperm(n, generator=generator, device=device).to(self.device)


class _DenseRows:
    """A dense float32 matrix; rows are gathered with ``index_select``."""

    def __init__(self, matrix: np.ndarray, device: torch.device, *, pin: bool = False):
        self.values = _to_tensor(matrix, device, pin=pin)

    def rows(self, index: Tensor, device: torch.device) -> Tensor:
        index = index.to(self.values.device)
        return self.values.index_select(0, index).to(device, non_blocking=True)


class _CSRRows:
    """A CSR matrix as three tensors; rows are densified per batch, never the whole matrix.

    On the host, a batch is cut out by scipy's compiled CSR row indexing over the same arrays
    (shared, not copied): several times faster than the equivalent tensor gathers, which remain
    the path on a GPU.
    """

    def __init__(self, matrix: sp.csr_matrix, device: torch.device, *, pin: bool = False):
        if not matrix.has_canonical_format:  # duplicate entries would be overwritten, not summed
            matrix = matrix.copy()
            matrix.sum_duplicates()
        # one index dtype for both arrays, as scipy wants; int32 unless the matrix is too large for it
        large = max(matrix.nnz, *matrix.shape) >= np.iinfo(np.int32).max
        index_dtype = np.int64 if large else np.int32
        self.n_genes = int(matrix.shape[1])
        crow = matrix.indptr.astype(np.int64, copy=False)
        cols = matrix.indices.astype(index_dtype, copy=False)
        self.crow = _to_tensor(crow, device, dtype=None, pin=pin)
        self.cols = _to_tensor(cols, device, dtype=None, pin=pin)
        self.values = _to_tensor(matrix.data, device, pin=pin)
        self.host: sp.csr_matrix | None = None
        if device.type == "cpu":
            self.host = sp.csr_matrix((self.values.numpy(), self.cols.numpy(), matrix.indptr.astype(index_dtype)),
                                      shape=matrix.shape, copy=False)

    def rows(self, index: Tensor, device: torch.device) -> Tensor:
        if self.host is not None:
            dense = torch.from_numpy(self.host[index.cpu().numpy()].toarray())
            return dense.to(device, non_blocking=True)
        row, col, value = self._nonzeros(index.to(self.crow.device))
        out = torch.zeros(index.numel(), self.n_genes, dtype=torch.float32, device=device)
        out[row.to(device), col.to(device)] = value.to(device, non_blocking=True)
        return out

    def _nonzeros(self, index: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Batch row, gene and value of every stored entry of the rows ``index``."""
        starts = self.crow.index_select(0, index)
        counts = self.crow.index_select(0, index + 1) - starts
        row = torch.repeat_interleave(counts)  # batch row of each nonzero (sizes the output: a sync)
        batch_start = torch.cumsum(counts, 0) - counts  # where each row's nonzeros begin in the batch
        shift = (starts - batch_start).index_select(0, row)
        position = torch.arange(row.numel(), device=index.device) + shift  # into cols / values
        return row, self.cols.index_select(0, position).long(), self.values.index_select(0, position)


def _to_tensor(
    array: np.ndarray, device: torch.device, dtype: Any = np.float32, *, pin: bool = False
) -> Tensor:
    """``array`` as a tensor on ``device``; host memory is pinned on request (when possible)."""
    if dtype is not None:
        array = np.asarray(array, dtype=dtype)
    array = np.ascontiguousarray(array)
    if not array.flags.writeable:
        array = array.copy()
    tensor = torch.from_numpy(array)
    if device.type != "cpu":
        return tensor.to(device)
    return _pinned(tensor) if pin else tensor


def _pinned(tensor: Tensor) -> Tensor:
    """A pinned copy of a host tensor (faster copies to the GPU), or the tensor if pinning fails."""
    try:
        return tensor.pin_memory()
    except RuntimeError:  # pinning can fail (limits, no driver): pageable memory still works
        return tensor


def _storage_device(device: torch.device, nbytes: int) -> torch.device:
    """``device``, or the CPU for a CUDA matrix larger than half of the free GPU memory."""
    if device.type != "cuda":
        return device
    free, _ = torch.cuda.mem_get_info(device)
    return device if nbytes <= GPU_MEMORY_FRACTION * free else torch.device("cpu")


def _nbytes(matrix: np.ndarray | sp.csr_matrix) -> int:
    """Bytes the stored matrix will take as tensors."""
    if sp.issparse(matrix):
        return matrix.nnz * (4 + 4) + (matrix.shape[0] + 1) * 8
    return matrix.shape[0] * matrix.shape[1] * 4


def _row_sums(matrix: np.ndarray | sp.csr_matrix) -> np.ndarray:
    """``(n, 1)`` totals per cell over all genes, summed in float64 (without a float64 copy of the matrix)."""
    return row_sums(matrix)
