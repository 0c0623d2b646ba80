"""The metric registry: directions, levels, and the inputs each metric declares."""

from __future__ import annotations

import numpy as np
import pytest

from simcell import SimcellError
from simcell.evaluation import metrics
from simcell.evaluation.metrics import _registry

EXPECTED = {
    "mse": ("lower", "cell"),
    "mae": ("lower", "cell"),
    "pearson": ("higher", "cell"),
    "r2": ("higher", "cell"),
    "mmd": ("lower", "distribution"),
    "rmmd": ("lower", "distribution"),
    "fid": ("lower", "distribution"),
    "rfid": ("lower", "distribution"),
    "sinkhorn": ("lower", "distribution"),
    "rsd": ("lower", "distribution"),
    "energy": ("lower", "distribution"),
    "knn_accuracy": ("higher", "classification"),
    "concept_accuracy": ("higher", "latent"),
    "concept_f1": ("higher", "latent"),
    "nmi": ("higher", "latent"),
    "ari": ("higher", "latent"),
    "linear_r2": ("higher", "latent"),
    "mcc": ("higher", "latent"),
    "causal_auroc": ("higher", "causal"),
    "causal_auroc_undirected": ("higher", "causal"),
    "causal_f1": ("higher", "causal"),
    "causal_f1_undirected": ("higher", "causal"),
    "causal_pearson": ("higher", "causal"),
    "causal_pearson_undirected": ("higher", "causal"),
    "concept_f1_weighted": ("higher", "latent"),
    "concept_agreement": ("higher", "classification"),
    "block_r2": ("higher", "latent"),
    "block_r2_kernel": ("higher", "latent"),
    "latent_mcc": ("higher", "latent"),
}

# The inputs every family declares: the vocabulary a runner's context is built from.
EXPECTED_INPUTS = {
    "cell": ("pred", "truth"),
    "distribution": ("pred", "truth"),
    "ratio": ("pred", "truth", "references"),
    "knn_accuracy": ("pred", "reference", "reference_labels", "target_label"),
    "concepts": ("embedding", "concepts_true"),
    "clusters": ("embedding", "cell_types"),
    "causal": ("causal_pred", "causal_true"),
    "agreement": ("pred", "truth", "reference", "reference_labels"),
    "blocks": ("embedding", "latent_true"),
}


def _family(name: str) -> str:
    if name in ("rmmd", "rfid", "rsd"):
        return "ratio"
    if name in ("nmi", "ari"):
        return "clusters"
    if name == "concept_agreement":
        return "agreement"
    if name in ("concept_accuracy", "concept_f1", "concept_f1_weighted", "linear_r2", "mcc"):
        return "concepts"
    if name in ("block_r2", "block_r2_kernel", "latent_mcc"):
        return "blocks"
    if name == "knn_accuracy":
        return name
    return EXPECTED[name][1]


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_registry_direction_level_and_inputs(name):
    metric = metrics.get_metric(name)
    assert (metric.direction, metric.level) == EXPECTED[name]
    assert metric.name == name
    assert callable(metric.fn)
    assert metric.inputs == EXPECTED_INPUTS[_family(name)]
    assert set(metric.inputs) <= metrics.METRIC_INPUTS
    assert not set(metric.inputs) & set(metric.options)
    assert metric.reference


@pytest.mark.parametrize("name", ["mmd", "energy", "fid", "sinkhorn", "rmmd", "rfid", "rsd"])
def test_distribution_metrics_take_paired_and_seeded_options(name):
    options = metrics.get_metric(name).options
    assert "paired" in options
    if name != "energy":  # energy has nothing random
        assert "seed" in options


def test_registry_holds_exactly_the_documented_metrics():
    assert {metric.name for metric in metrics.list_metrics()} == set(EXPECTED)
    for level in metrics.LEVELS:
        names = {metric.name for metric in metrics.list_metrics(level)}
        assert names == {name for name, (_, lvl) in EXPECTED.items() if lvl == level}


def test_registry_functions_are_the_public_ones():
    assert metrics.get_metric("fid").fn is metrics.frechet_distance
    assert metrics.get_metric("sinkhorn").fn is metrics.sinkhorn_divergence
    assert metrics.get_metric("energy").fn is metrics.energy_distance
    assert metrics.get_metric("rmmd").fn is metrics.rmmd


def test_a_runner_can_call_every_metric_from_one_context(rng):
    """The harness's call: required inputs from the context, options only when present."""
    truth = rng.normal(size=(30, 4))
    context = {
        "pred": truth + 0.1 * rng.normal(size=truth.shape),
        "truth": truth,
        "references": [rng.normal(size=(30, 4)) + 2.0],
        "reference": np.vstack([truth, rng.normal(size=(30, 4)) + 2.0]),
        "reference_labels": np.repeat(["target", "source"], 30),
        "target_label": "target",
        "embedding": np.column_stack([rng.integers(0, 2, size=30), rng.normal(size=30)]),
        "paired": True,
        "seed": 3,
        "epsilon": 1.0,
        "device": "cpu",
    }
    context["concepts_true"] = context["embedding"][:, :1].astype(int)
    context["cell_types"] = context["concepts_true"][:, 0]
    context["causal_true"] = np.sign(rng.normal(size=(6, 6))) * (rng.random((6, 6)) < 0.4)
    context["causal_pred"] = context["causal_true"] + 0.3 * rng.normal(size=(6, 6))
    context["latent_true"] = rng.normal(size=(30, 2))
    for metric in metrics.list_metrics():
        assert set(metric.inputs) <= set(context)
        value = metric.fn(
            **{k: context[k] for k in metric.inputs},
            **{k: context[k] for k in metric.options if k in context},
        )
        expected_shape = (30,) if metric.level == "cell" else ()
        assert np.shape(value) == expected_shape, metric.name


def test_unknown_metric_names_the_valid_ones():
    with pytest.raises(SimcellError, match="unknown metric 'rmse'.*mae.*rmmd"):
        metrics.get_metric("rmse")


def test_register_metric_derives_inputs_and_rejects_bad_declarations(monkeypatch):
    monkeypatch.setattr(_registry, "_REGISTRY", dict(_registry._REGISTRY))

    @metrics.register_metric("double_mse", direction="lower", level="cell", reference="0")
    def double_mse(pred, truth, *, weight=2.0):
        return weight * metrics.mse(pred, truth)

    registered = metrics.get_metric("double_mse")
    assert registered.fn is double_mse
    assert (registered.inputs, registered.options, registered.reference) == (
        ("pred", "truth"),
        ("weight",),
        "0",
    )
    with pytest.raises(SimcellError, match="already registered"):
        metrics.register_metric("mse", direction="lower", level="cell")(double_mse)
    with pytest.raises(SimcellError, match="direction"):
        metrics.register_metric("x", direction="smaller", level="cell")
    with pytest.raises(SimcellError, match="level"):
        metrics.register_metric("x", direction="lower", level="identifiability")
    with pytest.raises(SimcellError, match="level"):
        metrics.list_metrics("gene")
    with pytest.raises(SimcellError, match="'x_pred', which is not a metric input"):
        metrics.register_metric("x", direction="lower", level="cell")(lambda x_pred, truth: 0)
    with pytest.raises(SimcellError, match="by keyword"):
        metrics.register_metric("y", direction="lower", level="cell")(lambda *cells: 0)
    assert "x" not in {metric.name for metric in metrics.list_metrics()}
