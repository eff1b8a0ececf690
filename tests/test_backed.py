"""Out-of-core data: minibatches streamed from an h5ad opened with backed="r" equal the in-memory ones."""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp
import torch

import fcrkit
from fcrkit.data.anndata import get_setup
from fcrkit.data.backed import BackedCellData, cell_data, default_chunk_cells
from fcrkit.data.disk import DiskMatrix, disk_matrix, row_sums
from fcrkit.data.loaders import CellData
from fcrkit.errors import ConfigError, DataError

N_CELLS, N_GENES = 300, 30


def _registered(n_cells: int = N_CELLS, seed: int = 0) -> ad.AnnData:
    adata = fcrkit.simulate.basic(n_cells=n_cells, n_genes=N_GENES, n_latent=3, seed=seed)
    keep = np.ones(n_cells, dtype=np.float32)
    keep[3] = 0  # an empty row: row sums and reads must handle it
    adata.X = sp.csr_matrix(sp.diags(keep) @ sp.csr_matrix(adata.X, dtype=np.float32))
    adata.X.eliminate_zeros()
    del adata.obsm["z_true"]
    fcrkit.setup_anndata(adata, treatment_key="treatment", covariate_keys=["cell_type"], control_value="control")
    return adata


@pytest.fixture(params=["csr", "dense"])
def pair(request, tmp_path: Path):
    """(in-memory AnnData, the same data read back with backed="r")."""
    adata = _registered()
    if request.param == "dense":
        adata.X = adata.X.toarray()
    path = tmp_path / f"{request.param}.h5ad"
    adata.write_h5ad(path)
    backed = ad.read_h5ad(path, backed="r")
    yield adata, backed
    backed.file.close()


def _data(adata: ad.AnnData, **kwargs) -> CellData:
    return cell_data(adata, get_setup(adata), **kwargs)


def _same_batch(a, b) -> None:
    torch.testing.assert_close(a.y, b.y, rtol=0, atol=0)
    torch.testing.assert_close(a.library, b.library)
    assert a.labels.keys() == b.labels.keys()
    for key in a.labels:
        torch.testing.assert_close(a.labels[key], b.labels[key], rtol=0, atol=0)
    assert torch.equal(a.index, b.index)


def test_backed_data_streams_and_matches_memory(pair) -> None:
    adata, backed = pair
    memory, disk = _data(adata), _data(backed, chunk_cells=64)
    assert isinstance(disk, BackedCellData) and not isinstance(memory, BackedCellData)
    assert (disk.n_obs, disk.n_genes, disk.is_sparse, len(disk)) == (memory.n_obs, memory.n_genes,
                                                                    memory.is_sparse, len(memory))
    torch.testing.assert_close(disk.library, memory.library)
    assert float(disk.library[3]) == 0.0
    for index in (torch.arange(N_CELLS), torch.tensor([5, 3, 299, 0, 150]), torch.arange(0, N_CELLS, 7)):
        pairs = zip(disk.iter_batches(index, 64, shuffle=False), memory.iter_batches(index, 64, shuffle=False))
        for a, b in pairs:
            _same_batch(a, b)


def test_gather_unsorted_and_repeated_rows(pair) -> None:
    adata, backed = pair
    memory, disk = _data(adata), _data(backed)
    index = torch.tensor([17, 3, 3, 250, 0, 17, 299, 42])
    _same_batch(disk.gather(index), memory.gather(index))
    _same_batch(disk.batch([9, 8, 7]), memory.batch([9, 8, 7]))


@pytest.mark.parametrize("batch_size, drop_last", [(50, False), (50, True), (300, False), (7, False), (269, False)])
def test_shuffled_pass_visits_each_cell_once_in_bounded_reads(pair, batch_size, drop_last, monkeypatch) -> None:
    adata, backed = pair
    memory, disk = _data(adata), _data(backed, chunk_cells=64)
    largest = []
    read = DiskMatrix.rows
    monkeypatch.setattr(DiskMatrix, "rows", lambda self, rows: largest.append(len(rows)) or read(self, rows))
    index = torch.arange(0, N_CELLS).index_select(0, torch.randperm(N_CELLS)[:270])  # a training split
    batches = list(disk.iter_batches(index, batch_size, shuffle=True, generator=torch.Generator().manual_seed(0),
                                     drop_last=drop_last))
    for batch in batches:
        _same_batch(batch, memory.gather(batch.index))  # right values, library and labels for each cell
    seen = torch.cat([b.index for b in batches])
    sizes = [len(b.index) for b in batches]
    if drop_last:
        assert sizes == [batch_size] * (270 // batch_size)
        assert len(set(seen.tolist())) == len(seen)
    else:
        # 270 = 269 + 1: the one-cell remainder is merged into the batch before it, as in memory
        expected = [270] if batch_size == 269 else [batch_size] * (270 // batch_size) + [270 % batch_size] * (
            270 % batch_size > 0)
        assert sizes == expected
        assert torch.equal(seen.sort().values, index.sort().values)
    assert not torch.equal(seen, seen.sort().values)  # shuffled
    assert max(largest) <= 64  # at most one chunk of the file is read at a time


def test_shuffle_is_reproducible_and_repeats_are_kept(pair) -> None:
    _, backed = pair
    disk = _data(backed, chunk_cells=40)

    def order(seed: int, index) -> torch.Tensor:
        generator = torch.Generator().manual_seed(seed)
        return torch.cat([b.index for b in disk.iter_batches(index, 32, shuffle=True, generator=generator)])

    everyone = torch.arange(N_CELLS)
    assert torch.equal(order(1, everyone), order(1, everyone))
    assert not torch.equal(order(1, everyone), order(2, everyone))
    repeated = torch.tensor([5, 5, 9, 200, 5])
    assert sorted(order(0, repeated).tolist()) == [5, 5, 5, 9, 200]


def test_setup_model_train_and_latent_never_load_the_matrix(tmp_path: Path, monkeypatch) -> None:
    adata = _registered()
    adata.write_h5ad(tmp_path / "a.h5ad")
    backed = ad.read_h5ad(tmp_path / "a.h5ad", backed="r")

    def refuse(*args, **kwargs):
        raise AssertionError("the backed matrix was loaded into memory")

    monkeypatch.setattr(type(backed.X), "to_memory", refuse)
    fcrkit.setup_anndata(backed, treatment_key="treatment", covariate_keys=["cell_type"], control_value="control")
    model = fcrkit.models.SCVI(backed, n_latent=3, n_hidden=16, seed=0)
    history = model.train(max_epochs=2, batch_size=64, seed=0, accelerator="cpu", chunk_cells=100)
    assert len(history) == 2 and np.isfinite(history["validation_loss"]).all()
    assert model.get_latent_representation().shape == (N_CELLS, 3)


def test_scvi_from_backed_trains_like_in_memory(pair) -> None:
    adata, backed = pair
    losses = {}
    for name, data in (("memory", adata), ("backed", backed)):
        model = fcrkit.models.SCVI(data, n_latent=3, n_hidden=32, seed=0)
        history = model.train(max_epochs=15, batch_size=32, seed=0, accelerator="cpu", lr=3e-3, chunk_cells=96)
        losses[name] = history["validation_loss"]
    # different minibatch orders (block shuffle), same objective: the same place after 15 epochs
    assert losses["backed"][-1] < 0.93 * losses["backed"][0]
    assert losses["backed"][-1] == pytest.approx(losses["memory"][-1], rel=0.03)


def test_fcr_with_control_pairing_trains_from_backed(tmp_path: Path) -> None:
    adata = _registered()
    adata.write_h5ad(tmp_path / "a.h5ad")
    backed = ad.read_h5ad(tmp_path / "a.h5ad", backed="r")
    losses = {}
    for name, data in (("memory", adata), ("backed", backed)):
        model = fcrkit.models.FCR(data, n_latent=2, n_hidden=32, n_layers=1, prior_hidden=16, seed=0)
        assert model.spec.control_pairing != "none"  # partners come through gather: random reads
        history = model.train(max_epochs=8, batch_size=32, seed=0, accelerator="cpu", lr=3e-3)
        losses[name] = history["validation_loss"]
    assert np.isfinite(losses["backed"]).all()
    assert losses["backed"][-1] == pytest.approx(losses["memory"][-1], rel=0.05)


def test_latent_and_predict_from_backed_equal_in_memory(pair) -> None:
    adata, backed = pair
    model = fcrkit.models.SCVI(adata, n_latent=3, n_hidden=16, seed=0)
    model.train(max_epochs=1, batch_size=64, seed=0, accelerator="cpu")
    np.testing.assert_allclose(model.get_latent_representation(backed, batch_size=70),
                               model.get_latent_representation(adata), rtol=1e-5, atol=1e-6)
    fcr = fcrkit.models.FCR(adata, n_latent=2, n_hidden=16, n_layers=1, prior_hidden=8, seed=0)
    np.testing.assert_allclose(fcr.predict(backed, "drug_0", from_prior="mean", batch_size=70).X,
                               fcr.predict(adata, "drug_0", from_prior="mean").X, rtol=1e-5, atol=1e-5)


def test_backed_checks_values_in_blocks(tmp_path: Path, monkeypatch) -> None:
    adata = _registered()
    adata.X = adata.X.toarray()
    adata.X[123, 4] = np.nan
    adata.write_h5ad(tmp_path / "nan.h5ad")
    monkeypatch.setattr("fcrkit.data.disk.STREAM_VALUES", 200)  # many blocks: the row must be found across them
    backed = ad.read_h5ad(tmp_path / "nan.h5ad", backed="r")
    with pytest.raises(DataError, match=r"1 non-finite value.*'cell_123' \(index 123\)"):
        fcrkit.setup_anndata(backed, treatment_key="treatment", covariate_keys=["cell_type"], control_value="control")

    adata = _registered()
    adata.X = adata.X * 0.5  # not counts
    adata.write_h5ad(tmp_path / "half.h5ad")
    backed = ad.read_h5ad(tmp_path / "half.h5ad", backed="r")
    with pytest.raises(DataError, match="non-negative integer counts"):
        fcrkit.models.SCVI(backed)


def test_row_sums_without_a_float64_copy_handle_empty_rows() -> None:
    matrix = sp.csr_matrix(np.array([[0, 0, 0], [1, 2, 0], [0, 0, 0], [0, 0, 5.5], [0, 0, 0]], dtype=np.float32))
    np.testing.assert_array_equal(row_sums(matrix), [[0], [3], [0], [5.5], [0]])
    np.testing.assert_array_equal(row_sums(sp.csr_matrix((2, 4), dtype=np.float32)), [[0], [0]])
    np.testing.assert_array_equal(row_sums(matrix.toarray()), row_sums(matrix))


def test_a_row_range_streams_its_row_sums_in_many_blocks_as_memory_sums_them(pair) -> None:
    adata, backed = pair
    matrix = disk_matrix(backed, None)
    expected = row_sums(adata.X)[101:250]
    # 40 stored values a block: about two rows of the 30 genes, so the 149 rows take many blocks
    np.testing.assert_allclose(matrix.row_range(101, 250).row_sums(max_values=40), expected)
    np.testing.assert_allclose(matrix.row_range(0, 4).row_sums(max_values=1), row_sums(adata.X)[:4])  # row 3 empty


def test_views_layers_and_csc_are_served_from_memory(tmp_path: Path) -> None:
    adata = _registered()
    adata.layers["counts"] = adata.X.copy()
    adata.write_h5ad(tmp_path / "a.h5ad")
    backed = ad.read_h5ad(tmp_path / "a.h5ad", backed="r")
    assert not isinstance(_data(backed[:50]), BackedCellData)
    assert not isinstance(cell_data(backed, fcrkit.setup_anndata(backed, layer="counts")), BackedCellData)
    adata.X = sp.csc_matrix(adata.X)
    adata.write_h5ad(tmp_path / "csc.h5ad")
    backed = ad.read_h5ad(tmp_path / "csc.h5ad", backed="r")
    with pytest.warns(UserWarning, match="write it as CSR"):
        data = _data(backed)
    assert not isinstance(data, BackedCellData) and data.n_obs == N_CELLS


def test_clear_errors(pair) -> None:
    _, backed = pair
    for bad in (0, -5, 2.5, "100", True):
        with pytest.raises(ConfigError, match="chunk_cells=.* must be a positive integer"):
            _data(backed, chunk_cells=bad)
    disk = _data(backed)
    with pytest.raises(ConfigError, match="batch_size"):
        next(disk.iter_batches(torch.arange(10), 0, shuffle=True))
    with pytest.raises(DataError, match="outside 0..299"):
        disk.batch([0, 300])
    backed.file.close()
    with pytest.raises(DataError, match="has been closed; reopen it"):
        disk.batch([0, 1])
    with pytest.raises(DataError, match="has been closed"):
        next(disk.iter_batches(torch.arange(10), 4, shuffle=True))


def test_default_chunk_holds_about_64_mb(pair) -> None:
    _, backed = pair
    disk = _data(backed)
    assert disk.chunk_cells == default_chunk_cells(disk.matrix) >= 2048
    assert "chunk_cells=" in repr(disk) and str(backed.filename) in repr(disk)


def test_spawned_data_parallel_training_refuses_a_backed_file(pair) -> None:
    _, backed = pair
    model = fcrkit.models.SCVI(backed, n_latent=2, seed=0)
    with pytest.raises(ConfigError, match="cannot share this AnnData's open backed file; launch .* torchrun"):
        model.train(max_epochs=1, strategy="ddp", devices=2, accelerator="cpu")
