"""The perturb-identifiability process: exact twins, SCM composition, tasks, bundle."""

from __future__ import annotations

import numpy as np
import pytest

from simcell import SimcellError, scenarios
from simcell.simulator import poisson_ppf, read_bundle, schema
from simcell.simulator._rng import CELL_BLOCK
from simcell.simulator.counts import block_noise
from simcell.simulator.perturb import EXCLUDED, PerturbParams, simulate
from simcell.simulator.stream import generate_bundle

SMALL = dict(
    n_genes=40,
    n_perturbations=4,
    d_invariant=3,
    d_responsive=4,
    n_controls=300,
    n_per_single=80,
    n_per_double=40,
    n_doubles=3,
    noise_sd=0.1,
)


@pytest.fixture(scope="module")
def dataset():
    return simulate(PerturbParams(**SMALL), seed=5, scenario="test")


@pytest.fixture(scope="module")
def sparse_linear():
    params = PerturbParams(**SMALL, mixing="linear", mixing_density=0.4, shift_targets=1)
    return simulate(params, seed=2)


def _reference(dataset, positions, u):
    """Counts in plain numpy (matrix products, np.linalg.solve) from what the bundle stores."""
    meta = dataset.factual.uns[schema.UNS][schema.UNS_PERTURB]
    params = dataset.params
    z_inv = dataset.factual.obsm[schema.latent_key("z_invariant")][positions]
    eta = dataset.cells.eta[positions]
    b = meta[schema.PERTURB_SCM_WEIGHTS]
    exogenous = z_inv @ meta[schema.PERTURB_COUPLING].T + u @ meta[schema.PERTURB_SHIFTS] + eta
    z_resp = np.linalg.solve(np.eye(b.shape[0]) - b, exogenous.T).T

    def mix(h, layers):
        for k in range(len(layers) - 1):
            h = h @ layers[f"layer_{k}"]
            h = np.where(h > 0, h, params.leaky_slope * h)
        return h @ layers["output"]

    log_rate = np.empty((positions.size, params.n_genes))
    log_rate[:, meta[schema.PERTURB_RESPONSIVE_GENES]] = mix(
        np.concatenate([z_inv, z_resp], axis=1), meta[schema.PERTURB_MIXING_RESPONSIVE]
    )
    log_rate[:, meta[schema.PERTURB_INVARIANT_GENES]] = mix(
        z_inv, meta[schema.PERTURB_MIXING_INVARIANT]
    )
    log_rate += dataset.factual.var[schema.BASELINE].to_numpy()[None, :]
    log_rate += dataset.factual.obs[schema.OBS_LIBRARY_SIZE].to_numpy()[positions, None]
    counts = np.empty_like(log_rate, dtype=np.int64)
    for row, i in enumerate(positions):
        block = i // CELL_BLOCK
        n_rows = min(CELL_BLOCK, params.n_cells - block * CELL_BLOCK)
        residual, uniform = block_noise(dataset.seed, block, n_rows, params.n_genes)
        rate = np.exp(log_rate[row] + params.noise_sd * residual[i % CELL_BLOCK].astype(float))
        counts[row] = poisson_ppf(uniform[i % CELL_BLOCK], rate)
    return counts, z_resp


def test_factual_counts_are_the_inverse_cdf_of_the_stored_process(dataset):
    positions = np.array([0, 1, 255, 256, 500, dataset.params.n_cells - 1])
    counts, z_resp = _reference(dataset, positions, dataset.cells.perturbations[positions])
    np.testing.assert_array_equal(dataset.factual.X[positions].toarray(), counts)
    stored = dataset.factual.obsm[schema.latent_key("z_responsive")][positions]
    np.testing.assert_allclose(stored, z_resp, atol=1e-12)


def test_do_of_the_factual_labels_reproduces_every_cell_bit_for_bit(dataset):
    cells = np.arange(0, dataset.params.n_cells, 3)
    twin = dataset.counterfactual(cells, dataset.cells.perturbations[cells])
    assert (twin.X != dataset.factual.X[cells]).nnz == 0
    again = dataset.counterfactual(cells)
    assert (again.X != dataset.factual.X[cells]).nnz == 0
    for name in ("z_invariant", "z_responsive"):
        key = schema.latent_key(name)
        np.testing.assert_array_equal(twin.obsm[key], dataset.factual.obsm[key][cells])


def test_task_twins_are_exact_and_keep_every_exogenous_term(dataset):
    truth = dataset.counterfactuals
    sources = dataset.factual.obs_names.get_indexer(truth.obs[schema.TRUTH_SOURCE_CELL])
    again = dataset.counterfactual(sources, truth.obsm[schema.CONCEPTS_TRUE].to_numpy())
    assert (again.X != truth.X).nnz == 0
    key = schema.latent_key("z_invariant")
    np.testing.assert_array_equal(truth.obsm[key], dataset.factual.obsm[key][sources])
    # ... and are what the stored SCM and mixing give, recomputed independently
    rows = np.arange(0, truth.n_obs, 7)
    counts, z_resp = _reference(
        dataset, sources[rows], truth.obsm[schema.CONCEPTS_TRUE].to_numpy()[rows]
    )
    np.testing.assert_array_equal(truth.X[rows].toarray(), counts)
    np.testing.assert_allclose(
        truth.obsm[schema.latent_key("z_responsive")][rows], z_resp, atol=1e-12
    )


def test_doubles_compose_the_singles_through_the_scm(dataset):
    p, q = (int(v) for v in dataset.world.doubles[0])
    controls = np.flatnonzero(dataset.cells.perturbations.sum(axis=1) == 0)[:50]
    n_p = dataset.params.n_perturbations
    e_p, e_q = np.eye(n_p)[p], np.eye(n_p)[q]
    _, z0 = dataset.latents(controls, np.zeros(n_p))
    _, zp = dataset.latents(controls, e_p)
    _, zq = dataset.latents(controls, e_q)
    _, zpq = dataset.latents(controls, e_p + e_q)
    # z_ν(p, q) - z_ν(0) = (I - B)^-1 (s_p + s_q): the sum of the single effects
    np.testing.assert_allclose(zpq - z0, (zp - z0) + (zq - z0), atol=1e-12)
    b = dataset.world.scm_weights
    effect = np.linalg.solve(
        np.eye(b.shape[0]) - b, dataset.world.shifts[p] + dataset.world.shifts[q]
    )
    np.testing.assert_allclose(zpq - z0, np.broadcast_to(effect, z0.shape), atol=1e-12)
    # the double twin of a control is counted from the composed latent
    twin = dataset.counterfactual(controls, e_p + e_q)
    counts, _ = _reference(dataset, controls, np.broadcast_to(e_p + e_q, (controls.size, n_p)))
    np.testing.assert_array_equal(twin.X.toarray(), counts)


def test_invariant_genes_never_respond(dataset):
    controls = np.flatnonzero(dataset.cells.perturbations.sum(axis=1) == 0)
    twin = dataset.counterfactual(controls, np.ones(dataset.params.n_perturbations))
    genes = dataset.world.invariant_genes
    assert genes.size > 0
    np.testing.assert_array_equal(
        twin.X[:, genes].toarray(), dataset.factual.X[controls][:, genes].toarray()
    )
    assert (twin.X != dataset.factual.X[controls]).nnz > 0  # the others do


def test_a_gene_unaffected_by_every_changed_latent_is_unchanged(sparse_linear):
    ds = sparse_linear
    d_i = ds.params.d_invariant
    controls = np.flatnonzero(ds.cells.perturbations.sum(axis=1) == 0)
    for q in range(ds.params.n_perturbations):
        target = np.eye(ds.params.n_perturbations)[q]
        _, before = ds.latents(controls)
        _, after = ds.latents(controls, target)
        changed = np.flatnonzero(np.any(before != after, axis=0))
        loadings = ds.world.mixing_responsive[-1][d_i + changed]
        unaffected = np.concatenate(
            [ds.world.invariant_genes, ds.world.responsive_genes[~np.any(loadings != 0, axis=0)]]
        )
        affected = np.setdiff1d(np.arange(ds.params.n_genes), unaffected)
        assert unaffected.size > ds.world.invariant_genes.size and affected.size > 0
        twin = ds.counterfactual(controls, target)
        factual = ds.factual.X[controls]
        np.testing.assert_array_equal(
            twin.X[:, unaffected].toarray(), factual[:, unaffected].toarray()
        )
        assert (twin.X[:, affected] != factual[:, affected]).nnz > 0


def test_tasks_train_on_controls_and_singles_and_hold_out_the_doubles(dataset):
    u = dataset.cells.perturbations
    n_on = u.sum(axis=1)
    truth = dataset.counterfactuals
    assert len(dataset.tasks) == dataset.params.n_double_tasks
    for task in dataset.tasks:
        split = task.split
        assert set(split[n_on == 2]) <= {schema.HELDOUT, EXCLUDED}
        assert set(split[n_on < 2]) <= {schema.TRAIN, schema.INTERVENE}
        heldout, intervene = split == schema.HELDOUT, split == schema.INTERVENE
        assert heldout.any() and intervene.any()
        assert np.all(u[heldout, task.concept] == 1)
        (p,) = np.flatnonzero(u[intervene][0])
        assert np.all(u[intervene] == np.eye(u.shape[1])[p]) and p != task.concept
        assert np.all(u[heldout][:, p] == 1)
        rows = truth.obs[schema.TRUTH_TASK].to_numpy() == task.name
        expected = u[intervene].copy()
        expected[:, task.concept] = 1
        np.testing.assert_array_equal(truth.obsm[schema.CONCEPTS_TRUE].to_numpy()[rows], expected)


def test_single_tasks_ask_for_an_unseen_single():
    ds = simulate(PerturbParams(**{**SMALL, "n_double_tasks": 0, "n_single_tasks": 2}), seed=1)
    u = ds.cells.perturbations
    for task in ds.tasks:
        q = task.concept
        seen = task.split == schema.TRAIN
        assert not np.any(u[seen, q] == 1)
        assert np.all(u[task.split == schema.INTERVENE].sum(axis=1) == 0)
        assert np.all(u[task.split == schema.HELDOUT] == np.eye(u.shape[1])[q])


def test_the_bundle_round_trips_with_its_latents_and_world(tmp_path):
    params, name = scenarios.load_with_name(
        "perturb-identifiability", n_genes=30, n_controls=100, n_per_single=40, n_per_double=20
    )
    assert isinstance(params, PerturbParams)
    dataset = generate_bundle(params, 3, tmp_path / "b", scenario=name)
    bundle = read_bundle(tmp_path / "b")
    factual = bundle.factual
    assert schema.process_name(factual) == schema.PROCESS_PERTURB
    latents = schema.true_latents(factual)
    assert set(latents) == {"z_invariant", "z_responsive"}
    np.testing.assert_array_equal(latents["z_responsive"], dataset.z_responsive)
    assert (factual.X != dataset.factual.X).nnz == 0
    stored = factual.uns[schema.UNS][schema.UNS_PERTURB]
    np.testing.assert_array_equal(stored[schema.PERTURB_SCM_WEIGHTS], dataset.world.scm_weights)
    assert np.all(np.triu(stored[schema.PERTURB_SCM_WEIGHTS]) == 0)  # a DAG
    assert [t.concept for t in schema.read_tasks(factual)] == [
        schema.concept_name(t.concept) for t in dataset.tasks
    ]


def test_the_concept_latent_process_is_the_default():
    from simcell.simulator import simulate as simulate_concepts

    small = simulate_concepts(scenarios.load("synthetic2", n_cells=300, n_genes=20, n_tasks=1))
    assert schema.process_name(small.factual) == schema.PROCESS_CONCEPT_LATENT
    assert schema.true_latents(small.factual) == {}


@pytest.mark.parametrize(
    "change, message",
    [
        ({"n_doubles": 99}, "n_doubles"),
        ({"leaky_slope": 0.0}, "leaky_slope"),
        ({"n_genes": 8}, "injective"),
        ({"mixing": "tanh"}, "mixing"),
        ({"responsive_noise_sd": -1.0}, "responsive_noise_sd"),
    ],
)
def test_bad_parameters_are_one_line_errors(change, message):
    with pytest.raises(SimcellError, match=message):
        PerturbParams(**{**SMALL, **change})


def test_responsive_noise_sd_scales_eta_and_nothing_else():
    small = dict(SMALL, n_controls=40, n_per_single=10, n_per_double=5)
    unit = simulate(PerturbParams(**small), seed=3)
    scaled = simulate(PerturbParams(**small, responsive_noise_sd=0.25), seed=3)
    np.testing.assert_array_equal(scaled.cells.eta, 0.25 * unit.cells.eta)
    np.testing.assert_array_equal(scaled.cells.z_invariant, unit.cells.z_invariant)
    np.testing.assert_array_equal(scaled.cells.library_size, unit.cells.library_size)


def test_the_linear_variant_is_a_shipped_scenario():
    params = scenarios.load("perturb-identifiability-linear")
    base = scenarios.load("perturb-identifiability")
    assert (params.mixing, params.responsive_gene_fraction) == ("linear", 1.0)
    assert params.replace(mixing="mlp", responsive_gene_fraction=0.5) == base


def test_a_scenario_with_an_unknown_key_is_refused(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('process = "perturb-identifiability"\nn_concepts = 3\n')
    with pytest.raises(SimcellError, match="unknown key"):
        scenarios.load(str(path))


def test_the_harness_scores_a_perturb_bundle_without_oracle_rows(tmp_path, caplog):
    import logging

    from simcell.evaluation import evaluate

    params = PerturbParams(**{**SMALL, "n_double_tasks": 1})
    generate_bundle(params, 0, tmp_path / "b", scenario="test")
    with caplog.at_level(logging.INFO, logger="simcell.evaluation.harness"):
        table = evaluate(
            tmp_path / "b", models=["mean_shift"], n_components=10, n_boot=50, device="cpu"
        )
    assert {"identity", "mean_shift", "heldout"} <= set(table["model"])
    assert not {"oracle", "oracle_sample", "noise_floor"} & set(table["model"])
    assert "no oracle for process perturb-identifiability with a residual" in caplog.text
    assert table["value"].notna().any()


def test_the_exogenous_latent_is_the_shift_plus_eta_from_what_the_bundle_stores(tmp_path):
    from simcell.simulator.perturb import exogenous_latent

    params = PerturbParams(**{**SMALL, "invariant_coupling": 0.5})
    generate_bundle(params, 3, tmp_path / "b", scenario="test")
    bundle = read_bundle(tmp_path / "b")
    dataset = simulate(params, seed=3)
    expected = dataset.cells.eta + dataset.cells.perturbations @ dataset.world.shifts
    np.testing.assert_allclose(exogenous_latent(bundle.factual), expected, atol=1e-12)
    # it is not z_ν (a DAG and the coupling move it) ...
    assert np.abs(expected - dataset.z_responsive).max() > 0.5
    # ... and is no property of another process's bundle
    assert exogenous_latent(_concept_latent_factual()) is None


def _concept_latent_factual():
    from simcell.simulator import simulate as simulate_concepts

    return simulate_concepts(
        scenarios.load("synthetic1", n_cells=60, n_genes=20, n_tasks=0), 0
    ).factual
