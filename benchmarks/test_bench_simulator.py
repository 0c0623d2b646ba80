"""Simulator speed and memory, as ratios against references measured in the same run.

Run with ``pytest benchmarks/test_bench_simulator.py -m slow --benchmark-enable -s``.

* full-size synthetic2 bundle (20,000 × 5,000 + every task's twins, written to
  disk) against the physical floor: numpy's ``Generator.poisson`` drawing one
  independent 20,000 × 5,000 matrix with the same λ (target ≤ 3×), and its peak
  memory (target ≤ 2 GiB);
* ``poisson_ppf`` against ``scipy.stats.poisson.ppf`` at identical output
  (target ≥ 20× in the simulator's regime).
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import time

import numpy as np
import pytest
from scipy import stats

from simcell import scenarios
from simcell.simulator import poisson_ppf, simulate


def _timed(fn, repeat=1):
    best = np.inf
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


@pytest.mark.slow
def test_full_synthetic2_bundle_against_numpy_floor(benchmark, tmp_path):
    command = [
        sys.executable,
        "-m",
        "simcell",
        "generate",
        "--scenario",
        "synthetic2",
        "-o",
        str(tmp_path / "b"),
        "--quiet",
    ]

    def run():
        start = time.perf_counter()
        subprocess.run(command, check=True)
        return time.perf_counter() - start

    # the command runs first, while this process is small: a forked child's
    # peak RSS counts the parent's pages until exec
    elapsed = benchmark.pedantic(run, rounds=1, iterations=1)
    peak_gib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20

    # the floor: numpy's sampler on a matrix of the same rates
    params = scenarios.load("synthetic2")
    small = simulate(params.replace(n_cells=256, n_tasks=0), seed=0)
    world, cells = small.world, small.cells
    rng = np.random.default_rng(0)
    index = rng.integers(0, 256, params.n_cells)
    log_rate = (
        world.baseline
        + world.batch_effects[cells.batch[index]]
        + world.tissue_effects[cells.tissue[index]]
        + world.cell_type_effects[cells.cell_type[index]]
        + cells.concepts[index] @ world.concept_effects
        + cells.library_size[index, None]
    )
    rate = np.exp(log_rate + params.noise_sd * rng.standard_normal(log_rate.shape))
    del log_rate
    floor = _timed(lambda: np.random.default_rng(1).poisson(rate))
    ratio = elapsed / floor
    benchmark.extra_info.update(
        {
            "bundle_s": elapsed,
            "numpy_poisson_floor_s": floor,
            "ratio_to_floor": ratio,
            "peak_rss_gib": peak_gib,
        }
    )
    print(
        f"\nsynthetic2 bundle {elapsed:.1f} s (CLI, incl. start-up), numpy floor {floor:.1f} s, "
        f"ratio {ratio:.2f}, peak {peak_gib:.2f} GiB"
    )
    assert ratio < 10  # a sanity bound only; the targets are read from the report


@pytest.mark.slow
def test_full_realistic_generation_against_numpy_floor(benchmark):
    """``realistic`` (NB + capture thinning) at full size against numpy's Poisson
    sampler on the same pre-capture rates (target <= 3x).

    ``simulate`` runs on every core (its default), the floor on one: the report
    names the core count.
    """
    params = scenarios.load("realistic").replace(n_tasks=0)
    simulate(params.replace(n_cells=256, n_genes=50), seed=0)  # compile outside the timing
    start = time.perf_counter()
    data = benchmark.pedantic(lambda: simulate(params, seed=0), rounds=1, iterations=1)
    elapsed = time.perf_counter() - start
    world, cells = data.world, data.cells
    rate = np.exp(
        world.baseline
        + world.batch_effects[cells.batch]
        + world.tissue_effects[cells.tissue]
        + world.cell_type_effects[cells.cell_type]
        + cells.concepts @ world.concept_effects
        + cells.library_size[:, None]
    )
    del data
    floor = _timed(lambda: np.random.default_rng(1).poisson(rate))
    ratio = elapsed / floor
    benchmark.extra_info.update(
        {
            "realistic_s": elapsed,
            "numpy_poisson_floor_s": floor,
            "ratio_to_floor": ratio,
            "cores": os.cpu_count(),
        }
    )
    print(
        f"\nrealistic {elapsed:.1f} s on {os.cpu_count()} cores, numpy floor {floor:.1f} s "
        f"(one core), ratio {ratio:.2f}"
    )
    assert ratio < 10  # a sanity bound only; the target is read from the report


@pytest.mark.slow
@pytest.mark.parametrize("regime", ["simulator", "wide"])
def test_poisson_ppf_against_scipy(benchmark, regime):
    rng = np.random.default_rng(0)
    n = 1_000_000
    if regime == "simulator":
        lam = np.exp(rng.uniform(0.0, np.log(5.0), n) + rng.normal(0, 0.1, n))
    else:
        lam = np.exp(rng.uniform(np.log(1e-3), np.log(1e5), n))
    q = rng.random(n)
    poisson_ppf(q[:10], lam[:10])  # compile outside the timing
    reference = _timed(lambda: stats.poisson.ppf(q, lam))
    ours = benchmark.pedantic(lambda: poisson_ppf(q, lam), rounds=3, iterations=1)
    np.testing.assert_array_equal(ours, stats.poisson.ppf(q, lam))
    mine = benchmark.stats.stats.min
    benchmark.extra_info.update({"scipy_s": reference, "ratio": reference / mine})
    print(
        f"\npoisson_ppf ({regime}): scipy {reference:.3f} s, simcell {mine:.4f} s, "
        f"{reference / mine:.0f}x"
    )
