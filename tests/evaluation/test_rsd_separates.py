"""rSD at the harness's sample size tells a prediction from the true law.

With ε = 0.05 x the median squared distance, the Sinkhorn divergence of two
independent 75-150-cell samples of one law in many PCs is almost all
finite-sample bias, so identity, the noise floor and the nearest training
population all scored about the same and every rSD was about 1.
"""

from __future__ import annotations

import pytest

from simcell import scenarios
from simcell._random import stream
from simcell.evaluation import harness
from simcell.evaluation.oracle import oracle_posterior
from simcell.evaluation.tasks import build_task
from simcell.simulator import read_bundle, simulate, write_bundle


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    params = scenarios.load(
        "synthetic2", n_cells=2500, n_genes=300, n_tasks=1, concept_effect_sd=0.6
    )
    path = tmp_path_factory.mktemp("rsd") / "bundle"
    write_bundle(simulate(params, seed=3, scenario="synthetic2"), path)
    bundle = read_bundle(path)
    data = build_task(bundle, "task_0", n_components=64, seed=0)
    posterior = oracle_posterior(bundle, data.intervene, data.intervention)
    _, floor = data.project(posterior.same_law_sample(stream(0, "task_0", "noise_floor")))
    return data, floor


def _rsd(data, pcs, pops) -> float:
    labels = harness._Labels(seed=0, scenario="", data_seed=-1)
    rows = harness._population_rows(data, "x", pcs, labels, pops, paired=True, classify=False)
    return next(row.value for row in rows if row.metric == "rsd")


def test_identity_rsd_is_far_above_the_noise_floor(task):
    data, floor = task
    pops = harness._populations(data, seed=0)
    identity, noise_floor = _rsd(data, data.x_intervene, pops), _rsd(data, floor, pops)
    assert identity > 0.8
    assert noise_floor < identity / 3
