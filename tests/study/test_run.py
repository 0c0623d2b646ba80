"""Running studies: every cell once, failures recorded, bundles cached, engines agree."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

import simcell.evaluation
from simcell.study import load_study, read_log, run_study
from simcell.study import runner as study_runner

TINY = """
name = "tiny"
layout = "fig3"
[grid]
scenarios = ["synthetic2"]
scenario_options = {n_cells = 300, n_genes = 30}
data_seeds = [0, 1]
corruptions = ["none", "incorrect:1"]
models = ["mean_shift"]
tasks = 1
[evaluation]
n_components = 8
oracle_samples = 4
n_boot = 20
[[claims]]
text = "incorrect concepts do not help"
a = {corruption = "none"}
b = {corruption = "incorrect"}
"""

#: a torch model too: the engines must agree on it bit for bit
ENGINES = (
    TINY.replace("data_seeds = [0, 1]", "data_seeds = [0]")
    .replace('corruptions = ["none", "incorrect:1"]', 'corruptions = ["incorrect:1"]')
    .replace(
        'models = ["mean_shift"]', 'models = ["mean_shift", "sccbgm{max_steps=5, hidden_dim=16}"]'
    )
)


def _study(tmp_path: Path, text: str = TINY):
    path = tmp_path / "tiny.toml"
    path.write_text(text)
    return load_study(path), path


def test_failing_cell_is_recorded_bundles_are_generated_once(tmp_path, monkeypatch) -> None:
    study, _ = _study(tmp_path)
    assert len(study.cells) == 4
    doomed = next(c for c in study.cells if c.data_seed == 1 and c.corruption != "none")
    real_evaluate = simcell.evaluation.evaluate

    def evaluate(bundle, models, **options):
        if Path(bundle).name == doomed.bundle_key and options["corruptions"] != ["none"]:
            raise RuntimeError("boom\nsecond line")
        return real_evaluate(bundle, models, **options)

    generated = []
    real_generate = study_runner.generate_cell_bundle

    def generate(cell, folder):
        generated.append(cell.bundle_key)
        return real_generate(cell, folder)

    monkeypatch.setattr(simcell.evaluation, "evaluate", evaluate)
    monkeypatch.setattr(study_runner, "generate_cell_bundle", generate)
    out = tmp_path / "out"
    run = run_study(study, out, progress_bar=False)
    assert (run.ran, run.failed, run.skipped, run.bundles_generated) == (4, 1, 0, 2)
    assert sorted(generated) == sorted({c.bundle_key for c in study.cells})  # each once
    failed = run.table[run.table["status"] == "failed"]
    assert list(failed["cell"]) == [doomed.key]
    assert failed["error"].iloc[0] == "RuntimeError: boom second line"
    ok = run.table[run.table["status"] == "ok"]
    assert set(ok["cell"]) == {c.key for c in study.cells} - {doomed.key}
    assert "## Failed cells" in (out / "report" / "summary.md").read_text()
    assert (out / "report" / "plots" / "fig3.png").is_file()

    # a rerun runs only the failed cell, on the cached bundle, and it now succeeds
    monkeypatch.setattr(simcell.evaluation, "evaluate", real_evaluate)
    again = run_study(study, out, progress_bar=False)
    assert (again.ran, again.failed, again.skipped, again.bundles_generated) == (1, 0, 3, 0)
    assert set(again.table["status"]) == {"ok"}
    # --force redoes a finished cell, still without generating its bundle again
    one = dataclasses.replace(study, cells=study.cells[:1])
    forced = run_study(one, out, force=True, progress_bar=False)
    assert (forced.ran, forced.skipped, forced.bundles_generated) == (1, 0, 0)
    assert sorted(generated) == sorted({c.bundle_key for c in study.cells})
    # the results table: each cell once, rows sorted by cell key
    table = pd.read_csv(out / "report" / "results.csv")
    assert list(table["cell"]) == sorted(table["cell"])
    assert not table.duplicated(["cell", "task", "model", "space", "metric"]).any()


def test_resumes_after_sigkill_with_every_cell_once(tmp_path) -> None:
    study, path = _study(tmp_path)
    out = tmp_path / "out"
    log = out / "cells.jsonl"
    command = [sys.executable, "-m", "simcell", "study", str(path), "-o", str(out)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and process.poll() is None:
            if log.is_file() and log.read_bytes().count(b"\n") >= 1:
                break
            time.sleep(0.05)
        assert process.poll() is None, "the study finished before it could be killed"
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.wait()
    first = read_log(out)
    assert 1 <= len(first) < len(study.cells)
    # a kill in the middle of an append leaves a line without its newline
    with open(log, "ab") as handle:
        handle.write(b'{"format": "simcell-study-cell/1", "key": "')
    run = run_study(study, out, progress_bar=False)
    assert run.skipped == len(first) and run.ran == len(study.cells) - len(first)
    lines = log.read_text().splitlines()
    keys = [json.loads(line)["key"] for line in lines]  # the partial line is gone
    assert sorted(keys) == sorted(c.key for c in study.cells)  # every cell once
    table = pd.read_csv(out / "report" / "results.csv")
    assert set(table["cell"]) == set(keys) and set(table["status"]) == {"ok"}
    assert not table.duplicated(["cell", "task", "model", "space", "metric"]).any()


@pytest.fixture(scope="module")
def sequential_table(tmp_path_factory) -> bytes:
    folder = tmp_path_factory.mktemp("engines")
    study, _ = _study(folder, ENGINES)
    run_study(study, folder / "sequential", progress_bar=False)
    return (folder / "sequential" / "report" / "results.csv").read_bytes()


def test_table_is_independent_of_the_order_cells_run_in(tmp_path, sequential_table) -> None:
    """What the engines rely on: a cell's rows depend on its configuration alone
    (here each cell runs after the other one, in a process that has run others)."""
    study, _ = _study(tmp_path, ENGINES)
    backwards = dataclasses.replace(study, cells=study.cells[::-1])
    run_study(backwards, tmp_path / "out", progress_bar=False)
    assert (tmp_path / "out" / "report" / "results.csv").read_bytes() == sequential_table


@pytest.mark.slow
def test_process_engine_table_equals_sequential_bit_for_bit(tmp_path, sequential_table) -> None:
    study, _ = _study(tmp_path, ENGINES)
    run = run_study(study, tmp_path / "out", engine="processes", workers=2, progress_bar=False)
    assert run.ran == 2 and run.failed == 0
    assert (tmp_path / "out" / "report" / "results.csv").read_bytes() == sequential_table


@pytest.mark.slow
def test_dask_engine_table_equals_sequential_bit_for_bit(tmp_path, sequential_table) -> None:
    pytest.importorskip("distributed")
    study, _ = _study(tmp_path, ENGINES)
    run = run_study(study, tmp_path / "out", engine="dask", workers=2, progress_bar=False)
    assert run.ran == 2 and run.failed == 0
    assert (tmp_path / "out" / "report" / "results.csv").read_bytes() == sequential_table
