"""CLIPR: exact on the true linear drift; on the stationary score it returns −Σ⁻¹, not A."""

from __future__ import annotations

import numpy as np
import pytest

from simcell import SimcellError
from simcell.models.clipr import (
    clipr,
    clipr_from_drift,
    differential_expression_matrix,
    find_fixed_points,
)
from simcell.simulator import linear_sde as L


@pytest.fixture(scope="module")
def system():
    return L.draw_system(L.LinearSDEParams(n_genes=8, degree=2.0, n_doubles=1), seed=5)


def _singles(system):
    d = system.d
    indicators = np.eye(d)
    fixed = system.mean(indicators)  # exact fixed points x*_k
    return indicators, fixed


def test_clipr_on_the_true_drift_returns_a(system):
    indicators, fixed = _singles(system)
    f0 = system.drift(np.zeros_like(fixed), indicators)  # b + c_k
    control = system.mean(np.zeros(system.d))
    estimate = clipr(f0, fixed, control)
    np.testing.assert_allclose(estimate.drift_matrix, system.drift_matrix, rtol=0, atol=1e-8)
    np.testing.assert_allclose(estimate.bias, system.bias, atol=1e-8)
    np.testing.assert_allclose(estimate.shifts, system.shifts, atol=1e-8)


def test_clipr_on_the_stationary_score_returns_minus_precision_not_a(system):
    """The score of N(μ_k, Σ) is f_k(x) = −Σ⁻¹(x − μ_k): CLIPR reads −Σ⁻¹, which is
    symmetric, and NOT the (non-symmetric) drift matrix A."""
    indicators, fixed = _singles(system)
    precision = np.linalg.inv(system.covariance)
    f0 = (precision @ fixed.T).T  # −Σ⁻¹(0 − μ_k)
    estimate = clipr(f0, fixed).drift_matrix
    np.testing.assert_allclose(estimate, -precision, rtol=1e-8, atol=1e-8)
    np.testing.assert_allclose(estimate, estimate.T, atol=1e-8)
    a = system.drift_matrix
    assert not np.allclose(a, a.T)
    assert np.abs(estimate - a).max() > 0.1


def test_clipr_from_drift_follows_the_flow_to_the_fixed_points(system):
    indicators, _ = _singles(system)
    estimate = clipr_from_drift(system.drift, indicators, start=np.zeros(system.d), n_steps=4000)
    np.testing.assert_allclose(estimate.drift_matrix, system.drift_matrix, atol=1e-4)


def test_tikhonov_shrinks_towards_zero(system):
    indicators, fixed = _singles(system)
    f0 = system.drift(np.zeros_like(fixed), indicators)
    exact = clipr(f0, fixed).drift_matrix
    shrunk = clipr(f0, fixed, tikhonov=1e3).drift_matrix
    assert np.linalg.norm(shrunk) < np.linalg.norm(exact)
    np.testing.assert_allclose(clipr(f0, fixed, tikhonov=1e-12).drift_matrix, exact, atol=1e-6)


def test_differential_expression_is_the_total_effect(system):
    d = system.d
    indicators = np.vstack([np.zeros((1, d)), np.eye(d)])
    means = system.mean(indicators)
    de = differential_expression_matrix(means, indicators)
    total = -np.linalg.solve(system.drift_matrix, system.shifts.T)  # column k: −A⁻¹ c_k
    np.testing.assert_allclose(de, total, atol=1e-10)


def test_bad_inputs_are_one_line_errors(system):
    with pytest.raises(SimcellError, match="differ"):
        clipr(np.zeros((3, 4)), np.zeros((2, 4)))
    with pytest.raises(SimcellError, match="NaN"):
        clipr(np.full((2, 2), np.nan), np.eye(2))
    with pytest.raises(SimcellError, match="diverged"):
        find_fixed_points(lambda x, u: x, np.eye(2), start=np.ones(2), step=10.0, n_steps=500)
