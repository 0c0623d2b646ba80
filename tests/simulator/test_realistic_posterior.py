"""The oracle of realistic bundles against brute-force Monte Carlo, and its exact twins."""

from __future__ import annotations

import numpy as np
import pytest

from simcell import scenarios
from simcell.models import Intervention
from simcell.simulator import simulate
from simcell.simulator.counts import ConceptTerms
from simcell.simulator.nbinom import binom_ppf, nbinom_ppf
from simcell.simulator.posterior import CellPosterior, concept_dag
from simcell.simulator.posterior_realistic import (
    RealisticCells,
    RealisticTwinPosterior,
    is_realistic,
    realistic_posterior,
)

_OBSERVED = np.array([2, 1])
_RATE = np.log([4.0, 3.0])
_ALPHA = np.array([0.5, 0.3])
_EFFECT = np.array([0.7, 0.0])
_LIBRARY_SD, _NOISE_SD, _CAPTURE = 0.3, 0.2, (0.5, 10.0)


def _tiny_cells(n_cells: int, noise_sd: float = _NOISE_SD) -> RealisticCells:
    counts = np.broadcast_to(_OBSERVED, (n_cells, 2)).astype(np.int64)
    base = CellPosterior(
        counts=counts,
        log_rate_mean=np.broadcast_to(_RATE, (n_cells, 2)).copy(),
        library_size_sd=np.full(n_cells, _LIBRARY_SD),
        noise_sd=noise_sd,
        concepts=np.zeros((n_cells, 1)),
        concept_effects=_EFFECT[None, :].copy(),
        concept_liability_mean=np.zeros((n_cells, 1)),
        concept_names=("concept_0",),
        concept_kinds=("binary",),
        concept_dag=(),
    )
    return RealisticCells(
        base=base,
        covariate_rate=np.broadcast_to(_RATE, (n_cells, 2)).copy(),
        cell_type=np.zeros(n_cells, dtype=np.int64),
        terms=ConceptTerms(
            typed=_EFFECT[None, None, :].copy(),
            pairs=np.zeros((0, 0, 2)),
            saturate=np.zeros(1, dtype=bool),
            saturation=0.0,
        ),
        dispersion=_ALPHA.copy(),
        capture=_CAPTURE,
    )


def _brute_force_twins(
    n_draws: int, rng: np.random.Generator, noise_sd: float = _NOISE_SD
) -> np.ndarray:
    """Twins of every prior draw whose factual counts equal the observed ones."""
    m, kappa = _CAPTURE
    library = _LIBRARY_SD * rng.standard_normal(n_draws)[:, None]
    capture = rng.beta(m * kappa, (1 - m) * kappa, n_draws)[:, None]
    residual = noise_sd * rng.standard_normal((n_draws, 2))
    delta, nu = rng.random((n_draws, 2)), rng.random((n_draws, 2))
    rate = np.exp(_RATE + library + residual)

    def counts(shift):
        x = nbinom_ppf(delta, rate * np.exp(shift), _ALPHA)
        return binom_ppf(nu, x, np.broadcast_to(capture, x.shape))

    keep = (counts(0.0) == _OBSERVED).all(axis=1)
    return counts(_EFFECT)[keep]


def test_realistic_posterior_matches_brute_force_monte_carlo():
    rng = np.random.default_rng(0)
    truth = _brute_force_twins(1_500_000, rng)
    assert truth.shape[0] > 30_000
    posterior = RealisticTwinPosterior(
        _tiny_cells(30_000), Intervention(do={"concept_0": 1.0}, mode="direct")
    )
    draws = posterior.sample(np.random.default_rng(1), chunk=4096)
    # the unaffected gene keeps its count exactly
    assert np.all(draws[:, 1] == _OBSERVED[1])
    assert np.all(truth[:, 1] == _OBSERVED[1])
    # the affected gene's twin has the brute-force law
    top = 8
    ours = np.bincount(np.minimum(draws[:, 0], top), minlength=top + 1) / draws.shape[0]
    theirs = np.bincount(np.minimum(truth[:, 0], top), minlength=top + 1) / truth.shape[0]
    np.testing.assert_allclose(ours, theirs, atol=0.012)
    assert abs(draws[:, 0].mean() - truth[:, 0].mean()) < 0.04 * truth[:, 0].mean()
    # negative control: a twin drawn from the prior (ignoring x) fails the same check
    prior = posterior.same_law_sample(np.random.default_rng(2))
    prior_hist = np.bincount(np.minimum(prior[:, 0], top), minlength=top + 1) / prior.shape[0]
    assert np.abs(prior_hist - theirs).max() > 0.05


@pytest.mark.parametrize("scenario", ["realistic", "synthetic2-hard", "synthetic2-pairs"])
def test_realistic_oracle_on_a_bundle(scenario):
    params = scenarios.load(scenario, n_cells=600, n_genes=150, n_tasks=1, min_task_cells=5)
    data = simulate(params, seed=2, n_threads=1)
    assert is_realistic(data)
    task = data.tasks[0]
    name = data.factual.obsm["concepts_true"].columns[task.concept]
    dag = concept_dag(data)
    nothing = realistic_posterior(data, task.intervene, Intervention(do={}, mode="causal", dag=dag))
    factual = data.factual.X[task.intervene].toarray()
    # do() of nothing: every posterior twin is the factual cell
    np.testing.assert_array_equal(nothing.sample(np.random.default_rng(0)), factual)
    posterior = realistic_posterior(
        data, task.intervene, Intervention(do={name: 1.0}, mode="causal", dag=dag)
    )
    twin = posterior.sample(np.random.default_rng(1))
    unaffected = data.world.concept_effects[task.concept] == 0
    np.testing.assert_array_equal(twin[:, unaffected], factual[:, unaffected])
    assert (twin != factual).any()
    first, second = posterior.mean_halves(np.log1p, 4, np.random.default_rng(2))
    assert first.shape == factual.shape and np.isfinite(first).all()
    np.testing.assert_array_equal(first[:, unaffected], np.log1p(factual[:, unaffected]))
    assert posterior.same_law_sample(np.random.default_rng(3)).shape == factual.shape


def test_realistic_oracle_computes_the_library_capture_grid_once(monkeypatch):
    """The (l, p) grid posterior (n_cells x 861 x n_genes likelihoods) is computed once per
    posterior and reused by every draw, with the same values as a fresh computation."""
    from simcell.simulator import posterior_realistic

    params = scenarios.load("realistic", n_cells=600, n_genes=150, n_tasks=1, min_task_cells=5)
    data = simulate(params, seed=2, n_threads=1)
    task = data.tasks[0]
    name = data.factual.obsm["concepts_true"].columns[task.concept]
    intervention = Intervention(do={name: 1.0}, mode="causal", dag=concept_dag(data))
    fresh = [
        realistic_posterior(data, task.intervene, intervention).sample(np.random.default_rng(s))
        for s in (1, 2)
    ]
    grid = posterior_realistic.library_capture_grid
    calls = []
    monkeypatch.setattr(
        posterior_realistic, "library_capture_grid", lambda cells: calls.append(1) or grid(cells)
    )
    posterior = realistic_posterior(data, task.intervene, intervention)
    reused = [posterior.sample(np.random.default_rng(s)) for s in (1, 2)]
    posterior.mean_halves(np.log1p, 4, np.random.default_rng(3))
    assert len(calls) == 1
    for one, other in zip(fresh, reused, strict=True):
        np.testing.assert_array_equal(one, other)


@pytest.fixture(scope="module", params=["realistic", "synthetic2-hard"])
def small_task(request):
    """A small bundle's first task under its intervention (NB + capture, or Poisson)."""
    params = scenarios.load(request.param, n_cells=600, n_genes=150, n_tasks=1, min_task_cells=5)
    data = simulate(params, seed=2, n_threads=1)
    task = data.tasks[0]
    name = data.factual.obsm["concepts_true"].columns[task.concept]
    intervention = Intervention(do={name: 1.0}, mode="causal", dag=concept_dag(data))
    return data, task.intervene, intervention


def test_realistic_twins_are_the_same_bytes_for_any_chunk_and_thread_count(small_task):
    """Each entry's uniforms are a function of (key, draw, cell, gene): the chunk size and
    the number of numba threads do not change a single draw."""
    import numba

    data, intervene, intervention = small_task
    posterior = realistic_posterior(data, intervene, intervention)
    twins = [posterior.sample(np.random.default_rng(5), chunk=c) for c in (7, 1000)]
    np.testing.assert_array_equal(twins[0], twins[1])
    assert (twins[0] != data.factual.X[intervene].toarray()).any()
    means = [
        posterior.mean_halves(np.log1p, 4, np.random.default_rng(6), chunk=c) for c in (7, 1000)
    ]
    for one, other in zip(means[0], means[1], strict=True):
        assert one.tobytes() == other.tobytes()
    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("one numba thread only")
    before = numba.get_num_threads()
    try:
        threaded = []
        for n_threads in (1, 2):
            numba.set_num_threads(n_threads)
            threaded.append(posterior.sample(np.random.default_rng(5), chunk=1000))
    finally:
        numba.set_num_threads(before)
    np.testing.assert_array_equal(threaded[0], threaded[1])
    np.testing.assert_array_equal(threaded[0], twins[0])


def test_twin_kernel_agrees_with_the_numpy_reference(small_task):
    """The fused kernel and the scipy reference map the same uniforms to the same twin
    (up to floating-point ties at a CDF step)."""
    data, _, intervention = small_task
    intervene = np.arange(300)  # more cells than the task's, for many changed entries
    posterior = realistic_posterior(data, intervene, intervention)
    reference = realistic_posterior(data, intervene, intervention)
    reference._engine = "numpy"
    ours = posterior.sample(np.random.default_rng(8), chunk=64)
    theirs = reference.sample(np.random.default_rng(8), chunk=64)
    assert (theirs != data.factual.X[intervene].toarray()).sum() > 100
    # over every entry (the changed ones included): at most a few floating-point ties
    assert (ours != theirs).sum() <= 1e-4 * ours.size


def test_uncertain_entries_are_settled_by_the_reference_with_the_same_uniforms():
    """Rates so large that p(0) underflows: the kernel certifies nothing, and every
    changed entry is the reference's answer for the same uniforms, bit for bit."""
    cells = _tiny_cells(200)
    big = np.log([5000.0, 3.0])
    cells = RealisticCells(
        base=cells.base,
        covariate_rate=np.broadcast_to(big, (200, 2)).copy(),
        cell_type=cells.cell_type,
        terms=cells.terms,
        dispersion=np.array([0.001, 0.3]),
        capture=cells.capture,
    )
    intervention = Intervention(do={"concept_0": 1.0}, mode="direct")
    posterior = RealisticTwinPosterior(cells, intervention)
    reference = RealisticTwinPosterior(cells, intervention)
    reference._engine = "numpy"
    ours = posterior.sample(np.random.default_rng(9), chunk=32)
    np.testing.assert_array_equal(ours, reference.sample(np.random.default_rng(9), chunk=32))
    assert np.all(ours[:, 1] == _OBSERVED[1])
    assert ours[:, 0].min() > _OBSERVED[0]


def test_library_capture_grid_equals_the_full_grid_evaluated_with_scipy(small_task):
    """The grid kernel skips points far below each capture level's maximum: the CDF is
    still the one of every grid point's scipy log-pmf."""
    from scipy import stats

    from simcell.simulator.posterior_realistic import (
        _LIBRARY_GRID,
        library_capture_grid,
        realistic_cells,
    )

    data, _, _ = small_task
    cells = realistic_cells(data, np.arange(20))
    grid = library_capture_grid(cells)
    y = cells.counts[:, :, None]
    log_rate = cells.log_rate(cells.base.concepts, slice(None)) + cells.base.noise_sd**2 / 2
    shift = grid.library[:, :, None] + np.log(grid.capture)[None, None, :]  # (n, L, P)
    mu = np.exp(log_rate[:, :, None] + shift.reshape(20, 1, -1))  # (n, genes, L * P)
    alpha = cells.dispersion[None, :, None]
    if (cells.dispersion > 0).all():
        size = 1.0 / alpha
        log_pmf = stats.nbinom.logpmf(y, size, size / (size + mu))
    else:
        assert (cells.dispersion == 0).all()
        log_pmf = stats.poisson.logpmf(y, mu)
    log_post = log_pmf.sum(axis=1) + np.repeat(-0.5 * _LIBRARY_GRID**2, grid.capture.size)
    weight = np.exp(log_post - log_post.max(axis=1, keepdims=True))
    cdf = np.cumsum(weight, axis=1)
    np.testing.assert_allclose(grid.cdf, cdf / cdf[:, -1:], rtol=0, atol=1e-12)


def test_realistic_posterior_with_a_wide_residual_matches_brute_force_monte_carlo():
    """σ = 0.5 (the tiny case's default is 0.2): step 2's rejection sampler rejects
    often, and sometimes falls back to the full categorical after 8 rejections; the
    twin law is still the brute-force one, at the same tolerance. (At σ = 1 the grid
    step's neglect of the residual's dispersion shows: 0.018 off, before and after
    the rejection sampler alike.)"""
    rng = np.random.default_rng(10)
    truth = _brute_force_twins(1_500_000, rng, noise_sd=0.5)
    assert truth.shape[0] > 20_000
    posterior = RealisticTwinPosterior(
        _tiny_cells(30_000, noise_sd=0.5), Intervention(do={"concept_0": 1.0}, mode="direct")
    )
    draws = posterior.sample(np.random.default_rng(11), chunk=4096)
    assert np.all(draws[:, 1] == _OBSERVED[1])
    top = 10
    ours = np.bincount(np.minimum(draws[:, 0], top), minlength=top + 1) / draws.shape[0]
    theirs = np.bincount(np.minimum(truth[:, 0], top), minlength=top + 1) / truth.shape[0]
    np.testing.assert_allclose(ours, theirs, atol=0.012)
    assert abs(draws[:, 0].mean() - truth[:, 0].mean()) < 0.04 * truth[:, 0].mean()
