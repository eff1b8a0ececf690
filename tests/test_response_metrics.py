"""The response metrics of fcrkit.metrics: each against a hand-computed case and an independent computation."""

from __future__ import annotations

import numpy as np
import pytest

from fcrkit import metrics
from fcrkit.errors import ConfigError, DataError


@pytest.fixture
def rng():
    return np.random.default_rng(7)


def test_pearson_delta_by_hand_and_against_numpy(rng):
    ref = np.array([5.0, 5.0, 5.0])
    # changes [1, 0, -1] and [1, 1, -2]: both mean 0, r = 3 / (sqrt 2 sqrt 6) = sqrt(3) / 2
    assert metrics.pearson_delta(ref + [1, 0, -1], ref + [1, 1, -2], ref) == pytest.approx(np.sqrt(3) / 2)
    true, pred, ref = rng.normal(size=(3, 50))
    genes = rng.choice(50, 20, replace=False)
    assert metrics.pearson_delta(true, pred, ref) == pytest.approx(np.corrcoef(true - ref, pred - ref)[0, 1])
    expected = np.corrcoef((true - ref)[genes], (pred - ref)[genes])[0, 1]
    assert metrics.pearson_delta(true, pred, ref, genes=genes) == pytest.approx(expected)
    # a no-change prediction has no correlation (NaN, not 0)
    assert np.isnan(metrics.pearson_delta(true, ref, ref))


def test_cosine_logfc_by_hand_and_against_scipy(rng):
    from scipy.spatial.distance import cosine

    assert metrics.cosine_logfc(np.array([2.0, 3.0]), np.array([3.0, 2.0]), np.ones(2)) == pytest.approx(4 / 5)
    true, pred, ctrl = rng.normal(size=(3, 40))
    assert metrics.cosine_logfc(true, pred, ctrl) == pytest.approx(1 - cosine(true - ctrl, pred - ctrl))
    assert metrics.cosine_logfc(true, pred, ctrl, genes=[0, 3, 5]) == pytest.approx(
        1 - cosine((true - ctrl)[[0, 3, 5]], (pred - ctrl)[[0, 3, 5]]))
    assert np.isnan(metrics.cosine_logfc(true, ctrl, ctrl))


def test_rmse_by_hand_and_against_numpy(rng):
    assert metrics.rmse([0.0, 0.0], [3.0, 4.0]) == pytest.approx(np.sqrt(12.5))
    true, pred = rng.normal(size=(2, 30))
    assert metrics.rmse(true, pred) == pytest.approx(np.sqrt(np.mean((pred - true) ** 2)))
    mask = np.arange(30) % 3 == 0
    assert metrics.rmse(true, pred, genes=mask) == pytest.approx(np.sqrt(np.mean((pred - true)[mask] ** 2)))


def test_normalized_rank_by_hand_and_against_a_loop(rng):
    true = np.array([[0.0], [10.0], [20.0]])
    pred = np.array([[0.0], [12.0], [11.0]])  # the third prediction is closer to the second condition
    np.testing.assert_allclose(metrics.normalized_rank(true, pred), [0, 0, 0.5])
    true, pred = rng.normal(size=(2, 12, 25))
    expected = [sum(np.linalg.norm(pred[i] - true[j]) < np.linalg.norm(pred[i] - true[i]) for j in range(12) if j != i)
                / 11 for i in range(12)]
    np.testing.assert_allclose(metrics.normalized_rank(true, pred), expected)
    np.testing.assert_allclose(metrics.normalized_rank(true, true), 0.0)


def _pair_means(x, y, f):
    return np.mean([f(u, v) for u in x for v in y])


def test_energy_distance_by_hand_and_against_a_loop(rng):
    assert metrics.energy_distance([[0.0], [0.0]], [[1.0], [1.0]]) == pytest.approx(2.0)
    # 2 * 1 - (0 + 4 + 4 + 0) / 4 - 0 = 0: one cell midway between two others
    assert metrics.energy_distance([[0.0], [2.0]], [[1.0]]) == pytest.approx(0.0)
    a, b = rng.normal(size=(30, 4)), rng.normal(0.5, 1.0, size=(20, 4))

    def sq(u, v):
        return np.sum((u - v) ** 2)

    expected = 2 * _pair_means(a, b, sq) - _pair_means(a, a, sq) - _pair_means(b, b, sq)
    assert metrics.energy_distance(a, b) == pytest.approx(expected)
    assert metrics.energy_distance(a, a) == pytest.approx(0.0, abs=1e-12)


def test_mmd_by_hand_and_against_a_loop(rng):
    # one distance, 1: sigma^2 = 0.5, k(a, b) = exp(-1)
    assert metrics.mmd([[0.0]], [[1.0]]) == pytest.approx(2 - 2 * np.exp(-1))
    a, b = rng.normal(size=(25, 3)), rng.normal(1.0, 1.0, size=(15, 3))
    pooled = np.vstack([a, b])
    d2 = [np.sum((pooled[i] - pooled[j]) ** 2) for i in range(40) for j in range(i + 1, 40)]
    sigma2 = 0.5 * np.median(d2)

    def k(u, v):
        return np.exp(-np.sum((u - v) ** 2) / (2 * sigma2))

    expected = _pair_means(a, a, k) + _pair_means(b, b, k) - 2 * _pair_means(a, b, k)
    assert metrics.mmd(a, b) == pytest.approx(expected)
    assert metrics.mmd(a, b) > metrics.mmd(a, rng.normal(size=(15, 3)))


def test_deg_direction_and_overlap_by_hand(rng):
    ctrl = np.zeros(4)
    true, pred = np.array([1.0, -1.0, 2.0, 0.0]), np.array([2.0, -3.0, -1.0, 0.0])
    assert metrics.deg_direction(true, pred, ctrl, genes=[0, 1, 2, 3]) == 0.75
    assert metrics.deg_direction(true, pred, ctrl, genes=[2]) == 0.0
    true, pred, ctrl = rng.normal(size=(3, 30))
    genes = np.arange(10)
    assert metrics.deg_direction(true, pred, ctrl, genes) == np.mean((true > ctrl)[genes] == (pred > ctrl)[genes])
    assert metrics.deg_overlap([0, 1, 2, 3], [3, 2, 9, 8], k=2) == 0.0
    assert metrics.deg_overlap([0, 1, 2, 3], [3, 2, 9, 8], k=4) == 0.5


def test_response_metric_errors_name_the_argument():
    with pytest.raises(DataError, match=r"pred \(2,\)"):
        metrics.pearson_delta(np.zeros(3), np.zeros(2), np.zeros(3))
    with pytest.raises(DataError, match="reference contains NaN"):
        metrics.pearson_delta(np.zeros(3), np.zeros(3), [0, np.nan, 0])
    with pytest.raises(DataError, match="genes"):
        metrics.rmse(np.zeros(3), np.zeros(3), genes=[5])
    with pytest.raises(DataError, match="same shape"):
        metrics.normalized_rank(np.zeros((3, 2)), np.zeros((4, 2)))
    with pytest.raises(DataError, match="same features"):
        metrics.energy_distance(np.zeros((3, 2)), np.zeros((3, 3)))
    with pytest.raises(ConfigError, match="genes"):
        metrics.deg_direction(np.zeros(3), np.zeros(3), np.zeros(3), None)
    with pytest.raises(DataError, match="at least k=5"):
        metrics.deg_overlap([0, 1], [1, 0], k=5)


def test_a_no_change_prediction_stored_as_float32_has_no_correlation(rng):
    ctrl = np.log1p(rng.gamma(2.0, 3.0, 200))
    stored = np.log1p(np.expm1(ctrl).astype(np.float32).astype(np.float64))  # float32 rounding noise only
    true = ctrl + rng.normal(size=200)
    assert np.isnan(metrics.pearson_delta(true, stored, ctrl))
    assert np.isnan(metrics.cosine_logfc(true, stored, ctrl))
