"""Tests of fcrkit.data: setup_anndata, label encodings, value checks and CellData minibatches."""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch

import fcrkit
from fcrkit.data import (
    AnnDataSetup,
    Batch,
    CellData,
    check_values,
    get_matrix,
    get_setup,
    setup_anndata,
)
from fcrkit.errors import ConfigError, DataError

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
FCRKIT_DIR = Path(fcrkit.__file__).resolve().parent


def raised_from_fcrkit(excinfo: pytest.ExceptionInfo) -> bool:
    """Whether the exception was raised by code inside the fcrkit package (its last frame)."""
    last = Path(str(excinfo.traceback[-1].path)).resolve()
    return FCRKIT_DIR in last.parents


def make_adata(
    n_cells: int = 6,
    n_genes: int = 4,
    *,
    sparse: bool = False,
    seed: int = 0,
    **obs_columns: list,
) -> ad.AnnData:
    """Small count AnnData; ``obs_columns`` of length ``n_cells`` become obs columns."""
    rng = np.random.default_rng(seed)
    counts = rng.poisson(3.0, size=(n_cells, n_genes)).astype(np.float32)
    obs = pd.DataFrame(obs_columns, index=[f"cell_{i}" for i in range(n_cells)])
    matrix = sp.csr_matrix(counts) if sparse else counts
    adata = ad.AnnData(matrix, obs=obs)
    adata.layers["counts"] = counts.copy()
    return adata


TREATMENTS = ["control", "A", "A+B", "B", "control", "B+A"]
CELL_TYPES = ["t1", "t2", "t1", "t3", "t2", "t1"]
BATCHES = ["b2", "b1", "b1", "b1", "b2", "b2"]


def labelled_adata(**extra: list) -> ad.AnnData:
    """Six cells with a treatment, two covariates and any extra obs columns."""
    return make_adata(drug=TREATMENTS, cell_type=CELL_TYPES, batch=BATCHES, **extra)


# -- encodings ---------------------------------------------------------------------------------------


def test_covariates_are_one_hot_per_column_concatenated() -> None:
    adata = labelled_adata()
    setup = setup_anndata(adata, treatment_key="drug", covariate_keys=["cell_type", "batch"])
    assert setup.covariate_levels == {"cell_type": ("t1", "t2", "t3"), "batch": ("b1", "b2")}
    x = setup.encode_labels(adata.obs)["x"]
    assert x.dtype == np.float32 and x.shape == (6, 5)
    expected_ct = np.eye(3)[[0, 1, 0, 2, 1, 0]]
    expected_batch = np.eye(2)[[1, 0, 0, 0, 1, 1]]
    np.testing.assert_array_equal(x, np.hstack([expected_ct, expected_batch]))


def test_treatments_are_multi_hot_and_controls_zero() -> None:
    adata = labelled_adata()
    setup = setup_anndata(adata, treatment_key="drug", covariate_keys="cell_type")
    assert setup.treatments == ("A", "B")
    assert setup.covariate_keys == ("cell_type",)  # a bare string is one key
    t = setup.encode_labels(adata.obs)["t"]
    assert t.dtype == np.float32
    np.testing.assert_array_equal(t, [[0, 0], [1, 0], [1, 1], [0, 1], [0, 0], [1, 1]])


def test_string_doses_give_one_dose_per_part() -> None:
    adata = make_adata(
        n_cells=5,
        drug=["control", "A", "A+B", "B+A", "control+B"],
        dose=["1", "2.5", "1.0+0.5", "0.25+4", "3+2"],
    )
    setup = setup_anndata(adata, treatment_key="drug", dose_key="dose")
    t = setup.encode_labels(adata.obs)["t"]
    np.testing.assert_allclose(t, [[0, 0], [2.5, 0], [1.0, 0.5], [4, 0.25], [0, 2]])


def test_numeric_dose_applies_to_every_part() -> None:
    adata = make_adata(n_cells=3, drug=["control", "A", "A+B"], dose=[5.0, 0.5, 2.0])
    setup = setup_anndata(adata, treatment_key="drug", dose_key="dose")
    np.testing.assert_allclose(setup.encode_labels(adata.obs)["t"], [[0, 0], [0.5, 0], [2, 2]])


def test_categorical_and_numeric_columns_become_string_levels() -> None:
    adata = make_adata(
        n_cells=4,
        drug=pd.Categorical(["0", "7", "7", "0"]),
        line=[3, 1, 3, 2],
    )
    setup = setup_anndata(adata, treatment_key="drug", covariate_keys=["line"], control_value="0")
    assert setup.treatments == ("7",)
    assert setup.covariate_levels == {"line": ("1", "2", "3")}
    labels = {key: label.dense() for key, label in setup.encode_labels(adata.obs).items()}
    np.testing.assert_array_equal(labels["t"][:, 0], [0, 1, 1, 0])
    np.testing.assert_array_equal(labels["x"].argmax(1), [2, 0, 2, 1])


def test_label_dims_omit_empty_conditions() -> None:
    adata = labelled_adata()
    full = setup_anndata(adata, treatment_key="drug", covariate_keys=["cell_type", "batch"])
    assert full.label_dims == {"x": 5, "t": 2}
    assert setup_anndata(adata, covariate_keys="batch").label_dims == {"x": 2}
    assert setup_anndata(adata).label_dims == {}
    only_controls = make_adata(n_cells=2, drug=["ctrl", "ctrl"])
    setup = setup_anndata(only_controls, treatment_key="drug", control_value="ctrl")
    assert setup.label_dims == {} and setup.encode_labels(only_controls.obs) == {}


def test_condition_codes_group_covariates_and_canonical_treatment() -> None:
    adata = labelled_adata()
    setup = setup_anndata(adata, treatment_key="drug", covariate_keys="cell_type")
    codes = setup.condition_codes(adata.obs)
    assert codes.dtype == np.int64 and codes.shape == (6,)
    assert codes[2] == codes[5]  # (t1, A+B) and (t1, B+A)
    assert codes[0] != codes[4]  # (t1, control) vs (t2, control)
    assert len(set(codes.tolist())) == 5


# -- storage -----------------------------------------------------------------------------------------


def test_to_dict_round_trip_and_absent_keys() -> None:
    adata = labelled_adata(dose=[1.0] * 6)
    setup = setup_anndata(adata, treatment_key="drug", dose_key="dose", covariate_keys=["cell_type"])
    assert AnnDataSetup.from_dict(setup.to_dict()) == setup
    assert get_setup(adata) == setup
    bare = setup_anndata(adata)
    stored = bare.to_dict()
    assert None not in stored.values()
    assert not {"layer", "treatment_key", "dose_key"} & set(stored)
    assert AnnDataSetup.from_dict(stored) == bare


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(layer="counts", treatment_key="drug", covariate_keys=["cell_type", "batch"]),
        dict(),
    ],
)
def test_setup_survives_h5ad(tmp_path: Path, kwargs: dict) -> None:
    adata = labelled_adata()
    setup = setup_anndata(adata, **kwargs)
    path = tmp_path / "a.h5ad"
    adata.write_h5ad(path)
    restored = get_setup(ad.read_h5ad(path))
    assert restored == setup
    assert restored.encode_labels(adata.obs).keys() == setup.encode_labels(adata.obs).keys()


def test_get_setup_requires_setup() -> None:
    with pytest.raises(DataError) as excinfo:
        get_setup(labelled_adata())
    assert "setup_anndata" in str(excinfo.value)
    assert raised_from_fcrkit(excinfo)


def test_get_matrix_returns_csr_for_other_sparse_formats() -> None:
    adata = labelled_adata()
    adata.layers["csc"] = sp.csc_matrix(adata.X)
    matrix = get_matrix(adata, "csc")
    assert isinstance(matrix, sp.csr_matrix)
    np.testing.assert_array_equal(matrix.toarray(), adata.X)
    assert isinstance(get_matrix(adata, None), np.ndarray)


# -- bad input ---------------------------------------------------------------------------------------


def with_obs(**changes: list) -> ad.AnnData:
    adata = labelled_adata()
    for key, values in changes.items():
        adata.obs[key] = values
    return adata


def with_x(row: int, value: float, *, sparse: bool = False) -> ad.AnnData:
    adata = labelled_adata()
    adata.X[row, 1] = value
    if sparse:
        adata.X = sp.csr_matrix(adata.X)
    return adata


BAD_SETUPS = {
    "missing treatment key": (
        labelled_adata,
        dict(treatment_key="drugs"),
        ["'drugs'", "Did you mean 'drug'"],
    ),
    "missing covariate key": (
        labelled_adata,
        dict(covariate_keys=["celltype"]),
        ["'celltype'", "'cell_type'"],
    ),
    "missing dose key": (
        labelled_adata,
        dict(treatment_key="drug", dose_key="dose"),
        ["'dose'", "'batch'"],
    ),
    "missing layer": (labelled_adata, dict(layer="count"), ["'count'", "'counts'"]),
    "control absent": (
        labelled_adata,
        dict(treatment_key="drug", control_value="ctrl"),
        ["'ctrl'", "'A+B'", "Did you mean 'control'"],
    ),
    "NaN treatment": (
        lambda: with_obs(drug=["A", None, "control", "B", np.nan, "A"]),
        dict(treatment_key="drug"),
        ["'drug'", "2 missing"],
    ),
    "NaN covariate": (
        lambda: with_obs(cell_type=pd.Categorical(["t1", None, "t1", "t2", "t1", "t1"])),
        dict(covariate_keys="cell_type"),
        ["'cell_type'", "1 missing"],
    ),
    "NaN dose": (
        lambda: with_obs(dose=[1.0, np.nan, 1.0, 1.0, 1.0, 1.0]),
        dict(treatment_key="drug", dose_key="dose"),
        ["'dose'", "1 missing"],
    ),
    "NaN in X": (lambda: with_x(3, np.nan), {}, ["1 non-finite", "'cell_3'"]),
    "inf in CSR X": (lambda: with_x(4, np.inf, sparse=True), {}, ["1 non-finite", "'cell_4'"]),
    "dose not numeric": (
        lambda: with_obs(dose=["1", "high", "1", "1", "1", "1"]),
        dict(treatment_key="drug", dose_key="dose"),
        ["'high'", "'cell_1'"],
    ),
    "negative dose": (
        lambda: with_obs(dose=[1.0, 1.0, 1.0, -2.0, 1.0, 1.0]),
        dict(treatment_key="drug", dose_key="dose"),
        ["-2", "'cell_3'", "non-negative"],
    ),
    "dose parts differ": (
        lambda: with_obs(dose=["1", "1", "1+2+3", "1", "1", "1+1"]),
        dict(treatment_key="drug", dose_key="dose"),
        ["'1+2+3'", "'cell_2'", "'A+B'"],
    ),
    "empty treatment part": (
        lambda: with_obs(drug=["control", "A+", "A", "A", "A", "A"]),
        dict(treatment_key="drug"),
        ["'A+'"],
    ),
    "no cells": (lambda: make_adata(n_cells=0), {}, ["0 cells"]),
    "no genes": (lambda: make_adata(n_genes=0), {}, ["0 genes"]),
    "dose without treatment": (
        lambda: with_obs(dose=[1.0] * 6),
        dict(dose_key="dose"),
        ["'dose'", "treatment_key"],
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_SETUPS))
def test_bad_input_raises_data_error_naming_it(case: str) -> None:
    build, kwargs, fragments = BAD_SETUPS[case]
    with pytest.raises(DataError) as excinfo:
        setup_anndata(build(), **kwargs)
    for fragment in fragments:
        assert fragment in str(excinfo.value)
    assert raised_from_fcrkit(excinfo)


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        (dict(layer=3), "layer"),
        (dict(treatment_key=["drug"]), "treatment_key"),
        (dict(covariate_keys=[1]), "covariate_keys"),
        (dict(covariate_keys=["batch", "batch"]), "'batch'"),
        (dict(treatment_key="drug", control_value=None), "control_value"),
    ],
)
def test_bad_argument_types_raise_config_error(kwargs: dict, fragment: str) -> None:
    with pytest.raises(ConfigError) as excinfo:
        setup_anndata(labelled_adata(), **kwargs)
    assert fragment in str(excinfo.value)
    assert raised_from_fcrkit(excinfo)


def test_unseen_labels_are_named_with_the_known_ones() -> None:
    adata = labelled_adata()
    setup = setup_anndata(adata, treatment_key="drug", covariate_keys="cell_type")
    new = adata.obs.copy()
    new["cell_type"] = ["t1", "t9", "t1", "t1", "t1", "t1"]
    with pytest.raises(DataError) as excinfo:
        setup.encode_labels(new)
    assert all(s in str(excinfo.value) for s in ("'t9'", "'cell_type'", "'t1', 't2', 't3'"))
    assert raised_from_fcrkit(excinfo)
    new = adata.obs.copy()
    new["drug"] = ["A+C", "A", "A", "A", "A", "control"]
    with pytest.raises(DataError) as excinfo:
        setup.encode_labels(new)
    assert all(s in str(excinfo.value) for s in ("'C'", "'drug'", "'A', 'B'"))
    assert raised_from_fcrkit(excinfo)


# -- check_values ------------------------------------------------------------------------------------

LOGNORM = np.log1p(np.array([[0.0, 1.5, 2.0], [3.0, 0.0, 0.5]], dtype=np.float32))
COUNTS = np.array([[0, 3, 50], [7, 0, 1]], dtype=np.float32)


@pytest.mark.parametrize("to_matrix", [np.asarray, sp.csr_matrix], ids=["dense", "csr"])
@pytest.mark.parametrize("bad_value, shown", [(-1.0, "-1"), (2.5, "2.5")])
def test_check_values_counts_refuses_non_counts(to_matrix, bad_value: float, shown: str) -> None:
    matrix = COUNTS.copy()
    matrix[1, 2] = bad_value
    with pytest.raises(DataError) as excinfo:
        check_values(to_matrix(matrix), "counts", likelihood="nb", layer="raw")
    message = str(excinfo.value)
    for fragment in ("'nb'", "'raw'", shown, "cell index 1", 'likelihood="gaussian"', "layer="):
        assert fragment in message
    assert raised_from_fcrkit(excinfo)
    with pytest.raises(DataError, match="adata.X"):
        check_values(to_matrix(matrix), "counts", likelihood="nb", layer=None)


@pytest.mark.parametrize("to_matrix", [np.asarray, sp.csr_matrix], ids=["dense", "csr"])
def test_check_values_accepts_the_right_kind(to_matrix) -> None:
    check_values(to_matrix(COUNTS), "counts", likelihood="nb", layer=None)
    check_values(to_matrix(COUNTS.astype(np.int32)), "counts", likelihood="zinb", layer=None)
    check_values(to_matrix(LOGNORM), "real", likelihood="gaussian", layer=None)
    small_ints = np.minimum(COUNTS, 5)  # could be anything; only large integers look like counts
    check_values(to_matrix(small_ints), "real", likelihood="gaussian", layer=None)
    check_values(to_matrix(COUNTS), "real", likelihood="gaussian", layer=None, allow_counts=True)


@pytest.mark.parametrize("to_matrix", [np.asarray, sp.csr_matrix], ids=["dense", "csr"])
def test_check_values_real_refuses_raw_counts(to_matrix) -> None:
    with pytest.raises(DataError) as excinfo:
        check_values(to_matrix(COUNTS), "real", likelihood="gaussian", layer="counts")
    message = str(excinfo.value)
    for fragment in ("'gaussian'", "'counts'", "50", '"nb"', "log-normalise"):
        assert fragment in message
    assert raised_from_fcrkit(excinfo)


def test_check_values_rejects_unknown_input_kind() -> None:
    with pytest.raises(ConfigError, match="'integers'"):
        check_values(COUNTS, "integers", likelihood="nb", layer=None)  # type: ignore[arg-type]


# -- CellData ----------------------------------------------------------------------------------------


def sparse_counts(n_cells: int = 50, n_genes: int = 30, seed: int = 0) -> np.ndarray:
    """About 90% zeros, with some empty rows, as int32."""
    rng = np.random.default_rng(seed)
    dense = rng.poisson(4.0, size=(n_cells, n_genes)) * (rng.random((n_cells, n_genes)) < 0.1)
    dense[[0, 7, 8, n_cells - 1]] = 0
    return dense.astype(np.int32)


def random_labels(n_cells: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = np.eye(3, dtype=np.float32)[rng.integers(0, 3, n_cells)]
    return {"x": x, "t": rng.random((n_cells, 2))}


def assert_batches_equal(a: Batch, b: Batch) -> None:
    for name in ("y", "library", "index"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert a.labels.keys() == b.labels.keys()
    for key in a.labels:
        assert torch.equal(a.labels[key], b.labels[key]), key


def test_csr_and_dense_give_identical_batches() -> None:
    dense = sparse_counts()
    labels = random_labels(len(dense))
    from_dense, from_csr = CellData(dense, labels), CellData(sp.csr_matrix(dense), labels)
    assert from_csr.is_sparse and not from_dense.is_sparse
    index = torch.tensor([7, 3, 49, 3, 0, 12, 7, 8, 25])  # unsorted, repeats, empty rows
    batch = from_csr.batch(index)
    assert_batches_equal(batch, from_dense.batch(index))
    assert batch.y.dtype == torch.float32 and batch.y.shape == (9, 30)
    assert batch.index.dtype == torch.int64
    np.testing.assert_array_equal(batch.y.numpy(), dense[index.numpy()])
    assert batch.labels["x"].dtype == torch.float32 and batch.labels["t"].dtype == torch.float32


def test_csr_batch_with_only_empty_rows_and_empty_index() -> None:
    data = CellData(sp.csr_matrix(sparse_counts()), {})
    assert torch.equal(data.batch([0, 8]).y, torch.zeros(2, 30))
    empty = data.batch(torch.tensor([], dtype=torch.int64))
    assert empty.y.shape == (0, 30) and empty.library.shape == (0, 1)


def test_csr_with_duplicate_entries_is_summed() -> None:
    data, columns, row_starts = np.array([1.0, 2.0, 5.0]), np.array([1, 1, 0]), np.array([0, 2, 3])
    matrix = sp.csr_matrix((data, columns, row_starts), shape=(2, 3))
    assert not matrix.has_canonical_format
    batch = CellData(matrix, {}).batch([1, 0])
    np.testing.assert_array_equal(batch.y.numpy(), [[5, 0, 0], [0, 3, 0]])
    np.testing.assert_array_equal(batch.library.numpy()[:, 0], [5, 3])


def test_library_is_row_sum_over_all_genes() -> None:
    dense = sparse_counts()
    data = CellData(sp.csr_matrix(dense), {})
    assert data.library.shape == (50, 1)
    np.testing.assert_array_equal(data.library.numpy()[:, 0], dense.sum(1))
    batch = data.batch(torch.arange(10))
    assert torch.equal(batch.library, batch.y.sum(1, keepdim=True))


def test_iter_batches_covers_each_index_once_per_epoch() -> None:
    data = CellData(sparse_counts(), random_labels(50))
    subset = torch.arange(3, 46)
    batches = list(data.iter_batches(subset, 10, shuffle=True))
    assert [len(b.index) for b in batches] == [10, 10, 10, 10, 3]
    seen = torch.cat([b.index for b in batches])
    assert sorted(seen.tolist()) == subset.tolist()
    assert seen.tolist() != subset.tolist()  # shuffled (probability of identity is negligible)
    in_order = torch.cat([b.index for b in data.iter_batches(subset, 10, shuffle=False)])
    assert torch.equal(in_order, subset)


def test_iter_batches_is_reproducible_with_a_seeded_generator() -> None:
    data = CellData(sparse_counts(), {})

    def order(seed: int) -> list[int]:
        generator = torch.Generator().manual_seed(seed)
        batches = data.iter_batches(torch.arange(50), 16, shuffle=True, generator=generator)
        return torch.cat([b.index for b in batches]).tolist()

    assert order(1) == order(1)
    assert order(1) != order(2)


def test_iter_batches_drop_last() -> None:
    data = CellData(sparse_counts(), {})
    def sizes(n: int) -> list[int]:
        batches = data.iter_batches(torch.arange(n), 16, shuffle=True, drop_last=True)
        return [len(b.index) for b in batches]

    assert sizes(50) == [16, 16, 16]
    assert sizes(48) == [16, 16, 16]
    assert sizes(15) == []


def test_bad_index_and_batch_size() -> None:
    data = CellData(sparse_counts(), {})
    with pytest.raises(DataError, match="50") as excinfo:
        data.batch([0, 50])
    assert raised_from_fcrkit(excinfo)
    with pytest.raises(DataError, match="-1"):
        data.batch([-1])
    with pytest.raises(ConfigError, match="batch_size"):
        next(data.iter_batches(torch.arange(5), 0, shuffle=False))
    with pytest.raises(ConfigError, match="integer"):
        data.batch(torch.tensor([0.0, 1.0]))


def test_labels_must_have_one_row_per_cell() -> None:
    with pytest.raises(DataError, match="'x'"):
        CellData(sparse_counts(), {"x": np.zeros((3, 2))})


def test_from_anndata_uses_layer_and_labels() -> None:
    adata = labelled_adata()
    adata.X = np.log1p(adata.X)
    setup = setup_anndata(adata, layer="counts", treatment_key="drug", covariate_keys="cell_type")
    data = CellData.from_anndata(adata, setup)
    assert (data.n_obs, data.n_genes) == (6, 4)
    batch = data.batch(torch.arange(6))
    np.testing.assert_array_equal(batch.y.numpy(), adata.layers["counts"])
    np.testing.assert_array_equal(batch.labels["t"].numpy(), setup.encode_labels(adata.obs)["t"])


# -- real data ---------------------------------------------------------------------------------------


def read_shared(name: str) -> ad.AnnData:
    """A data set of ../shared/data, or skip the test when the folder is absent."""
    path = SHARED_DATA / name
    if not path.exists():
        pytest.skip(f"../shared/data not found: {path} is absent")
    return ad.read_h5ad(path)


def test_kang_setup_and_csr_batches() -> None:
    adata = read_shared("kang_ifnb2800.h5ad")
    setup = setup_anndata(
        adata, treatment_key="sample", control_value="CTRL", covariate_keys=["cell_type"]
    )
    assert setup.label_dims == {"x": 13, "t": 1}
    assert setup.treatments == ("STIM",)
    check_values(get_matrix(adata, None), "counts", likelihood="nb", layer=None)
    data = CellData.from_anndata(adata, setup)
    assert data.is_sparse and (data.n_obs, data.n_genes) == (2800, 14053)
    index = torch.tensor([2799, 0, 17, 17, 1500, 3])
    batch = data.batch(index)
    rows = adata.X[index.numpy()].toarray()
    np.testing.assert_array_equal(batch.y.numpy(), rows)
    np.testing.assert_array_equal(batch.library.numpy()[:, 0], rows.sum(1))
    stim = (adata.obs["sample"].to_numpy()[index.numpy()] == "STIM").astype(np.float32)
    np.testing.assert_array_equal(batch.labels["t"].numpy()[:, 0], stim)


def test_perturbench_string_doses_and_combinations() -> None:
    adata = read_shared("perturbench_devel_norman19_mcfaline23.h5ad")
    setup = setup_anndata(
        adata,
        treatment_key="perturbation",
        dose_key="dose",
        covariate_keys="cell_type",
        control_value="control",
    )
    assert setup.label_dims == {"x": 4, "t": 31}
    t = setup.encode_labels(adata.obs)["t"].dense()
    labels = adata.obs["perturbation"].astype(str).to_numpy()
    n_parts = np.char.count(labels.astype(str), "+") + 1
    expected_total = np.where(labels == "control", 0, n_parts)
    np.testing.assert_array_equal(t.sum(1), expected_total)
