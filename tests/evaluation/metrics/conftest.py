"""Fixtures of the metric tests: seeded samples and brute-force reference formulas.

Each metric is checked against an independent reference: a brute-force O(n²)
formula written here, a closed form, or POT / scikit-learn called directly.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.distance import cdist
from threadpoolctl import threadpool_limits


def _brute_force_mmd(x: np.ndarray, y: np.ndarray, bandwidths, *, paired: bool = False) -> float:
    """Unbiased squared MMD with full kernel matrices (Gretton et al. 2012, eq. 3).

    ``paired``: the cross term leaves the matched pairs (the diagonal) out.
    """

    def kernel(a, b):
        sq_dist = cdist(a, b, "sqeuclidean")
        return np.mean([np.exp(-sq_dist / (2 * width**2)) for width in bandwidths], axis=0)

    k_xx, k_yy, k_xy = kernel(x, x), kernel(y, y), kernel(x, y)
    m, n = len(x), len(y)
    cross = (k_xy.sum() - np.trace(k_xy)) / (n * (n - 1)) if paired else k_xy.mean()
    return (
        (k_xx.sum() - np.trace(k_xx)) / (m * (m - 1))
        + (k_yy.sum() - np.trace(k_yy)) / (n * (n - 1))
        - 2 * cross
    )


def _brute_force_energy(x: np.ndarray, y: np.ndarray, *, paired: bool = False) -> float:
    """Unbiased (U-statistic) energy distance with full distance matrices."""
    m, n = len(x), len(y)
    d_xy = cdist(x, y)
    cross = (d_xy.sum() - np.trace(d_xy)) / (n * (n - 1)) if paired else d_xy.mean()
    return 2 * cross - cdist(x, x).sum() / (m * (m - 1)) - cdist(y, y).sum() / (n * (n - 1))


@pytest.fixture(autouse=True)
def _one_blas_thread():
    """Small matrices: one BLAS thread (the results do not depend on the thread count).

    On a machine whose cores are busy, a threaded 128 × 128 eigendecomposition
    waits for its other threads and runs 10-30× slower than on one.
    """
    with threadpool_limits(limits=1, user_api="blas"):
        yield


@pytest.fixture
def brute_force_mmd():
    return _brute_force_mmd


@pytest.fixture
def brute_force_energy():
    return _brute_force_energy


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(20240611)


@pytest.fixture
def two_samples(rng):
    x = rng.normal(size=(90, 6)) + 3.0
    y = rng.normal(size=(70, 6)) * 1.3 + 3.4
    return x, y
