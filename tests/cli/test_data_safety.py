"""The CLI never destroys a user's files (issue 9, items 1, 2, 8, 10, 11, 13).

Each data-loss test fills a folder with files simcell did not write and checks
that every one of them survives, with its content, whatever the command does.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from simcell.cli import main
from simcell.simulator import read_bundle

SMALL = [
    "--scenario",
    "synthetic2",
    "--n-cells",
    "300",
    "--n-genes",
    "50",
    "--set",
    "n_tasks=1",
    "--quiet",
]
EVALUATE = ["--models", "mean_shift", "--tasks", "task_0"]
FOREIGN = {
    "precious.txt": "a week of work",
    "results.csv": "mine,not,simcell's\n1,2,3\n",
    "manifest.json": '{"name": "my web app", "version": "2.0"}',
    "notes/today.md": "# notes",
}


def _invoke(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args])


def _foreign_folder(folder: Path) -> Path:
    for name, text in FOREIGN.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)
    return folder


def _assert_foreign_survive(folder: Path, renamed: tuple[str, ...] = ()) -> None:
    for name, text in FOREIGN.items():
        kept = f"{name}.~1~" if name in renamed else name
        assert (folder / kept).read_text() == text, kept


def _assert_one_line_error(result, *phrases: str) -> None:
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output and result.exception.__class__ is SystemExit
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    for phrase in phrases:
        assert phrase in lines[0], lines[0]


def _staging_left(parent: Path) -> list[str]:
    return [path.name for path in parent.iterdir() if ".tmp-" in path.name]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "bundle"
    result = _invoke("generate", *SMALL, "-o", path)
    assert result.exit_code == 0, result.output
    return path


# ----------------------------------------------------------------------- evaluate -o


def test_evaluate_into_the_current_folder_is_refused(bundle, tmp_path, monkeypatch):
    work = _foreign_folder(tmp_path / "w")
    monkeypatch.chdir(work)
    result = _invoke("evaluate", bundle, *EVALUATE, "-o", ".")
    _assert_one_line_error(result, "refusing to write into .", "current directory")
    _assert_foreign_survive(work)
    assert sorted(p.name for p in work.iterdir()) == sorted(
        ["precious.txt", "results.csv", "manifest.json", "notes"]
    )


def test_evaluate_into_a_folder_with_foreign_files(bundle, tmp_path):
    out = _foreign_folder(tmp_path / "r")
    result = _invoke("evaluate", bundle, *EVALUATE, "-o", out)
    _assert_one_line_error(result, "not a simcell report", "4 files", "--overwrite")
    _assert_foreign_survive(out)
    assert sorted(p.name for p in out.iterdir()) == [
        "manifest.json",
        "notes",
        "precious.txt",
        "results.csv",
    ]
    # --overwrite writes the report beside them; the foreign results.csv is kept aside
    result = _invoke("evaluate", bundle, *EVALUATE, "-o", out, "--overwrite")
    assert result.exit_code == 0, result.output
    _assert_foreign_survive(out, renamed=("results.csv",))
    assert "mean_shift" in (out / "results.csv").read_text()
    assert (out / "plots" / "mse_pca.png").is_file()
    assert _staging_left(tmp_path) == []


@pytest.mark.parametrize("where", ["..", "home", "bundle", "bundle_parent"])
def test_evaluate_into_a_dangerous_folder_is_refused(where, bundle, tmp_path, monkeypatch):
    home = _foreign_folder(tmp_path / "home")
    work = _foreign_folder(home / "w")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(work)
    before = sorted(p.name for p in bundle.parent.iterdir())
    out = {"..": "..", "home": str(home), "bundle": bundle, "bundle_parent": bundle.parent}[where]
    result = _invoke("evaluate", bundle, *EVALUATE, "-o", out, "--overwrite")
    _assert_one_line_error(result, "refusing to write into")
    _assert_foreign_survive(home)
    _assert_foreign_survive(work)
    assert sorted(p.name for p in bundle.parent.iterdir()) == before
    read_bundle(bundle, verify=True)


def test_evaluate_dot_inside_a_bundle(bundle, monkeypatch):
    monkeypatch.chdir(bundle)
    result = _invoke("evaluate", ".", *EVALUATE)
    assert result.exit_code == 0, result.output
    report = bundle.with_name(bundle.name + "-evaluation")
    assert "mean_shift" in (report / "results.csv").read_text()
    # the normal re-run replaces simcell's own report
    (report / "results.csv").unlink()
    result = _invoke("evaluate", ".", *EVALUATE)
    assert result.exit_code == 0, result.output
    assert (report / "results.csv").is_file()
    marker = json.loads((report / ".simcell-report.json").read_text())
    assert set(marker["files"]) == {
        str(p.relative_to(report)) for p in report.rglob("*") if p.is_file()
    } - {".simcell-report.json"}


def test_report_folder_gets_the_umask_mode(bundle, tmp_path):
    previous = os.umask(0o022)
    try:
        result = _invoke("evaluate", bundle, *EVALUATE, "-o", tmp_path / "r")
    finally:
        os.umask(previous)
    assert result.exit_code == 0, result.output
    assert (tmp_path / "r").stat().st_mode & 0o777 == 0o755


# ----------------------------------------------------------------------- generate -o


def test_generate_into_a_folder_with_a_foreign_manifest(tmp_path):
    out = _foreign_folder(tmp_path / "app")
    result = _invoke("generate", *SMALL, "-o", out)
    _assert_one_line_error(result, "not a simcell bundle", "--overwrite")
    _assert_foreign_survive(out)
    result = _invoke("generate", *SMALL, "-o", out, "--overwrite")
    assert result.exit_code == 0, result.output
    _assert_foreign_survive(out, renamed=("manifest.json",))
    assert read_bundle(out, verify=True).factual.shape == (300, 50)
    # simcell's own files are now proven, the foreign ones still stop a plain re-run
    result = _invoke("generate", *SMALL, "-o", out)
    _assert_one_line_error(result, "simcell did not write", "--overwrite")
    _assert_foreign_survive(out, renamed=("manifest.json",))


@pytest.mark.parametrize("where", [".", "..", "home"])
def test_generate_into_a_dangerous_folder_is_refused(where, tmp_path, monkeypatch):
    home = _foreign_folder(tmp_path / "home")
    work = _foreign_folder(home / "w")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(work)
    out = {".": ".", "..": "..", "home": str(home)}[where]
    for extra in ([], ["--overwrite"]):
        result = _invoke("generate", *SMALL, "-o", out, *extra)
        _assert_one_line_error(result, "refusing to write into")
    _assert_foreign_survive(home)
    _assert_foreign_survive(work)
    assert not list(tmp_path.rglob("*.tmp-*"))


def test_generate_dot_in_an_empty_folder_is_a_one_line_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = _invoke("generate", *SMALL, "-o", ".")
    _assert_one_line_error(result, "current directory")
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------ signals and staging

BIG = ["--n-cells", "40000", "--n-genes", "400", "--threads", "2", "--quiet"]


def _start_generate(out: Path) -> subprocess.Popen:
    """A ``simcell generate`` child, returned once its counts are being computed."""
    child = subprocess.Popen(
        [sys.executable, "-m", "simcell", "generate", *BIG, "-o", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and child.poll() is None:
        staged = list(out.parent.glob(f".{out.name}.tmp-*/counterfactual.h5ad"))
        if staged:
            time.sleep(0.3)  # into the count pass
            return child
        time.sleep(0.05)
    child.kill()
    pytest.fail(f"generate never started: {child.communicate()}")


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_stops_generate_and_publishes_nothing(signum, tmp_path):
    out = tmp_path / "b"
    child = _start_generate(out)
    child.send_signal(signum)
    stdout, stderr = child.communicate(timeout=60)
    assert child.returncode != 0, (stdout, stderr)
    assert "Aborted" in stderr and "Traceback" not in stderr, stderr
    assert "Bundle written" not in stdout
    assert list(tmp_path.iterdir()) == []  # no bundle, no staging folder


def test_staging_of_a_killed_run_is_cleaned_by_the_next_run(tmp_path):
    out = tmp_path / "b"
    child = _start_generate(out)
    child.kill()
    child.wait(timeout=60)
    (stale,) = _staging_left(tmp_path)
    foreign = tmp_path / ".b.tmp-foo"
    foreign.mkdir()
    (foreign / "precious.txt").write_text("not simcell's")
    result = _invoke("generate", *SMALL, "-o", out)
    assert result.exit_code == 0, result.output
    assert not (tmp_path / stale).exists()
    assert (foreign / "precious.txt").read_text() == "not simcell's"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".b.tmp-foo", "b"]
