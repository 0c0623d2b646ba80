"""``simcell export``: the round trip through ``simcell evaluate``, and one-line refusals."""

from __future__ import annotations

import json

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from simcell import scenarios
from simcell.cli import main
from simcell.simulator import generate_bundle, read_bundle


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    path = tmp_path_factory.mktemp("export-cli") / "bundle"
    generate_bundle(scenarios.load("synthetic2", n_cells=600, n_genes=50, n_tasks=1), 1, path)
    return path


def _run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_export_then_evaluate_the_template(bundle, tmp_path):
    out = tmp_path / "export"
    result = _run("export", bundle, "-o", out, "--space", "pca", "--seed", "3")
    assert result.exit_code == 0, result.output
    record = json.loads((out / "export.json").read_text())
    assert record["space"] == "pca" and record["seed"] == 3
    assert record["bundle_identity"] == read_bundle(bundle).identity
    template = ad.read_h5ad(out / "predictions_template.h5ad")
    assert template.uns["simcell_bundle"] == record["bundle_identity"]

    report = tmp_path / "report"
    args = ["evaluate", bundle, "--models", "", "--predictions", out / "predictions_template.h5ad"]
    refused = _run(*args, "-o", report)  # the export's seed is 3, evaluate's default 0
    assert refused.exit_code == 1 and "seed 3" in refused.output
    assert "Traceback" not in refused.output and not report.exists()
    result = _run(*args, "--seed", "3", "-o", report)
    assert result.exit_code == 0, result.output
    table = pd.read_csv(report / "results.csv")
    cell = table[table.metric.isin(["mse", "mae", "pearson"])]
    brought = cell[cell.model == "predictions"].set_index(["task", "space", "metric"])["value"]
    identity = cell[cell.model == "identity"].set_index(["task", "space", "metric"])["value"]
    assert len(brought) == 6  # three metrics in pca and gene space
    np.testing.assert_allclose(brought.sort_index(), identity.sort_index(), rtol=0, atol=1e-9)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--space", "genes"], "Invalid value for '--space'"),
        (["--corrupt", "wrong:1"], "unknown corruption 'wrong'"),
        (["--corrupt", "missing:7"], "exceeds the 4 concept columns"),
        (["--corrupt", "missing:1", "--corrupt", "missing:2"], "one corruption condition"),
        (["--tasks", "task_7"], "unknown task"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(bundle, tmp_path, args, message):
    out = tmp_path / "export"
    result = _run("export", bundle, "-o", out, *args)
    assert result.exit_code != 0
    assert message in result.output and "Traceback" not in result.output
    assert result.output.strip().splitlines()[-1].startswith("Error:")
    assert not out.exists()


def test_missing_or_edited_bundle_is_refused(bundle, tmp_path):
    out = tmp_path / "export"
    result = _run("export", tmp_path / "nowhere", "-o", out)
    assert result.exit_code == 2 and "does not exist" in result.output
    not_a_bundle = tmp_path / "empty"
    not_a_bundle.mkdir()
    result = _run("export", not_a_bundle, "-o", out)
    assert result.exit_code == 1 and "is not a simcell bundle" in result.output
    assert not out.exists()
    # an edited manifest fails verification; --no-verify exports it anyway
    edited = tmp_path / "edited"
    edited.mkdir()
    for name in ("factual.h5ad", "counterfactual.h5ad"):
        (edited / name).write_bytes((bundle / name).read_bytes())
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["seed"] = manifest["seed"] + 1
    (edited / "manifest.json").write_text(json.dumps(manifest))
    result = _run("export", edited, "-o", out)
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert not out.exists()
    result = _run("export", edited, "-o", out, "--no-verify", "--space", "lognorm")
    assert result.exit_code == 0, result.output
    assert (out / "task_0" / "preprocessing.json").is_file()
