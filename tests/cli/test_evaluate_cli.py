"""``simcell evaluate`` (and generate) refuse bad input up front, in one line."""

from __future__ import annotations

import json
import shutil

import h5py
import pandas as pd
import pytest
import torch
from click.testing import CliRunner

from simcell import SimcellError, SimcellWarning, scenarios
from simcell.cli import main
from simcell.evaluation.run import parse_names, plan_evaluation
from simcell.simulator import generate_bundle

FAST = ["--tasks", "task_0", "--preset", "fast"]
NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    path = tmp_path_factory.mktemp("cli") / "bundle"
    generate_bundle(scenarios.load("synthetic2", n_cells=300, n_genes=50, n_tasks=1), 2, path)
    return path


@pytest.fixture()
def bundle(pristine, tmp_path):
    copy = tmp_path / "bundle"
    shutil.copytree(pristine, copy)
    return copy


def _run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def _one_line_error(result, fragment):
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and fragment in errors[0], result.output


# ---------------------------------------------------------------- model lists
def test_parse_names():
    assert parse_names(None) is None
    assert parse_names("") == () and parse_names(" , ,") == ()
    assert parse_names(" mean_shift ,cvae") == ("mean_shift", "cvae")
    with pytest.warns(SimcellWarning, match="mean_shift listed more than once"):
        assert parse_names("mean_shift,cvae,mean_shift") == ("mean_shift", "cvae")


def test_an_empty_model_list_trains_no_model(bundle, tmp_path):
    result = _run("evaluate", bundle, "--models", "", *FAST, "-o", tmp_path / "r")
    assert result.exit_code == 0, result.output
    table = pd.read_csv(tmp_path / "r" / "results.csv")
    # only the reference rows: no trained model
    assert set(table.model) <= {"oracle", "oracle_sample", "identity", "noise_floor", "heldout"}
    config = json.loads((tmp_path / "r" / "config.json").read_text())
    assert config["models"] == [] and config["model_configs"] == {}


@pytest.mark.filterwarnings("default::simcell.SimcellWarning")  # as a user's CLI shows them
def test_a_repeated_model_runs_once_with_a_one_line_warning(bundle, tmp_path):
    args = ("--models", "mean_shift,mean_shift", *FAST, "-o", tmp_path / "r")
    result = _run("evaluate", bundle, *args)
    assert result.exit_code == 0, result.output
    assert "Warning: model(s) mean_shift listed more than once; each is run once" in result.output
    table = pd.read_csv(tmp_path / "r" / "results.csv")
    mse = table[(table.metric == "mse") & (table.space == "pca")]
    assert mse.model.tolist().count("mean_shift") == 1


# ---------------------------------------------------------------- devices
@NO_CUDA
def test_cuda_without_cuda_is_refused_before_anything_runs(bundle, tmp_path):
    result = _run("evaluate", bundle, "--models", "mean_shift", "--device", "cuda", "-o", tmp_path)
    _one_line_error(result, "device 'cuda' was requested but CUDA is not available")
    assert "task_0" not in result.output  # no preprocessing, no oracle
    assert list(tmp_path.iterdir()) == [tmp_path / "bundle"]
    with pytest.raises(SimcellError, match="CUDA is not available"):
        plan_evaluation(bundle, device="cuda")


def test_the_report_records_the_device_and_preset_that_ran(bundle):
    plan = plan_evaluation(bundle, models="", device="auto", preset="auto")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert plan.device == expected
    assert plan.preset == ("paper" if expected == "cuda" else "fast")
    config = plan.config()
    assert config["device"] == expected and config["preset"] == plan.preset
    assert config["bundle_identity"] == plan.bundle.identity and config["verified"] is True


# ---------------------------------------------------------------- verification
def test_a_tampered_bundle_is_refused_unless_no_verify(bundle, tmp_path):
    with h5py.File(bundle / "factual.h5ad", "r+") as handle:
        handle["X/data"][0] += 1
    result = _run("evaluate", bundle, "--models", "", *FAST, "-o", tmp_path / "r")
    _one_line_error(result, "factual.h5ad does not match its checksum")
    assert not (tmp_path / "r").exists()
    result = _run("evaluate", bundle, "--models", "", *FAST, "--no-verify", "-o", tmp_path / "r")
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "r" / "config.json").read_text())["verified"] is False


def test_an_edited_noise_sd_is_refused(bundle, tmp_path):
    import anndata as ad

    factual = ad.read_h5ad(bundle / "factual.h5ad")
    factual.uns["simcell"]["params"]["noise_sd"] = 0.5
    factual.write_h5ad(bundle / "factual.h5ad")
    result = _run("evaluate", bundle, "--models", "", *FAST, "-o", tmp_path / "r")
    _one_line_error(result, "does not match its checksum")


# ---------------------------------------------------------------- generate
def _generate(tmp_path, *args):
    return _run("generate", "-o", tmp_path / "g", "--quiet", *args)


@pytest.mark.filterwarnings("default::simcell.SimcellWarning")
def test_too_many_tasks_is_a_one_line_warning(tmp_path):
    result = _generate(tmp_path, "--n-cells", "300", "--n-genes", "20", "--set", "n_tasks=500")
    assert result.exit_code == 0, result.output
    warning = [line for line in result.output.splitlines() if "eligible" in line]
    assert warning == [f"Warning: {warning[0].removeprefix('Warning: ')}"]
    assert "only" in warning[0] and "500 tasks" in warning[0]
    assert "SimcellWarning" not in result.output and ".py:" not in result.output


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--n-cells", "1000000000000"], "GiB of memory, more than the"),
        (["--n-genes", "1"], "n_genes must be >= 2"),
        (["--set", "concept_kinds=binary"], "one kind ('binary' or 'continuous') per concept"),
        (["--set", "noise_sd=6"], "counts would overflow int32"),
        (["--set", "baseline_range=[1e9,1e10]"], "counts would overflow int32"),
    ],
)
def test_generate_refuses_what_cannot_be_right(tmp_path, args, fragment):
    result = _generate(tmp_path, *args)
    _one_line_error(result, fragment)
    assert list(tmp_path.iterdir()) == []


def test_a_bad_value_in_a_scenario_file_names_the_file(tmp_path):
    scenario = tmp_path / "mine.toml"
    scenario.write_text('extends = "synthetic2"\nnoise_sd = "high"\n')
    result = _run("generate", "--scenario", scenario, "-o", tmp_path / "g", "--quiet")
    _one_line_error(result, f"scenario {scenario}: noise_sd must be a number, got 'high'")
    result = _run("generate", "-o", tmp_path / "g", "--quiet", "--set", "noise_sd=-1")
    _one_line_error(result, "override: noise_sd must be >= 0")
