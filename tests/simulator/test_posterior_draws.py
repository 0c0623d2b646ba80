"""The block kernel of the twin posterior draws exactly what one draw at a time draws.

The reference below is the posterior's algorithm written the plain way (one draw
of one chunk of cells per call, every quadrature computed afresh, uniforms taken
from the generator in order). The fast path shares quadratures across cells and
draws, reads uniforms at their place in the stream and computes cells in group
order; its draws must be equal to the reference's bit for bit.
"""

from __future__ import annotations

import math

import numba
import numpy as np
import pytest
from scipy import special

from simcell import scenarios
from simcell.models import Intervention
from simcell.simulator import TwinPosterior, cell_posterior, concept_dag, posterior, simulate
from simcell.simulator.poisson import (
    _SEQUENTIAL_MAX_RATE,
    _UNCERTAIN,
    _ppf_scalar,
    settle_uncertain,
)

_BELOW_ONE = float(np.nextafter(1.0, 0.0))


@numba.njit(cache=True)
def _reference_kernel(counts, log_rate_mean, library, shift, nodes, log_weights, u_pick, u_delta):
    """One draw of a chunk: the twin, and (rate, δ, position) of every changed entry."""
    n_rows, n_genes = counts.shape
    n_nodes = nodes.size
    twin = counts.copy()
    n = u_pick.size
    rates, deltas = np.empty(n), np.empty(n)
    out, position = np.empty(n, dtype=np.int64), np.empty(n, dtype=np.int64)
    weights = np.empty(max(n_nodes, 1))
    i = 0
    for row in range(n_rows):
        for j in range(n_genes):
            if shift[row, j] == 0.0:
                continue
            x = counts[row, j]
            value = log_rate_mean[row, j] + library[row]
            if n_nodes > 0:
                top = -np.inf
                for h in range(n_nodes):
                    weights[h] = log_weights[h] + x * nodes[h] - math.exp(value + nodes[h])
                    top = max(top, weights[h])
                total = 0.0
                for h in range(n_nodes):
                    weights[h] = math.exp(weights[h] - top)
                    total += weights[h]
                target, running, pick = u_pick[i] * total, 0.0, n_nodes - 1
                for h in range(n_nodes):
                    running += weights[h]
                    if running > target:
                        pick = h
                        break
                value += nodes[pick]
            rate = math.exp(value)
            rates[i] = rate * math.exp(shift[row, j])
            position[i] = row * n_genes + j
            if rate > _SEQUENTIAL_MAX_RATE:
                deltas[i] = np.nan
                out[i] = _UNCERTAIN
            else:
                pmf = math.exp(-rate)
                cdf, below = pmf, 0.0
                for k in range(1, x + 1):
                    pmf *= rate / k
                    below = cdf
                    cdf += pmf
                deltas[i] = min(below + u_delta[i] * (cdf - below), _BELOW_ONE)
                out[i] = _ppf_scalar(deltas[i], rates[i])
            twin[row, j] = out[i]
            i += 1
    return twin, rates, deltas, out, position


@numba.njit(cache=True)
def _reference_shift(change, effects):
    shift = np.zeros((change.shape[0], effects.shape[1]))
    for row in range(change.shape[0]):
        for j in range(effects.shape[1]):
            acc = 0.0
            for k in range(change.shape[1]):
                if change[row, k] != 0.0:
                    acc += change[row, k] * effects[k, j]
            shift[row, j] = acc
    return shift


def _reference_draws(post: TwinPosterior, n_samples: int, rng, chunk: int):
    cells = post.cells
    sigma = cells.noise_sd
    if sigma > 0:
        nodes = np.sqrt(2.0) * sigma * posterior._HERMITE_NODES
        log_weights = np.log(posterior._HERMITE_WEIGHTS)
    else:
        nodes = log_weights = np.zeros(0)
    library, _ = posterior._library_size_draws(cells, n_samples, rng)
    concepts = None if post._fixed_shift is not None else post.concept_draws(n_samples, rng)
    for start in range(0, cells.n_cells, chunk):
        rows = slice(start, min(start + chunk, cells.n_cells))
        x = np.ascontiguousarray(cells.counts[rows], dtype=np.int64)
        m = np.ascontiguousarray(cells.log_rate_mean[rows])
        for s in range(n_samples):
            if concepts is None:
                shift = np.ascontiguousarray(post._fixed_shift[rows])
            else:
                change = concepts[s, rows] - cells.concepts[rows]
                shift = _reference_shift(change, cells.concept_effects)
            n = int(np.count_nonzero(shift))
            u_pick, u_delta = rng.random(n), rng.random(n)
            twin, rates, deltas, out, position = _reference_kernel(
                x, m, library[s, rows].copy(), shift, nodes, log_weights, u_pick, u_delta
            )
            large = np.flatnonzero(np.isnan(deltas))
            if large.size:
                where = position[large]
                rate = rates[large] / np.exp(shift.reshape(-1)[where])
                counts = x.reshape(-1)[where]
                below = np.where(counts > 0, special.pdtr(np.maximum(counts - 1, 0), rate), 0.0)
                at = special.pdtr(counts, rate)
                deltas[large] = np.minimum(below + u_delta[large] * (at - below), _BELOW_ONE)
            uncertain = np.flatnonzero(out == _UNCERTAIN)
            if uncertain.size:
                settle_uncertain(deltas, rates, out)
                twin.reshape(-1)[position[uncertain]] = out[uncertain]
            yield rows, twin


def _reference_mean(post, transform, n_samples, rng, chunk):
    parts, total = [], None
    for count, (_, twin) in enumerate(_reference_draws(post, n_samples, rng, chunk)):
        value = transform(twin)
        total = value if total is None else total + value
        if count % n_samples == n_samples - 1:
            parts.append(total / n_samples)
            total = None
    return np.concatenate(parts, axis=0)


def _reference_sample(post, rng, chunk):
    out = np.empty(post.cells.counts.shape, dtype=np.int64)
    for rows, twin in _reference_draws(post, 1, rng, chunk):
        out[rows] = twin
    return out


@pytest.fixture(scope="module")
def causal_cells():
    params = scenarios.load(
        "causal",
        n_cells=500,
        n_genes=40,
        n_tasks=1,
        concept_effect_sd=0.8,
        concept_sparsity_alpha=0.2,
        concept_sparsity_beta=5.0,
    )
    dataset = simulate(params, seed=5, scenario="causal")
    cells = np.flatnonzero(dataset.cells.concepts[:, 0] == 0)[:150]
    return cell_posterior(dataset, cells), concept_dag(dataset)


def _generators(seed: int):
    """The default generator (uniforms read in place) and one without random access."""
    yield np.random.default_rng(seed)
    yield np.random.Generator(np.random.MT19937(seed))


@pytest.mark.parametrize("mode", ["causal", "direct"])
def test_draws_equal_one_draw_at_a_time(causal_cells, mode, monkeypatch):
    """Fixed (direct) and per-draw (causal, binary descendants) shifts, several
    chunks and several blocks per chunk, both kinds of generator."""
    monkeypatch.setattr(posterior, "_BLOCK_ENTRIES", 3000)  # blocks of a few cells
    cells, dag = causal_cells
    post = TwinPosterior(cells, Intervention(do={"concept_0": 1.0}, mode=mode, dag=dag))
    assert (post._fixed_shift is None) == (mode == "causal")
    for rng, reference in zip(_generators(1), _generators(1), strict=True):
        got = post.mean_halves(np.log1p, 6, rng, chunk=37)
        want = (
            _reference_mean(post, np.log1p, 3, reference, 37),
            _reference_mean(post, np.log1p, 3, reference, 37),
        )
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(got[1], want[1])
        np.testing.assert_array_equal(
            post.sample(rng, chunk=64), _reference_sample(post, reference, 64)
        )
        # the generator is left where drawing one draw at a time leaves it
        assert rng.random() == reference.random()


def test_large_rates_and_no_residual_equal_one_draw_at_a_time(monkeypatch):
    """Rates above the sequential range (settled with pdtr), counts above the
    shared-quadrature cap, σ_ε = 0 (no quadrature) and σ_ε > 0."""
    monkeypatch.setattr(posterior, "_BLOCK_ENTRIES", 500)
    rng = np.random.default_rng(0)
    n_cells, n_genes = 60, 12
    log_rate = np.log(rng.choice([0.5, 3.0, 30.0, 80.0, 400.0], size=(n_cells, n_genes)))
    log_rate[::3] = log_rate[0]  # groups of equal rows share their quadratures
    counts = rng.poisson(np.exp(log_rate))
    shift = np.where(
        rng.random((n_cells, n_genes)) < 0.6, rng.normal(0, 0.5, (n_cells, n_genes)), 0
    )
    for noise_sd in (0.0, 0.1):
        cells = posterior.CellPosterior(
            counts=counts,
            log_rate_mean=log_rate,
            library_size_sd=np.full(n_cells, 0.05),
            noise_sd=noise_sd,
            concepts=np.zeros((n_cells, 0)),
            concept_effects=np.zeros((0, n_genes)),
            concept_liability_mean=np.zeros((n_cells, 0)),
            concept_names=(),
            concept_kinds=(),
            concept_dag=(),
        )
        post = TwinPosterior.from_shift(cells, shift)
        for got_rng, want_rng in zip(_generators(3), _generators(3), strict=True):
            got = post.mean(lambda c: c.astype(float), 5, got_rng, chunk=16)
            want = _reference_mean(post, lambda c: c.astype(float), 5, want_rng, 16)
            np.testing.assert_array_equal(got, want)
