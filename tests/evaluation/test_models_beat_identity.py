"""On a CI-sized synthetic2, scCBGM and scCBGM-FM (edit) beat the factual cell.

The twin of a simulated cell shares its library size, noise and Poisson draws,
so the factual cell (``identity``) is already close to it; a model only wins by
predicting the concept's effect better than "no effect". With 6,000 cells and
400 genes that effect is estimable from the training cells: ordinary least
squares of the PCs on the annotations and the true cell types beats identity on
3, 4 and 5 of the 5 tasks of seeds 0, 1 and 2. With 3,000 x 300 it does so on
only 2 of 5 for seed 0, so the criterion would test luck, not the models.
"""

from __future__ import annotations

import pytest

from simcell import scenarios
from simcell.evaluation import evaluate
from simcell.simulator import simulate, write_bundle

MODELS = ("sccbgm", "sccbgm_fm_edit")


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    params = scenarios.load("synthetic2", n_cells=6000, n_genes=400)
    path = tmp_path_factory.mktemp("ci-synthetic2") / "bundle"
    write_bundle(simulate(params, seed=0, scenario="synthetic2"), path)
    # the oracle is not needed here; few samples keep it cheap
    return evaluate(
        path, models=list(MODELS), preset="fast", device="cpu", oracle_samples=2, n_boot=20
    )


@pytest.mark.parametrize("name", MODELS)
def test_beats_identity_on_most_tasks(results, name) -> None:
    mse = results[(results.metric == "mse") & (results.space == "pca")]
    mse = mse.pivot(index="model", columns="task", values="value")
    assert mse.shape[1] == 5
    wins = int((mse.loc[name] < mse.loc["identity"]).sum())
    assert wins >= 3, f"{name} beats identity on {wins} of 5 tasks\n{mse.to_string()}"


def test_edit_returns_cells_within_a_small_inversion_error(results) -> None:
    inversion = results[results.metric == "inversion_error"].set_index("task")["value"]
    identity = results[
        (results.metric == "mse") & (results.space == "pca") & (results.model == "identity")
    ].set_index("task")["value"]
    assert len(inversion) == 5
    assert (inversion < 0.01 * identity).all()
