"""The harness scores perturb-identifiability bundles against their own oracle."""

from __future__ import annotations

import numpy as np

from simcell.evaluation import evaluate
from simcell.simulator.perturb import generate_bundle


def test_evaluate_writes_the_oracle_rows_of_a_perturb_bundle(tmp_path, perturb_tiny_params):
    generate_bundle(perturb_tiny_params, 1, tmp_path / "bundle")
    table = evaluate(tmp_path / "bundle", models=["mean_shift"], oracle_samples=8, n_boot=50)
    assert {"oracle", "oracle_sample", "noise_floor"} <= set(table.model)
    mse = table[(table.space == "genes") & (table.metric == "mse")].set_index("model").value
    assert np.isfinite(mse["oracle"])
    assert mse["oracle"] <= mse["identity"] and mse["oracle"] <= mse["mean_shift"]
    closed = table[(table.model == "mean_shift") & (table.metric == "gap_closed")].value
    assert len(closed) and np.all((closed > 0) & (closed < 1))


def test_a_residual_skips_the_oracle_rows_without_a_crash(tmp_path, perturb_tiny_params):
    generate_bundle(perturb_tiny_params.replace(noise_sd=0.1), 1, tmp_path / "bundle")
    table = evaluate(tmp_path / "bundle", models=[], oracle_samples=8, n_boot=50)
    assert "identity" in set(table.model)
    assert not {"oracle", "oracle_sample", "noise_floor"} & set(table.model)


def test_oracle_posterior_dispatches_on_perturb_bundles(tmp_path, perturb_tiny_params):
    from simcell.evaluation.oracle import oracle_available, oracle_posterior
    from simcell.models import Intervention
    from simcell.simulator import read_bundle
    from simcell.simulator.posterior_perturb import PerturbTwinPosterior

    generate_bundle(perturb_tiny_params, 1, tmp_path / "bundle")
    bundle = read_bundle(tmp_path / "bundle")
    assert oracle_available(bundle)
    posterior = oracle_posterior(bundle, np.arange(5), Intervention(do={"concept_0": 1.0}))
    assert isinstance(posterior, PerturbTwinPosterior)
    # the bundle round trip keeps the world: do() of the factual labels returns the cells
    same = oracle_posterior(bundle, np.arange(5), Intervention(do={}))
    np.testing.assert_array_equal(
        same.sample(np.random.default_rng(0)), bundle.factual.X[:5].toarray()
    )
