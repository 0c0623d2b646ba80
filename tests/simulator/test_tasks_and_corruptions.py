"""Intervention splits (paper C.6) and concept corruptions (paper C.4)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from simcell import SimcellError
from simcell.simulator import corrupt, make_tasks


def test_splits_follow_the_heldout_pairs(small_dataset):
    data = small_dataset
    obs, truth = data.factual.obs, data.counterfactuals
    assert len(data.tasks) == data.params.n_tasks
    pairs = {(t.cell_type, t.concept) for t in data.tasks}
    assert len(pairs) == len(data.tasks)  # distinct pairs
    for task in data.tasks:
        split = obs[f"split:{task.name}"].to_numpy().astype(str)
        of_type = data.cells.cell_type == task.cell_type
        on = data.cells.concepts[:, task.concept] == 1
        assert not np.any((split == "train") & of_type & on)
        np.testing.assert_array_equal(split == "heldout", of_type & on)
        off = of_type & ~on
        n_intervene = np.count_nonzero(split == "intervene")
        assert n_intervene == np.count_nonzero(off) // 2
        assert np.all(off[split == "intervene"])
        rows = truth.obs[truth.obs["task"] == task.name]
        intervene_names = obs.index[split == "intervene"]
        assert rows["source_cell"].is_unique
        assert set(rows["source_cell"]) == set(intervene_names)
        concepts = truth.obsm["concepts_true"].loc[rows.index].to_numpy()
        assert np.all(concepts[:, task.concept] == 1)


def test_make_tasks_is_seeded_and_warns_when_short():
    rng = np.random.default_rng(0)
    cell_type = rng.integers(0, 3, 400)
    concepts = (rng.random((400, 4)) < 0.4).astype(float)
    a = make_tasks(cell_type, concepts, n_tasks=4, min_cells=10, rng=np.random.default_rng(1))
    b = make_tasks(cell_type, concepts, n_tasks=4, min_cells=10, rng=np.random.default_rng(1))
    assert [(t.cell_type, t.concept) for t in a] == [(t.cell_type, t.concept) for t in b]
    assert all((x.split == y.split).all() for x, y in zip(a, b, strict=True))
    with pytest.warns(UserWarning, match="eligible"):
        few = make_tasks(
            cell_type, concepts, n_tasks=50, min_cells=10, rng=np.random.default_rng(1)
        )
    assert len(few) == 12


def _table(n=500, k=5, seed=0):
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        (rng.random((n, k)) < 0.5).astype(np.float32), columns=[f"concept_{i}" for i in range(k)]
    )


def test_missing_and_incorrect_respect_protection_and_rates():
    table = _table()
    out, record = corrupt(
        table, "missing", 3, protect=["concept_0", "concept_1"], rng=np.random.default_rng(0)
    )
    assert set(record.columns) == {"concept_2", "concept_3", "concept_4"}
    assert out[list(record.columns)].isna().all().all()
    pd.testing.assert_frame_equal(
        out[["concept_0", "concept_1"]], table[["concept_0", "concept_1"]]
    )
    out, record = corrupt(
        table, "incorrect", 1, p=0.3, protect=["concept_0"], rng=np.random.default_rng(0)
    )
    (column,) = record.columns
    flipped = (out[column] != table[column]).mean()
    assert 0.22 < flipped < 0.38  # Binomial(500, 0.3)
    assert record.changed_entries == int((out[column] != table[column]).sum())
    pd.testing.assert_frame_equal(out.drop(columns=column), table.drop(columns=column))


def test_irrelevant_and_duplicate_append_columns():
    table = _table()
    out, record = corrupt(table, "irrelevant", 2, rng=np.random.default_rng(0))
    assert list(out.columns[-2:]) == list(record.added) and out.shape[1] == 7
    assert set(np.unique(out[list(record.added)])) == {0.0, 1.0}
    out, record = corrupt(
        table, "duplicate", 2, protect=["concept_4"], rng=np.random.default_rng(0)
    )
    for source, copy in zip(record.columns, record.added, strict=True):
        np.testing.assert_array_equal(out[source], out[copy])
    assert "concept_4" not in record.columns


def test_bad_corruptions():
    table = _table(k=2)
    with pytest.raises(SimcellError, match="exceeds"):
        corrupt(table, "missing", 2, protect=["concept_0"], rng=np.random.default_rng(0))
    with pytest.raises(SimcellError, match="unknown corruption"):
        corrupt(table, "smudged", 1, rng=np.random.default_rng(0))
    with pytest.raises(SimcellError, match="protected"):
        corrupt(table, "missing", 1, protect=["concept_9"], rng=np.random.default_rng(0))


def test_a_scenario_corruption_is_left_to_the_task():
    """The simulator writes clean annotations; corruption happens per task at
    evaluation (simcell.evaluation.tasks), so it never regenerates counts."""
    from simcell import scenarios
    from simcell.simulator import simulate

    params = scenarios.load(
        "synthetic1", n_cells=1200, n_genes=30, corruption="missing", corruption_level=2, n_tasks=2
    )
    data = simulate(params, seed=2)
    seen = data.factual.obsm["concepts"].to_numpy()
    np.testing.assert_array_equal(seen, data.cells.concepts.astype(np.float32))
    assert data.corruption is None
    assert data.factual.uns["simcell"]["params"]["corruption"] == "missing"


def test_task_corruption_protects_only_the_task_concept_and_is_seeded():
    from simcell.simulator.corrupt import corrupt_for_task

    table = _table(k=5)
    a, record = corrupt_for_task(table, "missing", 3, task="task_0", concept="concept_2", seed=4)
    b, _ = corrupt_for_task(table, "missing", 3, task="task_0", concept="concept_2", seed=4)
    pd.testing.assert_frame_equal(a, b)
    assert "concept_2" not in record.columns and len(record.columns) == 3
    np.testing.assert_array_equal(a["concept_2"], table["concept_2"])
    other, _ = corrupt_for_task(table, "missing", 3, task="task_1", concept="concept_2", seed=4)
    clean, none = corrupt_for_task(table, "none", 0, task="task_0", concept="concept_2", seed=4)
    assert none is None
    pd.testing.assert_frame_equal(clean, table)
    with pytest.raises(SimcellError, match="exceeds the 4"):
        corrupt_for_task(table, "missing", 5, task="task_0", concept="concept_2", seed=4)


def test_task_corruption_chooses_columns_uniformly():
    """Level 1 picks each free column with probability 1/4 (old rule: often forced)."""
    from simcell.simulator.corrupt import corrupt_for_task

    table = _table(n=20, k=5)
    picks = [
        corrupt_for_task(table, "missing", 1, task="task_0", concept="concept_0", seed=s)[
            1
        ].columns[0]
        for s in range(400)
    ]
    counts = pd.Series(picks).value_counts()
    assert set(counts.index) == {"concept_1", "concept_2", "concept_3", "concept_4"}
    # Binomial(400, 1/4): mean 100, sd 8.7
    assert (counts > 100 - 4 * 8.7).all() and (counts < 100 + 4 * 8.7).all()


def test_parse_corruption():
    from simcell.simulator.corrupt import parse_corruption

    assert parse_corruption("missing:3") == ("missing", 3)
    assert parse_corruption("none") == ("none", 0)
    for bad, message in (
        ("smudged:1", "unknown corruption"),
        ("missing", "KIND:LEVEL"),
        ("missing:x", "integer"),
        ("missing:-1", ">= 0"),
    ):
        with pytest.raises(SimcellError, match=message):
            parse_corruption(bad)


def test_every_task_of_default_synthetic2_has_a_heldout_population():
    """Defect 6: a task needs at least ``min_task_cells`` cells of (u, k = 1).

    On the old rule, 31 of 150 default tasks (30 seeds) had no heldout cell; the
    first 10 seeds already include such tasks.
    """
    from simcell import scenarios
    from simcell.simulator.cells import draw_cells
    from simcell.simulator.process import draw_tasks
    from simcell.simulator.world import draw_world

    params = scenarios.load("synthetic2")
    for seed in range(10):
        world = draw_world(params, seed)
        tasks = draw_tasks(params, draw_cells(params, world, seed), seed)
        assert len(tasks) == params.n_tasks
        for task in tasks:
            assert np.count_nonzero(task.split == "heldout") >= params.min_task_cells, (seed, task)


def test_a_pair_without_enough_active_cells_is_not_eligible():
    cell_type = np.repeat([0, 1], 100)
    concepts = np.zeros((200, 1))
    concepts[100:150, 0] = 1.0  # active in type 1 only
    concepts[:5, 0] = 1.0  # 5 active cells of type 0: below min_cells
    with pytest.warns(UserWarning, match="eligible"):
        tasks = make_tasks(
            cell_type, concepts, n_tasks=2, min_cells=10, rng=np.random.default_rng(0)
        )
    assert tasks == []
    concepts[:10, 0] = 1.0  # 10 active cells of type 0: (0, 0) becomes eligible
    (task,) = make_tasks(cell_type, concepts, n_tasks=1, min_cells=10, rng=np.random.default_rng(0))
    assert (task.cell_type, task.concept) == (0, 0)
    assert np.count_nonzero(task.split == "heldout") == 10
