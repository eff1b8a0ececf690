"""Labels stored as indices and doses: memory bound at 20,000 perturbations, minibatch entries, dense views."""

from __future__ import annotations

import tracemalloc

import anndata as ad
import numpy as np
import pandas as pd
import pyro.poutine as poutine
import pytest
import torch

import fcrkit
from fcrkit.components.cpa import AdditiveEmbeddingDecoder
from fcrkit.data import Batch, CellData, setup_anndata
from fcrkit.data.labels import IndexedLabels, treatment_entries

N_CELLS, N_PERTURBATIONS = 50_000, 20_000


def test_many_perturbations_are_stored_within_the_exact_index_bound_and_never_densely() -> None:
    names = np.array([f"p{i:05d}" for i in range(N_PERTURBATIONS)], dtype=object)
    treatment = np.where(np.arange(N_CELLS) < 5_000, "control", names[np.arange(N_CELLS) % N_PERTURBATIONS])
    obs = pd.DataFrame({"drug": treatment, "line": np.where(np.arange(N_CELLS) % 3, "a", "b")},
                       index=[f"c{i}" for i in range(N_CELLS)])
    adata = ad.AnnData(np.ones((N_CELLS, 2), dtype=np.float32), obs=obs)
    setup = setup_anndata(adata, treatment_key="drug", covariate_keys="line")  # encodes the labels once too
    assert setup.label_dims == {"x": 2, "t": N_PERTURBATIONS}
    tracemalloc.start()  # numpy reports its allocations: a dense cells x treatments float32 array is 4 GB
    try:
        data = CellData.from_anndata(adata, setup)  # encode_labels, then tensors
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # one slot per cell for a single perturbation, one per covariate column: int64 index + float32 dose
    assert {key: tuple(index.shape) for key, index in data.labels.index.items()} == {"x": (N_CELLS, 1),
                                                                                   "t": (N_CELLS, 1)}
    assert data.labels.nbytes == 2 * N_CELLS * 1 * (8 + 4)
    dense_gb = N_CELLS * N_PERTURBATIONS * 4e-9
    assert peak < 200e6, f"{peak / 1e6:.0f} MB traced while setting up (dense labels: {dense_gb:.0f} GB)"
    batch = data.batch(torch.tensor([0, 5_000, 45_123]))
    cells, treatments, doses = treatment_entries(batch.labels)
    assert cells.tolist() == [1, 2] and doses.tolist() == [1.0, 1.0]
    assert [setup.treatments[j] for j in treatments.tolist()] == [names[5_000], names[45_123 % N_PERTURBATIONS]]
    assert batch.labels["t"].shape == (3, N_PERTURBATIONS)  # the dense view: per minibatch, on request


def hand_built() -> tuple[ad.AnnData, list[list[tuple[str, float]]]]:
    """Six cells with combinations, doses, a repeated part, a zero dose and controls; their expected entries."""
    obs = pd.DataFrame({
        "drug": ["control", "A+B", "C", "B+C+A", "A+A", "A"],
        "dose": ["1", "0.5+2", "3", "1+0.25+4", "1+0.5", "0"],
        "line": ["x", "y", "x", "y", "y", "x"],
    }, index=[f"c{i}" for i in range(6)])
    expected = [[], [("A", 0.5), ("B", 2.0)], [("C", 3.0)], [("A", 4.0), ("B", 1.0), ("C", 0.25)], [("A", 1.5)], []]
    return ad.AnnData(np.ones((6, 2), dtype=np.float32), obs=obs), expected


def test_minibatch_entries_and_dense_views_round_trip_a_hand_built_case() -> None:
    adata, expected = hand_built()
    setup = setup_anndata(adata, treatment_key="drug", dose_key="dose", covariate_keys="line")
    assert setup.treatments == ("A", "B", "C")
    data = CellData.from_anndata(adata, setup)
    assert data.labels.index["t"].shape == (6, 3)  # the most parts of a combination, not the vocabulary
    rows = [3, 0, 1, 4, 3, 5, 2]  # repeats, a control, a zero dose
    batch = data.batch(rows)
    cells, treatments, doses = treatment_entries(batch.labels)
    got = [[] for _ in rows]
    for cell, j, dose in zip(cells.tolist(), treatments.tolist(), doses.tolist(), strict=True):
        got[cell].append((setup.treatments[j], dose))
    assert got == [expected[r] for r in rows]
    dense = torch.zeros(len(rows), 3)
    for i, r in enumerate(rows):
        for name, dose in expected[r]:
            dense[i, setup.treatments.index(name)] = dose
    assert torch.equal(batch.labels["t"], dense)
    assert torch.equal(batch.labels["x"], torch.eye(2)[[int(adata.obs["line"].iloc[r] == "y") for r in rows]])
    # the entries equal those of the dense view, the form components without indices see
    for mine, theirs in zip(treatment_entries(batch.labels), treatment_entries({"t": dense}), strict=True):
        assert torch.equal(mine, theirs)
    # concatenated with a batch of fewer slots per cell (single treatments): padded, entries kept
    singles = CellData.from_anndata(adata[[2, 5]].copy(), setup).batch([0, 1])
    both = Batch.concat(batch, singles)
    assert torch.equal(both.labels["t"], torch.cat([dense, singles.labels["t"]]))
    assert torch.equal(treatment_entries(both.labels)[0], torch.cat([cells, torch.tensor([len(rows)])]))


def test_a_sparse_additive_model_reads_the_treatments_without_a_dense_batch_row(small_adata) -> None:
    spec = {"name": "sa", "likelihood": "nb", "blocks": [{"name": "z", "dim": 3}], "decoder": {"name": "mlp"},
            "combiner": {"name": "sparse_additive", "conditions": ["t"], "basal": "z"}}
    model = fcrkit.compose(spec, small_adata, seed=0)
    batch = CellData.from_anndata(small_adata, model.setup).batch(torch.arange(64))
    assert isinstance(batch.labels, IndexedLabels)
    poutine.trace(model.module.model).get_trace(batch, small_adata.n_obs)
    poutine.trace(model.module.guide).get_trace(batch, small_adata.n_obs)
    assert "t" not in batch.labels._dense  # no (B, treatments) view was built: entries came from the indices


@pytest.mark.parametrize("kind", ["sigmoid", "mlp", "linear"])
def test_cpa_treatment_shift_sums_the_entries_as_the_dense_dose_response_product(kind: str) -> None:
    adata, _ = hand_built()
    setup = setup_anndata(adata, treatment_key="drug", dose_key="dose", covariate_keys="line")
    decoder = AdditiveEmbeddingDecoder(4, 2, ["mu"], setup.label_dims, dose_response=kind, n_hidden=8)
    with torch.no_grad():  # curves that differ per treatment
        for parameter in decoder.dose_response.parameters():
            parameter.normal_(generator=torch.Generator().manual_seed(3))
    batch = CellData.from_anndata(adata, setup).batch([3, 0, 1, 4, 5, 2])
    t, x = batch.labels["t"].clone(), batch.labels["x"].clone()
    expected = decoder.dose_response(t) @ decoder.treatment_embedding + x @ decoder.covariate_embedding
    labels = batch.labels.subset(["t", "x"])
    labels._dense.pop("t")  # read the treatments from the indices again
    torch.testing.assert_close(decoder.shift(labels, 6), expected)
    assert "t" not in labels._dense  # no (cells, treatments) row was built for the sum


def test_a_prior_that_embeds_treatment_features_reads_the_treatments_without_a_dense_batch_row() -> None:
    adata = fcrkit.simulate.feature_effects(n_treatments=8, n_features=4, cells_per_condition=10, n_genes=20, seed=0)
    setup_anndata(adata, treatment_key="treatment", covariate_keys=["covariate"],
                  treatment_features=adata.uns["treatment_features"])
    spec = {"name": "feat", "likelihood": "nb", "decoder": {"name": "mlp"},
            "blocks": [{"name": "z", "dim": 2, "prior": {"name": "conditional_gaussian", "conditions": ["t"]}}]}
    model = fcrkit.compose(spec, adata, seed=0)
    assert model.module.uses_treatment_features
    batch = CellData.from_anndata(adata, model.setup).batch(torch.arange(12))
    guide = poutine.trace(model.module.guide).get_trace(batch, adata.n_obs)
    poutine.trace(poutine.replay(model.module.model, trace=guide)).get_trace(batch, adata.n_obs)
    assert "t" not in batch.labels._dense  # the features' embedding bag read the cells' entries
