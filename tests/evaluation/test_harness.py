"""The harness: truth scores zero, factual scores as identity, the oracle is a floor."""

from __future__ import annotations

import json

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from simcell import SimcellError, scenarios
from simcell.cli import main
from simcell.evaluation import evaluate, read_predictions
from simcell.evaluation.run import plan_evaluation
from simcell.simulator import read_bundle, simulate, write_bundle

FAST = {"oracle_samples": 8, "n_boot": 100, "tasks": ["task_0"]}


@pytest.fixture(scope="module")
def bundle_path(tmp_path_factory):
    params = scenarios.load("synthetic2", n_cells=1200, n_genes=60, n_tasks=2)
    path = tmp_path_factory.mktemp("eval") / "bundle"
    write_bundle(simulate(params, seed=1, scenario="synthetic2"), path)
    return path


def _predictions(bundle, counts, space="counts"):
    truth = bundle.counterfactual
    out = ad.AnnData(
        X=counts,
        obs=truth.obs[["task", "source_cell"]].copy(),
        var=pd.DataFrame(index=bundle.factual.var_names.copy()),
    )
    out.uns["space"] = space
    out.uns["simcell_bundle"] = bundle.identity
    return out


def _value(table, model, space, metric):
    rows = table[(table.model == model) & (table.space == space) & (table.metric == metric)]
    return rows.set_index("task")["value"]


def test_truth_scores_zero_and_factual_reproduces_identity(bundle_path):
    bundle = read_bundle(bundle_path)
    truth = _predictions(bundle, bundle.counterfactual.X.toarray())
    table = evaluate(bundle, models=[], predictions=truth, **FAST)
    for space in ("pca", "genes"):
        np.testing.assert_allclose(_value(table, "predictions", space, "mse"), 0, atol=1e-10)
    sources = bundle.factual.obs_names.get_indexer(bundle.counterfactual.obs["source_cell"])
    factual = _predictions(bundle, bundle.factual.X[sources].toarray())
    table = evaluate(bundle, models=[], predictions=factual, **FAST)
    for space in ("pca", "genes"):
        for metric in ("mse", "mae", "pearson"):
            np.testing.assert_allclose(
                _value(table, "predictions", space, metric),
                _value(table, "identity", space, metric),
                rtol=1e-5,
                atol=1e-8,
            )


def test_oracle_is_a_floor(bundle_path):
    table = evaluate(bundle_path, models=["mean_shift"], **FAST)
    for space in ("pca", "genes"):
        oracle = _value(table, "oracle", space, "mse")
        assert (oracle <= _value(table, "identity", space, "mse")).all()
        assert (oracle <= _value(table, "mean_shift", space, "mse")).all()
    gap = _value(table, "mean_shift", "pca", "gap_closed")
    assert gap.notna().all()
    # results.csv gains the columns a study needs (issue 10)
    assert list(table.columns) == [
        "task",
        "model",
        "seed",
        "space",
        "metric",
        "value",
        "ci_low",
        "ci_high",
        "scenario",
        "data_seed",
        "corruption",
        "level",
    ]
    assert set(table.scenario) == {"synthetic2"} and set(table.data_seed) == {1}
    assert {"mmd", "fid", "energy", "sinkhorn", "knn_accuracy"} <= set(table.metric)


def test_oracle_beats_plugin_predictors_in_expectation():
    """On a simulated gene, E[x'|x] has lower MSE than identity and than a rate-only guess."""
    from simcell.evaluation import OracleInputs, oracle_counterfactual
    from simcell.simulator import poisson_ppf

    rng = np.random.default_rng(1)
    n, g = 400, 20
    m = np.log(rng.uniform(1, 5, (n, g)))
    shift = np.full((n, g), 0.7)
    lib = rng.normal(0, 0.03, n)[:, None]
    eps = rng.normal(0, 0.08, (n, g))
    delta = rng.random((n, g))
    x = poisson_ppf(delta, np.exp(m + lib + eps))
    x_twin = poisson_ppf(delta, np.exp(m + shift + lib + eps))
    inputs = OracleInputs(
        counts=x, log_rate_mean=m, shift=shift, library_size_sd=np.full(n, 0.03), noise_sd=0.08
    )
    oracle = oracle_counterfactual(inputs, lambda c: c.astype(float), n_samples=64, rng=rng)
    plugin = np.exp(m + shift + 0.08**2 / 2)  # ignores the cell's own noise
    scaled = x * np.exp(shift)  # the cell scaled by the fold change
    err = {
        name: ((pred - x_twin) ** 2).mean()
        for name, pred in {
            "oracle": oracle,
            "identity": x,
            "plugin": plugin,
            "scaled": scaled,
        }.items()
    }
    assert err["oracle"] < min(err["identity"], err["plugin"], err["scaled"]), err


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda a: a[1:].copy(), "missing"),
        (lambda a: _space(ad.concat([a, a[:1]]), "counts"), "duplicated"),
        (lambda a: a[:, 1:].copy(), "genes missing"),
        (lambda a: _set(a, np.nan), "NaN"),
        (lambda a: _space(a, "tpm"), "space"),
        (lambda a: _space(a, "lognorm"), "look like counts"),
    ],
)
def test_bad_predictions(bundle_path, mutate, message):
    bundle = read_bundle(bundle_path)
    good = _predictions(bundle, bundle.counterfactual.X.toarray().astype(float) * 20)
    with pytest.raises(SimcellError, match=message):
        read_predictions(mutate(good), bundle)


def _set(adata, value):  # noqa: D103
    adata = adata.copy()
    adata.X[0, 0] = value
    return adata


def _space(adata, space):
    adata = adata.copy()
    adata.uns["space"] = space
    return adata


def test_cli_evaluate_writes_a_report(bundle_path, tmp_path):
    out = tmp_path / "report"
    result = CliRunner().invoke(
        main,
        [
            "evaluate",
            str(bundle_path),
            "--models",
            "mean_shift",
            "--tasks",
            "task_0",
            "-o",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "## mse (pca)" in result.output
    for name in ("results.csv", "summary.md", "config.json", "plots/mse_pca.png"):
        assert (out / name).is_file(), name
    table = pd.read_csv(out / "results.csv")
    assert set(table.model) == {
        "oracle",
        "oracle_sample",
        "noise_floor",
        "heldout",
        "identity",
        "mean_shift",
    }
    from simcell.models import get_preset

    written = json.loads((out / "config.json").read_text())
    assert written["preset"] == "fast"
    assert written["model_configs"] == {"mean_shift": get_preset("mean_shift", "fast").to_dict()}


def test_cli_evaluate_bad_input(bundle_path, tmp_path):
    result = CliRunner().invoke(
        main, ["evaluate", str(bundle_path), "--models", "nope", "-o", str(tmp_path / "r")]
    )
    assert result.exit_code == 1 and "unknown model" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "r").exists()
    bad = tmp_path / "bad.h5ad"
    bad.write_text("not hdf5")
    result = CliRunner().invoke(
        main, ["evaluate", str(bundle_path), "--predictions", str(bad), "-o", str(tmp_path / "r")]
    )
    assert result.exit_code == 1 and "cannot read predictions" in result.output
    assert not (tmp_path / "r").exists()


def test_cli_evaluate_defaults_to_the_latest_bundle(bundle_path, tmp_path, monkeypatch):
    import shutil

    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["evaluate", "--models", "mean_shift"])
    assert result.exit_code == 1 and "no bundle under simcell-data" in result.output
    shutil.copytree(bundle_path, tmp_path / "simcell-data" / "mine")
    result = CliRunner().invoke(main, ["evaluate", "--models", "mean_shift", "--tasks", "task_0"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "simcell-data" / "mine-evaluation" / "results.csv").is_file()


def test_every_registered_model_runs_through_the_harness(bundle_path):
    from simcell.models import get_model_class, list_models

    # the external adapters need the extra: tests/models/test_external.py
    models = [n for n in list_models() if not getattr(get_model_class(n), "requires", ())]
    table = evaluate(bundle_path, models=models, **FAST)
    mse = table[(table.metric == "mse") & (table.space == "pca")].set_index("model")["value"]
    assert set(models) | {"oracle"} <= set(mse.index)
    assert np.isfinite(mse.to_numpy()).all()
    # edit-mode flows report their round-trip error, a floor far below identity's error
    inversion = table[table.metric == "inversion_error"].set_index("model")["value"]
    assert set(inversion.index) == {name for name in models if name.endswith("_fm_edit")}
    assert ((inversion >= 0) & (inversion < 0.1 * mse["identity"])).all()


def test_an_undefined_latent_metric_is_left_out_with_a_warning(caplog):
    from simcell.evaluation.harness import _representation_rows

    class Embedding:
        has_representation = True

        def encode(self, x, concepts):
            return x

    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 4))
    concepts = (rng.random((200, 2)) < 0.5).astype(float)
    concepts[:, 1] = 0.0
    concepts[0, 1] = 1.0  # one cell: constant on any held-out share that misses it
    types = np.arange(200) % 3
    rows = _representation_rows("t", "m", 0, Embedding(), x, concepts, concepts, types)
    names = {row.metric for row in rows}
    assert "linear_r2" not in names and {"nmi", "mcc", "concept_accuracy"} <= names
    assert "linear_r2" in caplog.text and "constant" in caplog.text


def test_a_solver_out_of_budget_is_logged_and_other_warnings_pass(caplog):
    import warnings

    from simcell import SimcellWarning
    from simcell.evaluation.harness import _budget_notes

    with pytest.warns(UserWarning, match="other"):
        with _budget_notes("task_0 model sinkhorn"):
            warnings.warn("marginal error of 2e-06", SimcellWarning, stacklevel=1)
            warnings.warn("other", UserWarning, stacklevel=1)
    assert "task_0 model sinkhorn: marginal error of 2e-06" in caplog.text


def test_debiased_mse_removes_the_monte_carlo_excess():
    from simcell.evaluation import debiased_mse

    rng = np.random.default_rng(11)
    n_cells, n_dims, draws, sd = 20000, 8, 16, 0.5  # each half averages 16 draws
    truth = rng.normal(size=(n_cells, n_dims))
    posterior_mean = truth + rng.normal(scale=0.3, size=(n_cells, n_dims))
    bayes = np.mean((posterior_mean - truth) ** 2)
    a, b = (
        posterior_mean + rng.normal(scale=sd / np.sqrt(draws), size=(n_cells, n_dims))
        for _ in range(2)
    )
    naive = np.mean((0.5 * (a + b) - truth) ** 2)
    assert naive == pytest.approx(bayes + sd**2 / (2 * draws), rel=0.02)  # the excess
    per_cell = debiased_mse(a, b, truth)
    standard_error = per_cell.std() / np.sqrt(n_cells)
    assert abs(per_cell.mean() - bayes) < 4 * standard_error
    assert abs(per_cell.mean() - bayes) < 0.1 * (naive - bayes)
    # identical halves: the plain MSE, exactly
    assert np.array_equal(debiased_mse(a, a, truth), np.mean((a - truth) ** 2, axis=1))


def test_oracle_needs_two_samples(bundle_path):
    with pytest.raises(SimcellError, match="oracle_samples must be >= 2"):
        evaluate(bundle_path, models=[], oracle_samples=1, tasks=["task_0"])


def test_cli_oracle_samples_reach_the_oracle_and_config(bundle_path, tmp_path):
    """``--oracle-samples`` is what the oracle draws (recorded in config.json); fewer
    than two halves is refused before anything runs."""
    out = tmp_path / "few"
    args = ["evaluate", str(bundle_path), "--models", "", "--tasks", "task_0", "-o", str(out)]
    result = CliRunner().invoke(main, [*args, "--oracle-samples", "4"])
    assert result.exit_code == 0, result.output
    assert json.loads((out / "config.json").read_text())["oracle_samples"] == 4
    direct = evaluate(bundle_path, models=[], oracle_samples=4, tasks=["task_0"])
    written = pd.read_csv(out / "results.csv")
    oracle = (written.model == "oracle") & (written.metric == "mse")
    expected = direct[(direct.model == "oracle") & (direct.metric == "mse")]
    np.testing.assert_allclose(
        written.loc[oracle, "value"].to_numpy(), expected["value"].to_numpy(), rtol=1e-12
    )
    refused = tmp_path / "refused"
    result = CliRunner().invoke(main, [*args[:-1], str(refused), "--oracle-samples", "1"])
    assert result.exit_code == 2 and "oracle-samples" in result.output
    assert not refused.exists()
    with pytest.raises(SimcellError, match="oracle_samples must be >= 2"):
        plan_evaluation(bundle_path, models="", oracle_samples=1, out=tmp_path / "plan")
