"""scCBGM and scCBGM-FM (edit) at least halve the factual cell's error, with a margin.

The twin of a simulated cell shares its library size, noise and Poisson draws,
so the factual cell (``identity``) is already close to it; a model only wins by
predicting the concept's effect better than "no effect". At synthetic2's own
effect size (``concept_effect_sd`` 0.08) that effect is of the order of what the
``fast`` presets get wrong, so wins sat on the edge: on 6,000 x 400 cells, seed
0, scCBGM beat identity on 3 of 5 tasks on one machine and 2 of 5 on another
(ratios 3.35 0.97 1.04 0.92 1.04 here), because torch's CPU numerics differ
between machines (see the README's reproducibility section). Here the concept
effects are raised to sd 0.3, well above that noise, on 4,000 x 400 cells.

Criterion: the median over the 5 tasks of MSE(model) / MSE(identity) (PCA
space) is at most 0.5, i.e. the model halves identity's error on at least 3 of
5 tasks. Measured (``fast`` presets, CPU, model seed 0), ratio per task and
median:

============  ==========  =============================  ======
data seed     model       task_0 .. task_4               median
============  ==========  =============================  ======
0             sccbgm      0.28 0.97 0.20 0.26 0.22       0.26
0             sccbgm_fm   0.28 0.81 0.22 0.56 0.22       0.28
1             sccbgm      0.18 0.19 0.42 0.19 0.19       0.19
1             sccbgm_fm   0.19 0.19 0.44 0.21 0.20       0.20
2             sccbgm      0.21 0.20 0.24 0.20 0.30       0.21
2             sccbgm_fm   0.24 0.20 0.26 0.21 0.29       0.24
============  ==========  =============================  ======

so the median has a margin of at least 1.8x below the threshold (seed 0, the
one tested). ``mean_shift`` (no training) scores medians of 0.26, 0.21 and 0.43
on seeds 0-2 but loses on a confounded task of the first two (1.84, 1.19).

Negative control: the same cells with their annotations shuffled across cells
(the concepts a model sees carry no information about its cells) — scCBGM
must not beat identity: measured ratios 0.99 1.07 1.01 1.01 1.02 (seed 0,
this permutation; 0.99 1.05 1.00 1.00 1.01 with one BLAS thread instead of
two; 1.01 1.07 1.04 1.01 1.01 with another permutation; seed 1: 1.00 1.00
1.07 1.01 1.01), against the
threshold 0.9 on every task. So the margin comes from what the annotations
say, not from the residual abduction keeping the factual cell. Each data seed
trains from a different trajectory, a larger perturbation than the last-bit
differences between CPUs.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from simcell import scenarios
from simcell.evaluation import evaluate
from simcell.simulator import simulate, write_bundle

MODELS = ("sccbgm", "sccbgm_fm_edit")
#: a model passes when its median MSE ratio to identity over the tasks is at most this
MAX_MEDIAN_RATIO = 0.5
#: the negative control fails the criterion by far: no task below this ratio
MIN_CONTROL_RATIO = 0.9
SETTINGS = dict(preset="fast", device="cpu", oracle_samples=2, n_boot=20)


def _dataset(shuffled: bool):
    params = scenarios.load("synthetic2", n_cells=4000, n_genes=400, concept_effect_sd=0.3)
    data = simulate(params, seed=0, scenario="synthetic2")
    if shuffled:
        annotations = data.factual.obsm["concepts"]
        order = np.random.default_rng(0).permutation(len(annotations))
        data.factual.obsm["concepts"] = pd.DataFrame(
            annotations.to_numpy()[order], index=annotations.index, columns=annotations.columns
        )
    return data


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    path = tmp_path_factory.mktemp("effect-synthetic2") / "bundle"
    write_bundle(_dataset(shuffled=False), path)
    return evaluate(path, models=list(MODELS), **SETTINGS)


@pytest.fixture(scope="module")
def shuffled_results(tmp_path_factory):
    path = tmp_path_factory.mktemp("shuffled-synthetic2") / "bundle"
    write_bundle(_dataset(shuffled=True), path)
    return evaluate(path, models=["sccbgm"], **SETTINGS)


def _ratios(results: pd.DataFrame, name: str) -> pd.Series:
    """MSE(model) / MSE(identity) per task, PCA space."""
    mse = results[(results.metric == "mse") & (results.space == "pca")]
    mse = mse.pivot(index="model", columns="task", values="value")
    assert mse.shape[1] == 5
    return mse.loc[name] / mse.loc["identity"]


@pytest.mark.parametrize("name", MODELS)
def test_halves_identity_error_on_most_tasks(results, name) -> None:
    ratios = _ratios(results, name)
    print(f"{name}: MSE / identity per task {ratios.round(3).to_list()}")
    assert ratios.median() <= MAX_MEDIAN_RATIO, ratios.round(3).to_dict()


def test_shuffled_annotations_do_not_beat_identity(shuffled_results) -> None:
    """Negative control: the criterion fails when annotations say nothing about cells."""
    ratios = _ratios(shuffled_results, "sccbgm")
    print(f"sccbgm, shuffled annotations: MSE / identity per task {ratios.round(3).to_list()}")
    assert ratios.min() >= MIN_CONTROL_RATIO, ratios.round(3).to_dict()
    assert ratios.median() > MAX_MEDIAN_RATIO


def test_edit_returns_cells_within_a_small_inversion_error(results) -> None:
    inversion = results[results.metric == "inversion_error"].set_index("task")["value"]
    identity = results[
        (results.metric == "mse") & (results.space == "pca") & (results.model == "identity")
    ].set_index("task")["value"]
    assert len(inversion) == 5
    assert (inversion < 0.01 * identity).all()
