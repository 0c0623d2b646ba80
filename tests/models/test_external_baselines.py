"""biolord and CINEMA-OT through their own packages (the extra ``simcell[baselines]``).

Marked ``baselines``; skipped with the reason when the packages are not installed
(``pip install 'simcell[baselines]'``).
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from simcell import scenarios
from simcell.models import create_model
from simcell.models.external import BIOLORD_PRESETS

pytestmark = pytest.mark.baselines
pytest.importorskip("biolord", reason="needs the extra: pip install 'simcell[baselines]'")
pytest.importorskip("cinemaot", reason="needs the extra: pip install 'simcell[baselines]'")


def _check_one_row_per_cell(prediction, toy) -> None:
    assert prediction.shape == toy.x_intervene.shape
    assert prediction.dtype == np.float32
    assert np.all(np.isfinite(prediction))


def test_cinemaot_predicts_a_transport_average_of_reference_cells(toy) -> None:
    model = create_model("cinemaot", seed=0, progress_bar=False).fit(
        toy.x_train, toy.concepts_train, concept_kinds=toy.concept_kinds
    )
    args = (toy.x_intervene, toy.concepts_intervene, toy.target_concepts)
    prediction = model.counterfactual(*args)
    _check_one_row_per_cell(prediction, toy)
    # x - (x - Σ_j T_ij x_j / Σ_j T_ij): inside the hull of the cells with concept 0 on
    reference = toy.x_train[toy.concepts_train[:, 0] == 1]
    tolerance = 1e-4
    assert np.all(prediction >= reference.min(axis=0) - tolerance)
    assert np.all(prediction <= reference.max(axis=0) + tolerance)
    np.testing.assert_array_equal(model.counterfactual(*args), prediction)  # seeded
    unchanged = model.counterfactual(
        toy.x_intervene, toy.concepts_intervene, toy.concepts_intervene
    )
    np.testing.assert_array_equal(unchanged, toy.x_intervene)


def test_biolord_predicts_one_row_per_cell(toy) -> None:
    rng = np.random.default_rng(0)
    context = SimpleNamespace(cell_types=rng.choice(np.array(["a", "b"]), len(toy.x_train)))
    model = create_model("biolord", seed=0, device="cpu", progress_bar=False, max_epochs=3)
    model.fit(toy.x_train, toy.concepts_train, concept_kinds=toy.concept_kinds, context=context)
    target = toy.target_concepts.copy()
    target[::2] = toy.concepts_intervene[::2]  # half the cells: no edit
    prediction = model.counterfactual(toy.x_intervene, toy.concepts_intervene, target)
    _check_one_row_per_cell(prediction, toy)
    np.testing.assert_array_equal(prediction[::2], toy.x_intervene[::2])
    assert not np.allclose(prediction[1::2], toy.x_intervene[1::2])
    assert "celltype" in model.biolord_.adata.obs


def test_harness_rows_for_both_adapters(tmp_path, monkeypatch) -> None:
    from simcell.evaluation import evaluate
    from simcell.simulator import simulate, write_bundle

    monkeypatch.setitem(BIOLORD_PRESETS, "fast", BIOLORD_PRESETS["fast"].replace(max_epochs=3))
    params = scenarios.load("synthetic2", n_cells=600, n_genes=40, n_tasks=1)
    bundle = tmp_path / "bundle"
    write_bundle(simulate(params, seed=0, scenario="synthetic2"), bundle)
    table = evaluate(
        bundle, models=["biolord", "cinemaot"], oracle_samples=8, n_boot=50, device="cpu"
    )
    mse = table[(table.metric == "mse") & (table.space == "pca")].set_index("model")["value"]
    assert {"biolord", "cinemaot", "identity", "oracle"} <= set(mse.index)
    assert np.isfinite(mse[["biolord", "cinemaot"]].to_numpy()).all()


def test_cinemaot_refuses_to_edit_a_continuous_concept_in_one_line(toy) -> None:
    from simcell import SimcellError

    model = create_model("cinemaot", seed=0, progress_bar=False).fit(
        toy.x_train, toy.concepts_train, concept_kinds=toy.concept_kinds
    )
    target = toy.concepts_intervene.copy()
    target[:, 2] += 1.0  # concept 2 is continuous
    with pytest.raises(SimcellError, match="can only edit binary concepts") as error:
        model.counterfactual(toy.x_intervene, toy.concepts_intervene, target)
    assert "\n" not in str(error.value)


def test_cli_package_failure_is_one_line_and_writes_nothing(tmp_path, monkeypatch) -> None:
    """The package's own multi-line ValueError reaches the user as one line, exit != 0."""
    from cinemaot import cinemaot
    from click.testing import CliRunner

    from simcell.cli import main
    from simcell.simulator import simulate, write_bundle

    def no_confounder(*args, **kwargs):
        raise ValueError("No confounder components identified. Please try a higher threshold.\nx")

    monkeypatch.setattr(cinemaot, "cinemaot_unweighted", no_confounder)
    params = scenarios.load("synthetic2", n_cells=600, n_genes=40, n_tasks=1)
    bundle = tmp_path / "bundle"
    write_bundle(simulate(params, seed=0, scenario="synthetic2"), bundle)
    out = tmp_path / "report"
    args = ["evaluate", str(bundle), "--models", "cinemaot", "--device", "cpu", "-o", str(out)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code != 0
    lines = [line for line in result.output.splitlines() if line.startswith("Error")]
    assert lines == [
        "Error: cinemaot: No confounder components identified. Please try a higher threshold."
    ]
    assert "Traceback" not in result.output
    assert not out.exists()
