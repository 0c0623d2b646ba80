"""The generative process: exact twins, do() semantics, closed-form means, determinism."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from simcell import SimcellError, scenarios
from simcell.simulator import poisson_ppf, simulate
from simcell.simulator._rng import CELL_BLOCK
from simcell.simulator.counts import block_noise


def _reference_counts(dataset, positions, concepts):
    """Counts recomputed in plain numpy from the stored world and regenerated noise."""
    world, cells, params = dataset.world, dataset.cells, dataset.params
    out = np.empty((positions.size, params.n_genes), dtype=np.int64)
    for row, (i, v) in enumerate(zip(positions, concepts, strict=True)):
        block = i // CELL_BLOCK
        n_rows = min(CELL_BLOCK, params.n_cells - block * CELL_BLOCK)
        residual, uniform = block_noise(dataset.seed, block, n_rows, params.n_genes)
        acc = world.baseline + world.batch_effects[cells.batch[i]]
        acc = acc + world.tissue_effects[cells.tissue[i]]
        acc = acc + world.cell_type_effects[cells.cell_type[i]]
        for k in range(params.n_concepts):
            acc = acc + v[k] * world.concept_effects[k]
        acc = acc + cells.library_size[i]
        acc = acc + params.noise_sd * residual[i % CELL_BLOCK].astype(np.float64)
        out[row] = poisson_ppf(uniform[i % CELL_BLOCK], np.exp(acc))
    return out


def test_factual_counts_are_the_inverse_cdf_of_the_stored_process(small_dataset):
    positions = np.array([0, 1, 255, 256, 900, small_dataset.params.n_cells - 1])
    expected = _reference_counts(small_dataset, positions, small_dataset.cells.concepts[positions])
    np.testing.assert_array_equal(small_dataset.factual.X[positions].toarray(), expected)


def test_task_counterfactuals_are_exact_twins(small_dataset):
    truth = small_dataset.counterfactuals
    rows = np.arange(0, truth.n_obs, max(1, truth.n_obs // 12))
    positions = small_dataset.factual.obs_names.get_indexer(truth.obs["source_cell"].iloc[rows])
    concepts = truth.obsm["concepts_true"].to_numpy()[rows]
    expected = _reference_counts(small_dataset, positions, concepts)
    np.testing.assert_array_equal(truth.X[rows].toarray(), expected)


@pytest.mark.parametrize("mode", ["causal", "direct"])
def test_do_nothing_is_the_identity(causal_dataset, mode):
    cells = np.arange(0, causal_dataset.params.n_cells, 7)
    twin = causal_dataset.counterfactual(cells, {}, mode=mode)
    assert (twin.X != causal_dataset.factual.X[cells]).nnz == 0
    np.testing.assert_array_equal(
        twin.obsm["concepts_true"].to_numpy(), causal_dataset.cells.concepts[cells]
    )


def test_direct_do_changes_only_affected_genes(small_dataset):
    k = 2
    cells = np.arange(small_dataset.params.n_cells)
    twin = small_dataset.counterfactual(cells, {k: 1.0}, mode="direct")
    unaffected = small_dataset.world.concept_effects[k] == 0
    assert unaffected.any() and (~unaffected).any()
    factual = small_dataset.factual.X.toarray()
    counterfactual = twin.X.toarray()
    np.testing.assert_array_equal(counterfactual[:, unaffected], factual[:, unaffected])
    switched = small_dataset.cells.concepts[:, k] == 0
    # cells that already had the concept are unchanged everywhere
    np.testing.assert_array_equal(counterfactual[~switched], factual[~switched])
    # switching a concept with positive effects on a gene never lowers its count
    up = small_dataset.world.concept_effects[k] > 0
    assert (counterfactual[np.ix_(switched, up)] >= factual[np.ix_(switched, up)]).all()
    assert (counterfactual[np.ix_(switched, up)] > factual[np.ix_(switched, up)]).any()
    expected_concepts = small_dataset.cells.concepts.copy()
    expected_concepts[:, k] = 1.0
    np.testing.assert_array_equal(twin.obsm["concepts_true"].to_numpy(), expected_concepts)


def test_causal_do_propagates_to_descendants_only(causal_dataset):
    data = causal_dataset
    params, cells, world = data.params, data.cells, data.world
    assert params.descendants(0) == {1, 2, 3}
    positions = np.arange(params.n_cells)
    twin = data.counterfactual(positions, {"concept_0": 1.0}, mode="causal")
    new = twin.obsm["concepts_true"].to_numpy()
    eta, mu = cells.concept_noise, world.concept_liability_mean[cells.cell_type]
    v1 = (mu[:, 1] + 1.5 * 1.0 + eta[:, 1] > 0).astype(float)
    v2 = (mu[:, 2] - 1.2 * v1 + eta[:, 2] > 0).astype(float)
    v3 = (mu[:, 3] + 0.8 * 1.0 + eta[:, 3] > 0).astype(float)
    np.testing.assert_array_equal(new[:, 0], 1.0)
    np.testing.assert_array_equal(new[:, 1], v1)
    np.testing.assert_array_equal(new[:, 2], v2)
    np.testing.assert_array_equal(new[:, 3], v3)
    np.testing.assert_array_equal(new[:, 4], cells.concepts[:, 4])  # not a descendant
    assert (new[:, 1] != cells.concepts[:, 1]).any()  # the edge does something
    # do() on a leaf leaves its parents alone
    leaf = data.counterfactual(positions, {"concept_2": 1.0}, mode="causal")
    leaf_concepts = leaf.obsm["concepts_true"].to_numpy()
    np.testing.assert_array_equal(leaf_concepts[:, [0, 1, 3, 4]], cells.concepts[:, [0, 1, 3, 4]])
    # genes untouched by every changed concept keep their counts
    changed = np.flatnonzero((new != cells.concepts).any(axis=0))
    untouched = (world.concept_effects[changed] == 0).all(axis=0)
    np.testing.assert_array_equal(
        twin.X.toarray()[:, untouched], data.factual.X.toarray()[:, untouched]
    )


def test_continuous_concepts_and_several_interventions():
    params = scenarios.load(
        "causal",
        n_cells=600,
        n_genes=40,
        concept_kinds=["binary", "continuous", "binary", "continuous", "binary"],
        n_tasks=1,
    )
    data = simulate(params, seed=11)
    truth = data.cells.concepts
    assert len(np.unique(truth[:, 1])) > 100  # continuous
    cells = [0, 3, 5]
    twin = data.counterfactual(cells, {1: np.array([0.5, -1.0, 2.0]), 4: 1.0}, mode="causal")
    new = twin.obsm["concepts_true"].to_numpy()
    np.testing.assert_array_equal(new[:, 1], [0.5, -1.0, 2.0])
    np.testing.assert_array_equal(new[:, 4], 1.0)
    eta = data.cells.concept_noise[cells]
    mu = data.world.concept_liability_mean[data.cells.cell_type[cells]]
    np.testing.assert_array_equal(new[:, 2], (mu[:, 2] - 1.2 * new[:, 1] + eta[:, 2] > 0))
    np.testing.assert_array_equal(new[:, 3], truth[cells, 3])  # parent 0 untouched
    expected = _reference_counts(data, np.asarray(cells), new)
    np.testing.assert_array_equal(twin.X.toarray(), expected)


def test_per_gene_means_match_the_closed_form(small_dataset):
    """E[x_ij] = exp(m_ij + l_i + σ_ε²/2): a z-test per gene with a fixed seed."""
    data = small_dataset
    world, cells, params = data.world, data.cells, data.params
    m = (
        world.baseline
        + world.batch_effects[cells.batch]
        + world.tissue_effects[cells.tissue]
        + world.cell_type_effects[cells.cell_type]
        + cells.concepts @ world.concept_effects
        + cells.library_size[:, None]
    )
    s2 = params.noise_sd**2
    mean_rate = np.exp(m + s2 / 2)
    variance = mean_rate + np.exp(2 * m + s2) * (np.exp(s2) - 1)
    n = params.n_cells
    observed = np.asarray(data.factual.X.mean(axis=0)).ravel()
    z = (observed - mean_rate.mean(axis=0)) / np.sqrt(variance.sum(axis=0) / n**2)
    assert np.abs(z).max() < 4.5
    # z is standard normal: its sum of squares is chi-square with n_genes dof
    assert stats.chi2.sf((z**2).sum(), df=z.size) > 1e-3
    # the stored library_size is the true l_i
    np.testing.assert_array_equal(data.factual.obs["library_size"].to_numpy(), cells.library_size)


def test_chunking_and_threads_do_not_change_counts(small_params):
    a = simulate(small_params, seed=5, chunk_size=256, n_threads=1)
    b = simulate(small_params, seed=5, chunk_size=1000, n_threads=2)
    assert (a.factual.X != b.factual.X).nnz == 0
    assert (a.counterfactuals.X != b.counterfactuals.X).nnz == 0
    c = simulate(small_params, seed=6)
    assert (a.factual.X != c.factual.X).nnz > 0


def test_first_cells_do_not_depend_on_later_ones(small_params):
    big = simulate(small_params, seed=5)
    short = simulate(small_params.replace(n_cells=300, n_tasks=0), seed=5)
    assert (short.factual.X != big.factual.X[:300]).nnz == 0


def test_bad_counterfactual_requests(small_dataset):
    with pytest.raises(SimcellError, match="unknown cell"):
        small_dataset.counterfactual(["nope"], {})
    with pytest.raises(SimcellError, match="out of range"):
        small_dataset.counterfactual([10**9], {})
    with pytest.raises(SimcellError, match="unknown concept"):
        small_dataset.counterfactual([0], {"concept_99": 1})
    with pytest.raises(SimcellError, match="not finite"):
        small_dataset.counterfactual([0], {0: np.nan})
    with pytest.raises(SimcellError, match="mode"):
        small_dataset.counterfactual([0], {0: 1}, mode="sideways")
    with pytest.raises(SimcellError, match="seed"):
        simulate(small_dataset.params, seed=-1)
