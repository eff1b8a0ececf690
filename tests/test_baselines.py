"""The four baselines against their definitions on tiny hand-made data (expected values worked out by hand).

Every cell has 10 counts and ``target_sum=10``, so a cell's normalised expression is its counts and a
group's profile is ``log1p`` of its mean counts. A predicted profile ``p`` comes back as expected counts
``library * e / sum(e)`` with ``e = expm1(p)``.
"""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest

import fcrkit
from fcrkit.errors import ConfigError, DataError
from fcrkit.models import Additive, LinearRidge, NoChange, PerturbedMean

CELLS = [  # (cell type, treatment, counts of two genes)
    ("a", "control", [4, 6]), ("a", "control", [6, 4]),   # ctrl[a] mean [5, 5]
    ("b", "control", [2, 8]), ("b", "control", [2, 8]),   # ctrl[b] mean [2, 8]
    ("a", "A", [7, 3]),                                   # (a, A) mean [7, 3]
    ("a", "B", [1, 9]),                                   # (a, B) mean [1, 9]
]


def tiny(cells=CELLS) -> ad.AnnData:
    obs = pd.DataFrame({"ct": [c[0] for c in cells], "drug": [c[1] for c in cells]},
                       index=[f"c{i}" for i in range(len(cells))])
    adata = ad.AnnData(np.array([c[2] for c in cells], dtype=np.float32), obs=obs)
    fcrkit.setup_anndata(adata, treatment_key="drug", covariate_keys=["ct"])
    return adata


def cells_of(adata: ad.AnnData, ct: str, library: float = 10.0) -> ad.AnnData:
    """Two control cells of type ``ct`` with libraries ``library`` and ``2 * library``."""
    x = np.array([[library / 2, library / 2], [library, library]], dtype=np.float32)
    return ad.AnnData(x, obs=pd.DataFrame({"ct": [ct, ct], "drug": ["control"] * 2}, index=["p0", "p1"]),
                      var=adata.var.copy())


def trained(cls, adata, **kwargs):
    model = cls(adata, target_sum=10, **kwargs)
    model.train(max_epochs=5, accelerator="cpu", seed=0)  # training settings are accepted and ignored
    return model


def test_no_change_predicts_the_groups_controls():
    pred = trained(NoChange, tiny()).predict(cells_of(tiny(), "b"), treatment="A")
    # ctrl[b] = [2, 8] per 10 counts, at libraries 10 and 20
    np.testing.assert_allclose(pred.X, [[2, 8], [4, 16]], rtol=1e-6)
    assert list(pred.obs["drug"]) == ["A", "A"]


def test_perturbed_mean_pools_every_perturbed_training_cell():
    model = trained(PerturbedMean, tiny())
    for ct, treatment in [("a", "A"), ("b", "B"), ("b", "A+B")]:
        # (a, A) [7, 3] and (a, B) [1, 9] pooled: [4, 6], whatever the group or treatment
        np.testing.assert_allclose(model.predict(cells_of(tiny(), ct), treatment=treatment).X, [[4, 6], [8, 12]],
                                   rtol=1e-6)


def test_additive_transfers_a_change_to_another_group():
    pred = trained(Additive, tiny()).predict(cells_of(tiny(), "b"), treatment="A")
    # log1p(ctrl[b]) + log1p((a, A)) - log1p(ctrl[a]) = [log(3 * 8 / 6), log(9 * 4 / 6)] = [log 4, log 6]:
    # e = [3, 5], scaled to libraries 10 and 20
    np.testing.assert_allclose(pred.X, [[30 / 8, 50 / 8], [60 / 8, 100 / 8]], rtol=1e-5)


def test_additive_sums_the_parts_of_a_combination():
    pred = trained(Additive, tiny()).predict(cells_of(tiny(), "a"), treatment="B+A")
    # log 6 + log(8/6) + log(2/6) = log(8/3); log 6 + log(4/6) + log(10/6) = log(20/3): e = [5/3, 17/3]
    np.testing.assert_allclose(pred.X[0], [50 / 22, 170 / 22], rtol=1e-5)


def test_additive_averages_a_change_over_the_groups_where_it_was_seen():
    cells = CELLS + [("b", "A", [5, 5])]  # (b, A): change [log(6/3), log(6/9)]
    pred = trained(Additive, tiny(cells)).predict(cells_of(tiny(cells), "a"), treatment="A")
    # ctrl[a] + mean of the changes in a and b: log 6 + (log(8/6) + log 2) / 2 = log(6 * 4 / sqrt(12))
    e = np.array([6 * np.sqrt(8 / 6 * 2) - 1, 6 * np.sqrt(4 / 6 * 6 / 9) - 1])
    np.testing.assert_allclose(pred.X[0], 10 * e / e.sum(), rtol=1e-5)


def test_a_control_target_predicts_the_controls():
    for cls in (Additive, PerturbedMean, LinearRidge):
        pred = trained(cls, tiny()).predict(cells_of(tiny(), "a"), treatment="control")
        np.testing.assert_allclose(pred.X[0], [5, 5], rtol=1e-5)


def ridge_world(n_genes: int = 6, seed: int = 0) -> ad.AnnData:
    """One cell type, three single drugs with random effects, 20 cells per condition."""
    rng = np.random.default_rng(seed)
    base = rng.uniform(1, 5, n_genes)
    effects = {"control": 1.0, **{d: rng.uniform(0.3, 3, n_genes) for d in ("d0", "d1", "d2")}}
    rows, labels = [], []
    for drug, effect in effects.items():
        rows.append(rng.poisson(base * effect * 20, (20, n_genes)))
        labels += [drug] * 20
    adata = ad.AnnData(np.vstack(rows).astype(np.float32), obs=pd.DataFrame({"ct": "a", "drug": labels},
                                                                              index=[f"c{i}" for i in range(80)]))
    fcrkit.setup_anndata(adata, treatment_key="drug", covariate_keys=["ct"])
    return adata


def test_linear_ridge_without_penalty_reproduces_its_training_conditions():
    adata = ridge_world()
    model = LinearRidge(adata, ridge=0.0)
    model.train()
    controls = adata[adata.obs["drug"] == "control"]
    for drug in ("d0", "d1", "d2"):
        truth = fcrkit.metrics.mean_log_expression(adata[adata.obs["drug"] == drug].X)
        pred = fcrkit.metrics.mean_log_expression(model.predict(controls, treatment=drug).X)
        np.testing.assert_allclose(pred, truth, atol=1e-5)


def test_linear_ridge_with_a_huge_penalty_predicts_the_mean_change():
    adata = ridge_world()
    model = LinearRidge(adata, ridge=1e12)
    model.train()
    controls = adata[adata.obs["drug"] == "control"]
    m = fcrkit.metrics.mean_log_expression
    ctrl = m(controls.X)
    mean_change = np.mean([m(adata[adata.obs["drug"] == d].X) - ctrl for d in ("d0", "d1", "d2")], axis=0)
    e = np.expm1(ctrl + mean_change)
    np.testing.assert_allclose(m(model.predict(controls, treatment="d1").X), np.log1p(1e4 * e / e.sum()), atol=1e-6)


def test_linear_ridge_with_one_treatment_is_additive():
    cells = CELLS[:5] + [("b", "A", [5, 5])]
    adata = tiny(cells)
    pred = trained(LinearRidge, adata).predict(cells_of(adata, "a"), treatment="A").X
    np.testing.assert_allclose(pred, trained(Additive, adata).predict(cells_of(adata, "a"), treatment="A").X,
                               rtol=1e-5)


def test_sampled_predictions_are_poisson_draws_around_the_expected_counts():
    adata = tiny()
    model = trained(Additive, adata)
    many = ad.AnnData(np.full((4000, 2), 500, dtype=np.float32),
                      obs=pd.DataFrame({"ct": "b", "drug": "control"}, index=[f"p{i}" for i in range(4000)]))
    drawn = model.predict(many, treatment="A", sample=True, seed=3).X
    assert np.array_equal(drawn, np.round(drawn))
    np.testing.assert_array_equal(drawn, model.predict(many, treatment="A", sample=True, seed=3).X)
    expected = np.array([3, 5]) / 8 * 1000  # e = [3, 5], library 1000
    np.testing.assert_allclose(drawn.mean(0), expected, rtol=0.01)
    np.testing.assert_allclose(drawn.var(0), expected, rtol=0.1)  # Poisson: variance = mean


def test_baseline_errors_name_the_culprit():
    adata = tiny()
    with pytest.raises(ConfigError, match="not trained"):
        Additive(adata).predict(cells_of(adata, "a"), treatment="A")
    model = trained(Additive, adata)
    with pytest.raises(DataError, match="'C'"):
        model.predict(cells_of(adata, "a"), treatment="A+C")
    with pytest.raises(ConfigError, match="dose"):
        model.predict(cells_of(adata, "a"), treatment="A", dose=2.0)
    held = tiny([c for c in CELLS if c[1] != "B"] + [("a", "A+B", [3, 7])])  # B seen only in a combination
    with pytest.raises(DataError, match="'B'"):
        trained(Additive, held).predict(cells_of(held, "a"), treatment="B")
    with pytest.raises(ConfigError, match="n_components"):
        LinearRidge(adata, n_components=0)


@pytest.mark.parametrize("recipe", ["FCR", "ScGen"])
def test_recipe_predict_samples_counts_from_the_likelihood(small_adata, recipe):
    """``predict(..., sample=True)``: seeded draws whose cell average is the expected counts' (untrained weights)."""
    args = {"n_latent": {"x": 2, "t": 2, "tx": 2}} if recipe == "FCR" else {"n_latent": 4, "n_hidden": 32}
    model = getattr(fcrkit.models, recipe)(small_adata, **args, seed=0)
    controls = small_adata[small_adata.obs["treatment"] == "control"]
    options = {"from_prior": "mean"} if recipe == "FCR" else {}  # the prior mean: only the likelihood draws differ
    expected = model.predict(controls, treatment="drug_0", **options).X
    drawn = model.predict(controls, treatment="drug_0", sample=True, seed=1, **options).X
    assert drawn.min() >= 0
    if recipe == "FCR":  # NB counts with sampling zeros; scGen's log-normal draws are real-valued
        assert np.array_equal(drawn, np.round(drawn))
        assert (drawn == 0).mean() > 0.01 and (expected == 0).mean() == 0
    np.testing.assert_array_equal(drawn, model.predict(controls, treatment="drug_0", sample=True, seed=1,
                                                       **options).X)
    assert not np.array_equal(drawn, model.predict(controls, treatment="drug_0", sample=True, seed=2, **options).X)
    if recipe == "FCR":  # (scGen's expected counts are projected onto the library, its untrained draws are not)
        high = expected.mean(0) > 5
        np.testing.assert_allclose(drawn.mean(0)[high], expected.mean(0)[high], rtol=0.2)
