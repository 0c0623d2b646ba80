"""``simcell generate`` and ``simcell scenarios`` through click's runner."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

import simcell
from simcell.cli import main
from simcell.simulator import read_bundle


def test_version_and_scenarios():
    runner = CliRunner()
    assert simcell.__version__ in runner.invoke(main, ["--version"]).output
    result = runner.invoke(main, ["scenarios"])
    assert result.exit_code == 0 and "synthetic2" in result.output


def test_generate_writes_a_bundle(tmp_path):
    out = tmp_path / "bundle"
    result = CliRunner().invoke(
        main,
        [
            "generate",
            "--scenario",
            "synthetic2",
            "-o",
            str(out),
            "--n-cells",
            "800",
            "--n-genes",
            "50",
            "--seed",
            "4",
            "--set",
            "n_tasks=2",
            "--quiet",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "800 cells" in result.output and str(out) in result.output
    bundle = read_bundle(out)
    assert bundle.factual.shape == (800, 50)
    assert bundle.manifest["seed"] == 4 and bundle.manifest["params"]["n_tasks"] == 2


def test_default_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(
        main,
        ["generate", "--n-cells", "300", "--n-genes", "20", "--set", "n_tasks=0", "--quiet"],
    )
    assert result.exit_code == 0, result.output
    read_bundle(tmp_path / "simcell-data" / "synthetic2")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--scenario", "nope"], "unknown scenario"),
        (["--set", "bogus=1"], "unknown parameter"),
        (["--set", "noise_sd=-2"], "noise_sd"),
        (["--set", "noise_sd"], "key=value"),
        (["--seed", "-1"], "seed"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, args, message):
    out = tmp_path / "never"
    result = CliRunner().invoke(main, ["generate", "-o", str(out), "--quiet", *args])
    assert result.exit_code != 0
    assert message in result.output
    assert "Traceback" not in result.output
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_unwritable_directory(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    result = CliRunner().invoke(
        main,
        [
            "generate",
            "-o",
            str(blocker / "b"),
            "--n-cells",
            "50",
            "--n-genes",
            "5",
            "--set",
            "n_tasks=0",
            "--quiet",
        ],
    )
    assert result.exit_code == 1 and "Error" in result.output
    assert "Traceback" not in result.output
