"""Out-of-core data: minibatches streamed from an ``.h5ad`` opened with ``backed="r"``.

:class:`BackedCellData` serves the same minibatches as :class:`~fcrkit.data.loaders.CellData`
(it is one, for the trainer and inference) while the matrix stays in the file. Only the per-cell
vectors live in memory: labels, library sizes and, for CSR, the row pointers (tens of bytes a
cell); the matrix is read a chunk of cells at a time, so memory is bounded by ``chunk_cells``, not
by the number of cells.

Shuffling is a *block shuffle*, not a full permutation: the file's rows are cut into blocks of
``chunk_cells // 8`` consecutive rows; each pass visits the blocks in a random order, takes them
eight at a time as a chunk (one chunk is in memory), and visits the chunk's cells in a random
order. Every cell is still visited exactly once per pass, and reads stay mostly sequential. A
batch draws its cells from at most eight random places of the file (of two chunks at a boundary),
so a file sorted by condition (all controls first, say) gives less mixed batches than a full
shuffle: shuffle the rows once when writing such a file (``adata[rng.permutation(adata.n_obs)]``).
Without ``shuffle`` the cells come in the order of ``index``, one read per batch.

``gather`` (random rows, e.g. control partners) reads each scattered row on its own (about 0.1 ms
a row), so control pairing is slower on backed data than in memory.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import torch
from anndata import AnnData
from torch import Tensor

from fcrkit.data.anndata import AnnDataSetup, get_matrix
from fcrkit.data.disk import DiskMatrix, DiskRowRange, disk_matrix
from fcrkit.data.labels import EncodedLabel, IndexedLabels
from fcrkit.data.loaders import Batch, CellData, _CSRRows, _DenseRows, _to_tensor, batch_sizes
from fcrkit.errors import ConfigError

#: A chunk is sized to hold about this many bytes of matrix values in memory (when ``chunk_cells`` is None).
CHUNK_BYTES = 64 << 20
#: ... but at least this many cells, so that a chunk mixes several batches' worth of cells.
MIN_CHUNK_CELLS = 2048
#: A chunk is made of this many blocks of consecutive rows, each from a random place of the file.
BLOCKS_PER_CHUNK = 8

_Rows = _CSRRows | _DenseRows


def cell_data(
    adata: AnnData, setup: AnnDataSetup, device: str | torch.device = "cpu", *, chunk_cells: int | None = None,
    rows: tuple[int, int] | None = None,
) -> CellData:
    """The registered data of ``adata`` as minibatches: streamed from disk when its matrix is on disk.

    A backed AnnData (``anndata.read_h5ad(path, backed="r")``) whose registered matrix is its CSR or
    dense ``X`` gives a :class:`BackedCellData`; anything else (in-memory data, a view of backed data,
    a layer) a :class:`CellData` in memory.

    Args:
        adata: data registered with :func:`fcrkit.setup_anndata`.
        setup: its setup.
        device: where the batches are produced.
        chunk_cells: cells held in memory at a time when streaming (None: sized automatically, see
            :func:`default_chunk_cells`); ignored for in-memory data.
        rows: ``(start, stop)``: only these rows of ``adata`` (a data-parallel rank's shard); only they
            are read into memory, or, for a backed file, streamed. None: every cell.
    """
    _check_chunk_cells(chunk_cells)
    matrix = disk_matrix(adata, setup.layer)
    obs = adata.obs
    if rows is not None:  # only the shard's rows: its labels, and its slice of the file or of the matrix
        start, stop = rows
        obs = obs.iloc[start:stop]
        if matrix is None:
            adata = adata[start:stop]
        else:
            matrix = matrix.row_range(start, stop)
    labels = setup.encode_labels(obs)
    if matrix is None:
        return CellData(get_matrix(adata, setup.layer), labels, device=device)
    return BackedCellData(matrix, labels, device=device, chunk_cells=chunk_cells)


def default_chunk_cells(matrix: DiskMatrix | DiskRowRange) -> int:
    """Cells per chunk for about :data:`CHUNK_BYTES` of values in memory (at least :data:`MIN_CHUNK_CELLS`).

    In memory a CSR value takes 8 bytes (float32 value, int32 gene), a dense one 4.
    """
    per_cell = 8 * matrix.nnz / max(1, matrix.n_obs) if matrix.is_sparse else 4 * matrix.shape[1]
    return max(MIN_CHUNK_CELLS, int(CHUNK_BYTES // max(per_cell, 1.0)))


class BackedCellData(CellData):
    """Cells whose matrix stays in an HDF5 file, served as minibatches read a chunk at a time.

    Same interface as :class:`CellData` (see the module docstring for how it reads and shuffles).

    Args:
        matrix: the on-disk matrix (see :func:`fcrkit.data.disk.disk_matrix`); its file must stay open.
        labels: encoded labels, one row per cell (see :meth:`AnnDataSetup.encode_labels`).
        device: where the batches are produced.
        chunk_cells: cells read into memory at a time by a shuffled pass (None: :func:`default_chunk_cells`).

    Attributes:
        matrix: the :class:`DiskMatrix`.
        chunk_cells: as given or chosen.
        library: ``(n_obs, 1)`` float32 row totals, from one streaming pass over the file.
    """

    def __init__(
        self,
        matrix: DiskMatrix | DiskRowRange,
        labels: Mapping[str, EncodedLabel | np.ndarray],
        device: str | torch.device = "cpu",
        *,
        chunk_cells: int | None = None,
    ):
        _check_chunk_cells(chunk_cells)
        self.matrix = matrix
        self.n_obs, self.n_genes = matrix.shape
        self.device = torch.device(device)
        self.is_sparse = matrix.is_sparse
        self.storage_device = torch.device("cpu")  # chunks are read into host memory, then moved
        self.chunk_cells = chunk_cells if chunk_cells is not None else default_chunk_cells(matrix)
        self._rows = _DiskRows(matrix)  # CellData.gather reads through it
        self.library = _to_tensor(matrix.row_sums(), self.device)
        self.labels = IndexedLabels.from_encoded(labels, self.n_obs, self.device)

    def __repr__(self) -> str:
        kind = "CSR" if self.is_sparse else "dense"
        return (f"BackedCellData({self.n_obs} cells x {self.n_genes} genes, {kind}, {self.matrix.filename!r}, "
                f"chunk_cells={self.chunk_cells}, device={self.device})")

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
        """Minibatches over the cells at ``index``, each once per pass (block shuffle: see the module doc).

        Args are those of :meth:`CellData.iter_batches`; ``shuffle`` visits chunks of the file in a
        random order and the cells of each chunk in a random order.
        """
        if not shuffle:  # in index order, one read per batch (sequential for a sorted index)
            yield from super().iter_batches(index, batch_size, shuffle=False, drop_last=drop_last, sizes=sizes)
            return
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}.")
        self.matrix.check_open()
        rows = np.sort(self._check_index(index).cpu().numpy())
        if sizes is None:
            sizes = batch_sizes(rows.size, batch_size, drop_last=drop_last)  # the same batches as in memory
        sizes = list(sizes)
        pending: list[tuple[_Rows, Tensor, Tensor]] = []  # (chunk, positions in it, row numbers) not yet served
        waiting = 0
        for chunk_rows in self._chunks(rows, generator):
            pending.append(self._load(chunk_rows, generator))
            waiting += len(chunk_rows)
            while sizes and waiting >= sizes[0]:
                size = sizes.pop(0)
                yield self._take(pending, size)
                waiting -= size
            if not sizes:  # given sizes may leave cells out (drop_last): read no further
                return

    # -- internals ----------------------------------------------------------------------------------

    def _chunks(self, rows: np.ndarray, generator: torch.Generator | None) -> Iterator[np.ndarray]:
        """The sorted ``rows`` grouped into chunks: random blocks of the file, eight at a time."""
        if rows.size == 0:
            return
        block_rows = max(1, self.chunk_cells // BLOCKS_PER_CHUNK)
        block = rows // block_rows
        starts = np.flatnonzero(np.r_[True, block[1:] != block[:-1]])
        stops = np.r_[starts[1:], rows.size]
        order = self._permutation(len(starts), generator).cpu().numpy()
        for first in range(0, len(order), BLOCKS_PER_CHUNK):
            chosen = np.sort(order[first : first + BLOCKS_PER_CHUNK])  # file order: sequential reads
            yield np.concatenate([rows[starts[b] : stops[b]] for b in chosen])

    def _load(self, rows: np.ndarray, generator: torch.Generator | None) -> tuple[_Rows, Tensor, Tensor]:
        """Read the (sorted) ``rows`` into memory; return them with a random visiting order."""
        unique, inverse = np.unique(rows, return_inverse=True)  # an index may repeat a row
        values = self.matrix.rows(unique)
        chunk = _CSRRows(values, self.device) if self.is_sparse else _DenseRows(values, self.device)
        order = self._permutation(len(rows), generator)
        positions = torch.as_tensor(inverse, device=self.device).index_select(0, order)
        return chunk, positions, torch.as_tensor(rows, device=self.device).index_select(0, order)

    def _take(self, pending: list[tuple[_Rows, Tensor, Tensor]], size: int) -> Batch:
        """The next ``size`` cells of the pending chunks, dropping each chunk once served."""
        parts, indices = [], []
        while size:
            chunk, positions, index = pending[0]
            n = min(size, len(index))
            parts.append(chunk.rows(positions[:n], self.device))
            indices.append(index[:n])
            if n == len(index):
                pending.pop(0)
            else:
                pending[0] = (chunk, positions[n:], index[n:])
            size -= n
        index = indices[0] if len(indices) == 1 else torch.cat(indices)
        return Batch(
            y=parts[0] if len(parts) == 1 else torch.cat(parts),
            library=self.library.index_select(0, index),
            labels=self.labels.take(index),
            index=index,
        )


class _DiskRows:
    """Rows read from the file on demand (``CellData.gather``): sorted and deduplicated for the read."""

    def __init__(self, matrix: DiskMatrix | DiskRowRange):
        self.matrix = matrix

    def rows(self, index: Tensor, device: torch.device) -> Tensor:
        host = index.cpu().numpy()
        unique, inverse = np.unique(host, return_inverse=True)  # h5py reads need increasing rows
        values = self.matrix.rows(unique)
        out = torch.from_numpy(np.ascontiguousarray(values.toarray() if self.matrix.is_sparse else values))
        if not np.array_equal(unique, host):  # back to the asked order, repeats included
            out = out.index_select(0, torch.from_numpy(inverse.astype(np.int64)))
        return out.to(device)


def _check_chunk_cells(chunk_cells: Any) -> None:
    if chunk_cells is None:
        return
    if isinstance(chunk_cells, bool) or not isinstance(chunk_cells, (int, np.integer)) or chunk_cells < 1:
        raise ConfigError(f"chunk_cells={chunk_cells!r} must be a positive integer (cells read into memory at a "
                          "time from a backed file), or None to size chunks automatically.")
