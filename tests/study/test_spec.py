"""Study files: the grid, the cell keys, the shipped studies and one-line errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
from click.testing import CliRunner

from simcell import SimcellError
from simcell.cli.main import main
from simcell.study import ModelSpec, list_studies, load_study, paired_test
from simcell.study.summary import verdict

TINY = """
name = "tiny"
layout = "generic"
[grid]
scenarios = ["synthetic2"]
scenario_options = {n_cells = 300, n_genes = 30}
data_seeds = [0, 1]
corruptions = ["none", "incorrect:1"]
models = ["mean_shift", "sccbgm{decoder=direct, max_epochs=2}"]
model_seeds = [0]
tasks = 1
"""


def _write(tmp_path, text: str):
    path = tmp_path / "study.toml"
    path.write_text(text)
    return path


def test_model_spec_parses_options_as_toml_values() -> None:
    spec = ModelSpec.parse(
        "sccbgm{ decoder=direct, max_epochs=2, beta=0.5, residual_abduction=true}"
    )
    assert spec.name == "sccbgm"
    assert dict(spec.options) == {
        "decoder": "direct",
        "max_epochs": 2,
        "beta": 0.5,
        "residual_abduction": True,
    }
    # options sorted: the same model written in another order has the same label
    assert (
        spec.label
        == ModelSpec.parse(
            "sccbgm{residual_abduction=true,beta=0.5,max_epochs=2,decoder=direct}"
        ).label
    )
    assert ModelSpec.parse({"name": "cbgm", "max_epochs": 3}).label == "cbgm{max_epochs=3}"


def test_grid_is_the_full_product_keyed_by_resolved_config(tmp_path) -> None:
    study = load_study(_write(tmp_path, TINY))
    assert len(study.cells) == 2 * 2 * 2  # data seeds x corruptions x models
    assert [c.key for c in study.cells] == sorted(c.key for c in study.cells)
    assert len({c.key for c in study.cells}) == 8
    assert len({c.bundle_key for c in study.cells}) == 2  # one bundle per data seed
    cell = next(c for c in study.cells if c.model.name == "sccbgm")
    # the key hashes the resolved hyperparameters, not just the option text
    assert cell.model_config["decoder"] == "direct" and cell.model_config["max_epochs"] == 2
    assert cell.params["n_cells"] == 300 and cell.params["n_tasks"] == 1
    again = load_study(_write(tmp_path, TINY.replace("max_epochs=2}", "max_epochs=2 }")))
    assert [c.key for c in again.cells] == [c.key for c in study.cells]
    other = load_study(_write(tmp_path, TINY.replace("max_epochs=2", "max_epochs=3")))
    assert len({c.key for c in other.cells} & {c.key for c in study.cells}) == 4  # mean_shift


def test_variant_replaces_grid_keys(tmp_path) -> None:
    text = TINY + "\n[variants.fast.grid]\ndata_seeds = [0]\n"
    assert len(load_study(_write(tmp_path, text), "fast").cells) == 4
    assert len(load_study(_write(tmp_path, text), "full").cells) == 8


@pytest.mark.parametrize("name", ["fig3", "table_s5", "table_s6", "table_s8"])
def test_shipped_studies_resolve_in_both_variants(name) -> None:
    assert name in list_studies()
    fast, full = load_study(name, "fast"), load_study(name, "full")
    assert 0 < len(fast.cells) <= len(full.cells)
    assert fast.claims and fast.layout == name


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        (
            '"mean_shift",',
            '"mean_shift{nope=1}",',
            "grid.models: mean_shift{nope=1}: unknown option",
        ),
        ("decoder=direct", "decoder=sideways", "grid.models: sccbgm"),
        ('"incorrect:1"', '"garbled:1"', "grid.corruptions: unknown corruption 'garbled'"),
        ('"incorrect:1"', '"missing:5"', "grid.corruptions: synthetic2"),
        (
            'models = ["mean_shift", "sccbgm{decoder=direct, max_epochs=2}"]',
            "models = []",
            "grid: no cells (grid.models is empty)",
        ),
        ("tasks = 1", "tasks = 0", "grid.tasks"),
        ("scenarios = ", "scenery = ", "grid: unknown key(s) scenery"),
        ('["synthetic2"]', '["synthetic9"]', "grid.scenarios: unknown scenario"),
        ("[grid]", "[grid", "invalid TOML"),
    ],
)
def test_bad_study_is_one_line_naming_the_field(tmp_path, old, new, message) -> None:
    assert old in TINY
    path = _write(tmp_path, TINY.replace(old, new))
    with pytest.raises(SimcellError, match=None) as caught:
        load_study(path)
    assert message in str(caught.value) and "\n" not in str(caught.value)
    # the CLI: one line, exit != 0, nothing written
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["study", str(path), "-o", str(out), "--device", "cpu"])
    assert result.exit_code != 0 and message in result.output
    assert "Traceback" not in result.output and not out.exists()


def test_unreadable_study_file_and_unknown_name(tmp_path) -> None:
    with pytest.raises(SimcellError, match="cannot read it"):
        load_study(tmp_path / "absent.toml")
    with pytest.raises(SimcellError, match="unknown study 'fig9'"):
        load_study("fig9")


def test_cli_lists_the_shipped_studies() -> None:
    result = CliRunner().invoke(main, ["study", "--list"])
    assert result.exit_code == 0
    assert [line.split(":")[0] for line in result.output.splitlines()] == list_studies()


def test_paired_test_closed_forms() -> None:
    b = np.linspace(1.0, 2.0, 12)
    shift = np.array([0.1, 0.12, 0.09, 0.11, 0.1, 0.13, 0.08, 0.1, 0.12, 0.09, 0.11, 0.1])
    test = paired_test(b - shift, b)
    assert test["n"] == 12
    assert test["mean_diff"] == pytest.approx(-shift.mean())
    assert test["d_z"] == pytest.approx(-shift.mean() / shift.std(ddof=1))
    assert test["wilcoxon_p"] == pytest.approx(2 / 2**12)  # every difference negative
    assert verdict(test) == "supported"
    assert verdict(paired_test(b + shift, b)) == "contradicted"
    # a margin: a within 10 % of b although a > b
    assert verdict(paired_test(b * 1.05, b, margin=0.1)) == "supported"
    # negative control: no difference at all is no evidence either way
    null = paired_test(b, b)
    assert math.isnan(null["wilcoxon_p"]) and verdict(null) == "not significant"


def test_the_baselines_study_resolves_and_is_refused_in_one_line_without_its_extra(
    tmp_path, monkeypatch
) -> None:
    from simcell.models import _registry
    from simcell.study import run_study

    study = load_study("table_s5_baselines", "fast")
    assert study.layout == "table_s5" and study.claims
    assert {"biolord", "cinemaot", "scgen"} <= {cell.model.name for cell in study.cells}
    monkeypatch.setattr(_registry, "_missing", lambda model: tuple(getattr(model, "requires", ())))
    out = tmp_path / "study"
    with pytest.raises(
        SimcellError, match=r"model '(biolord|cinemaot)' needs .*simcell\[baselines\]"
    ):
        run_study(study, out, progress_bar=False)
    assert not out.exists()
