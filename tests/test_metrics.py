"""Tests of fcrkit.metrics on constructions with known answers."""

from __future__ import annotations

import importlib.util

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch
from scipy.stats import ttest_ind
from sklearn.metrics import r2_score

from fcrkit.errors import ConfigError, DataError
from fcrkit.metrics import (
    HSICResult,
    MCCResult,
    additive_baseline,
    block_cluster_scores,
    block_mcc,
    block_r2,
    cluster_labels,
    cluster_scores,
    hsic,
    hsic_torch,
    log_normalize,
    mcc,
    mcc_both,
    mean_log_expression,
    prediction_scores,
    rank_genes,
)


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


# ============================================================================================ MCC
class TestMCC:
    def test_permuted_sign_flipped_scaled_copy_scores_one(self):
        z = rng(0).normal(size=(1000, 4))
        perm = np.array([2, 0, 3, 1])
        z_hat = z[:, perm] * np.array([-2.0, 0.5, 3.0, -0.1]) + 7.0
        result = mcc(z, z_hat)
        assert isinstance(result, MCCResult)
        assert result.value == pytest.approx(1.0)
        assert np.allclose(result.per_component, 1.0)
        # true dim perm[j] sits in learned column j
        assert np.array_equal(result.matching, np.argsort(perm))
        assert result.method == "pearson" and result.reduction is None
        assert float(result) == result.value

    def test_monotone_nonlinear_transform_spearman_one_pearson_below(self):
        z = rng(1).normal(size=(2000, 3))
        z_hat = np.c_[z[:, 0] ** 3, np.exp(z[:, 1]), -z[:, 2] ** 3]
        assert mcc(z, z_hat, method="spearman").value == pytest.approx(1.0)
        assert mcc(z, z_hat, method="pearson").value < 0.9
        both = mcc_both(z, z_hat)
        assert set(both) == {"pearson", "spearman"}
        assert both["spearman"] == pytest.approx(1.0) and both["pearson"] < 0.9

    def test_independent_noise_is_small(self):
        r = rng(2)
        result = mcc(r.normal(size=(2000, 3)), r.normal(size=(2000, 3)))
        assert result.value < 0.15

    def test_constant_columns_give_zero_not_nan(self):
        r = rng(3)
        z = r.normal(size=(500, 3))
        z_hat = np.c_[z[:, 0], np.full(500, 5.0), z[:, 2]]
        with np.errstate(all="raise"):
            result = mcc(z, z_hat)
            spear = mcc(z, z_hat, method="spearman")
        for res in (result, spear):
            assert np.all(np.isfinite(res.per_component))
            assert res.value == pytest.approx(2 / 3)
            assert res.per_component[1] == 0.0
        constant_true = mcc(np.c_[z[:, 0], np.zeros(500)], z[:, :2])
        assert np.isfinite(constant_true.value) and constant_true.value == pytest.approx(0.5)

    def test_fewer_learned_dims_count_unmatched_as_zero(self):
        z = rng(4).normal(size=(800, 3))
        result = mcc(z, z[:, [2, 0]])
        assert result.value == pytest.approx(2 / 3)
        assert np.allclose(result.per_component, [1.0, 0.0, 1.0])
        assert list(result.matching) == [1, -1, 0]
        assert mcc(z, z[:, [2, 0]], square=False).value == pytest.approx(2 / 3)

    def test_fairness_rectangular_at_least_square(self):
        r = rng(5)
        n = 2000
        z = r.normal(size=(n, 2))
        copies = z + 0.5 * r.normal(size=(n, 2))
        z_hat = np.c_[r.normal(size=(n, 2)), copies, r.normal(size=(n, 2))]
        rect = mcc(z, z_hat, square=False)
        square = mcc(z, z_hat)
        assert square.reduction == "varimax" and rect.reduction is None
        assert rect.value >= square.value
        assert list(rect.matching) == [2, 3]  # rectangular picks the copies among all columns

    def test_fairness_square_is_not_fooled_by_lucky_noise(self):
        # 30 cells, 60 pure-noise learned dims: the best of 60 columns correlates by chance
        r = rng(6)
        z = r.normal(size=(30, 2))
        z_hat = r.normal(size=(30, 60))
        rect = mcc(z, z_hat, square=False).value
        for how in ("varimax", "pca", "variance"):
            square = mcc(z, z_hat, reduce=how).value
            assert square < rect - 0.15, (how, square, rect)
        assert rect > 0.4

    def test_square_rule_does_not_punish_dead_dimensions(self):
        # a perfect recovery padded with collapsed dims; i.i.d. true dims tie the PCA eigenvalues,
        # so plain PCs rotate the learned axes, the varimax basis (default) does not
        r = rng(7)
        z = r.normal(size=(2000, 3))
        z_hat = np.c_[z[:, [1, 2, 0]], 0.01 * r.normal(size=(2000, 4))]
        assert mcc(z, z_hat).value > 0.99
        res = mcc(z, z_hat, reduce="variance")
        assert res.value == pytest.approx(1.0) and list(res.matching) == [2, 0, 1]
        assert mcc(z, z_hat, reduce="pca").value < 0.95  # the caveat the default avoids

    def test_argument_validation(self):
        z = rng(8).normal(size=(50, 2))
        with pytest.raises(DataError, match=r"\(50, 2\).*\(40, 2\)"):
            mcc(z, z[:40])
        with pytest.raises(ConfigError, match="kendall"):
            mcc(z, z, method="kendall")
        with pytest.raises(ConfigError, match="ica"):
            mcc(z, np.c_[z, z], reduce="ica")
        with pytest.raises(DataError, match="NaN"):
            mcc(z, np.where(z > 1, np.nan, z))
        with pytest.raises(DataError, match="2 cells cannot give 3 principal components"):
            mcc(np.ones((2, 3)), np.ones((2, 5)))


# ======================================================================================= block R²
def test_block_r2_diagonal_high_off_diagonal_low():
    r = rng(10)
    n = 600
    a_true, b_true = r.normal(size=(n, 2)), r.normal(size=(n, 2))
    theta = 0.7
    rotation = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    a_hat = a_true @ rotation * 3.0
    b_hat = np.c_[b_true[:, 0] + 0.3 * b_true[:, 0] ** 3, np.sinh(b_true[:, 1])]
    true, learned = {"A": a_true, "B": b_true}, {"a": a_hat, "b": b_hat}

    lin = block_r2(true, learned, regressor="linear")
    assert isinstance(lin, pd.DataFrame)
    assert list(lin.index) == ["A", "B"] and list(lin.columns) == ["a", "b"]
    assert lin.index.name == "true" and lin.columns.name == "learned"
    assert lin.loc["A", "a"] > 0.95
    assert lin.loc["A", "b"] < 0.1 and lin.loc["B", "a"] < 0.1

    ker = block_r2(true, learned, regressor="kernel", max_cells=400, seed=1)
    assert ker.loc["B", "b"] > 0.8
    assert ker.loc["A", "a"] > 0.9
    assert ker.loc["A", "b"] < 0.1 and ker.loc["B", "a"] < 0.1
    # deterministic by seed
    pd.testing.assert_frame_equal(ker, block_r2(true, learned, regressor="kernel", max_cells=400, seed=1))


def test_block_r2_validation():
    z = rng(11).normal(size=(100, 2))
    with pytest.raises(ConfigError, match="'mlp'"):
        block_r2({"A": z}, {"a": z}, regressor="mlp")
    with pytest.raises(ConfigError, match="1.5"):
        block_r2({"A": z}, {"a": z}, test_fraction=1.5)
    with pytest.raises(DataError, match="100 rows.*90 rows"):
        block_r2({"A": z}, {"a": z[:90]})


# ===================================================================================== clustering
def blobs(n_per: int = 100, k: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    r = rng(seed)
    centers = r.normal(scale=20.0, size=(k, 5))
    labels = np.repeat(np.arange(k), n_per)
    return centers[labels] + r.normal(size=(k * n_per, 5)), labels


def test_cluster_scores_separated_clusters():
    z, labels = blobs()
    names = np.array(["a", "b", "c"])[labels]  # string labels work, k defaults to 3
    scores = cluster_scores(z, names)
    assert set(scores) == {"nmi", "ari"}
    assert scores["nmi"] > 0.95 and scores["ari"] > 0.95
    clusters = cluster_labels(z, 3, seed=1)
    assert clusters.shape == (300,) and len(np.unique(clusters)) == 3


def test_cluster_scores_random_labels():
    z = rng(12).normal(size=(1000, 4))
    random_labels = rng(13).integers(0, 3, size=1000)
    scores = cluster_scores(z, random_labels)
    assert scores["nmi"] < 0.05 and abs(scores["ari"]) < 0.05


def test_block_cluster_scores_table():
    r = rng(14)
    n = 400
    x = r.integers(0, 2, size=n)
    t = r.integers(0, 4, size=n)
    z_x = np.array([[0.0, 0.0], [30.0, 0.0]])[x] + r.normal(size=(n, 2))
    z_t = 30.0 * np.eye(4)[t] + r.normal(size=(n, 4))
    table = block_cluster_scores({"z_x": z_x, "z_t": z_t}, {"x": x, "t": t})
    assert list(table.index) == ["z_x", "z_t"] and table.index.name == "block"
    assert list(table.columns) == ["nmi_x", "ari_x", "nmi_t", "ari_t"]
    assert table.loc["z_x", "nmi_x"] > 0.95 and table.loc["z_t", "nmi_t"] > 0.95
    assert table.loc["z_x", "nmi_t"] < 0.1 and table.loc["z_t", "ari_x"] < 0.1


@pytest.mark.skipif(importlib.util.find_spec("scanpy") is not None, reason="scanpy is installed")
def test_leiden_without_scanpy_says_how_to_install():
    z, labels = blobs(n_per=10)
    with pytest.raises(ImportError, match="pip install scanpy"):
        cluster_labels(z, None, method="leiden")
    with pytest.raises(ImportError, match="pip install scanpy"):
        cluster_scores(z, labels, method="leiden")


def test_cluster_validation():
    z, labels = blobs(n_per=10)
    with pytest.raises(ConfigError, match="'dbscan'"):
        cluster_labels(z, 3, method="dbscan")
    with pytest.raises(DataError, match=r"\(29,\)"):
        cluster_scores(z, labels[:29])


# ===================================================================================== prediction
N_GENES = 100


def condition(rates: np.ndarray, n: int, seed: int) -> np.ndarray:
    return rng(seed).poisson(rates, size=(n, len(rates))).astype(float)


@pytest.fixture
def de_world():
    """Control and treated cells; genes SHIFTED are 4x up or down in the treated cells."""
    r = rng(20)
    base = r.uniform(2.0, 20.0, size=N_GENES)
    shifted = np.sort(r.choice(N_GENES, size=10, replace=False))
    fold = np.ones(N_GENES)
    fold[shifted] = np.where(np.arange(10) % 2 == 0, 4.0, 0.25)
    return condition(base, 300, 21), condition(base * fold, 300, 22), shifted


def test_perfect_prediction(de_world):
    control, treated, _ = de_world
    scores = prediction_scores(treated, treated, control)
    assert scores["r2_all"] == pytest.approx(1.0)
    assert scores["r2_top20"] == pytest.approx(1.0) and scores["r2_top50"] == pytest.approx(1.0)
    assert scores["mse_top20"] == pytest.approx(0.0)
    assert scores["delta_pearson"] == pytest.approx(1.0)
    assert scores["n_true"] == 300 and scores["n_pred"] == 300
    # sparse input gives the same numbers
    sparse_scores = prediction_scores(sp.csr_matrix(treated), sp.csr_matrix(treated), sp.csr_matrix(control))
    assert sparse_scores == pytest.approx(scores)


def test_shifted_prediction_has_known_r2(de_world):
    control, treated, _ = de_world
    true = mean_log_expression(treated)
    c = 0.3
    scores = prediction_scores(treated, control_counts=control, pred_mean=true + c, top_k=(20,))
    # r2_score(y, y + c) = 1 - c² / var(y)
    assert scores["r2_all"] == pytest.approx(1.0 - c**2 / np.var(true))
    assert scores["mse_top20"] == pytest.approx(c**2)
    assert scores["delta_pearson"] == pytest.approx(1.0)
    assert scores["n_pred"] is None and "r2_top50" not in scores
    # no clipping: a bad prediction keeps its negative R²
    bad = prediction_scores(treated, control_counts=control, pred_mean=true + 5.0)
    assert bad["r2_all"] < -1.0
    # argument order: r2_score(true, pred), not (pred, true)
    pred = true * 0.5 + 1.0
    got = prediction_scores(treated, control_counts=control, pred_mean=pred)["r2_all"]
    assert got == pytest.approx(r2_score(true, pred)) and got != pytest.approx(r2_score(pred, true))


def test_mean_then_log_treats_expected_counts_like_observed_counts():
    r = rng(23)
    rates = r.gamma(2.0, 0.5, size=N_GENES)  # ~1 count per gene per cell: many sampling zeros
    observed = r.poisson(rates, size=(3000, N_GENES)).astype(float)
    expected = np.tile(rates, (50, 1))  # a model's expected counts: no zeros
    ours_true, ours_pred = mean_log_expression(observed), mean_log_expression(expected)
    naive_true, naive_pred = log_normalize(observed).mean(axis=0), log_normalize(expected).mean(axis=0)
    assert r2_score(ours_true, ours_pred) > 0.98
    assert np.mean(naive_pred - naive_true) > 0.5  # mean of log1p: expected counts biased upward
    assert r2_score(naive_true, naive_pred) < 0.5
    # the definition: log1p of the mean normalised expression
    manual = np.log1p((observed / observed.sum(axis=1, keepdims=True) * 1e4).mean(axis=0))
    assert np.allclose(ours_true, manual)
    assert np.allclose(mean_log_expression(sp.csr_matrix(observed)), manual)


def test_rank_genes_finds_the_shifted_genes(de_world):
    control, treated, shifted = de_world
    top = rank_genes(treated, control, n_genes=10)
    assert set(top) == set(shifted)
    # |Welch t| ordering on log-normalised values, dense or sparse
    t = ttest_ind(log_normalize(treated), log_normalize(control), equal_var=False).statistic
    assert np.array_equal(rank_genes(treated, control, n_genes=30), np.argsort(-np.abs(t), kind="stable")[:30])
    assert np.array_equal(rank_genes(sp.csr_matrix(treated), sp.csr_matrix(control), n_genes=30),
                          rank_genes(treated, control, n_genes=30))
    assert len(rank_genes(treated, control, n_genes=500)) == N_GENES


def test_additive_baseline_recovers_an_additive_world():
    # every cell of (x, t) has the same normalised profile, log1p additive in x and t; the last gene
    # is a sink that makes every cell sum to target_sum (so normalisation is the identity)
    r = rng(24)
    n_cov, target = 4, 1e4
    base = r.uniform(2.0, 4.0, size=N_GENES - 1)
    cov_effect = r.normal(0, 0.5, size=(n_cov, N_GENES - 1))
    treat_effect = np.zeros(N_GENES - 1)
    treat_effect[:15] = r.normal(0, 1.0, size=15)

    def cells(x: int, t: int, n: int = 5) -> np.ndarray:
        profile = np.expm1(base + cov_effect[x] + t * treat_effect)
        return np.tile(np.r_[profile, target - profile.sum()], (n, 1))

    assert all(cells(x, t)[0, -1] > 0 for x in range(n_cov) for t in (0, 1))
    others = [(cells(x, 1), cells(x, 0)) for x in range(1, n_cov)]
    pred = additive_baseline(cells(0, 0), others)
    truth = mean_log_expression(cells(0, 1))
    assert np.allclose(pred[:-1], truth[:-1])
    scores = prediction_scores(cells(0, 1), control_counts=cells(0, 0), pred_mean=pred)
    assert scores["r2_all"] > 0.999
    # the definition, written out
    manual = mean_log_expression(cells(0, 0)) + np.mean(
        [mean_log_expression(t) - mean_log_expression(c) for t, c in others], axis=0)
    assert np.allclose(pred, manual)


def test_additive_baseline_on_sampled_counts_beats_no_change():
    r = rng(25)
    base = r.uniform(20.0, 80.0, size=N_GENES)
    effect = np.zeros(N_GENES)
    effect[:10] = np.log(3.0)
    ctrl = {x: condition(base * r.uniform(0.7, 1.4, N_GENES), 200, 30 + x) for x in range(3)}
    rates = {x: ctrl[x].mean(axis=0) for x in range(3)}
    treated = {x: condition(rates[x] * np.exp(effect), 200, 40 + x) for x in range(3)}
    pred = additive_baseline(ctrl[0], [(treated[x], ctrl[x]) for x in (1, 2)])
    additive = prediction_scores(treated[0], control_counts=ctrl[0], pred_mean=pred)
    no_change = prediction_scores(treated[0], ctrl[0], ctrl[0])
    assert additive["r2_all"] > 0.95 and additive["r2_top20"] > no_change["r2_top20"] + 0.3
    assert no_change["delta_pearson"] == 0.0  # constant (zero) predicted change


def test_prediction_argument_validation():
    true, pred, ctrl = np.ones((10, 5)), np.ones((10, 6)), np.ones((8, 5))
    with pytest.raises(DataError, match=r"\(10, 5\).*\(10, 6\)"):
        prediction_scores(true, pred, ctrl, top_k=(2,), mse_k=2)
    with pytest.raises(DataError, match=r"\(10, 5\).*\(10, 6\)"):
        rank_genes(true, pred)
    with pytest.raises(ConfigError, match="exactly one"):
        prediction_scores(true, true, ctrl, pred_mean=np.zeros(5))
    with pytest.raises(ConfigError, match="exactly one"):
        prediction_scores(true, control_counts=ctrl)
    with pytest.raises(DataError, match=r"pred_mean \(4,\)"):
        prediction_scores(true, control_counts=ctrl, pred_mean=np.zeros(4), top_k=(2,), mse_k=2)
    with pytest.raises(DataError, match="negative"):
        mean_log_expression(-np.ones((3, 3)))
    with pytest.raises(ConfigError, match="50"):
        prediction_scores(true, true, ctrl)  # top 50 DEGs of 5 genes
    with pytest.raises(DataError, match="empty"):
        additive_baseline(ctrl, [])


# ==================================================================================== independence
def test_hsic_independent_vs_dependent():
    r = rng(30)
    x = r.normal(size=(300, 2))
    independent = hsic(x, r.normal(size=(300, 2)))
    dependent = hsic(x, x**2 + 0.1 * r.normal(size=(300, 2)))
    assert isinstance(independent, HSICResult) and independent.method == "gamma"
    assert independent.p_value > 0.05
    assert dependent.p_value < 0.01
    assert dependent.statistic > 3 * independent.statistic
    # x² is uncorrelated with x: a linear test would miss this, HSIC does not
    assert abs(np.corrcoef(x[:, 0], x[:, 0] ** 2)[0, 1]) < 0.2


def test_hsic_permutation_p_value():
    r = rng(31)
    x = r.normal(size=200)
    perm_ind = hsic(x, r.normal(size=200), permutations=200, seed=1)
    perm_dep = hsic(x, x**2 + 0.1 * r.normal(size=200), permutations=200, seed=1)
    assert perm_ind.method == "permutation"
    assert perm_ind.p_value > 0.05 and perm_dep.p_value == pytest.approx(1 / 201)


def test_hsic_statistic_definition_and_edge_cases():
    r = rng(32)
    x, y = r.normal(size=(40, 2)), r.normal(size=(40, 1))

    def kernel(a):
        sq = ((a[:, None, :] - a[None, :, :]) ** 2).sum(-1)
        return np.exp(-sq / (2 * 0.5 * np.median(sq[np.triu_indices(len(a), 1)])))

    h = np.eye(40) - 1 / 40
    assert hsic(x, y).statistic == pytest.approx(np.trace(kernel(x) @ h @ kernel(y) @ h) / 40**2)
    constant = hsic(x, np.ones(40))
    assert constant.statistic == pytest.approx(0.0, abs=1e-12) and constant.p_value == 1.0
    big = r.normal(size=(1500, 1))
    sub = hsic(big, big, max_cells=300, seed=3)
    assert sub.n == 300 and sub == hsic(big, big, max_cells=300, seed=3)
    with pytest.raises(DataError, match=r"\(40, 2\).*\(30, 1\)"):
        hsic(x, y[:30])


def test_hsic_torch_matches_numpy_and_has_a_gradient():
    r = rng(33)
    x_np = r.normal(size=(120, 3))
    y_np = np.sin(x_np[:, :1]) + 0.3 * r.normal(size=(120, 1))
    x = torch.tensor(x_np, requires_grad=True)
    y = torch.tensor(y_np)
    value = hsic_torch(x, y)
    assert value.shape == ()
    assert np.isclose(value.item(), hsic(x_np, y_np).statistic, rtol=1e-10)
    assert torch.allclose(hsic_torch(torch.tensor(x_np[:, 0]), torch.tensor(y_np[:, 0])),
                          torch.tensor(hsic(x_np[:, 0], y_np[:, 0]).statistic, dtype=torch.float64))
    value.backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_block_mcc_scores_each_true_block_from_one_square_match():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(500, 2)), rng.normal(size=(500, 1))
    learned = np.hstack([b * 3.0, -a[:, [1]], a[:, [0]]])  # permuted, flipped, scaled
    scores = block_mcc({"a": a, "b": b}, learned)
    assert scores == pytest.approx({"a": 1.0, "b": 1.0, "all": 1.0}, abs=1e-9)
    noisy = np.hstack([rng.normal(size=(500, 1)), -a[:, [1]], a[:, [0]]])
    scores = block_mcc({"a": a, "b": b}, noisy)
    assert scores["a"] == pytest.approx(1.0, abs=1e-9) and scores["b"] < 0.2
    assert scores["all"] == pytest.approx((2 * scores["a"] + scores["b"]) / 3)
