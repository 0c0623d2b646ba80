"""Bring-your-own-model export: the exported space is exactly the harness's."""

from __future__ import annotations

import json

import anndata as ad
import numpy as np
import pytest

from simcell import SimcellError, scenarios
from simcell.evaluation import Corruption, build_task, evaluate, lognormalise, read_predictions
from simcell.evaluation import export as export_module
from simcell.evaluation.export import TEMPLATE, export_tasks
from simcell.evaluation.predictions import PCA_KEY, brought_for_task
from simcell.simulator import read_bundle, schema, simulate, write_bundle

SIZE = {"n_cells": 600, "n_genes": 50, "n_tasks": 2}
FAST = {"models": [], "oracle_samples": 2, "n_boot": 20, "tasks": ["task_0"]}
CELL_METRICS = ("mse", "mae", "pearson")


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("export")


@pytest.fixture(scope="module")
def bundle(root):
    data = simulate(scenarios.load("synthetic2", **SIZE), seed=1, scenario="synthetic2")
    return read_bundle(write_bundle(data, root / "synthetic2"))


@pytest.fixture(scope="module")
def exports(root, bundle):
    """Every task of the bundle, exported once per space (harness seed 0)."""
    return {
        space: export_tasks(bundle, root / f"export-{space}", space=space)
        for space in ("counts", "lognorm", "pca")
    }


@pytest.fixture(scope="module")
def task0(bundle):
    return build_task(bundle, "task_0", seed=0)


def _scores(table, model, space, metric):
    rows = table[(table.model == model) & (table.space == space) & (table.metric == metric)]
    return rows.set_index("task")["value"].sort_index()


@pytest.mark.parametrize(
    "space", [pytest.param("counts", marks=pytest.mark.slow), "lognorm", "pca"]
)
def test_unchanged_template_scores_as_identity(bundle, exports, space):
    """The template's identity prediction, read back by evaluate, is the harness's own
    identity row to 1e-9 in both spaces: the exported space is the one scored."""
    template = exports[space] / TEMPLATE
    table = evaluate(bundle, predictions=template, **FAST)
    for scored in ("pca", "genes"):
        for metric in CELL_METRICS:
            brought = _scores(table, "predictions", scored, metric)
            identity = _scores(table, "identity", scored, metric)
            assert list(brought.index) == ["task_0"]
            np.testing.assert_allclose(brought, identity, rtol=0, atol=1e-9)


@pytest.mark.parametrize("space", ["counts", "lognorm", "pca"])
def test_template_maps_to_the_factual_cells(bundle, exports, task0, space):
    """What evaluate does with each task's template rows (fast, every space)."""
    brought = read_predictions(exports[space] / TEMPLATE, bundle)
    genes, pcs = brought_for_task(brought, task0, bundle.factual)
    np.testing.assert_allclose(genes, task0.intervene_genes, rtol=0, atol=1e-12)
    np.testing.assert_allclose(pcs, task0.x_intervene, rtol=0, atol=1e-5)
    if space == "pca":  # the PCs themselves, not a re-projection
        np.testing.assert_array_equal(pcs, task0.x_intervene)
        np.testing.assert_array_equal(genes, task0.intervene_genes)


def test_lognorm_export_is_the_harness_lognorm(bundle, exports, task0):
    folder = exports["lognorm"] / "task_0"
    recorded = json.loads((folder / "preprocessing.json").read_text())
    assert recorded["target_sum"] == task0.preprocessor.target_sum
    totals = np.asarray(bundle.factual.X[task0.train].sum(axis=1)).ravel()
    assert recorded["target_sum"] == np.median(totals)  # the train cells' median library size
    train = ad.read_h5ad(folder / "train.h5ad")
    assert list(train.obs_names) == list(bundle.factual.obs_names[task0.train])
    expected = lognormalise(bundle.factual.X[task0.train], recorded["target_sum"])
    np.testing.assert_array_equal(train.X.toarray(), expected)
    intervene = ad.read_h5ad(folder / "intervene.h5ad")
    assert list(intervene.obs_names) == list(bundle.factual.obs_names[task0.intervene])
    np.testing.assert_array_equal(intervene.X.toarray(), task0.intervene_genes)
    for column in ("batch", "tissue", "cell_type"):
        assert (train.obs[column] == bundle.factual.obs[column].iloc[task0.train]).all()


def test_pca_export_is_the_harness_pca(exports, task0):
    folder = exports["pca"] / "task_0"
    stored = np.load(folder / "preprocessing.npz")
    np.testing.assert_array_equal(stored["pca_components"], task0.preprocessor.pca.components_)
    np.testing.assert_array_equal(stored["pca_mean"], task0.preprocessor.pca.mean_)
    train = ad.read_h5ad(folder / "train.h5ad")
    # float64 PCs whose float32 cast is exactly what the harness's models train on
    np.testing.assert_array_equal(train.X.astype(np.float32), task0.x_train)
    assert list(train.var_names) == [f"PC{i + 1}" for i in range(task0.x_train.shape[1])]
    intervene = ad.read_h5ad(folder / "intervene.h5ad")
    np.testing.assert_array_equal(intervene.X.astype(np.float32), task0.x_intervene)


def test_corrupted_export_protects_the_task_concept(root, bundle):
    out = export_tasks(bundle, root / "missing-1", corruptions=["missing:1"])
    clean = schema.annotations(bundle.factual)
    assert not clean.isna().to_numpy().any()  # so every NaN below is the corruption's
    for task in schema.read_tasks(bundle.factual):
        data = build_task(bundle, task.name, seed=0)
        harness = data.annotations_for(Corruption("missing", 1))
        for part, rows, seen in (
            ("train", data.train, harness.train),
            ("intervene", data.intervene, harness.intervene),
        ):
            cells = ad.read_h5ad(out / task.name / f"{part}.h5ad")
            concepts = cells.obsm["concepts"]
            np.testing.assert_array_equal(concepts.to_numpy(), seen)  # the harness's draw
            np.testing.assert_array_equal(
                concepts[task.concept].to_numpy(), clean[task.concept].to_numpy()[rows]
            )
            missing = [c for c in concepts.columns if concepts[c].isna().any()]
            assert len(missing) == 1 and missing[0] != task.concept
        targets = cells.obsm["target_concepts"]
        assert (targets[task.concept] == 1).all()
        others = [c for c in targets.columns if c != task.concept]
        np.testing.assert_array_equal(targets[others].to_numpy(), concepts[others].to_numpy())
    record = json.loads((out / "export.json").read_text())
    assert record["corruption"] == "missing:1"


def test_intervention_and_template_uns(root):
    data = simulate(scenarios.load("causal", n_cells=600, n_genes=50, n_tasks=1), seed=1)
    causal = read_bundle(write_bundle(data, root / "causal"))
    out = export_tasks(causal, root / "causal-export", space="pca", n_components=8)
    (task,) = schema.read_tasks(causal.factual)
    uns = ad.read_h5ad(out / task.name / "intervene.h5ad").uns["intervention"]
    assert dict(uns["do"]) == {task.concept: 1.0}
    assert uns["mode"] == schema.intervention_mode(causal.factual)
    edges = tuple(uns["dag"].itertuples(index=False, name=None))
    assert edges == schema.concept_dag(causal.factual) and edges
    template = ad.read_h5ad(out / TEMPLATE)
    assert template.uns["simcell_bundle"] == causal.identity
    assert template.uns["space"] == "pca" and template.n_vars == 8
    assert int(template.uns[PCA_KEY]["n_components"]) == 8
    sources = causal.counterfactual.obs
    assert list(template.obs["source_cell"]) == list(sources["source_cell"].astype(str))


def test_template_from_another_bundle_is_refused(root, bundle):
    other = simulate(scenarios.load("synthetic3", **SIZE), seed=1, scenario="synthetic3")
    other = read_bundle(write_bundle(other, root / "synthetic3"))
    out = export_tasks(other, root / "synthetic3-export", tasks=["task_0"])
    with pytest.raises(SimcellError, match="made on another bundle"):
        read_predictions(out / TEMPLATE, bundle)


def test_pca_template_with_another_seed_or_pca_is_refused(bundle, exports, task0):
    template = exports["pca"] / TEMPLATE
    with pytest.raises(SimcellError, match="exported with seed 0 and n_components 128"):
        evaluate(bundle, predictions=template, seed=1, **FAST)
    with pytest.raises(SimcellError, match="seed 0 and n_components 64"):
        evaluate(bundle, predictions=template, n_components=64, **FAST)
    tampered = ad.read_h5ad(template)
    tampered.uns[PCA_KEY]["digests"]["task_0"] = "0" * 64
    brought = read_predictions(tampered, bundle)
    with pytest.raises(SimcellError, match="PCA of task_0 is not the one"):
        brought_for_task(brought, task0, bundle.factual)
    missing = ad.read_h5ad(template)
    del missing.uns[PCA_KEY]
    with pytest.raises(SimcellError, match="pca space needs uns"):
        read_predictions(missing, bundle)


def test_bad_input_writes_nothing(root, bundle):
    out = root / "refused"
    for kwargs, message in (
        ({"space": "genes"}, "space must be one of"),
        ({"corruptions": ["wrong:1"]}, "unknown corruption"),
        ({"corruptions": ["missing:9"]}, "exceeds the 4 concept columns"),
        ({"corruptions": ["missing:1", "missing:2"]}, "one corruption condition"),
        ({"tasks": ["task_9"]}, "unknown task"),
    ):
        with pytest.raises(SimcellError, match=message):
            export_tasks(bundle, out, **kwargs)
        assert not out.exists()
    with pytest.raises(SimcellError, match="bundle not found"):
        export_tasks(root / "no-bundle", out)
    assert not out.exists()


def test_failed_export_leaves_nothing_and_keeps_foreign_files(root, bundle, monkeypatch):
    out = root / "interrupted"
    calls = []

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("killed on the second task")
        return build_task(*args, **kwargs)

    monkeypatch.setattr(export_module, "build_task", failing)
    with pytest.raises(RuntimeError, match="second task"):
        export_tasks(bundle, out)
    assert not out.exists()
    assert not [p for p in root.iterdir() if p.name.startswith(".interrupted")]
    monkeypatch.undo()

    foreign = root / "shared"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(SimcellError, match="not a simcell export"):
        export_tasks(bundle, foreign, tasks=["task_0"])
    export_tasks(bundle, foreign, tasks=["task_0"], overwrite=True)
    assert (foreign / "notes.txt").read_text() == "mine"
    assert (foreign / TEMPLATE).is_file()
    # an export replaces an earlier export (its own files) without --overwrite
    export_tasks(bundle, root / "twice", tasks=["task_0"])
    again = export_tasks(bundle, root / "twice", space="lognorm", tasks=["task_1"])
    record = json.loads((again / "export.json").read_text())
    assert record["space"] == "lognorm" and record["tasks"] == ["task_1"]
    assert not (again / "task_0").exists()
