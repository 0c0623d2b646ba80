"""The oracle is a thin layer over the simulator's public posterior API."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest

import simcell.evaluation
from simcell.evaluation.oracle import OracleInputs, oracle_counterfactual, oracle_posterior
from simcell.models import Intervention
from simcell.simulator import concept_dag


def _imports_from_simulator(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("simcell.simulator"):
            names.append(node.module)
            names.extend(alias.name for alias in node.names)
    return names


def test_evaluation_imports_no_private_simulator_names():
    package = Path(simcell.evaluation.__file__).parent
    imported = [n for path in package.rglob("*.py") for n in _imports_from_simulator(path)]
    assert imported  # the check looks at something
    private = [n for n in imported if any(part.startswith("_") for part in n.split("."))]
    assert private == []


def _task(dataset, number=0):
    task = dataset.tasks[number]
    twins = dataset.counterfactuals
    rows = np.flatnonzero(twins.obs["task"].astype(str).to_numpy() == task.name)
    intervene = dataset.factual.obs_names.get_indexer(twins.obs["source_cell"].to_numpy()[rows])
    return task, intervene, twins.obsm["concepts_true"].to_numpy()[rows]


def test_direct_mode_numbers_are_those_of_the_shift_oracle(small_dataset):
    """In direct mode the oracle of a task draws exactly what the oracle given the
    true twins' shift drew before (same random stream, same numbers)."""
    dataset = small_dataset
    task, intervene, truth_concepts = _task(dataset)
    intervention = Intervention(do={f"concept_{task.concept}": 1.0}, dag=concept_dag(dataset))
    posterior = oracle_posterior(dataset, intervene, intervention)
    cells = posterior.cells
    inputs = OracleInputs(
        counts=cells.counts,
        log_rate_mean=cells.log_rate_mean,
        shift=(truth_concepts - cells.concepts) @ cells.concept_effects,
        library_size_sd=cells.library_size_sd,
        noise_sd=cells.noise_sd,
    )
    old = [
        oracle_counterfactual(inputs, np.log1p, n_samples=3, rng=rng)
        for rng in [np.random.default_rng(29)] * 2
    ]
    new = posterior.mean_halves(np.log1p, 6, np.random.default_rng(29))
    np.testing.assert_array_equal(old[0], new[0])
    np.testing.assert_array_equal(old[1], new[1])


def test_causal_oracle_is_told_only_the_factual_cell(causal_dataset):
    """Given the same inputs the oracle's answer does not move with the true
    counterfactual concepts, which the old oracle conditioned on."""
    dataset = causal_dataset
    positions = np.flatnonzero(dataset.cells.concepts[:, 0] == 0)[:50]
    intervention = Intervention(do={"concept_0": 1.0}, mode="causal", dag=concept_dag(dataset))
    posterior = oracle_posterior(dataset, positions, intervention)
    draws = posterior.concept_draws(400, np.random.default_rng(0))
    assert {"concept_1", "concept_2", "concept_3"} == set(intervention.descendants())
    # the descendants are uncertain given the factual cell, not pinned to the truth
    varies = draws[:, :, 1:4].std(axis=0) > 0
    assert varies.any()


def test_oracle_without_change_returns_the_cell():
    rng = np.random.default_rng(0)
    counts = rng.poisson(3.0, (20, 30))
    inputs = OracleInputs(
        counts=counts,
        log_rate_mean=np.full((20, 30), np.log(3.0)),
        shift=np.zeros((20, 30)),
        library_size_sd=np.full(20, 0.02),
        noise_sd=0.05,
    )
    out = oracle_counterfactual(inputs, lambda x: x.astype(float), n_samples=4, rng=rng)
    np.testing.assert_array_equal(out, counts)


@pytest.mark.parametrize("bad", [np.zeros((20, 29)), np.zeros((19, 30))])
def test_shift_of_the_wrong_shape_is_one_line_error(bad):
    from simcell import SimcellError

    inputs = OracleInputs(
        counts=np.ones((20, 30), dtype=int),
        log_rate_mean=np.zeros((20, 30)),
        shift=bad,
        library_size_sd=np.full(20, 0.02),
        noise_sd=0.05,
    )
    with pytest.raises(SimcellError, match="shift has shape"):
        oracle_counterfactual(inputs, np.log1p, n_samples=2, rng=np.random.default_rng(0))
