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
