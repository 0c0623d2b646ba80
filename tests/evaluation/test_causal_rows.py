"""The harness's causal-consistency rows: after do(), do the descendants' concepts move
as in the exact twins, and the non-descendants stay (CausCell paper, Fig. 4)?"""

from __future__ import annotations

import dataclasses

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from simcell import scenarios
from simcell.evaluation import evaluate
from simcell.evaluation.harness import _causal_reference
from simcell.evaluation.tasks import build_task
from simcell.simulator import read_bundle, simulate, write_bundle

ROLES = ("intervened", "descendant", "non_descendant")


@pytest.fixture(scope="module")
def causal_bundle(tmp_path_factory):
    # seed 0: the one task intervenes on concept_0, whose descendants are 1, 2 and 3
    params = scenarios.load("causal", n_cells=1200, n_genes=60, n_tasks=1, concept_effect_sd=0.3)
    path = tmp_path_factory.mktemp("causal") / "bundle"
    write_bundle(simulate(params, seed=0, scenario="causal"), path)
    return read_bundle(path)


def _scores(table: pd.DataFrame, model: str) -> dict[str, float]:
    rows = table[(table.model == model) & table.metric.str.startswith("causal_shift_error_")]
    return dict(zip(rows.metric.str.removeprefix("causal_shift_error_"), rows.value, strict=True))


def test_the_twins_score_zero_and_the_factual_cells_the_true_shift(causal_bundle):
    truth = causal_bundle.counterfactual
    brought = ad.AnnData(
        X=truth.X.toarray(),
        obs=truth.obs[["task", "source_cell"]].copy(),
        var=pd.DataFrame(index=causal_bundle.factual.var_names.copy()),
    )
    brought.uns["space"] = "counts"
    brought.uns["simcell_bundle"] = causal_bundle.identity
    table = evaluate(causal_bundle, models=[], predictions=brought, oracle_samples=4, n_boot=10)
    # the twins themselves: every concept read from them moves as it moves in the twins
    assert _scores(table, "predictions") == dict.fromkeys(ROLES, 0.0)
    identity, oracle = _scores(table, "identity"), _scores(table, "oracle")
    assert set(identity) == set(oracle) == set(ROLES)
    # the factual cells do not move: their error is the true shift, large on the
    # intervened concept (its rate goes from 0 towards 1), and above the oracle's
    assert identity["intervened"] > 0.5
    assert oracle["intervened"] < identity["intervened"]
    assert oracle["descendant"] <= identity["descendant"]


def test_no_rows_where_do_does_not_propagate(causal_bundle):
    data = build_task(causal_bundle, "task_0")
    assert set(data.intervention.descendants()) == {"concept_1", "concept_2", "concept_3"}
    cells, concepts, names = _causal_reference(causal_bundle, data, seed=0)
    assert cells.shape[0] == concepts.shape[0] and concepts.shape[1] == len(names) == 5
    assert np.isin(data.train, data.reference_cells).sum() == cells.shape[0]  # all, < 2000
    direct = dataclasses.replace(
        data, intervention=dataclasses.replace(data.intervention, mode="direct")
    )
    assert _causal_reference(causal_bundle, direct, seed=0) is None
    no_dag = dataclasses.replace(data, intervention=dataclasses.replace(data.intervention, dag=()))
    assert _causal_reference(causal_bundle, no_dag, seed=0) is None
