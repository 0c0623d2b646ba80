"""The torch evaluation of counts equals the compiled one, element for element."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import special, stats

from simcell import scenarios
from simcell.simulator import simulate
from simcell.simulator._torch_counts import (
    _log_rate_torch,
    _sequential_ppf_torch,
    evaluate_counts_torch,
)
from simcell.simulator.counts import (
    RowBatch,
    _rates_at,
    chunk_noise,
    evaluate_counts,
    world_arrays,
)
from simcell.simulator.poisson import (
    _SEQUENTIAL_MAX_RATE,
    _UNCERTAIN,
    _ppf_sequential,
    settle_uncertain,
)

N_ROWS = 512


def _case(**overrides):
    """A simulated dataset and the inputs of ``evaluate_counts`` for its cells 0..511."""
    params = scenarios.load("causal", n_cells=600, n_genes=50, min_task_cells=10, **overrides)
    dataset = simulate(params, seed=2, scenario="causal")
    cells = dataset.cells
    source = np.arange(N_ROWS)
    rows = RowBatch(
        local=source.astype(np.int64),
        batch=cells.batch[source],
        tissue=cells.tissue[source],
        cell_type=cells.cell_type[source],
        library_size=cells.library_size[source],
        concepts=cells.concepts[source],
    )
    residual, uniform = chunk_noise(dataset.seed, 0, N_ROWS, params.n_genes)
    arrays = world_arrays(dataset.world, params.noise_sd)
    return dataset, arrays, rows, residual, uniform


@pytest.fixture(scope="module")
def ordinary():
    return _case()


@pytest.fixture(scope="module")
def large_rates():
    return _case(baseline_range=[50.0, 200.0])


def _check(case, device: torch.device) -> None:
    dataset, arrays, rows, residual, uniform = case
    expected = evaluate_counts(arrays, rows, residual, uniform)
    got = evaluate_counts_torch(arrays, rows, residual, uniform, device=device)
    assert got.dtype == np.int32
    assert got.shape == expected.shape
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(got, dataset.factual.X[:N_ROWS].toarray())


def _rates(case) -> np.ndarray:
    _, arrays, rows, residual, _ = case
    n_genes = residual.shape[1]
    row_index, gene_index = np.divmod(np.arange(N_ROWS * n_genes, dtype=np.int64), n_genes)
    rates = _rates_at(
        arrays,
        row_index,
        gene_index,
        rows.local.astype(np.int64),
        rows.batch.astype(np.int64),
        rows.tissue.astype(np.int64),
        rows.cell_type.astype(np.int64),
        np.ascontiguousarray(rows.library_size, dtype=np.float64),
        np.ascontiguousarray(rows.concepts, dtype=np.float64),
        residual,
    )
    return rates.reshape(N_ROWS, n_genes)


def test_log_rate_is_bitwise_the_compiled_one(ordinary):
    _, arrays, rows, residual, _ = ordinary
    world = tuple(torch.from_numpy(a) for a in arrays[:5])
    log_rate = _log_rate_torch(
        world,
        arrays[5],
        torch.from_numpy(rows.batch.astype(np.int64)),
        torch.from_numpy(rows.tissue.astype(np.int64)),
        torch.from_numpy(rows.cell_type.astype(np.int64)),
        torch.from_numpy(np.asarray(rows.library_size, dtype=np.float64)),
        torch.from_numpy(np.asarray(rows.concepts, dtype=np.float64)),
        torch.from_numpy(residual[rows.local]),
    ).numpy()
    baseline, batch_effects, tissue_effects, cell_type_effects, concept_effects, noise_sd = arrays
    expected = baseline[None, :] + batch_effects[rows.batch]
    expected = expected + tissue_effects[rows.tissue]
    expected = expected + cell_type_effects[rows.cell_type]
    for k in range(rows.concepts.shape[1]):
        expected = expected + rows.concepts[:, k, None] * concept_effects[k][None, :]
    expected = expected + rows.library_size[:, None]
    expected = expected + noise_sd * residual[rows.local].astype(np.float64)
    np.testing.assert_array_equal(log_rate, expected)
    # exp is the only step allowed to differ from the compiled rates, by an ulp at most
    np.testing.assert_allclose(np.exp(log_rate), _rates(ordinary), rtol=4e-16, atol=0)


def _ppf_pairs(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Rates around the sequential limit and probabilities near 0, 1 and CDF steps."""
    rng = np.random.default_rng(seed)
    lam = np.exp(rng.uniform(np.log(1e-3), np.log(60.0), n))
    q = rng.random(n)
    which = rng.random(n)
    q = np.where(which < 0.2, 10 ** rng.uniform(-15, -1, n), q)
    q = np.where(which > 0.8, 1 - 10 ** rng.uniform(-15, -1, n), q)
    step = special.pdtr(rng.integers(0, 30, n), lam)
    q = np.where((which > 0.4) & (which < 0.5) & (step < 1.0), step, q)
    q[:10] = 0.0
    return q, lam


def test_sequential_walk_mirrors_the_compiled_one():
    q, lam = _ppf_pairs(200_000, seed=0)
    expected = np.empty(q.size, dtype=np.int64)
    _ppf_sequential(q, lam, expected)
    expected[lam > _SEQUENTIAL_MAX_RATE] = _UNCERTAIN
    got = _sequential_ppf_torch(torch.from_numpy(q), torch.from_numpy(lam)).numpy()
    assert (got == _UNCERTAIN).mean() > 0.05  # the q placed on CDF steps
    np.testing.assert_array_equal(got, expected)
    # settled, the answer is scipy's (which gives -1 rather than 0 at q = 0)
    settled = got.astype(np.int64)
    settle_uncertain(q, lam, settled)
    np.testing.assert_array_equal(settled[:10], 0)
    np.testing.assert_array_equal(settled[10:], stats.poisson.ppf(q[10:], lam[10:]))


def test_equals_evaluate_counts_on_cpu(ordinary):
    _check(ordinary, torch.device("cpu"))


def test_equals_evaluate_counts_with_large_rates(large_rates):
    rates = _rates(large_rates)
    # every rate is above the sequential limit: every element is settled on the CPU
    assert (rates > _SEQUENTIAL_MAX_RATE).all()
    _check(large_rates, torch.device("cpu"))


def test_equals_evaluate_counts_in_small_slices(ordinary, large_rates, monkeypatch):
    from simcell.simulator import _torch_counts

    monkeypatch.setattr(_torch_counts, "_SLICE_ELEMENTS", 7 * 50 + 3)
    _check(ordinary, torch.device("cpu"))
    _check(large_rates, torch.device("cpu"))


@pytest.mark.gpu
@pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs CUDA (torch.cuda.is_available() is False)"
)
def test_equals_evaluate_counts_on_cuda(ordinary, large_rates):
    _check(ordinary, torch.device("cuda"))
    _check(large_rates, torch.device("cuda"))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (no GPU visible to torch)")
def test_simulate_on_cuda_equals_cpu():
    from simcell import scenarios
    from simcell.simulator import simulate

    params = scenarios.load("synthetic2", n_cells=3000, n_genes=200)
    cpu = simulate(params, seed=4, device="cpu")
    gpu = simulate(params, seed=4, device="cuda")
    assert (cpu.factual.X != gpu.factual.X).nnz == 0
    assert (cpu.counterfactuals.X != gpu.counterfactuals.X).nnz == 0
