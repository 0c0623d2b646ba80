"""Cell-level metrics and the bootstrap interval of their mean."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import r2_score

from simcell import SimcellError
from simcell.evaluation import metrics


def test_mse_and_mae_per_cell(rng):
    pred, truth = rng.normal(size=(2, 25, 8))
    np.testing.assert_allclose(metrics.mse(pred, truth), ((pred - truth) ** 2).mean(axis=1))
    np.testing.assert_allclose(metrics.mae(pred, truth), np.abs(pred - truth).mean(axis=1))
    assert metrics.mse(truth, truth).shape == (25,)
    np.testing.assert_array_equal(metrics.mse(truth, truth), 0.0)


def test_pearson_and_r2_match_numpy_and_sklearn(rng):
    truth = rng.normal(size=(30, 12))
    pred = truth + rng.normal(scale=0.5, size=truth.shape)
    expected_r = [np.corrcoef(p, t)[0, 1] for p, t in zip(pred, truth, strict=True)]
    expected_r2 = [r2_score(t, p) for p, t in zip(pred, truth, strict=True)]
    np.testing.assert_allclose(metrics.pearson(pred, truth), expected_r, rtol=1e-12)
    np.testing.assert_allclose(metrics.r2(pred, truth), expected_r2, rtol=1e-12)
    np.testing.assert_allclose(metrics.pearson(truth, truth), 1.0)
    np.testing.assert_allclose(metrics.r2(truth, truth), 1.0)


def test_constant_rows_are_nan_exactly_where_undefined(rng):
    truth = rng.normal(size=(4, 5))
    pred = truth + 0.1
    truth[1] = 2.5  # constant true row: Pearson and R² undefined
    pred[2] = -1.0  # constant predicted row: Pearson undefined, R² defined
    r = metrics.pearson(pred, truth)
    score = metrics.r2(pred, truth)
    np.testing.assert_array_equal(np.isnan(r), [False, True, True, False])
    np.testing.assert_array_equal(np.isnan(score), [False, True, False, False])
    assert score[2] < 0


def test_bootstrap_ci_is_seeded_and_contains_the_mean(rng):
    values = rng.exponential(size=500)
    mean, low, high = metrics.bootstrap_ci(values, rng=np.random.default_rng(3))
    assert mean == pytest.approx(values.mean())
    assert low < mean < high
    assert metrics.bootstrap_ci(values, rng=np.random.default_rng(3)) == (mean, low, high)
    assert metrics.bootstrap_ci(values, rng=3) == (mean, low, high)
    assert metrics.bootstrap_ci(values, rng=4) != (mean, low, high)
    normal_half_width = 1.96 * values.std(ddof=1) / np.sqrt(values.size)
    assert (high - low) / 2 == pytest.approx(normal_half_width, rel=0.15)
    narrower = metrics.bootstrap_ci(values, level=0.5, rng=3)
    assert low < narrower[1] < narrower[2] < high


def test_bootstrap_ci_of_constant_values_is_degenerate():
    assert metrics.bootstrap_ci(np.full(10, 2.0), n_boot=50, rng=0) == (2.0, 2.0, 2.0)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda x, y: metrics.mse(x, y[:-1]), "same shape"),
        (lambda x, y: metrics.bootstrap_ci(x, rng=0), "1-D"),
        (lambda x, y: metrics.bootstrap_ci(x[:, 0], level=1.5, rng=0), "level"),
    ],
)
def test_bad_input_raises_one_line_error(rng, call, message):
    x, y = rng.normal(size=(2, 20, 4))
    with pytest.raises(SimcellError, match=message) as error:
        call(x, y)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("name", ["mse", "pearson"])
def test_non_finite_values_raise(rng, name, bad):
    x, y = rng.normal(size=(2, 20, 4))
    y[3, 1] = bad
    with pytest.raises(SimcellError, match="NaN or infinite"):
        metrics.get_metric(name).fn(pred=x, truth=y)
    with pytest.raises(SimcellError, match="NaN or infinite"):
        metrics.bootstrap_ci(np.array([1.0, bad]), rng=0)
