"""The oracle of the perturb-identifiability process: calibrated, exact where exact."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from scipy import special, stats

from simcell import SimcellError, scenarios
from simcell.evaluation.oracle import oracle_available
from simcell.evaluation.preprocess import lognormalise
from simcell.models import Intervention
from simcell.simulator import posterior_perturb, schema
from simcell.simulator.perturb import log_rates, simulate
from simcell.simulator.posterior_perturb import (
    PerturbTwinPosterior,
    perturb_cells,
    perturb_posterior,
    with_world,
)

#: the shipped scenario at test size (100 genes, 11 latent dimensions)
PARAMS = dict(n_genes=100, n_controls=150, n_per_single=60, n_per_double=40)


@pytest.fixture(scope="module")
def dataset():
    return simulate(scenarios.load("perturb-identifiability", **PARAMS), seed=0)


@pytest.fixture(scope="module")
def every_other(dataset):
    return np.arange(0, dataset.params.n_cells, 2)


def _true_theta(dataset, positions):
    cells = dataset.cells
    return np.concatenate(
        [cells.z_invariant[positions], cells.eta[positions], cells.library_size[positions, None]],
        axis=1,
    )


def _twins(dataset, task):
    """The task's true twins, rows in intervene order."""
    truth = dataset.counterfactuals
    return truth[truth.obs[schema.TRUTH_TASK] == task.name].X.toarray()


def _calibration(posterior, truth):
    """Per coordinate: mean and sd of (θ − E θ) / sd θ, and mean (θ − E θ)² / mean Var θ."""
    summary = posterior.latent_summary(np.random.default_rng(0))
    error = truth - summary.mean
    z = error / np.sqrt(summary.variance)
    ratio = np.mean(error**2, axis=0) / np.mean(summary.variance, axis=0)
    return z.mean(axis=0), z.std(axis=0), ratio


def test_posterior_of_the_latents_is_calibrated(dataset, every_other):
    """The posterior mean's squared error equals the posterior variance, coordinate by
    coordinate, over 255 cells of every kind (controls, singles, doubles).

    Measured over data seeds 0/1/2: max |mean z| 0.07/0.14/0.10, sd of z in
    [0.91, 1.12], ratio in [0.84, 1.26] (the standard error of a mean z is 0.063).
    """
    posterior = PerturbTwinPosterior(
        perturb_cells(dataset, every_other), Intervention(do={"concept_1": 1.0})
    )
    mean_z, sd_z, ratio = _calibration(posterior, _true_theta(dataset, every_other))
    assert mean_z.shape == (11,)
    assert np.abs(mean_z).max() < 0.3
    assert 0.8 < sd_z.min() and sd_z.max() < 1.25
    assert 0.7 < ratio.min() and ratio.max() < 1.45


@pytest.mark.parametrize("wrong", ["shifts zeroed", "prior sd halved"])
def test_a_wrong_world_fails_the_same_calibration(dataset, every_other, wrong):
    """Negative controls: the check above fails for a posterior of the wrong world.

    Measured over data seeds 0/1/2, the largest ratio: shifts zeroed 17.7/8.6/17.5,
    prior sd (of η and l) halved 2.24/2.60/2.29.
    """
    cells = perturb_cells(dataset, every_other)
    if wrong == "shifts zeroed":
        cells = with_world(cells, shifts=np.zeros_like(cells.world.shifts))
    else:
        cells = dataclasses.replace(
            cells,
            responsive_noise_sd=cells.responsive_noise_sd / 2,
            library_size_sd=cells.library_size_sd / 2,
        )
    posterior = PerturbTwinPosterior(cells, Intervention(do={"concept_1": 1.0}))
    _, _, ratio = _calibration(posterior, _true_theta(dataset, every_other))
    assert ratio.max() > 1.8


@pytest.fixture(scope="module")
def two_cell_types():
    """Two cell types (distinct means of z_ι), a double and a single task."""
    params = scenarios.load(
        "perturb-identifiability", **{**PARAMS, "n_genes": 40}, n_cell_types=2, n_single_tasks=1
    )
    return simulate(params, seed=4)


@pytest.mark.parametrize("which", ["dataset", "two_cell_types"])
def test_the_forward_map_is_the_process(which, request):
    """θ̃ of the true latents through the oracle's map gives the simulator's log-rates."""
    dataset = request.getfixturevalue(which)
    cells_at = np.arange(0, dataset.params.n_cells, 3)
    posterior = perturb_posterior(dataset, cells_at, Intervention(do={}))
    cells, world, params = dataset.cells, dataset.world, dataset.params
    d_i, d_r = params.d_invariant, params.d_responsive
    standard = _true_theta(dataset, cells_at)
    standard[:, :d_i] -= world.cell_type_means[cells.cell_type[cells_at]]
    standard[:, d_i : d_i + d_r] /= params.responsive_noise_sd
    standard[:, -1] /= params.library_size_sd
    ours = posterior._log_rate(standard[:, None, :], np.arange(cells_at.size))[:, 0]
    expected = log_rates(
        world,
        params,
        cells.z_invariant[cells_at],
        dataset.z_responsive[cells_at],
        cells.library_size[cells_at],
    )
    np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-12)


def test_every_task_kind_and_cell_type(two_cell_types):
    """The single task's twins (do(u_q := 1) of controls) keep the invariant genes and
    are closer to the truth than the controls themselves."""
    dataset = two_cell_types
    assert len(np.unique(dataset.cells.cell_type)) == 2
    for task in dataset.tasks:
        posterior = perturb_posterior(
            dataset, task.intervene, Intervention(do={f"concept_{task.concept}": 1.0})
        )
        x = dataset.factual.X.toarray()[task.intervene]
        twins = posterior.sample(np.random.default_rng(0))
        invariant = dataset.world.invariant_genes
        np.testing.assert_array_equal(twins[:, invariant], x[:, invariant])
        truth = np.log1p(_twins(dataset, task))
        oracle = posterior.mean(np.log1p, 8, np.random.default_rng(1))
        assert np.mean((oracle - truth) ** 2) < 0.5 * np.mean((np.log1p(x) - truth) ** 2)


def test_oracle_lies_between_the_known_latent_floor_and_the_baselines(dataset):
    """Cell-level MSE on log-normalised genes, task 0 (held-out double):
    E[f(x') | x, θ_true] ≤ oracle ≤ identity and the additive mean shift."""
    task = dataset.tasks[0]
    source = task.intervene
    posterior = perturb_posterior(
        dataset, source, Intervention(do={f"concept_{task.concept}": 1.0})
    )
    x = dataset.factual.X.toarray()
    target_sum = float(np.median(x.sum(axis=1)))

    def f(counts):
        return lognormalise(counts, target_sum)

    truth = f(_twins(dataset, task))
    oracle = posterior.mean(f, 32, np.random.default_rng(1))
    floor = posterior.known_latent_mean(
        f,
        32,
        np.random.default_rng(2),
        z_invariant=dataset.cells.z_invariant[source],
        eta=dataset.cells.eta[source],
        library_size=dataset.cells.library_size[source],
    )
    identity = f(x[source])
    u = dataset.cells.perturbations
    singles = u.sum(axis=1) == 1
    shift = f(x[task.split == "heldout"]).mean(axis=0) - f(
        x[singles & (u[:, int(np.flatnonzero(u[source[0]])[0])] == 1)]
    ).mean(axis=0)

    def mse(prediction):
        return float(np.mean((prediction - truth) ** 2))

    assert mse(floor) < mse(oracle) < mse(identity + shift) < mse(identity)


def test_do_of_the_factual_labels_returns_the_cells(dataset):
    cells = np.arange(0, dataset.params.n_cells, 7)  # controls, singles and doubles
    posterior = perturb_posterior(dataset, cells, Intervention(do={}))
    x = dataset.factual.X.toarray()[cells]
    np.testing.assert_array_equal(posterior.sample(np.random.default_rng(0)), x)
    mean = posterior.mean(lambda c: c.astype(np.float64), 4, np.random.default_rng(0))
    np.testing.assert_array_equal(mean, x)


def test_invariant_genes_never_change_and_responsive_genes_do(dataset):
    task = dataset.tasks[0]
    posterior = perturb_posterior(
        dataset, task.intervene, Intervention(do={f"concept_{task.concept}": 1.0})
    )
    x = dataset.factual.X.toarray()[task.intervene]
    twins = posterior.sample(np.random.default_rng(0))
    invariant, responsive = dataset.world.invariant_genes, dataset.world.responsive_genes
    np.testing.assert_array_equal(twins[:, invariant], x[:, invariant])
    assert (twins[:, responsive] != x[:, responsive]).mean() > 0.3


def test_the_twin_step_by_hand_against_scipy(dataset):
    """One gene: δ = F(x − 1; λ) + u (F(x; λ) − F(x − 1; λ)), x' = scipy's ppf(δ; λ')."""
    task = dataset.tasks[0]
    posterior = perturb_posterior(
        dataset, task.intervene[:1], Intervention(do={f"concept_{task.concept}": 1.0})
    )
    theta = posterior.mode[:, None, :]  # (1 cell, 1 draw, dim)
    rows = np.arange(1)
    rate = np.exp(posterior._log_rate(theta, rows))[0, 0]
    twin_rate = np.exp(posterior._log_rate(theta, rows, twin=True))[0, 0]
    gene = int(dataset.world.responsive_genes[0])
    x = int(posterior.cells.counts[0, gene])
    for u in (0.0, 0.1, 0.5, 0.9, 0.999):
        uniform = np.full((1, 1, dataset.params.n_genes), u)
        twin = posterior._twins(rows, theta, uniform)[0, 0, gene]
        below = special.pdtr(x - 1, rate[gene]) if x > 0 else 0.0
        delta = below + u * (special.pdtr(x, rate[gene]) - below)
        assert twin == stats.poisson.ppf(delta, twin_rate[gene])


def test_draws_do_not_depend_on_the_chunk_and_follow_the_rng(dataset, monkeypatch):
    # some cells of a block draw extra pools (padded for the others), some do not
    monkeypatch.setattr(posterior_perturb, "_MIN_ESS", 300.0)
    task = dataset.tasks[0]
    posterior = perturb_posterior(
        dataset, task.intervene[:40], Intervention(do={f"concept_{task.concept}": 1.0})
    )

    def f(counts):
        return np.log1p(counts.astype(np.float64))

    for method in (
        lambda rng, chunk: posterior.sample(rng, chunk=chunk),
        lambda rng, chunk: posterior.mean(f, 4, rng, chunk=chunk),
        lambda rng, chunk: posterior.same_law_sample(rng, chunk=chunk),
    ):
        small = method(np.random.default_rng(3), 7)
        large = method(np.random.default_rng(3), 1000)
        assert small.tobytes() == large.tobytes()
        assert not np.array_equal(small, method(np.random.default_rng(4), 7))
    grown = posterior.effective_sample_size
    assert (grown > posterior.n_proposals).any() and (grown < 300).any()
    halves = posterior.mean_halves(f, 4, np.random.default_rng(5))
    assert not np.array_equal(*halves)


def test_same_law_sample_has_the_twins_law(dataset):
    """Fresh latents from their priors under u': the population of twins, not the cells'
    own twins (mean log1p counts per gene within a few standard errors)."""
    task = dataset.tasks[0]
    source = task.intervene
    posterior = perturb_posterior(
        dataset, source, Intervention(do={f"concept_{task.concept}": 1.0})
    )
    sample = np.log1p(posterior.same_law_sample(np.random.default_rng(0)))
    truth = np.log1p(_twins(dataset, task))
    error = np.sqrt(sample.var(axis=0) / len(source) + truth.var(axis=0) / len(source))
    standard = (sample.mean(axis=0) - truth.mean(axis=0)) / error
    assert np.abs(standard).mean() < 1.2  # ≈ 0.8 for a same-law sample
    assert not np.array_equal(sample, truth)


def test_residual_noise_has_no_oracle():
    params = scenarios.load("perturb-identifiability", **PARAMS, noise_sd=0.1)
    noisy = simulate(params, seed=0)
    assert not oracle_available(noisy)
    with pytest.raises(SimcellError, match="no oracle for noise_sd > 0"):
        perturb_posterior(noisy, np.arange(3), Intervention(do={}))


def test_bad_inputs_are_one_line_errors(dataset, small_dataset):
    cells = perturb_cells(dataset, np.arange(5))
    with pytest.raises(SimcellError, match="perturbations has shape"):
        dataclasses.replace(cells, perturbations=cells.perturbations[:, :2])
    with pytest.raises(SimcellError, match="unknown concept"):
        PerturbTwinPosterior(cells, Intervention(do={"concept_9": 1.0}))
    with pytest.raises(SimcellError, match="out of range"):
        perturb_cells(dataset, np.array([10**6]))
    with pytest.raises(SimcellError, match="not a perturb-identifiability bundle"):
        perturb_cells(small_dataset, np.arange(3))
    posterior = PerturbTwinPosterior(cells, Intervention(do={}))
    with pytest.raises(SimcellError, match="eta has shape"):
        posterior.known_latent_mean(
            np.log1p,
            2,
            np.random.default_rng(0),
            z_invariant=np.zeros((5, 6)),
            eta=np.zeros((5, 2)),
            library_size=np.zeros(5),
        )
    with pytest.raises(SimcellError, match="n_samples"):
        posterior.mean(np.log1p, 0, np.random.default_rng(0))


def test_the_oracle_reads_neither_the_true_latents_nor_the_library_size(dataset):
    """The same draws from a bundle stripped of obsm latents and obs library sizes."""
    from types import SimpleNamespace

    task = dataset.tasks[0]
    intervention = Intervention(do={f"concept_{task.concept}": 1.0})
    stripped = dataset.factual.copy()
    for key in list(stripped.obsm):
        if key.startswith(schema.latent_key("")):
            del stripped.obsm[key]
    stripped.obs = stripped.obs.drop(columns=[schema.OBS_LIBRARY_SIZE])
    cells = task.intervene[:20]
    full = perturb_posterior(dataset, cells, intervention)
    blind = perturb_posterior(SimpleNamespace(factual=stripped), cells, intervention)
    rng = np.random.default_rng
    assert full.sample(rng(0)).tobytes() == blind.sample(rng(0)).tobytes()
