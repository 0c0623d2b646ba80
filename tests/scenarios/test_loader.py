"""Scenario presets and files."""

from __future__ import annotations

import pytest

from simcell import SimcellError, scenarios


def test_paper_values():
    one, two, three = (scenarios.load(f"synthetic{i}") for i in (1, 2, 3))
    assert (
        one.n_cells,
        one.n_genes,
        one.n_cell_types,
        one.n_tissues,
        one.n_batches,
        one.n_concepts,
        one.n_tasks,
    ) == (20000, 5000, 4, 3, 2, 5, 5)
    assert one.baseline_range == (1.0, 5.0)
    assert (one.batch_effect_sd, one.tissue_effect_sd, one.cell_type_effect_sd) == (
        0.06,
        0.05,
        0.04,
    )
    assert one.library_size_sd_range == (0.01, 0.03)
    assert (one.concept_sparsity_alpha, one.concept_sparsity_beta) == (1.0, 0.8)
    assert (one.noise_sd, one.concept_effect_sd) == (0.01, 0.08)
    assert (two.noise_sd, two.concept_effect_sd) == (0.08, 0.08)
    assert (three.noise_sd, three.concept_effect_sd) == (0.01, 0.02)
    causal = scenarios.load("causal")
    assert causal.concept_edges and {w > 0 for *_, w in causal.concept_edges} == {True, False}


def test_file_extends_and_overrides(tmp_path):
    path = tmp_path / "mine.toml"
    path.write_text('extends = "synthetic3"\nn_cells = 123\n')
    params = scenarios.load(str(path), n_genes=45)
    assert (params.n_cells, params.n_genes, params.concept_effect_sd) == (123, 45, 0.02)
    _, name = scenarios.load_with_name(str(path))
    assert name == "mine"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("n_cels = 3\n", "unknown key"),
        ("noise_sd = -1\n", "noise_sd"),
        ("n_cells = [\n", "invalid TOML"),
        ('extends = "nowhere"\n', "unknown scenario"),
    ],
)
def test_bad_files(tmp_path, text, message):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(SimcellError, match=message):
        scenarios.load(str(path))


def test_cyclic_extends(tmp_path):
    (tmp_path / "a.toml").write_text('extends = "b.toml"\n')
    (tmp_path / "b.toml").write_text('extends = "a.toml"\n')
    with pytest.raises(SimcellError, match="cycle"):
        scenarios.load(str(tmp_path / "a.toml"))


def test_parse_override():
    assert scenarios.parse_override("noise_sd=0.5") == ("noise_sd", 0.5)
    assert scenarios.parse_override("baseline_range=[1, 10]") == ("baseline_range", [1, 10])
    assert scenarios.parse_override("intervention_mode=direct") == ("intervention_mode", "direct")
    with pytest.raises(SimcellError):
        scenarios.parse_override("noise_sd")
