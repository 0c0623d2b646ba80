"""The linear-sde process: exact stationary law, exact twins, bundle and scenario."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from simcell import SimcellError
from simcell.scenarios import loader
from simcell.simulator import linear_sde as L
from simcell.simulator import read_bundle, schema, write_bundle
from simcell.simulator.poisson import poisson_ppf


@pytest.fixture(scope="module")
def data():
    params = L.LinearSDEParams(n_genes=5, cells_per_condition=3000, n_doubles=2)
    return L.simulate_linear_sde(params, seed=3)


def test_covariance_solves_the_lyapunov_equation(data):
    a, cov = data.system.drift_matrix, data.system.covariance
    np.testing.assert_allclose(a @ cov + cov @ a.T, -np.eye(5), atol=1e-10)
    assert np.linalg.eigvals(a).real.max() < 0
    assert np.linalg.eigvalsh(cov).min() > 0


def test_sampled_law_matches_the_lyapunov_solution(data):
    """Seeded: Hotelling χ² of each condition's mean and a KS test of the Mahalanobis
    distances (χ²_d under the exact law) — and the same tests reject a wrong Σ."""
    system, x = data.system, data.programs
    precision = np.linalg.inv(system.covariance)
    distances = []
    for row in range(data.conditions.shape[0]):
        cells = x[data.condition == row]
        mu = system.mean(data.conditions[row])
        gap = cells.mean(axis=0) - mu
        hotelling = cells.shape[0] * gap @ precision @ gap
        assert stats.chi2.sf(hotelling, df=5) > 1e-3
        centred = cells - mu
        distances.append(np.einsum("ij,jk,ik->i", centred, precision, centred))
    distances = np.concatenate(distances)
    assert stats.kstest(distances, stats.chi2(df=5).cdf).pvalue > 1e-3
    # negative control: the law's covariance inflated by 20 % is rejected
    assert stats.kstest(distances / 1.2, stats.chi2(df=5).cdf).pvalue < 1e-6


def test_mean_is_the_drift_fixed_point(data):
    system = data.system
    for row in data.conditions:
        mu = system.mean(row)
        np.testing.assert_allclose(system.drift(mu[None], row[None]), 0.0, atol=1e-10)


def test_twins_are_exact(data):
    cells = np.arange(0, data.condition.size, 97)
    own = data.indicators[cells]
    # do() of nothing: the factual programs and counts, bit for bit
    np.testing.assert_array_equal(data.twin_programs(cells, own), data.programs[cells])
    np.testing.assert_array_equal(
        data.counts_of(data.twin_programs(cells, own), cells), data.counts()[cells]
    )
    other = own.copy()
    other[:, 2] = 1.0
    twin = data.twin_programs(cells, other)
    shift = data.system.mean(other) - data.system.mean(own)
    np.testing.assert_allclose(twin, data.programs[cells] + shift, rtol=0, atol=1e-12)


def test_bundle_round_trip_and_exact_count_twins(tmp_path):
    params = L.LinearSDEParams(n_genes=6, cells_per_condition=40, n_doubles=1, n_heldout_singles=1)
    bundle = L.linear_sde_bundle(params, seed=1)
    write_bundle(bundle, tmp_path / "b")  # type: ignore[arg-type]
    read = read_bundle(tmp_path / "b")
    assert schema.process_name(read.factual) == L.PROCESS
    system = L.read_system(read.factual)
    np.testing.assert_array_equal(system.drift_matrix, bundle.data.system.drift_matrix)
    np.testing.assert_array_equal(system.covariance, bundle.data.system.covariance)
    tasks = schema.read_tasks(read.factual)
    assert len(tasks) == 2
    data = bundle.data
    for task in tasks:
        truth = schema.read_truth(read, task.name)
        split = schema.read_split(read.factual, task.name)
        assert set(truth.sources) == set(np.flatnonzero(split == schema.INTERVENE))
        k = int(task.concept.removeprefix("concept_"))
        assert (truth.concepts[:, k] == 1).all()
        expected_x = data.programs[truth.sources] + (
            data.system.mean(truth.concepts) - data.system.mean(data.indicators[truth.sources])
        )
        rate = np.exp(params.count_baseline + params.count_scale * expected_x)
        expected = poisson_ppf(data.uniforms[truth.sources], rate)
        np.testing.assert_array_equal(truth.counts.toarray(), expected)
        # the target population is never trained on
        assert not np.any(
            split[data.condition == data.condition[split == schema.HELDOUT][0]] == "train"
        )
    assert schema.process_name(read.factual) != schema.CONCEPT_LATENT


def test_scenario_loads_its_own_parameters():
    params, name = loader.load_with_name("linear-sde", n_genes=8)
    assert isinstance(params, L.LinearSDEParams) and name == "linear-sde"
    assert params.n_genes == 8 and params.n_cells == (1 + 8 + params.n_doubles) * 200
    with pytest.raises(SimcellError, match="unknown key"):
        loader.load("linear-sde", noise_sd=0.1)
    with pytest.raises(SimcellError, match="graph"):
        loader.load("linear-sde", graph="ring")


def test_gaussian_observation_has_no_count_bundle():
    with pytest.raises(SimcellError, match="counts"):
        L.linear_sde_bundle(L.LinearSDEParams(n_genes=6, observation="gaussian"))


def test_scale_free_graph_and_off_target_shifts():
    params = L.LinearSDEParams(
        n_genes=12, graph="scale_free", degree=2, off_target_fraction=0.3, n_doubles=1
    )
    system = L.draw_system(params, seed=0)
    off = system.drift_matrix[~np.eye(12, dtype=bool)]
    assert 0 < np.count_nonzero(off) <= 2 * 12
    assert np.count_nonzero(system.shifts - np.diag(np.diag(system.shifts))) > 0
    assert np.all(np.abs(np.diag(system.shifts)) >= 5)
