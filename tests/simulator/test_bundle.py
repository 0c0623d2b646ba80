"""Writing and reading bundles: layout, determinism, atomicity."""

from __future__ import annotations

import json

import numpy as np
import pytest

from simcell import SimcellError
from simcell.simulator import read_bundle, simulate, write_bundle


def test_layout_roundtrip(small_dataset, tmp_path):
    path = write_bundle(small_dataset, tmp_path / "b")
    bundle = read_bundle(path, verify=True)
    factual = bundle.factual
    assert factual.X.dtype == np.int32 and factual.X.format == "csr"
    assert (factual.X != small_dataset.factual.X).nnz == 0
    for column in ("batch", "tissue", "cell_type"):
        assert factual.obs[column].dtype == "category"
    assert {"concepts", "concepts_true"} <= set(factual.obsm)
    assert factual.obsm["concepts"].dtypes.unique().tolist() == [np.float32]
    assert set(factual.varm) == {
        "concept_effects",
        "batch_effects",
        "tissue_effects",
        "cell_type_effects",
    }
    np.testing.assert_array_equal(
        factual.varm["concept_effects"], small_dataset.world.concept_effects.T
    )
    meta = factual.uns["simcell"]
    assert meta["seed"] == 7 and meta["scenario"] == "synthetic2"
    assert len(meta["tasks"]) == len(small_dataset.tasks)
    cf = bundle.counterfactual
    assert list(cf.obs.columns) == ["task", "source_cell", "mode"]
    assert cf.X.dtype == np.int32
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["params"]["noise_sd"] == 0.08
    assert not list(tmp_path.glob(".b.tmp-*"))


def test_same_seed_same_bytes_of_content(small_params, tmp_path):
    a = write_bundle(simulate(small_params, seed=7), tmp_path / "a")
    b = write_bundle(simulate(small_params, seed=7), tmp_path / "b")
    ma = json.loads((a / "manifest.json").read_text())
    mb = json.loads((b / "manifest.json").read_text())
    assert ma["params"] == mb["params"]
    ba, bb = read_bundle(a), read_bundle(b)
    assert (ba.factual.X != bb.factual.X).nnz == 0
    assert (ba.counterfactual.X != bb.counterfactual.X).nnz == 0
    assert ba.factual.obs.equals(bb.factual.obs)
    assert ba.factual.obsm["concepts"].equals(bb.factual.obsm["concepts"])


def test_failed_write_leaves_nothing(small_dataset, tmp_path, monkeypatch):
    def explode(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(type(small_dataset.counterfactuals), "write_h5ad", explode)
    with pytest.raises(RuntimeError):
        write_bundle(small_dataset, tmp_path / "b")
    assert list(tmp_path.iterdir()) == []


def test_refuses_to_overwrite_a_foreign_directory(small_dataset, tmp_path):
    target = tmp_path / "precious"
    target.mkdir()
    (target / "thesis.tex").write_text("x")
    with pytest.raises(SimcellError, match="not a simcell bundle"):
        write_bundle(small_dataset, target)
    assert (target / "thesis.tex").exists()


def test_read_errors(tmp_path):
    with pytest.raises(SimcellError, match="not a simcell bundle"):
        read_bundle(tmp_path)


# --------------------------------------------------------------- never destroy a user's files


def _staging_left(parent):
    return [path.name for path in parent.iterdir() if ".tmp-" in path.name]


def test_rerun_replaces_own_bundle(small_params, small_dataset, tmp_path):
    path = write_bundle(small_dataset, tmp_path / "b")
    write_bundle(simulate(small_params, seed=8, scenario="synthetic2"), path)
    assert read_bundle(path, verify=True).manifest["seed"] == 8
    assert sorted(p.name for p in path.iterdir()) == [
        "counterfactual.h5ad",
        "factual.h5ad",
        "manifest.json",
    ]
    assert _staging_left(tmp_path) == []


def test_a_foreign_manifest_proves_nothing(small_dataset, tmp_path):
    app = tmp_path / "app"
    app.mkdir()
    (app / "manifest.json").write_text('{"name": "my web app"}')
    (app / "index.html").write_text("<html>")
    with pytest.raises(SimcellError, match="not a simcell bundle and holds 2 files"):
        write_bundle(small_dataset, app)
    assert sorted(p.name for p in app.iterdir()) == ["index.html", "manifest.json"]
    write_bundle(small_dataset, app, overwrite=True)
    assert (app / "index.html").read_text() == "<html>"
    assert (app / "manifest.json.~1~").read_text() == '{"name": "my web app"}'
    assert read_bundle(app, verify=True).manifest["seed"] == 7


def test_own_bundle_with_a_foreign_file(small_params, small_dataset, tmp_path):
    path = write_bundle(small_dataset, tmp_path / "b")
    (path / "notes.txt").write_text("keep me")
    with pytest.raises(SimcellError, match="holds 1 file simcell did not write.*--overwrite"):
        write_bundle(simulate(small_params, seed=8), path)
    assert read_bundle(path).manifest["seed"] == 7
    write_bundle(simulate(small_params, seed=8), path, overwrite=True)
    assert read_bundle(path, verify=True).manifest["seed"] == 8
    assert (path / "notes.txt").read_text() == "keep me"
    assert not list(path.glob("*.~*~")) and _staging_left(tmp_path) == []


def test_bundle_folder_has_the_umask_mode(small_dataset, tmp_path):
    import os

    from simcell import scenarios
    from simcell.simulator import generate_bundle

    previous = os.umask(0o022)
    try:
        write_bundle(small_dataset, tmp_path / "b")
        params = scenarios.load("synthetic2", n_cells=300, n_genes=20, n_tasks=1)
        generate_bundle(params, 0, tmp_path / "g")
    finally:
        os.umask(previous)
    assert (tmp_path / "b").stat().st_mode & 0o777 == 0o755
    assert (tmp_path / "g").stat().st_mode & 0o777 == 0o755


def test_generate_refuses_before_simulating(tmp_path, monkeypatch):
    from simcell import scenarios
    from simcell.simulator import generate_bundle, stream

    def never(*args, **kwargs):
        raise AssertionError("simulated although the folder is refused")

    monkeypatch.setattr(stream, "prepare", never)
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "thesis.tex").write_text("x")
    params = scenarios.load("synthetic2", n_cells=300, n_genes=20)
    with pytest.raises(SimcellError, match="not a simcell bundle"):
        generate_bundle(params, 0, tmp_path / "b")


def test_a_stop_request_ends_generation_and_publishes_nothing(tmp_path):
    from simcell import scenarios
    from simcell._atomic import clear_stop, request_stop
    from simcell.simulator import generate_bundle

    done = []

    def progress(n):  # a signal handler whose KeyboardInterrupt was swallowed
        done.append(n)
        request_stop()

    params = scenarios.load("synthetic2", n_cells=2000, n_genes=20)
    try:
        with pytest.raises(KeyboardInterrupt):
            generate_bundle(params, 0, tmp_path / "b", chunk_size=200, progress=progress)
    finally:
        clear_stop()
    assert len(done) == 1  # the first chunk, then the run stopped
    assert list(tmp_path.iterdir()) == []


def test_truth_backed_reads_the_same_rows(small_dataset, tmp_path):
    """The evaluation opens the truth backed (its rows are read per task): same values."""
    from simcell.simulator import schema

    path = write_bundle(small_dataset, tmp_path / "b")
    loaded, backed = read_bundle(path), read_bundle(path, truth_backed=True)
    assert backed.counterfactual.isbacked and not loaded.counterfactual.isbacked
    for task in schema.read_tasks(loaded.factual):
        a, b = schema.read_truth(loaded, task.name), schema.read_truth(backed, task.name)
        assert (a.counts != b.counts).nnz == 0
        np.testing.assert_array_equal(a.sources, b.sources)
        np.testing.assert_array_equal(a.concepts, b.concepts)
