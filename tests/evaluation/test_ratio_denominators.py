"""The harness computes each ratio's nearest population and denominator once per task,
and the rows it scores are exactly those of the plain ratio against that population."""

from __future__ import annotations

import dataclasses

import pytest

from simcell import SimcellError, scenarios
from simcell.evaluation import harness
from simcell.evaluation import metrics as m
from simcell.evaluation.tasks import build_task
from simcell.simulator import read_bundle, simulate, write_bundle


@pytest.fixture(scope="module")
def task_data(tmp_path_factory):
    params = scenarios.load("synthetic2", n_cells=1200, n_genes=60, n_tasks=1)
    path = tmp_path_factory.mktemp("denominators") / "bundle"
    write_bundle(simulate(params, seed=1, scenario="synthetic2"), path)
    return build_task(read_bundle(path), "task_0", n_components=8, seed=0)


@pytest.fixture(scope="module")
def populations(task_data):
    return harness._populations(task_data, seed=0)


def _ratio_metrics():
    return [metric for metric in m.list_metrics("distribution") if "references" in metric.inputs]


def test_every_ratio_gets_its_denominator_once(populations):
    names = {metric.name for metric in _ratio_metrics()}
    assert names == {"rmmd", "rfid", "rsd"}
    assert set(populations.nearest) == names
    assert set(populations.denominators) == names


def test_rows_equal_the_plain_ratio_against_the_nearest_population(task_data, populations):
    pops = populations
    pred = task_data.x_intervene
    rows = harness._population_rows(
        task_data,
        "identity",
        pred,
        harness._Labels(seed=0, scenario="", data_seed=-1),
        pops,
        paired=True,
        classify=False,
    )
    scored = {row.metric: row.value for row in rows}
    for metric in _ratio_metrics():
        entropic = harness._uses_epsilon(metric)
        context = {
            "paired": True,
            "bandwidths": pops.bandwidths,
            "epsilon": pops.epsilon,
            "seed": 0,
            **(harness.SINKHORN_OPTIONS if entropic else {}),
            "pred": pred[pops.small] if entropic else pred[pops.cells],
            "truth": pops.small_target if entropic else pops.target,
            "references": [pops.nearest[metric.name]],
        }
        try:
            plain = harness._call(metric, context)  # no denominator given
        except SimcellError:  # nearest at distance <= 0: the row is left out either way
            assert metric.name not in scored
            assert pops.denominators[metric.name] <= 0
            continue
        assert scored[metric.name] == plain


def test_nearest_by_distance_equals_nearest_by_ratio(task_data, populations):
    """The search by unit-denominator distances picks what the search by ratios picked."""
    pops = populations
    shared = {"bandwidths": pops.bandwidths, "epsilon": pops.epsilon, "seed": 0}
    shared.update(harness.SINKHORN_OPTIONS)
    refs = [r[:150] for r in task_data.references if r.shape[0] >= 3]
    for metric in _ratio_metrics():
        without = dataclasses.replace(
            metric, options=tuple(o for o in metric.options if o != "denominator")
        )
        goal = pops.small_target if harness._uses_epsilon(metric) else pops.target
        by_distance = harness._nearest(metric, refs, goal, shared, "task_0")
        by_ratio = harness._nearest(without, refs, goal, shared, "task_0")
        assert by_distance == by_ratio is not None
