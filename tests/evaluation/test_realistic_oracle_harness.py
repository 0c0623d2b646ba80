"""The harness scores realistic bundles against their own (negative-binomial, capture) oracle."""

from __future__ import annotations

import numpy as np

from simcell import scenarios
from simcell.evaluation import evaluate
from simcell.simulator import simulate, write_bundle


def test_harness_uses_the_realistic_oracle(tmp_path):
    params = scenarios.load("realistic", n_cells=800, n_genes=120, n_tasks=1, min_task_cells=5)
    path = tmp_path / "bundle"
    write_bundle(simulate(params, seed=3, n_threads=1, scenario="realistic"), path)
    table = evaluate(path, models=[], oracle_samples=8, n_boot=50)
    mse = table[(table.space == "genes") & (table.metric == "mse")].set_index("model").value
    # the Bayes-optimal prediction of this law's twins beats leaving the cells unchanged;
    # the Poisson oracle (no overdispersion, no capture) does not know this law
    assert np.isfinite(mse["oracle"]) and mse["oracle"] < mse["identity"]
    assert (table.model == "oracle_sample").any()


def test_oracle_posterior_dispatches_on_realistic_bundles(tmp_path):
    from simcell.evaluation.oracle import oracle_posterior
    from simcell.models import Intervention
    from simcell.simulator import read_bundle
    from simcell.simulator.posterior_realistic import RealisticTwinPosterior

    params = scenarios.load("realistic", n_cells=400, n_genes=40, n_tasks=1, min_task_cells=5)
    path = tmp_path / "bundle"
    write_bundle(simulate(params, seed=3, n_threads=1, scenario="realistic"), path)
    bundle = read_bundle(path)
    posterior = oracle_posterior(bundle, np.arange(5), Intervention(do={}))
    assert isinstance(posterior, RealisticTwinPosterior)
