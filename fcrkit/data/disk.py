"""Rows of a cells x genes matrix that stays in an HDF5 file (an ``.h5ad`` opened with ``backed="r"``).

:class:`DiskMatrix` reads the rows it is asked for and nothing more. A CSR matrix (anndata's
``csr_matrix`` encoding: ``data``, ``indices`` and ``indptr`` datasets) keeps only its row pointers
in memory (8 bytes a cell); a dense matrix keeps nothing. A set of rows is read as runs of
consecutive rows, runs close together as one covering slice: contiguous rows cost one sequential
read, rows scattered over the file (random control partners) one small read each (about 0.1 ms).

Values come back as float32 (the dtype of the training tensors); row sums are taken in float64 from
the stored values.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from typing import Any

import h5py
import numpy as np
import scipy.sparse as sp
from anndata import AnnData

from fcrkit.errors import DataError

#: Rows are streamed (row sums, value checks) in blocks of about this many stored values.
STREAM_VALUES = 1 << 23
#: Runs of rows this few stored values apart are read with one covering slice (time over memory).
GAP_VALUES = 1 << 14


def disk_matrix(adata: AnnData, layer: str | None) -> DiskMatrix | None:
    """The registered matrix of ``adata`` as a :class:`DiskMatrix` if it stays on disk, else None.

    Only ``X`` of a backed AnnData (``backed="r"``, not a view) stays on disk: anndata reads layers,
    and the rows of a view, into memory. A CSC ``X`` cannot be read by rows: it is loaded, with a warning.
    """
    if layer is not None or not adata.isbacked or adata.is_view:
        return None
    matrix = adata.X  # anndata reopens a closed backed file here
    if isinstance(matrix, h5py.Dataset):
        return DiskMatrix(matrix, "adata.X")
    group, encoding = getattr(matrix, "group", None), getattr(matrix, "format", None)
    if encoding == "csr" and isinstance(group, h5py.Group):
        return DiskMatrix(group, "adata.X")
    warnings.warn(f"adata.X of the backed file {adata.filename!s} is stored as {encoding or type(matrix).__name__}, "
                  "whose rows cannot be streamed: it is loaded into memory. For out-of-core training write it "
                  "as CSR (adata.X = scipy.sparse.csr_matrix(adata.X); adata.write_h5ad(path)).", stacklevel=3)
    return None


class DiskMatrix:
    """A CSR or dense matrix in an open HDF5 file, read row by row on demand.

    Args:
        source: the ``h5py.Group`` of a CSR matrix (anndata's encoding) or a 2-D ``h5py.Dataset``.
        name: how messages call the matrix (e.g. ``"adata.X"``).

    Attributes:
        shape: ``(n_obs, n_genes)``.
        dtype: dtype of the stored values.
        is_sparse: whether the matrix is stored as CSR.
        filename: the file it lives in.
    """

    def __init__(self, source: h5py.Group | h5py.Dataset, name: str = "adata.X"):
        self.name = name
        self.filename = str(source.file.filename)
        if isinstance(source, h5py.Dataset):
            if source.ndim != 2:
                raise DataError(f"{name} in {self.filename!r} has shape {source.shape}; expected a 2-D cells x "
                                "genes matrix.")
            self.is_sparse = False
            self._values = source
            self.shape = (int(source.shape[0]), int(source.shape[1]))
            self.dtype = source.dtype
            self.indptr: np.ndarray | None = None
            return
        encoding = _text(source.attrs.get("encoding-type", ""))
        if encoding != "csr_matrix" or not {"data", "indices", "indptr"} <= set(source.keys()):
            raise DataError(f"{name} in {self.filename!r} is stored as {encoding or 'an unknown encoding'!r}, not "
                            "CSR; out-of-core reading needs CSR rows (write it with adata.X = "
                            "scipy.sparse.csr_matrix(adata.X) before write_h5ad) or a dense matrix.")
        self.is_sparse = True
        self._values, self._indices = source["data"], source["indices"]
        self.shape = tuple(int(n) for n in source.attrs["shape"])
        self.dtype = self._values.dtype
        self.indptr = np.asarray(source["indptr"][()], dtype=np.int64)  # small: one entry per cell
        if self.indptr.shape != (self.shape[0] + 1,) or self.indptr[-1] != self._values.shape[0]:
            raise DataError(f"{name} in {self.filename!r} is a damaged CSR matrix: indptr has "
                            f"{self.indptr.shape[0]} entries ending at {self.indptr[-1]}, for {self.shape[0]} rows "
                            f"and {self._values.shape[0]} stored values. Write the file again.")

    @property
    def n_obs(self) -> int:
        """Number of rows (cells)."""
        return self.shape[0]

    @property
    def nnz(self) -> int:
        """Stored values: the nonzeros of a CSR matrix, every entry of a dense one."""
        return int(self.indptr[-1]) if self.indptr is not None else self.shape[0] * self.shape[1]

    def __repr__(self) -> str:
        kind = "CSR" if self.is_sparse else "dense"
        return f"DiskMatrix({self.name}, {self.shape[0]} x {self.shape[1]} {kind}, {self.filename!r})"

    def check_open(self) -> None:
        """Raise a DataError that says what to do if the file has been closed."""
        if not self._values.id.valid:
            raise DataError(f"the backed file {self.filename!r} holding {self.name} has been closed; reopen it "
                            "(anndata.read_h5ad(path, backed='r')) and keep it open while fcrkit reads from it.")

    def rows(self, rows: np.ndarray) -> sp.csr_matrix | np.ndarray:
        """The rows ``rows`` (sorted, unique) as a float32 CSR matrix or ndarray, in that order."""
        self.check_open()
        rows = np.asarray(rows, dtype=np.int64)
        starts, stops = _runs(rows)
        if not self.is_sparse:
            values = _read_runs(self._values, starts, stops)
            return values.astype(np.float32, copy=False)
        assert self.indptr is not None
        lengths = self.indptr[rows + 1] - self.indptr[rows]
        first, last = self.indptr[starts], self.indptr[stops]
        data = _read_runs(self._values, first, last).astype(np.float32, copy=False)
        indices = _read_runs(self._indices, first, last)
        indptr = np.zeros(len(rows) + 1, dtype=np.int64)
        np.cumsum(lengths, out=indptr[1:])
        return sp.csr_matrix((data, indices, indptr), shape=(len(rows), self.shape[1]))

    def blocks(self, max_values: int = STREAM_VALUES, rows: tuple[int, int] | None = None
               ) -> Iterator[tuple[int, Any]]:
        """``(first row, block)`` over consecutive row blocks of about ``max_values`` stored values (of the
        rows ``[start, stop)`` in ``rows``; None: every row).

        A block is a CSR matrix or ndarray in the stored dtype (value checks need the values as stored).
        """
        self.check_open()
        for start, stop in self._block_bounds(max_values, rows):
            if self.is_sparse:
                assert self.indptr is not None
                first, last = int(self.indptr[start]), int(self.indptr[stop])
                indptr = self.indptr[start : stop + 1] - first
                block = sp.csr_matrix((self._values[first:last], self._indices[first:last], indptr),
                                      shape=(stop - start, self.shape[1]))
            else:
                block = self._values[start:stop]
            yield start, block

    def row_sums(self, max_values: int = STREAM_VALUES, rows: tuple[int, int] | None = None) -> np.ndarray:
        """``(n, 1)`` float64 total of each row (of the rows ``[start, stop)`` in ``rows``), in one streaming
        pass."""
        first, last = rows if rows is not None else (0, self.shape[0])
        sums = np.zeros((last - first, 1), dtype=np.float64)
        for start, block in self.blocks(max_values, rows):
            sums[start - first : start - first + block.shape[0]] = row_sums(block)
        return sums

    def row_range(self, start: int, stop: int) -> DiskRowRange:
        """Rows ``[start, stop)`` of this matrix as a matrix of their own (rows numbered from 0)."""
        return DiskRowRange(self, start, stop)

    def _block_bounds(self, max_values: int, rows: tuple[int, int] | None = None) -> Iterator[tuple[int, int]]:
        """Consecutive ``(start, stop)`` row ranges covering ``rows`` (None: every row), each with about
        ``max_values`` stored values (at least one row)."""
        start, n = rows if rows is not None else (0, self.shape[0])
        if self.indptr is None:
            step = max(1, max_values // max(1, self.shape[1]))
            yield from ((first, min(first + step, n)) for first in range(start, n, step))
            return
        while start < n:  # the last row whose values still fit, found by bisection on indptr
            stop = int(np.searchsorted(self.indptr, self.indptr[start] + max_values, side="right")) - 1
            stop = min(n, max(stop, start + 1))
            yield start, stop
            start = stop


class DiskRowRange:
    """Consecutive rows ``[start, stop)`` of a :class:`DiskMatrix`, read as a matrix of their own.

    What a data-parallel rank streams its shard of a backed file through: row ``i`` here is row
    ``start + i`` of the file; nothing outside the range is ever read. It has the reading interface
    of :class:`DiskMatrix` (``shape``, ``rows``, ``row_sums``, ``check_open`` ...).
    """

    def __init__(self, matrix: DiskMatrix, start: int, stop: int):
        if not 0 <= start <= stop <= matrix.n_obs:
            raise DataError(f"rows [{start}, {stop}) are not rows of {matrix!r}.")
        self.matrix, self.start, self.stop = matrix, int(start), int(stop)
        self.shape = (self.stop - self.start, matrix.shape[1])
        self.name, self.filename, self.dtype, self.is_sparse = matrix.name, matrix.filename, matrix.dtype, \
            matrix.is_sparse

    @property
    def n_obs(self) -> int:
        """Number of rows in the range."""
        return self.shape[0]

    @property
    def nnz(self) -> int:
        """Stored values of the range's rows."""
        if self.matrix.indptr is None:
            return self.shape[0] * self.shape[1]
        return int(self.matrix.indptr[self.stop] - self.matrix.indptr[self.start])

    def __repr__(self) -> str:
        return f"DiskRowRange(rows {self.start}:{self.stop} of {self.matrix!r})"

    def check_open(self) -> None:
        """Raise a DataError that says what to do if the file has been closed."""
        self.matrix.check_open()

    def rows(self, rows: np.ndarray) -> sp.csr_matrix | np.ndarray:
        """The rows ``rows`` (sorted, unique, numbered within the range), as :meth:`DiskMatrix.rows`."""
        return self.matrix.rows(np.asarray(rows, dtype=np.int64) + self.start)

    def row_sums(self, max_values: int = STREAM_VALUES) -> np.ndarray:
        """``(n_obs, 1)`` float64 total of each row of the range, in one streaming pass over it."""
        return self.matrix.row_sums(max_values, (self.start, self.stop))


def row_sums(matrix: np.ndarray | sp.csr_matrix) -> np.ndarray:
    """``(n, 1)`` float64 totals per row, with no float64 copy of the matrix (scipy's ``sum`` makes one)."""
    if not sp.issparse(matrix):
        return np.asarray(matrix).sum(axis=1, dtype=np.float64).reshape(-1, 1)
    sums = np.zeros((matrix.shape[0], 1), dtype=np.float64)
    starts = matrix.indptr[:-1]
    filled = matrix.indptr[1:] > starts  # reduceat would give an empty row its neighbour's first value
    if filled.any():
        first = int(starts[filled][0])
        values = matrix.data[first : int(matrix.indptr[-1])]
        sums[filled, 0] = np.add.reduceat(values, starts[filled] - first, dtype=np.float64)
    return sums


def _runs(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted unique ``rows`` as runs of consecutive rows: ``(starts, stops)``, stop exclusive."""
    if rows.size == 0:
        return rows[:0], rows[:0]
    if rows.size > 1 and not bool(np.all(rows[1:] > rows[:-1])):
        raise ValueError("rows must be sorted and unique")  # internal: callers sort first
    breaks = np.flatnonzero(np.diff(rows) != 1) + 1
    starts = rows[np.concatenate([[0], breaks])]
    stops = rows[np.concatenate([breaks - 1, [rows.size - 1]])] + 1
    return starts, stops


def _read_runs(dataset: h5py.Dataset, starts: np.ndarray, stops: np.ndarray) -> np.ndarray:
    """The entries (1-D) or rows (2-D) ``[start, stop)`` of each run, concatenated.

    Runs separated by at most :data:`GAP_VALUES` unneeded values are read as one slice covering
    them and picked out of it; the others with a slice each. An HDF5 read costs about 0.1 ms, the time
    to read some 10^5 values, and HDF5's unions of hyperslabs get slow with many runs.
    """
    lengths = stops - starts
    needed = int(lengths.sum())
    if len(starts) == 0 or needed == 0:
        return np.empty((0, *dataset.shape[1:]), dtype=dataset.dtype)
    if len(starts) == 1:
        return dataset[int(starts[0]) : int(stops[0])]
    row_size = int(np.prod(dataset.shape[1:], dtype=np.int64))
    max_gap = GAP_VALUES // max(1, row_size)
    breaks = np.flatnonzero(starts[1:] - stops[:-1] > max_gap) + 1
    bounds = np.concatenate([[0], breaks, [len(starts)]])
    parts = []
    for a, b in zip(bounds[:-1].tolist(), bounds[1:].tolist()):
        first, last = int(starts[a]), int(stops[b - 1])
        block = dataset[first:last]
        if b - a > 1:  # pick the runs out of the covering slice
            run = lengths[a:b]
            offsets = np.repeat(starts[a:b] - first - (np.cumsum(run) - run), run)
            block = block[np.arange(int(run.sum())) + offsets]
        parts.append(block)
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
