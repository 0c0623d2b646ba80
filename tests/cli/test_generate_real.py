"""``simcell generate --scenario NAME --input FILE.h5ad`` through click's runner."""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path

import pytest
from click.testing import CliRunner

from simcell.cli import main
from simcell.simulator import read_bundle, schema


def _layouts():
    path = Path(__file__).resolve().parents[1] / "real_layouts.py"
    spec = importlib.util.spec_from_file_location("real_layouts", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


L = _layouts()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli-real")
    return {
        "kang": L.kang_pertpy(root / "kang_counts_25k.h5ad"),
        "cui": L.cui_dictionary(root / "cui.h5ad"),
    }


def _generate(*args: str):
    return CliRunner().invoke(main, ["generate", *args])


def test_kang_file_becomes_a_bundle_without_truth(files, tmp_path):
    out = tmp_path / "kang"
    args = ["--scenario", "kang2017", "--input", str(files["kang"]), "--min-cells", "10"]
    result = _generate(*args, "-o", str(out))
    assert result.exit_code == 0, result.output
    assert "8 proxy tasks" in result.output and str(out) in result.output
    bundle = read_bundle(out)
    assert bundle.counterfactual is None
    sha = hashlib.sha256(files["kang"].read_bytes()).hexdigest()
    assert bundle.manifest[schema.MANIFEST_PARAMS]["input_sha256"] == sha
    assert bundle.manifest[schema.MANIFEST_SCENARIO] == "kang2017"
    assert bundle.manifest[schema.MANIFEST_PARAMS]["subtypes"] == "plain"
    # the second command: a report whose ratio tables are models x subtypes (Table S9)
    report = tmp_path / "report"
    result = CliRunner().invoke(
        main,
        [
            "evaluate",
            str(out),
            "--models",
            "",
            "--tasks",
            "B_cells_0,NK_cells_1",
            "-o",
            str(report),
        ],
    )
    assert result.exit_code == 0, result.output
    summary = (report / "summary.md").read_text()
    table = summary.split("## rmmd (pca)")[1].split("##")[0]
    assert "| model | B_cells_0 | NK_cells_1 | mean ± sd |" in table
    assert "| noise_floor |" in table and "| identity |" in table
    assert "## mse" not in summary  # no cell-level scores without twins


def test_generic_perturbation_with_declared_columns(files, tmp_path):
    out = tmp_path / "cui"
    args = ["--scenario", "perturbation", "--input", str(files["cui"]), "-o", str(out)]
    declared = ["--condition-key", "sample", "--control", "PBS", "--cell-type-key", "celltype"]
    options = ["--layer", "counts", "--subtypes", "none", "--min-cells", "10"]
    result = _generate(*args, *declared, *options)
    assert result.exit_code == 0, result.output
    tasks = [t.name for t in schema.read_tasks(read_bundle(out).factual)]
    assert tasks == ["NK_cell__IL15", "NK_cell__TNFa", "T_cell_CD4__IL15", "T_cell_CD4__TNFa"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--scenario", "kang2017"], "give --input FILE.h5ad"),
        (["--scenario", "synthetic2", "--input", "{kang}"], "--input takes a real-data scenario"),
        (
            ["--scenario", "perturbation", "--input", "{kang}", "--condition-key", "label"],
            "needs --control, --cell-type-key",
        ),
        (
            ["--scenario", "kang2017", "--input", "{kang}", "--cell-type-key", "celltype"],
            "no obs column 'celltype'",
        ),
        (["--scenario", "kang2017", "--input", "{kang}", "--control", "none"], "'none' does not"),
        (["--scenario", "cui2024", "--input", "{cui}", "--layer", "raw"], "no layer 'raw'"),
    ],
)
def test_bad_input_is_one_line(files, tmp_path, args, message):
    args = [a.format(kang=files["kang"], cui=files["cui"]) for a in args]
    result = _generate(*args, "-o", str(tmp_path / "b"))
    assert result.exit_code == 1
    assert message in result.output
    assert result.output.count("\n") == 1 and "Traceback" not in result.output
    assert not (tmp_path / "b").exists()


def test_simulation_options_are_refused_with_real_data(files, tmp_path):
    result = _generate("--scenario", "kang2017", "--input", str(files["kang"]), "--n-cells", "9")
    assert result.exit_code == 2 and "apply to simulated scenarios" in result.output
