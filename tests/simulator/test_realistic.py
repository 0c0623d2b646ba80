"""Realistic counts: NB / binomial inverse CDFs, their laws, exact twins, paper presets kept."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from simcell import SimcellError, scenarios
from simcell.simulator import simulate
from simcell.simulator.nbinom import binom_ppf, nbinom_ppf
from simcell.simulator.params import SimulationParams
from simcell.simulator.world import draw_world

# a world with no effects: every cell of gene j has rate e^{w_j}
_FLAT = dict(
    n_batches=1,
    n_tissues=1,
    n_cell_types=1,
    n_concepts=1,
    batch_effect_sd=0.0,
    tissue_effect_sd=0.0,
    cell_type_effect_sd=0.0,
    concept_effect_sd=0.0,
    library_size_sd_range=(0.0, 0.0),
    noise_sd=0.0,
    n_tasks=0,
)


@pytest.fixture(scope="module")
def realistic_small():
    params = scenarios.load("realistic", n_cells=600, n_genes=60, n_tasks=1, min_task_cells=5)
    return simulate(params, seed=3, n_threads=1)


def test_nbinom_ppf_equals_scipy_element_for_element():
    rng = np.random.default_rng(0)
    n = 20_000
    q = rng.random(n)
    mean = np.exp(rng.uniform(-5, 8, n))
    alpha = np.exp(rng.uniform(-5, 2, n))
    size = 1 / alpha
    expected = stats.nbinom.ppf(q, size, size / (size + mean))
    np.testing.assert_array_equal(nbinom_ppf(q, mean, alpha), expected)


def test_binom_ppf_equals_scipy_element_for_element():
    rng = np.random.default_rng(1)
    n = 20_000
    q, trials, p = rng.random(n), rng.integers(0, 6000, n), rng.random(n)
    np.testing.assert_array_equal(binom_ppf(q, trials, p), stats.binom.ppf(q, trials, p))


def test_inverse_cdfs_at_their_zero_shortcut_equal_scipy():
    """Small means (most droplet entries) take the certified shortcut q < 1 − μ → 0
    (p(0) ≥ 1 − μ; binomial: p(0) ≥ 1 − n p); around and beyond its edge the
    quantiles still equal scipy's."""
    rng = np.random.default_rng(2)
    n = 20_000
    mean = rng.uniform(0.0, 1.2, n)
    alpha = np.exp(rng.uniform(-5, 3, n))
    edge = np.clip(1.0 - mean + rng.choice([-1e-9, -1e-12, 0.0, 1e-12, 1e-9], n), 1e-6, 0.999)
    q = np.where(rng.random(n) < 0.5, edge, rng.random(n))
    size = 1 / alpha
    expected = stats.nbinom.ppf(q, size, size / (size + mean))
    np.testing.assert_array_equal(nbinom_ppf(q, mean, alpha), expected)
    trials = rng.integers(1, 20, n)
    p = rng.uniform(0.0, 1.0, n) / trials
    edge = np.clip(1.0 - trials * p + rng.choice([-1e-9, 0.0, 1e-9], n), 1e-6, 0.999)
    q = np.where(rng.random(n) < 0.5, edge, rng.random(n))
    np.testing.assert_array_equal(binom_ppf(q, trials, p), stats.binom.ppf(q, trials, p))


def test_inverse_cdfs_refuse_bad_input():
    with pytest.raises(SimcellError, match="q must lie"):
        nbinom_ppf(1.0, 1.0, 1.0)
    with pytest.raises(SimcellError, match="dispersion"):
        nbinom_ppf(0.5, 1.0, 0.0)
    with pytest.raises(SimcellError, match="p must lie"):
        binom_ppf(0.5, 3, 1.5)


def test_negative_binomial_layer_has_the_nb_law():
    """Without capture each gene's counts are NB(e^{w_j}, α_j): chi-square per gene."""
    params = SimulationParams(
        n_cells=3000, n_genes=4, dispersion_trend=(0.3, 0.2), dispersion_sd=0.2, **_FLAT
    )
    data = simulate(params, seed=0, n_threads=1)
    counts = data.factual.X.toarray()
    for j in range(params.n_genes):
        mean, alpha = np.exp(data.world.baseline[j]), data.world.dispersion[j]
        size = 1 / alpha
        law = stats.nbinom(size, size / (size + mean))
        top = int(law.ppf(0.99))
        observed = np.bincount(np.minimum(counts[:, j], top + 1), minlength=top + 2)
        expected = np.append(law.pmf(np.arange(top + 1)), law.sf(top)) * params.n_cells
        keep = expected > 5
        observed = np.append(observed[keep], observed[~keep].sum())
        expected = np.append(expected[keep], expected[~keep].sum())
        if expected[-1] == 0:
            observed, expected = observed[:-1], expected[:-1]
        p_value = stats.chisquare(observed, expected * observed.sum() / expected.sum()).pvalue
        assert p_value > 1e-3, (j, p_value)


def test_thinned_counts_match_the_closed_form_moments():
    """y | p ~ NB(p λ, α): E y = m λ, Var y = m λ + α λ² E[p²] + λ² Var p."""
    params = SimulationParams(
        n_cells=8000,
        n_genes=6,
        baseline_law="lognormal",
        baseline_log_mean=2.0,
        baseline_log_sd=0.3,
        dispersion_trend=(0.2, 0.0),
        capture_mean=0.3,
        capture_concentration=30.0,
        **_FLAT,
    )
    data = simulate(params, seed=1, n_threads=1)
    counts = data.factual.X.toarray().astype(np.float64)
    m, kappa = params.capture_mean, params.capture_concentration
    var_p = m * (1 - m) / (kappa + 1)
    # the drawn capture efficiencies follow their Beta law
    beta = stats.beta(m * kappa, (1 - m) * kappa)
    assert stats.kstest(data.cells.capture, beta.cdf).pvalue > 1e-3
    lam, alpha = np.exp(data.world.baseline), data.world.dispersion
    mean = m * lam
    var = m * lam + alpha * lam**2 * (var_p + m * m) + lam**2 * var_p
    n = params.n_cells
    z = (counts.mean(0) - mean) / np.sqrt(var / n)
    assert np.all(np.abs(z) < 4), z
    np.testing.assert_allclose(counts.var(0), var, rtol=0.12)


def test_realistic_twins_are_exact(realistic_small):
    data = realistic_small
    factual = data.factual.X.toarray()
    # do() of nothing is the identity, bit for bit
    same = data.counterfactual(np.arange(0, 600, 7))
    np.testing.assert_array_equal(same.X.toarray(), factual[np.arange(0, 600, 7)])
    # the bundle's twins are the regenerated counterfactuals
    task = data.tasks[0]
    twins = data.counterfactual(task.intervene, {task.concept: 1.0})
    np.testing.assert_array_equal(twins.X.toarray(), data.counterfactuals.X.toarray())
    # a gene no changed concept acts on keeps its factual count
    unaffected = data.world.concept_effects[task.concept] == 0
    assert unaffected.any()
    np.testing.assert_array_equal(
        twins.X.toarray()[:, unaffected], factual[task.intervene][:, unaffected]
    )
    assert (twins.X.toarray() != factual[task.intervene]).any()


def test_realistic_counts_do_not_depend_on_chunks_or_threads(realistic_small):
    params = realistic_small.params
    other = simulate(params, seed=3, n_threads=2, chunk_size=256)
    assert (other.factual.X != realistic_small.factual.X).nnz == 0
    assert (other.counterfactuals.X != realistic_small.counterfactuals.X).nnz == 0


def test_realistic_bundle_stores_its_layers(realistic_small):
    data = realistic_small
    np.testing.assert_array_equal(data.factual.var["dispersion"], data.world.dispersion)
    np.testing.assert_array_equal(data.factual.obs["capture_efficiency"], data.cells.capture)


def test_paper_presets_do_not_record_the_realistic_knobs():
    for name in ("synthetic1", "synthetic2", "synthetic3", "causal"):
        params = scenarios.load(name)
        assert not params.realistic
        assert "dispersion_trend" not in params.to_dict()
        assert "capture_mean" not in params.to_dict()
    assert scenarios.load("realistic").to_dict()["capture_mean"] == 0.1


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"capture_mean": 1.5}, "capture_mean"),
        ({"capture_mean": 0.0}, "capture_mean"),
        ({"dispersion_trend": (-0.1, 0.0)}, "dispersion_trend"),
        ({"baseline_law": "uniform"}, "baseline_law"),
        ({"dispersion_sd": -1.0}, "dispersion_sd"),
    ],
)
def test_bad_realistic_knobs_are_refused(change, message):
    with pytest.raises(SimcellError, match=message):
        SimulationParams(**change)


@pytest.fixture(scope="module")
def hard_small():
    params = scenarios.load("synthetic2-hard", n_cells=700, n_genes=60, n_tasks=1, min_task_cells=5)
    return simulate(params, seed=5, n_threads=1)


def test_interaction_twins_are_exact(hard_small):
    data = hard_small
    factual = data.factual.X.toarray()
    index = np.arange(0, 700, 5)
    np.testing.assert_array_equal(data.counterfactual(index).X.toarray(), factual[index])
    task = data.tasks[0]
    twins = data.counterfactual(task.intervene, {task.concept: 1.0}).X.toarray()
    np.testing.assert_array_equal(twins, data.counterfactuals.X.toarray())
    unaffected = data.world.concept_effects[task.concept] == 0
    np.testing.assert_array_equal(twins[:, unaffected], factual[task.intervene][:, unaffected])


def test_interactions_make_concept_effects_cell_type_specific(hard_small):
    world = hard_small.world
    typed = world.typed_concept_effects
    affected = world.concept_effects != 0
    # unaffected genes stay unaffected in every cell type; affected ones differ by type
    assert np.all(typed[:, ~affected] == 0)
    assert np.abs(typed[0] - typed[1])[affected].min() > 0
    # the extra term is rank <= 2 across (cell type, concept) for each gene
    extra = (typed - world.concept_effects[None])[:, :, 0]
    assert np.linalg.matrix_rank(extra) <= 2
    pairs = world.concept_pair_effects
    assert np.all(np.tril(np.ones(pairs.shape[:2]))[:, :, None] * pairs == 0)


@pytest.mark.parametrize("off", ["interaction_sd", "concept_interaction_sd"])
def test_each_interaction_knob_alone_keeps_exact_twins(off):
    # the difficulty table grades one knob with the other at 0: each alone stays exact
    params = scenarios.load(
        "synthetic2-hard", n_cells=500, n_genes=40, n_tasks=1, min_task_cells=5
    ).replace(**{off: 0.0})
    data = simulate(params, seed=5, n_threads=1)
    assert (data.world.typed_concept_effects is None) == (off == "interaction_sd")
    assert (data.world.concept_pair_effects is None) == (off == "concept_interaction_sd")
    factual = data.factual.X.toarray()
    index = np.arange(0, 500, 4)
    np.testing.assert_array_equal(data.counterfactual(index).X.toarray(), factual[index])
    task = data.tasks[0]
    twins = data.counterfactual(task.intervene, {task.concept: 1.0}).X.toarray()
    np.testing.assert_array_equal(twins, data.counterfactuals.X.toarray())
    unaffected = data.world.concept_effects[task.concept] == 0
    assert unaffected.any()
    np.testing.assert_array_equal(twins[:, unaffected], factual[task.intervene][:, unaffected])
    assert (twins != factual[task.intervene]).any()


def test_grading_the_concept_pair_knob_scales_one_draw_of_the_same_cells():
    # the difficulty table compares knob values on the same cells and the same
    # tasks: only d moves, and it is the same standard-normal draw scaled by the knob
    base = scenarios.load(
        "synthetic2-hard", n_cells=500, n_genes=40, n_tasks=1, min_task_cells=5
    ).replace(interaction_sd=0.0)
    low = simulate(base.replace(concept_interaction_sd=0.05), seed=2, n_threads=1)
    high = simulate(base.replace(concept_interaction_sd=0.2), seed=2, n_threads=1)
    np.testing.assert_allclose(
        high.world.concept_pair_effects, 4.0 * low.world.concept_pair_effects, rtol=1e-14
    )
    np.testing.assert_array_equal(low.world.concept_effects, high.world.concept_effects)
    np.testing.assert_array_equal(
        low.factual.obsm["concepts_true"], high.factual.obsm["concepts_true"]
    )
    np.testing.assert_array_equal(low.tasks[0].split, high.tasks[0].split)
    assert (low.factual.X != high.factual.X).nnz > 0


def test_concept_terms_match_their_closed_form():
    from simcell.simulator.counts import ConceptTerms

    rng = np.random.default_rng(0)
    typed, pairs = rng.normal(size=(2, 3, 4)), rng.normal(size=(3, 3, 4))
    pairs *= np.triu(np.ones((3, 3)), k=1)[:, :, None]
    v, u = rng.normal(size=(5, 3)), np.array([0, 1, 1, 0, 1])
    terms = ConceptTerms(
        typed=typed, pairs=pairs, saturate=np.array([False, True, False]), saturation=0.5
    )
    s = v.copy()
    s[:, 1] = 0.5 * np.tanh(v[:, 1] / 0.5)
    expected = np.einsum("nk,nkj->nj", s, typed[u]) + np.einsum("nk,nl,klj->nj", s, s, pairs)
    np.testing.assert_allclose(terms(v, u), expected, rtol=1e-12, atol=1e-12)


def test_the_hard_preset_differs_from_synthetic2_only_by_its_knobs():
    hard, base = scenarios.load("synthetic2-hard"), scenarios.load("synthetic2")
    assert hard.replace(interaction_sd=0.0, concept_interaction_sd=0.0) == base
    assert hard.interacting and not base.interacting


def test_the_pairs_preset_is_synthetic2_with_dense_interacting_concepts():
    pairs, base = scenarios.load("synthetic2-pairs"), scenarios.load("synthetic2")
    assert pairs.replace(concept_concentration=0.2, concept_interaction_sd=0.0) == base
    assert pairs.interacting and pairs.interaction_sd == 0
    params = scenarios.load(
        "synthetic2-pairs", n_cells=500, n_genes=40, n_tasks=1, min_task_cells=5
    )
    data = simulate(params, seed=6, n_threads=1)
    factual = data.factual.X.toarray()
    index = np.arange(1, 500, 4)
    np.testing.assert_array_equal(data.counterfactual(index).X.toarray(), factual[index])
    task = data.tasks[0]
    twins = data.counterfactual(task.intervene, {task.concept: 1.0}).X.toarray()
    np.testing.assert_array_equal(twins, data.counterfactuals.X.toarray())
    unaffected = data.world.concept_effects[task.concept] == 0
    assert unaffected.any()
    np.testing.assert_array_equal(twins[:, unaffected], factual[task.intervene][:, unaffected])
    # the point of the preset: each cell type carries several concepts (of 4 × 5
    # type-concept probabilities, 17-19 are >= 5 % over seeds 0-5; synthetic2: 7-13)
    for seed in range(3):
        dense = draw_world(params, seed).concept_probability >= 0.05
        sparse = draw_world(base.replace(n_genes=40), seed).concept_probability >= 0.05
        assert dense.sum() >= 15 > sparse.sum()


def test_saturating_continuous_concepts_keep_exact_twins():
    params = SimulationParams(
        n_cells=400,
        n_genes=30,
        n_concepts=2,
        concept_kinds=("continuous", "binary"),
        concept_saturation=0.5,
        n_tasks=0,
    )
    data = simulate(params, seed=4, n_threads=1)
    index = np.arange(0, 400, 3)
    factual = data.factual.X.toarray()[index]
    np.testing.assert_array_equal(data.counterfactual(index).X.toarray(), factual)
    # far past the saturation, doubling the concept barely moves the log-rate
    big = data.counterfactual(index, {0: 20.0}).X.toarray()
    np.testing.assert_array_equal(big, data.counterfactual(index, {0: 40.0}).X.toarray())
    unaffected = data.world.concept_effects[0] == 0
    np.testing.assert_array_equal(big[:, unaffected], factual[:, unaffected])
