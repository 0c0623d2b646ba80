"""poisson_ppf equals scipy's Poisson inverse CDF, element for element."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from simcell import SimcellError
from simcell.simulator import poisson_ppf


def _pairs(n, seed):
    rng = np.random.default_rng(seed)
    lam = np.exp(rng.uniform(np.log(1e-3), np.log(1e5), n))
    q = rng.random(n)
    which = rng.random(n)
    q = np.where(which < 0.2, 10 ** rng.uniform(-15, -1, n), q)  # near 0
    q = np.where(which > 0.8, 1 - 10 ** rng.uniform(-15, -1, n), q)  # near 1
    return q, lam


def test_equals_scipy_on_a_million_pairs():
    q, lam = _pairs(1_000_000, seed=0)
    expected = stats.poisson.ppf(q, lam)
    got = poisson_ppf(q, lam)
    mismatch = np.flatnonzero(got != expected)
    assert mismatch.size == 0, list(zip(q[mismatch][:5], lam[mismatch][:5], strict=True))


def test_simulator_regime_and_zero_rule():
    rng = np.random.default_rng(1)
    lam = np.exp(rng.uniform(0, np.log(5), 200_000))
    q = rng.random(lam.size)
    got = poisson_ppf(q, lam)
    np.testing.assert_array_equal(got, stats.poisson.ppf(q, lam))
    # x = 0 exactly when q <= e^{-lam}
    np.testing.assert_array_equal(got == 0, q <= np.exp(-lam))


def test_broadcasting_and_dtype():
    out = poisson_ppf(np.array([[0.1], [0.9]]), np.array([1.0, 10.0, 100.0]))
    assert out.shape == (2, 3) and out.dtype == np.int64
    np.testing.assert_array_equal(out, stats.poisson.ppf([[0.1], [0.9]], [1.0, 10.0, 100.0]))


def test_edges():
    assert poisson_ppf(0.0, 3.0) == 0
    assert poisson_ppf(0.5, 0.0) == 0


@pytest.mark.parametrize(
    ("q", "lam"), [(1.0, 1.0), (-0.1, 1.0), (np.nan, 1.0), (0.5, -1.0), (0.5, np.inf)]
)
def test_bad_input(q, lam):
    with pytest.raises(SimcellError):
        poisson_ppf(q, lam)
