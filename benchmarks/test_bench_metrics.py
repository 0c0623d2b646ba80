"""Blocked MMD and energy distance against a full-matrix numpy reference.

The reference is the straightforward implementation: float64 pairwise squared
distances through ``||x||² + ||y||² - 2 x yᵀ`` as full ``n × n`` matrices. Both
run in the same session on the same data; the speed-up (reference time /
blocked time) and the peak extra resident memory of each are stored in the
benchmark's ``extra_info`` and printed. Peak memory is sampled from
``/proc/self/statm`` in a fresh interpreter per implementation, so memory the
allocator kept from earlier runs does not hide it. Run with::

    pytest benchmarks -m slow --benchmark-enable -s
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable

import numpy as np
import pytest
import torch
from scipy.spatial.distance import cdist

from simcell.evaluation import metrics

N_CELLS, N_DIMS = 10_000, 128
ROUNDS = 3


# ----------------------------------------------------------------------------- reference


def naive_sq_dist(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Full float64 matrix of squared distances, shape (len(a), len(b))."""
    sq_dist = (a * a).sum(axis=1)[:, None] + (b * b).sum(axis=1)[None, :] - 2.0 * a @ b.T
    return np.maximum(sq_dist, 0.0)


def naive_mmd(x: np.ndarray, y: np.ndarray, bandwidths) -> float:
    """Unbiased squared MMD, mean of RBF kernels, from full kernel matrices."""

    def kernel_sum(a, b, exclude_diagonal):
        sq_dist = naive_sq_dist(a, b)
        if exclude_diagonal:
            np.fill_diagonal(sq_dist, 0.0)
        kernel = sum(np.exp(-sq_dist / (2.0 * width**2)) for width in bandwidths)
        kernel /= len(bandwidths)
        return kernel.sum() - (np.trace(kernel) if exclude_diagonal else 0.0)

    m, n = len(x), len(y)
    return (
        kernel_sum(x, x, True) / (m * (m - 1))
        + kernel_sum(y, y, True) / (n * (n - 1))
        - 2.0 * kernel_sum(x, y, False) / (m * n)
    )


def naive_energy(x: np.ndarray, y: np.ndarray) -> float:
    """Energy distance (unbiased U-statistic) from full distance matrices."""

    def mean_distance(a, b, exclude_diagonal):
        distances = np.sqrt(naive_sq_dist(a, b))
        if exclude_diagonal:  # the diagonal is 0 up to rounding; leave it out of the mean
            return (distances.sum() - np.trace(distances)) / (len(a) * (len(a) - 1))
        return distances.mean()

    return 2.0 * mean_distance(x, y, False) - mean_distance(x, x, True) - mean_distance(y, y, True)


# ----------------------------------------------------------------------------- measurement


def _rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_extra_rss(fn: Callable[[], float]) -> tuple[float, int]:
    """Run ``fn`` while sampling resident memory; return (result, peak bytes above the start)."""
    baseline = _rss_bytes()
    peak = baseline
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, _rss_bytes())
            time.sleep(0.002)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        result = fn()
    finally:
        done.set()
        sampler.join()
    return result, max(peak, _rss_bytes()) - baseline


def make_samples() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(N_CELLS, N_DIMS))
    y = rng.normal(size=(N_CELLS, N_DIMS)) * 1.1 + 0.05
    return x, y


def implementations(x: np.ndarray, y: np.ndarray) -> dict[str, Callable[[], float]]:
    bandwidths = metrics.median_heuristic_bandwidths(np.vstack([x, y]))
    return {
        "mmd_blocked": lambda: metrics.mmd(x, y, bandwidths=bandwidths),
        "mmd_naive": lambda: naive_mmd(x, y, bandwidths),
        "energy_blocked": lambda: metrics.energy_distance(x, y),
        "energy_naive": lambda: naive_energy(x, y),
    }


def measure_in_child(name: str) -> int:
    """Entry point of the fresh interpreter: peak extra RSS of one implementation."""
    return peak_extra_rss(implementations(*make_samples())[name])[1]


_CHILD = (
    "import json, runpy, sys; "
    "module = runpy.run_path(sys.argv[1]); "
    "print(json.dumps(module['measure_in_child'](sys.argv[2])))"
)


def peak_memory_fresh(name: str) -> int:
    """Peak extra resident memory of one implementation, measured in a new interpreter."""
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, __file__, name], capture_output=True, text=True, check=True
    )
    return int(json.loads(done.stdout.strip().splitlines()[-1]))


def compare(benchmark, samples, kind: str):
    """Time and measure both implementations; record and print the ratios."""
    runs = implementations(*samples)
    blocked, naive = runs[f"{kind}_blocked"], runs[f"{kind}_naive"]
    blocked()  # warm-up (thread pools, first-touch allocations)
    timings: list[float] = []

    def timed() -> float:
        start = time.perf_counter()
        result = blocked()
        timings.append(time.perf_counter() - start)
        return result

    blocked_value = benchmark.pedantic(timed, rounds=ROUNDS, iterations=1)
    start = time.perf_counter()
    naive_value = naive()
    naive_time = time.perf_counter() - start
    blocked_memory = peak_memory_fresh(f"{kind}_blocked")
    naive_memory = peak_memory_fresh(f"{kind}_naive")

    blocked_time = min(timings)
    info = {
        "n_cells": N_CELLS,
        "n_dims": N_DIMS,
        "torch_threads": torch.get_num_threads(),
        "blocked_seconds": blocked_time,
        "naive_seconds": naive_time,
        "speedup": naive_time / blocked_time,
        "blocked_peak_extra_mib": blocked_memory / 2**20,
        "naive_peak_extra_mib": naive_memory / 2**20,
        "memory_ratio": naive_memory / max(blocked_memory, 1),
    }
    benchmark.extra_info.update(info)
    print(
        f"\n{kind}: blocked {blocked_time:.2f} s, naive {naive_time:.2f} s, "
        f"speed-up {info['speedup']:.1f}x; peak extra memory blocked "
        f"{info['blocked_peak_extra_mib']:.0f} MiB vs naive {info['naive_peak_extra_mib']:.0f} MiB "
        f"({info['memory_ratio']:.0f}x); torch threads {info['torch_threads']}"
    )
    # float32 tiles (the default) against the float64 reference
    assert blocked_value == pytest.approx(naive_value, rel=1e-5, abs=1e-9)
    return info


@pytest.fixture(scope="module")
def large_samples():
    return make_samples()


# ----------------------------------------------------------------------------- benchmarks


@pytest.mark.slow
def test_bench_mmd_blocked_vs_full_matrix(benchmark, large_samples):
    benchmark.group = "mmd 10k x 10k x 128"
    info = compare(benchmark, large_samples, "mmd")
    assert info["blocked_peak_extra_mib"] < 256


@pytest.mark.slow
def test_bench_energy_blocked_vs_full_matrix(benchmark, large_samples):
    benchmark.group = "energy 10k x 10k x 128"
    info = compare(benchmark, large_samples, "energy")
    assert info["blocked_peak_extra_mib"] < 256


def test_reference_implementations_agree_on_small_samples():
    """Sanity check (not slow): the benchmark's references compute the same numbers."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(300, 16))
    y = rng.normal(size=(250, 16)) + 0.2
    bandwidths = (1.0, 3.0, 9.0)
    options = {"block_size": 64, "precision": "float64"}
    assert metrics.mmd(x, y, bandwidths=bandwidths, **options) == pytest.approx(
        naive_mmd(x, y, bandwidths), rel=1e-10
    )
    # the reference takes square roots of rounding errors on near pairs (its diagonals)
    assert metrics.energy_distance(x, y, **options) == pytest.approx(naive_energy(x, y), rel=1e-8)
    assert metrics.energy_distance(x, y, **options) == pytest.approx(
        2 * cdist(x, y).mean() - cdist(x, x).sum() / (300 * 299) - cdist(y, y).sum() / (250 * 249),
        rel=1e-11,
    )
