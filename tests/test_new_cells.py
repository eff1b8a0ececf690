"""New cells given to a trained model are checked as training data are (issue 17, items 3 and 4).

``predict``, ``get_latent_representation``, ``get_normalized_expression``, the likelihood metrics and
``fcrkit predict / evaluate`` take cells the model has not seen: values of the wrong kind (log-normalised
values given to a count model, raw counts given to a Gaussian one, NaN) must stop with a DataError that
names the value and the fix, not give numbers on the wrong scale. Duplicated gene names are refused
where data come in (``setup_anndata``, loading a model onto data, the CLI's data files), naming them.
"""

from __future__ import annotations

import numpy as np
import pytest

import fcrkit
import fcrkit.cli
from fcrkit.errors import DataError
from fcrkit.metrics import iwelbo, log_normalize
from tests.simulated import interaction_data


@pytest.fixture(scope="module")
def counts_data():
    """300 simulated count cells x 30 genes with a treatment and a covariate, set up for fcrkit."""
    return interaction_data(300, 30)


@pytest.fixture(scope="module")
def fcr(counts_data):
    """An (untrained) FCR on the counts: checking its input does not need trained weights."""
    return fcrkit.models.FCR(counts_data, n_latent={"x": 2, "t": 2, "tx": 2}, n_hidden=16, seed=0)


def controls(adata):
    return adata[adata.obs["treatment"].astype(str) == "control"].copy()


def dense(matrix) -> np.ndarray:
    return np.asarray(matrix.toarray() if hasattr(matrix, "toarray") else matrix, dtype=np.float32)


def log_normalised(adata):
    """The cells of ``adata`` with X log-normalised (what scanpy's normalize_total + log1p give)."""
    out = adata.copy()
    out.X = dense(log_normalize(out.X))
    return out


def test_count_model_refuses_log_normalised_cells_everywhere(fcr, counts_data):
    lognorm = log_normalised(controls(counts_data))
    calls = {
        "predict": lambda: fcr.predict(lognorm, treatment="drug_0"),
        "get_latent_representation": lambda: fcr.get_latent_representation(lognorm),
        "iwelbo": lambda: iwelbo(fcr, lognorm, k=2),
    }
    if hasattr(fcr, "get_normalized_expression"):
        calls["get_normalized_expression"] = lambda: fcr.get_normalized_expression(lognorm)
    for name, call in calls.items():
        with pytest.raises(DataError) as err:
            call()
        message = str(err.value)
        assert "likelihood 'nb' models non-negative integer counts" in message, name
        assert "FCR was trained on raw counts in adata.X" in message, name  # the fix, for a trained model
        assert "likelihood=\"gaussian\"" not in message, name  # not the advice for building a new model


def test_count_model_still_predicts_from_raw_counts(fcr, counts_data):
    cells = controls(counts_data)
    predicted = fcr.predict(cells, treatment="drug_0", seed=0)
    # counts in, expected counts out with each cell's own library size
    np.testing.assert_allclose(predicted.X.sum(1), np.asarray(cells.X.sum(1)).ravel(), rtol=1e-4)


def test_count_model_refuses_negative_and_infinite_values(fcr, counts_data):
    cells = controls(counts_data)
    cells.X = dense(cells.X)
    negative = cells.copy()
    negative.X[3, 4] = -2.0
    with pytest.raises(DataError, match=r"holds -2 \(cell index 3"):
        fcr.predict(negative, treatment="drug_0")
    infinite = cells.copy()
    infinite.X[5, 1] = np.inf  # an integer-valued float, but not a count
    with pytest.raises(DataError, match=r"non-finite value\(s\).*index 5"):
        fcr.get_latent_representation(infinite)


def test_gaussian_model_refuses_raw_counts_and_nan():
    adata = fcrkit.simulate.interaction(n_cells=200, n_genes=30, seed=1)
    adata.layers["counts"] = adata.X.copy()
    adata.X = dense(log_normalize(adata.X))
    fcrkit.setup_anndata(adata, treatment_key="treatment", covariate_keys=["covariate"])
    model = fcrkit.models.ScGen(adata, likelihood="gaussian", n_latent=4, n_hidden=16, seed=0)
    counts = controls(adata)
    counts.X = dense(counts.layers["counts"])
    with pytest.raises(DataError, match="looks like raw counts. ScGen was trained on real values"):
        model.get_latent_representation(counts)
    nan = controls(adata)
    nan.X[2, 7] = np.nan
    with pytest.raises(DataError, match=r"non-finite value\(s\).*index 2"):
        model.predict(nan, treatment="drug_0")


def test_setup_anndata_refuses_duplicated_gene_names():
    adata = fcrkit.simulate.basic(n_cells=50, n_genes=12, seed=0)
    adata.var_names = ["A", "B", "A", "C", "B", "A"] + [f"g{i}" for i in range(6)]
    with pytest.raises(DataError) as err:
        fcrkit.setup_anndata(adata, treatment_key="treatment")
    message = str(err.value)
    assert "2 duplicated gene name(s)" in message and "'A' (3x)" in message and "'B' (2x)" in message
    assert "adata.var_names_make_unique()" in message
    adata.var_names_make_unique()
    fcrkit.setup_anndata(adata, treatment_key="treatment")  # the fix works


def test_cli_predict_on_data_with_duplicated_genes_names_them(tmp_path, counts_data, capsys):
    """A model of some genes, a data file with more genes, some duplicated: an fcrkit error, no pandas traceback.

    (``fcrkit predict`` narrows a superset of the model's genes by name; pandas cannot do that with a
    non-unique index and used to raise ``InvalidIndexError``.)
    """
    some = counts_data[:, :20].copy()
    fcrkit.setup_anndata(some, treatment_key="treatment", covariate_keys=["covariate"])
    fcrkit.models.FCR(some, n_latent={"x": 2, "t": 2, "tx": 2}, n_hidden=16, seed=0).save(tmp_path / "model")
    data = counts_data.copy()
    del data.uns["fcrkit"]
    data.var_names = list(data.var_names[:20]) + ["dup"] * 3 + list(data.var_names[23:])
    data.write_h5ad(tmp_path / "cells.h5ad")
    argv = ["predict", str(tmp_path / "model"), str(tmp_path / "cells.h5ad"), "--treatment", "drug_0",
            "--output", str(tmp_path / "out.h5ad")]
    assert fcrkit.cli.main(argv) == 2
    error = capsys.readouterr().err
    assert "duplicated gene name(s) in var_names: 'dup' (3x)" in error
    assert "var_names_make_unique" in error
    data.var_names_make_unique()  # the fix: then the model's genes are found by name
    data.write_h5ad(tmp_path / "cells.h5ad")
    assert fcrkit.cli.main(argv) == 0
    assert (tmp_path / "out.h5ad").is_file()


def test_model_load_names_duplicated_genes(tmp_path, counts_data):
    model = fcrkit.models.SCVI(counts_data, n_latent=2, n_hidden=16, seed=0)
    model.save(tmp_path / "scvi")
    data = counts_data.copy()
    data.var_names = ["x", "x"] + list(data.var_names[2:])
    with pytest.raises(DataError, match=r"'x' \(2x\).*var_names_make_unique"):
        fcrkit.models.SCVI.load(tmp_path / "scvi", data)
