"""Predictions brought as a file: tied to their bundle, their space decided on evidence."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from simcell import SimcellError, SimcellWarning, scenarios
from simcell.evaluation import evaluate, lognormalise, read_predictions
from simcell.evaluation.predictions import check_space
from simcell.simulator import read_bundle, simulate, write_bundle

SIZE = {"n_cells": 600, "n_genes": 50, "n_tasks": 2}


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    """synthetic2 and synthetic3 with the same seed: the same cells, tasks and names."""
    root = tmp_path_factory.mktemp("predictions")
    paths = {}
    for name in ("synthetic2", "synthetic3"):
        data = simulate(scenarios.load(name, **SIZE), seed=1, scenario=name)
        paths[name] = write_bundle(data, root / name)
    return {name: read_bundle(path) for name, path in paths.items()}


def _predictions(bundle, values, space, identity=True):
    out = ad.AnnData(
        X=np.asarray(values, dtype=np.float64),
        obs=bundle.counterfactual.obs[["task", "source_cell"]].copy(),
        var=pd.DataFrame(index=bundle.factual.var_names.copy()),
    )
    out.uns["space"] = space
    if identity:
        out.uns["simcell_bundle"] = bundle.identity
    return out


def _truth(bundle):
    return bundle.counterfactual.X.toarray().astype(np.float64)


def test_counts_labelled_lognorm_are_refused_even_when_small(bundles):
    bundle = bundles["synthetic2"]
    counts = _truth(bundle)
    assert counts.max() <= 50  # the case the old "max > 50" rule let through
    with pytest.raises(SimcellError, match="'lognorm' but the values look like counts"):
        read_predictions(_predictions(bundle, counts, "lognorm"), bundle)


def test_lognorm_labelled_counts_are_refused(bundles):
    bundle = bundles["synthetic2"]
    lognorm = lognormalise(_truth(bundle), 1e4)
    with pytest.raises(SimcellError, match="'counts' but the values look log-normalised"):
        read_predictions(_predictions(bundle, lognorm, "counts"), bundle)


def test_real_valued_expected_counts_are_counts(bundles):
    bundle = bundles["synthetic2"]
    expected = 0.7 * _truth(bundle) + 0.15  # non-integer, all below 30
    assert expected.max() < 30 and not np.allclose(expected, np.round(expected))
    read = read_predictions(_predictions(bundle, expected, "counts"), bundle)
    np.testing.assert_array_equal(read.X, expected)


def test_rows_without_evidence_pass_as_labelled():
    profile = np.array([[1.0, 2.0, 3.0]])
    for space in ("counts", "lognorm"):
        check_space(np.repeat(profile, 5, axis=0), space)  # one profile repeated
        check_space(profile, space)  # a single row
    check_space(np.zeros((4, 3)), "lognorm")  # empty cells


def test_lognorm_at_any_target_sum_scores_as_the_truth(bundles):
    bundle = bundles["synthetic2"]
    options = {"models": [], "tasks": ["task_0"], "oracle_samples": 4, "n_boot": 20}
    for target in (1e4, 37.0):
        brought = _predictions(bundle, lognormalise(_truth(bundle), target), "lognorm")
        table = evaluate(bundle, predictions=brought, **options)
        mse = table[(table.model == "predictions") & (table.metric == "mse")]
        np.testing.assert_allclose(mse["value"], 0, atol=1e-12)


def test_predictions_made_on_another_bundle_are_refused(bundles):
    made_on, scored_on = bundles["synthetic3"], bundles["synthetic2"]
    # same cell names and rows: nothing but the identity tells the bundles apart
    pd.testing.assert_frame_equal(
        made_on.counterfactual.obs[["task", "source_cell"]],
        scored_on.counterfactual.obs[["task", "source_cell"]],
    )
    assert made_on.identity != scored_on.identity
    brought = _predictions(made_on, _truth(made_on), "counts")
    with pytest.raises(SimcellError, match="made on another bundle"):
        read_predictions(brought, scored_on)
    read_predictions(brought, made_on)


def test_predictions_without_identity_warn(bundles, tmp_path):
    bundle = bundles["synthetic2"]
    brought = _predictions(bundle, _truth(bundle), "counts", identity=False)
    path = tmp_path / "p.h5ad"
    brought.write_h5ad(path)
    with pytest.warns(SimcellWarning, match=bundle.identity):
        read_predictions(path, bundle)


def test_an_unreadable_file_is_named(bundles, tmp_path):
    path = tmp_path / "broken.h5ad"
    path.write_bytes(b"\x89HDF\r\n" + b"\x00" * 40)
    with pytest.raises(SimcellError, match=r"cannot read predictions .*broken.h5ad"):
        read_predictions(path, bundles["synthetic2"])
