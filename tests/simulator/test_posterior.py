"""The exact twin posterior: brute-force Monte Carlo, the law of its draws, the noise floor."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from simcell import SimcellError, scenarios
from simcell.models import Intervention
from simcell.simulator import (
    TwinPosterior,
    cell_posterior,
    concept_dag,
    poisson_ppf,
    same_law_sample,
    simulate,
)
from simcell.simulator.cells import solve_concepts

# large, dense concept effects and small counts: the descendants' part of the
# answer is far above the Monte-Carlo error, and the brute force stays cheap
_STRONG = {"concept_effect_sd": 0.8, "concept_sparsity_alpha": 0.2, "concept_sparsity_beta": 5.0}


def _counts(matrix) -> np.ndarray:
    return np.asarray(matrix.toarray() if hasattr(matrix, "toarray") else matrix, dtype=np.int64)


@pytest.fixture(scope="module")
def strong_causal():
    params = scenarios.load(
        "causal", n_cells=600, n_genes=5, baseline_range=(0.5, 2.0), n_tasks=1, **_STRONG
    )
    return simulate(params, seed=11, scenario="causal")


def _flip_probability(dataset, cell: int) -> float:
    """P(v'_1 ≠ v_1 | v) under do(v_0 := 1), with v_0 = 0 (h_1 gains +1.5)."""
    mu = dataset.world.concept_liability_mean[dataset.cells.cell_type[cell], 1]
    if dataset.cells.concepts[cell, 1] > 0.5:
        return 0.0
    return 1.0 - stats.norm.cdf(-mu - 1.5) / stats.norm.cdf(-mu)


def _brute_force_mean(dataset, cell: int, do: dict[int, float], mode: str, rng, n_draws: int):
    """E[x' | x, covariates, v] from the generative model itself.

    η is drawn from its prior and kept where the simulator's own SCM reproduces
    the factual concepts exactly (rejection); l and ε are drawn from their priors
    and weighted by the Poisson likelihood of the factual counts (importance
    weighting, i.e. rejection on δ collapsed); δ is then uniform on the CDF
    interval that reproduces x; v' comes from the simulator's ``solve_concepts``
    with the accepted η. Returns the weighted mean and its standard error.
    """
    params, world, cells = dataset.params, dataset.world, dataset.cells
    n_concepts = params.n_concepts
    cell_type = np.full(n_draws, cells.cell_type[cell])
    eta = rng.standard_normal((n_draws, n_concepts))
    factual = solve_concepts(params, world, cell_type, eta)
    keep = np.all(factual == cells.concepts[cell], axis=1)
    eta = eta[keep]
    n = eta.shape[0]
    if mode == "causal":
        twin_concepts = solve_concepts(params, world, cell_type[:n], eta, do)
    else:
        twin_concepts = np.repeat(cells.concepts[cell][None], n, axis=0)
        for k, value in do.items():
            twin_concepts[:, k] = value
    b, t, u = cells.batch[cell], cells.tissue[cell], cells.cell_type[cell]
    base = (
        world.baseline
        + world.batch_effects[b]
        + world.tissue_effects[t]
        + world.cell_type_effects[u]
    )
    x = _counts(dataset.factual.X[cell])[0]
    library = world.library_size_sd[b] * rng.standard_normal((n, 1))
    residual = params.noise_sd * rng.standard_normal((n, x.size))
    rate = np.exp(base + cells.concepts[cell] @ world.concept_effects + library + residual)
    log_weight = stats.poisson.logpmf(x, rate).sum(axis=1)
    weight = np.exp(log_weight - log_weight.max())
    below = np.where(x > 0, stats.poisson.cdf(x - 1, rate), 0.0)
    delta = below + rng.random(rate.shape) * (stats.poisson.cdf(x, rate) - below)
    delta = np.minimum(delta, np.nextafter(1.0, 0.0))
    twin_rate = np.exp(base + twin_concepts @ world.concept_effects + library + residual)
    twin = poisson_ppf(delta, twin_rate)
    weight = weight / weight.sum()
    mean = weight @ twin
    se = np.sqrt(weight**2 @ (twin - mean) ** 2)
    return mean, se


def _oracle_mean(dataset, cell: int, intervention, rng, n_draws: int):
    """The posterior's Monte-Carlo mean of x' for one cell, and its standard error."""
    repeats = 500
    posterior = TwinPosterior(cell_posterior(dataset, np.full(repeats, cell)), intervention)
    draws = [posterior.sample(rng).astype(float) for _ in range(n_draws // repeats)]
    draws = np.concatenate(draws, axis=0)
    return draws.mean(axis=0), draws.std(axis=0) / np.sqrt(draws.shape[0])


@pytest.mark.parametrize("mode", ["causal", "direct"])
def test_posterior_mean_matches_brute_force_monte_carlo(strong_causal, mode):
    """3 cells x 5 genes of the causal scenario under do(concept_0 := 1): the
    oracle's E[x' | x] agrees with the generative model's, and the old answers
    (direct targets in causal mode; the true descendants) do not."""
    dataset = strong_causal
    candidates = np.flatnonzero(dataset.cells.concepts[:, 0] == 0)
    flips = np.array([_flip_probability(dataset, c) for c in candidates])
    cells = candidates[(flips > 0.2) & (flips < 0.8)][:3]
    assert cells.size == 3
    dag = concept_dag(dataset)
    intervention = Intervention(do={"concept_0": 1.0}, mode=mode, dag=dag)
    rng = np.random.default_rng(2024)
    direct = Intervention(do={"concept_0": 1.0}, mode="direct", dag=dag)
    true_twins = dataset.counterfactual(cells, {0: 1.0}, mode="causal").obsm["concepts_true"]
    far = {"direct targets": 0.0, "true descendants": 0.0}
    for number, cell in enumerate(cells):
        truth, truth_se = _brute_force_mean(dataset, cell, {0: 1.0}, mode, rng, 200_000)
        oracle, oracle_se = _oracle_mean(dataset, cell, intervention, rng, 20_000)
        z = np.abs(oracle - truth) / (np.hypot(truth_se, oracle_se) + 1e-9)
        assert z.max() < 4.5, (cell, oracle, truth, z)
        if mode == "direct":
            continue
        # negative controls, the old answers: the direct question's targets, and
        # the posterior given the true counterfactual concepts
        cells_posterior = cell_posterior(dataset, np.full(500, cell))
        shift = (true_twins.to_numpy()[number] - cells_posterior.concepts) @ (
            cells_posterior.concept_effects
        )
        wrong = {
            "direct targets": TwinPosterior(cells_posterior, direct),
            "true descendants": TwinPosterior.from_shift(cells_posterior, shift),
        }
        for name, posterior in wrong.items():
            draws = np.concatenate([posterior.sample(rng) for _ in range(40)]).astype(float)
            se = draws.std(axis=0) / np.sqrt(draws.shape[0])
            distance = np.abs(draws.mean(axis=0) - truth) / (np.hypot(truth_se, se) + 1e-9)
            far[name] = max(far[name], distance.max())
    if mode == "causal":
        assert min(far.values()) > 8, far


def test_causal_oracle_does_not_condition_on_true_descendants(strong_causal):
    """The old oracle shifted by the true counterfactual concepts; given only the
    factual cell, cells with the same (covariates, concepts, counts) must get the
    same answer whatever their true descendants did."""
    dataset = strong_causal
    cells = np.flatnonzero(dataset.cells.concepts[:, 0] == 0)
    flips = np.array([_flip_probability(dataset, c) for c in cells])
    cell = cells[np.argmax((flips > 0.2) & (flips < 0.8))]
    intervention = Intervention(do={"concept_0": 1.0}, mode="causal", dag=concept_dag(dataset))
    posterior = TwinPosterior(cell_posterior(dataset, np.full(4000, cell)), intervention)
    draws = posterior.concept_draws(1, np.random.default_rng(0))[0]
    flipped = draws[:, 1] != dataset.cells.concepts[cell, 1]
    # the descendant flips in a fraction of draws close to its exact probability
    assert abs(flipped.mean() - flips[cells == cell][0]) < 4 * np.sqrt(0.25 / 4000)


def test_concept_draws_follow_the_scm(causal_dataset):
    """v' drawn from the truncated-normal posterior of η has the law of the
    simulator's own causal twins (per cell type and factual state)."""
    dataset = causal_dataset
    cells = np.flatnonzero(dataset.cells.concepts[:, 0] == 0)
    intervention = Intervention(do={"concept_0": 1.0}, mode="causal", dag=concept_dag(dataset))
    posterior = TwinPosterior(cell_posterior(dataset, cells), intervention)
    draws = posterior.concept_draws(200, np.random.default_rng(1))  # (S, n, K)
    truth = dataset.counterfactual(cells, {0: 1.0}, mode="causal").obsm["concepts_true"]
    truth = truth.to_numpy()
    for k in (1, 2, 3):  # the descendants of concept 0
        drawn, true = draws[:, :, k].mean(), truth[:, k].mean()
        se = np.sqrt(true * (1 - true) / cells.size)
        assert abs(drawn - true) < 4.5 * se + 1e-12, (k, drawn, true)
    np.testing.assert_array_equal(draws[:, :, 0], 1.0)
    np.testing.assert_array_equal(
        draws[:, :, 4], np.broadcast_to(dataset.cells.concepts[cells, 4], draws.shape[:2])
    )


# ----------------------------------------------------------------- oracle_sample


@pytest.fixture(scope="module")
def law_dataset():
    params = scenarios.load("causal", n_cells=4000, n_genes=60, **_STRONG)
    return simulate(params, seed=5, scenario="causal")


def _setup(dataset, mode):
    cells = np.flatnonzero(dataset.cells.concepts[:, 0] == 0)
    intervention = Intervention(do={"concept_0": 1.0}, mode=mode, dag=concept_dag(dataset))
    truth = _counts(dataset.counterfactual(cells, {0: 1.0}, mode=mode).X).astype(float)
    return cells, intervention, truth


@pytest.mark.parametrize("mode", ["causal", "direct"])
def test_oracle_sample_has_the_law_of_the_true_twins(law_dataset, mode):
    """Per gene, the first and second moments of one posterior draw per cell
    match the true twins'; the posterior mean (a shrunken population) does not."""
    cells, intervention, truth = _setup(law_dataset, mode)
    posterior = TwinPosterior(cell_posterior(law_dataset, cells), intervention)
    sample = posterior.sample(np.random.default_rng(3)).astype(float)
    affected = truth.var(axis=0) > 0

    def paired_z(a, b):  # paired: a draw shares x with the truth, so the spread is small
        diff = (a - b)[:, affected]
        return diff.mean(axis=0) / (diff.std(axis=0) / np.sqrt(cells.size))

    assert np.abs(paired_z(sample, truth)).max() < 4.5  # first moments
    assert np.abs(paired_z(sample**2, truth**2)).max() < 4.5  # second moments
    # negative controls: the factual cells have other means; the posterior mean
    # has the right means but is a shrunken population (second moments too small)
    assert np.abs(paired_z(posterior.cells.counts.astype(float), truth)).max() > 10
    mean = posterior.mean(lambda c: c.astype(float), 8, np.random.default_rng(4))
    assert np.abs(paired_z(mean, truth)).max() < 4.5
    assert paired_z(mean**2, truth**2).mean() < -1.5


def test_oracle_sample_keeps_unchanged_genes_and_cells(causal_dataset):
    """A draw shares the factual cell's exogenous posterior: with Δ = 0 it is x."""
    dataset = causal_dataset
    cells = np.flatnonzero(dataset.cells.concepts[:, 2] == 0)
    dag = concept_dag(dataset)
    posterior = TwinPosterior(
        cell_posterior(dataset, cells), Intervention(do={"concept_2": 1.0}, dag=dag)
    )
    x = posterior.cells.counts
    sample = posterior.sample(np.random.default_rng(0))
    unaffected = dataset.world.concept_effects[2] == 0
    assert 0 < unaffected.sum() < unaffected.size
    np.testing.assert_array_equal(sample[:, unaffected], x[:, unaffected])
    assert (sample[:, ~unaffected] != x[:, ~unaffected]).any()
    # do() of the factual value: nothing changes, in either mode, draw or mean
    for mode in ("causal", "direct"):
        same = TwinPosterior(
            posterior.cells, Intervention(do={"concept_2": 0.0}, mode=mode, dag=dag)
        )
        np.testing.assert_array_equal(same.sample(np.random.default_rng(1)), x)
        np.testing.assert_array_equal(same.mean(lambda c: c, 3, np.random.default_rng(1)), x)


# ----------------------------------------------------------------- same-law sample


@pytest.mark.parametrize("mode", ["causal", "direct"])
def test_same_law_sample_is_an_independent_draw_of_the_truth_law(law_dataset, mode):
    cells, intervention, truth = _setup(law_dataset, mode)
    fresh = same_law_sample(law_dataset, cells, intervention, np.random.default_rng(7))
    fresh = fresh.astype(float)
    n = cells.size
    se = np.sqrt((truth.var(axis=0) + fresh.var(axis=0)) / n)
    z = (fresh.mean(axis=0) - truth.mean(axis=0)) / se
    assert np.abs(z).max() < 4.5
    ratio = fresh.var(axis=0) / truth.var(axis=0)
    assert abs(np.log(ratio).mean()) < 0.03
    # independent of the truth cell by cell, unlike a posterior draw: a second
    # fresh sample has the same law given the covariates, so the difference of
    # the two is uncorrelated with the truth iff the first is independent of it
    second = same_law_sample(law_dataset, cells, intervention, np.random.default_rng(9))
    oracle = TwinPosterior(cell_posterior(law_dataset, cells), intervention)
    draw = oracle.sample(np.random.default_rng(8)).astype(float)

    def correlation(a):
        a, b = a - a.mean(0), truth - truth.mean(0)
        return (a * b).sum(0) / np.sqrt((a * a).sum(0) * (b * b).sum(0))

    assert np.abs(correlation(fresh - second)).max() < 4.5 / np.sqrt(n)
    assert correlation(draw - second).mean() > 0.3


def test_same_law_sample_is_seeded(law_dataset):
    cells, intervention, _ = _setup(law_dataset, "causal")
    a = same_law_sample(law_dataset, cells, intervention, np.random.default_rng(1))
    b = same_law_sample(law_dataset, cells, intervention, np.random.default_rng(1))
    np.testing.assert_array_equal(a, b)


# ----------------------------------------------------------------- API


def test_mean_halves_are_the_two_consecutive_means(small_dataset):
    cells = np.arange(300)
    intervention = Intervention(do={"concept_1": 1.0})
    posterior = TwinPosterior(cell_posterior(small_dataset, cells), intervention)
    halves = posterior.mean_halves(np.log1p, 6, np.random.default_rng(0))
    rng = np.random.default_rng(0)
    first, second = posterior.mean(np.log1p, 3, rng), posterior.mean(np.log1p, 3, rng)
    np.testing.assert_array_equal(halves[0], first)
    np.testing.assert_array_equal(halves[1], second)
    assert not np.array_equal(first, second)


def test_draws_are_seeded(causal_dataset):
    cells = np.flatnonzero(causal_dataset.cells.concepts[:, 0] == 0)[:300]
    dag = concept_dag(causal_dataset)
    posterior = TwinPosterior(
        cell_posterior(causal_dataset, cells),
        Intervention(do={"concept_0": 1.0}, mode="causal", dag=dag),
    )
    for draw in (posterior.sample, posterior.same_law_sample):
        a, b = draw(np.random.default_rng(0)), draw(np.random.default_rng(0))
        assert a.shape == (cells.size, 120) and a.dtype == np.int64
        np.testing.assert_array_equal(a, b)
        assert not np.array_equal(a, draw(np.random.default_rng(1)))


def test_cell_posterior_reads_the_world(causal_dataset):
    dataset = causal_dataset
    cells = np.array([5, 0, 17])
    posterior = cell_posterior(dataset, cells)
    world, state = dataset.world, dataset.cells
    np.testing.assert_array_equal(posterior.counts, _counts(dataset.factual.X[cells]))
    np.testing.assert_array_equal(posterior.concepts, state.concepts[cells])
    np.testing.assert_allclose(
        posterior.log_rate_mean,
        world.baseline
        + world.batch_effects[state.batch[cells]]
        + world.tissue_effects[state.tissue[cells]]
        + world.cell_type_effects[state.cell_type[cells]]
        + state.concepts[cells] @ world.concept_effects,
        rtol=0,
        atol=1e-12,
    )
    np.testing.assert_array_equal(
        posterior.concept_liability_mean, world.concept_liability_mean[state.cell_type[cells]]
    )
    np.testing.assert_array_equal(
        posterior.library_size_sd, world.library_size_sd[state.batch[cells]]
    )
    assert posterior.concept_dag == (
        ("concept_0", "concept_1", 1.5),
        ("concept_1", "concept_2", -1.2),
        ("concept_0", "concept_3", 0.8),
    )


def test_bad_input_is_one_line_error(causal_dataset):
    cells = cell_posterior(causal_dataset, np.arange(10))
    with pytest.raises(SimcellError, match="unknown concept"):
        TwinPosterior(cells, Intervention(do={"concept_9": 1.0}))
    with pytest.raises(SimcellError, match="DAG must be the scenario's"):
        TwinPosterior(cells, Intervention(do={"concept_0": 1.0}, mode="causal"))
    posterior = TwinPosterior(cells, Intervention(do={"concept_0": 1.0}))
    with pytest.raises(SimcellError, match="two halves"):
        posterior.mean_halves(np.log1p, 1, np.random.default_rng(0))
    with pytest.raises(SimcellError, match="out of range"):
        cell_posterior(causal_dataset, np.array([10**6]))
