"""benchmarks/table_s5.py: the ordering check, the table, and a smoke run."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "table_s5.py"


@pytest.fixture(scope="module")
def table_s5():
    spec = importlib.util.spec_from_file_location("table_s5", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _summary(means: dict[str, float]) -> pd.DataFrame:
    return pd.DataFrame(
        [("synthetic2", model, mean, mean / 10) for model, mean in means.items()],
        columns=["scenario", "model", "mean", "std"],
    )


PAPER_ORDER = {
    "oracle": 0.001,
    "identity": 0.02,
    "sccbgm_fm_edit": 0.002,
    "vanilla_fm_edit": 0.004,
    "sccbgm": 0.03,
    "sccbgm_fm_decode": 0.05,
    "vanilla_fm_decode": 0.07,
}


def test_ordering_check(table_s5) -> None:
    means = pd.Series(PAPER_ORDER)
    assert table_s5.ordering_holds(means)
    assert not table_s5.ordering_holds(means.replace({0.004: 0.001}))  # Vanilla-FM first
    assert not table_s5.ordering_holds(means.replace({0.05: 0.02}))  # a decode below scCBGM


def test_table_puts_ours_next_to_the_paper(table_s5) -> None:
    text = table_s5.table_markdown(_summary(PAPER_ORDER), "paper")
    row = next(line for line in text.splitlines() if line.startswith("| sccbgm |"))
    assert "0.0300 ± 0.0030" in row and "0.0318 ± 0.0071" in row  # ours, paper's synthetic2
    assert "* synthetic2: holds" in text
    assert "| oracle | 0.0010 ± 0.0001 |  |" in text


@pytest.mark.slow
def test_smoke_run_writes_the_table(table_s5, tmp_path) -> None:
    args = ["--preset", "fast", "--device", "cpu", "--n-cells", "600", "--n-genes", "40"]
    result = CliRunner().invoke(table_s5.main, [*args, "--seeds", "0", "-o", str(tmp_path)])
    assert result.exit_code == 0, result.output
    results = pd.read_csv(tmp_path / "results.csv")
    assert set(results["scenario"]) == {"synthetic1", "synthetic2", "synthetic3"}
    assert set(table_s5.MODELS) <= set(results["model"])
    assert "Ordering" in (tmp_path / "table_s5.md").read_text()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--seeds", "a"], "comma-separated integers"),
        (["--preset", "nope"], "unknown preset 'nope'"),
        (["--n-cells", "0"], "x>=1"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(table_s5, tmp_path, args, message) -> None:
    result = CliRunner().invoke(table_s5.main, [*args, "-o", str(tmp_path / "out")])
    assert result.exit_code != 0 and message in result.output
    assert "Traceback" not in result.output and not (tmp_path / "out").exists()
