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


def _tiny_cells(n_cells: int) -> RealisticCells:
    counts = np.broadcast_to(_OBSERVED, (n_cells, 2)).astype(np.int64)
    base = CellPosterior(
        counts=counts,
        log_rate_mean=np.broadcast_to(_RATE, (n_cells, 2)).copy(),
        library_size_sd=np.full(n_cells, _LIBRARY_SD),
        noise_sd=_NOISE_SD,
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


def _brute_force_twins(n_draws: int, rng: np.random.Generator) -> np.ndarray:
    """Twins of every prior draw whose factual counts equal the observed ones."""
    m, kappa = _CAPTURE
    library = _LIBRARY_SD * rng.standard_normal(n_draws)[:, None]
    capture = rng.beta(m * kappa, (1 - m) * kappa, n_draws)[:, None]
    residual = _NOISE_SD * rng.standard_normal((n_draws, 2))
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


@pytest.mark.parametrize("scenario", ["realistic", "synthetic2-hard"])
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
