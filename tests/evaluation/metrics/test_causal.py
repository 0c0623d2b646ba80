"""Causal-matrix metrics: closed-form values, scale invariance, directed vs undirected."""

from __future__ import annotations

import numpy as np
import pytest

from simcell import SimcellError
from simcell.evaluation import metrics
from simcell.evaluation.metrics.causal import undirected_entries
from simcell.simulator import linear_sde as L


@pytest.fixture(scope="module")
def a():
    return L.draw_system(
        L.LinearSDEParams(n_genes=15, degree=2.0, n_doubles=1), seed=2
    ).drift_matrix


NAMES = ("auroc", "f1", "pearson")


@pytest.mark.parametrize("name", NAMES)
def test_the_truth_scores_one_directed_and_undirected(a, name):
    assert getattr(metrics, f"causal_{name}")(a, a) == pytest.approx(1.0)
    assert getattr(metrics, f"causal_{name}_undirected")(a, a) == pytest.approx(1.0)


def test_scores_do_not_depend_on_the_estimate_scale(a, rng):
    noisy = a + 0.3 * rng.normal(size=a.shape)
    for name in NAMES:
        fn = getattr(metrics, f"causal_{name}")
        assert fn(3.0 * noisy, a) == pytest.approx(fn(noisy, a))


def test_the_transpose_is_told_apart_only_when_directed(a):
    """Aᵀ has every edge reversed: perfect undirected, near chance directed."""
    for name in NAMES:
        assert getattr(metrics, f"causal_{name}_undirected")(a.T, a) == pytest.approx(1.0)
    assert metrics.causal_auroc(a.T, a) < 0.7
    assert metrics.causal_f1(a.T, a) < 0.5


def test_negative_control_random_estimate_is_near_chance(a, rng):
    scores = [metrics.causal_auroc(rng.normal(size=a.shape), a) for _ in range(20)]
    assert abs(np.mean(scores) - 0.5) < 0.06


def test_auroc_by_hand():
    true = np.array([[0.0, 1.0, 0.0], [-1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    pred = np.array([[0.0, 2.0, 0.5], [-2.0, 0.0, 0.1], [-0.2, 0.3, 0.0]])
    # entries: 1 (class 1), 0.5, -2 (class -1), 0.1, -0.2, 0.3: every pair perfectly ranked
    assert metrics.causal_auroc(pred, true) == 1.0
    pred[0, 2] = 3.0  # one class-0 entry now above the class-1 one: (0, 1) pair AUROC 3/4
    assert metrics.causal_auroc(pred, true) == pytest.approx((1.0 + 1.0 + 0.75) / 3)


def test_undirected_entries_keep_the_larger_magnitude():
    m = np.array([[0.0, 2.0], [-3.0, 0.0]])
    np.testing.assert_array_equal(undirected_entries(m), [-3.0])


def test_bad_inputs(a):
    with pytest.raises(SimcellError, match="differ"):
        metrics.causal_auroc(a[:3, :3], a)
    with pytest.raises(SimcellError, match="one sign class"):
        metrics.causal_auroc(a, np.zeros_like(a))
    with pytest.raises(SimcellError, match="NaN"):
        metrics.causal_pearson(np.full_like(a, np.nan), a)
