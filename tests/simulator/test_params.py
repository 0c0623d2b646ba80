"""Parameter validation names the offending field."""

from __future__ import annotations

import pytest

from simcell import SimcellError
from simcell.simulator import SimulationParams


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"n_cells": 0}, "n_cells"),
        ({"noise_sd": -0.1}, "noise_sd"),
        ({"batch_effect_sd": float("nan")}, "batch_effect_sd"),
        ({"baseline_range": (5, 1)}, "baseline_range"),
        ({"library_size_sd_range": (0.03, 0.01)}, "library_size_sd_range"),
        ({"concept_edges": [(0, 1, 1.0), (1, 0, 1.0)]}, "cycle"),
        ({"concept_edges": [(0, 9, 1.0)]}, "out of range"),
        ({"concept_kinds": ["binary"]}, "concept_kinds"),
        ({"concept_concentration": 0}, "concept_concentration"),
        ({"intervention_mode": "both"}, "intervention_mode"),
        ({"corruption": "blurry"}, "corruption"),
        ({"n_genes": 2.5}, "n_genes"),
    ],
)
def test_invalid_values_raise_naming_the_field(changes, message):
    with pytest.raises(SimcellError, match=message):
        SimulationParams(**changes)


def test_replace_rejects_unknown_keys():
    with pytest.raises(SimcellError, match="unknown parameter"):
        SimulationParams().replace(n_cels=3)


def test_dag_helpers():
    params = SimulationParams(concept_edges=[(0, 1, 1.0), (1, 2, -1.0), (0, 3, 0.5)])
    order = params.topological_order()
    assert order.index(0) < order.index(1) < order.index(2) and order.index(0) < order.index(3)
    assert params.descendants(0) == {1, 2, 3} and params.descendants(2) == set()
    assert params.parents(2) == [(1, -1.0)]
