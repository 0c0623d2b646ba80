"""The bundle schema: the writer uses its names and the readers give typed values."""

from __future__ import annotations

import numpy as np
import pytest

from simcell import SimcellError
from simcell.simulator import schema


def test_readers_match_the_simulated_process(causal_dataset):
    data = causal_dataset
    factual = data.factual
    tasks = schema.read_tasks(factual)
    assert [t.name for t in tasks] == [t.name for t in data.tasks]
    for info, task in zip(tasks, data.tasks, strict=True):
        assert info.concept == schema.concept_name(task.concept)
        assert info.cell_type == f"cell_type_{task.cell_type}"
        np.testing.assert_array_equal(schema.read_split(factual, info.name), task.split)
    assert schema.concept_dag(factual) == (
        ("concept_0", "concept_1", 1.5),
        ("concept_1", "concept_2", -1.2),
        ("concept_0", "concept_3", 0.8),
    )
    assert schema.intervention_mode(factual) == "causal"
    assert set(schema.concept_kinds(factual).values()) == {"binary"}
    world = schema.world_arrays(factual)
    np.testing.assert_array_equal(world.concept_effects, data.world.concept_effects)
    np.testing.assert_array_equal(world.cell_type_effects, data.world.cell_type_effects)
    np.testing.assert_array_equal(world.library_size_sd, data.world.library_size_sd)
    assert world.noise_sd == data.params.noise_sd
    codes = schema.covariate_codes(factual, np.arange(10))
    np.testing.assert_array_equal(codes[schema.OBS_BATCH], data.cells.batch[:10])


def test_truth_is_optional(causal_dataset):
    from simcell.simulator import Bundle

    data = causal_dataset
    bundle = Bundle(
        path=None, factual=data.factual, counterfactual=data.counterfactuals, manifest={}
    )
    task = data.tasks[0]
    truth = schema.read_truth(bundle, task.name)
    np.testing.assert_array_equal(truth.sources, task.intervene)
    assert truth.counts.shape == (task.intervene.size, data.params.n_genes)
    real = Bundle(path=None, factual=data.factual, counterfactual=None, manifest={})
    assert schema.has_truth(bundle) and not schema.has_truth(real)
    with pytest.raises(SimcellError, match="no counterfactual.h5ad"):
        schema.read_truth(real, task.name)
    with pytest.raises(SimcellError, match="unknown task"):
        schema.check_tasks(data.factual, ["task_99"])
