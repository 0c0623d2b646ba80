"""A bundle without the true counterfactuals (as a bundle of real cells is) is read,
verified and scored on the distributional metrics alone."""

from __future__ import annotations

import json
import shutil

import pytest

from simcell import SimcellError, scenarios
from simcell.evaluation import evaluate
from simcell.evaluation.metrics import list_metrics
from simcell.simulator import read_bundle, schema, simulate, write_bundle
from simcell.simulator.bundle import bundle_identity

FAST = {"oracle_samples": 4, "n_boot": 20, "n_components": 16, "tasks": ["task_0"]}


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    params = scenarios.load("synthetic2", n_cells=900, n_genes=40, n_tasks=1, min_task_cells=5)
    data = simulate(params, seed=2, scenario="synthetic2")
    root = tmp_path_factory.mktemp("truth")
    return write_bundle(data, root / "full"), write_bundle(data, root / "real", truth=False)


def _manifest(path):
    return json.loads((path / schema.MANIFEST).read_text())


def test_a_bundle_without_truth_is_read_with_none(bundles):
    full, real = bundles
    assert sorted(p.name for p in real.iterdir()) == [schema.FACTUAL, schema.MANIFEST]
    checksums = _manifest(real)[schema.MANIFEST_CHECKSUMS]
    assert list(checksums) == [schema.FACTUAL]
    # the factual cells are the same bytes with or without the truth beside them
    assert checksums[schema.FACTUAL] == _manifest(full)[schema.MANIFEST_CHECKSUMS][schema.FACTUAL]
    bundle = read_bundle(real)
    assert bundle.counterfactual is None and not schema.has_truth(bundle)
    assert schema.has_truth(read_bundle(full))
    assert read_bundle(real, verify=False).counterfactual is None


def test_the_verified_path_still_checks_what_is_there(bundles, tmp_path):
    _, real = bundles
    damaged = shutil.copytree(real, tmp_path / "damaged")
    with open(damaged / schema.FACTUAL, "r+b") as handle:
        handle.seek(-64, 2)
        handle.write(b"\0" * 64)
    with pytest.raises(SimcellError, match="factual.h5ad does not match its checksum"):
        read_bundle(damaged)
    # a manifest that lists a file it cannot have is refused
    odd = shutil.copytree(real, tmp_path / "odd")
    manifest = _manifest(odd)
    manifest[schema.MANIFEST_CHECKSUMS]["notes.txt"] = "0" * 64
    manifest[schema.MANIFEST_IDENTITY] = bundle_identity(manifest)
    (odd / schema.MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(SimcellError, match="has no checksums of factual.h5ad"):
        read_bundle(odd)


def test_truth_listed_in_the_manifest_must_be_there(bundles, tmp_path):
    full, _ = bundles
    stripped = shutil.copytree(full, tmp_path / "stripped")
    (stripped / schema.COUNTERFACTUAL).unlink()
    for verify in (True, False):
        with pytest.raises(SimcellError, match="counterfactual.h5ad is missing"):
            read_bundle(stripped, verify=verify)
    # dropping the truth's checksum from the manifest breaks the manifest's identity
    manifest = _manifest(stripped)
    del manifest[schema.MANIFEST_CHECKSUMS][schema.COUNTERFACTUAL]
    (stripped / schema.MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(SimcellError, match="was edited"):
        read_bundle(stripped)


def test_evaluate_scores_distributional_metrics_only(bundles):
    _, real = bundles
    table = evaluate(real, models=[], **FAST)
    assert not table.empty
    levels = {metric.name: metric.level for metric in list_metrics()}
    scored = {levels[name] for name in table.metric if name in levels}
    assert "distribution" in scored and "cell" not in scored
    assert not table.metric.isin([m.name for m in list_metrics("cell")] + ["gap_closed"]).any()
    assert "oracle" not in set(table.model)
    with pytest.raises(SimcellError, match="cell-level scores need the true counterfactuals"):
        evaluate(real, models=[], cell_level=True, **FAST)
