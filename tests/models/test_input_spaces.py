"""Models declare what they need: input space, the FitContext, a Representation (issue 10)."""

from __future__ import annotations

import inspect
from typing import ClassVar

import numpy as np
import pytest

from simcell import SimcellError, scenarios
from simcell.evaluation import evaluate
from simcell.evaluation.harness import EvaluationConfig, _fit_model, _representation_rows
from simcell.evaluation.metrics import _registry as metric_registry
from simcell.evaluation.tasks import build_task
from simcell.models import (
    FitContext,
    Identity,
    Representation,
    get_model_class,
    list_models,
)
from simcell.models import _registry as model_registry
from simcell.models.base import INPUT_SPACES, check_input_space
from simcell.simulator import read_bundle, schema, simulate, write_bundle

FAST = {"oracle_samples": 4, "n_boot": 50, "tasks": ["task_0"], "device": "cpu"}


class LognormIdentity(Identity):
    name: ClassVar[str] = "lognorm_identity"
    input_space = "lognorm"


class CountsIdentity(Identity):
    name: ClassVar[str] = "counts_identity"
    input_space = "counts"


class HvgIdentity(Identity):
    name: ClassVar[str] = "hvg_identity"
    input_space = "hvg"
    n_hvg = 10


class ContextRecorder(Identity):
    """Keeps the FitContext it was fitted with."""

    name: ClassVar[str] = "context_recorder"
    input_space = "hvg"
    n_hvg = 7

    def fit(self, x, concepts, *, concept_kinds=None, context=None):
        self.context = context
        self.x_fit = x
        return super().fit(x, concepts, concept_kinds=concept_kinds, context=context)


class BadSpace(Identity):
    name: ClassVar[str] = "bad_space"
    input_space = "rna"  # type: ignore[assignment]


class OneRowShort(Identity):
    name: ClassVar[str] = "one_row_short"

    def counterfactual(self, x, concepts, target_concepts):
        return super().counterfactual(x, concepts, target_concepts)[1:]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    params = scenarios.load("synthetic2", n_cells=1200, n_genes=60, n_tasks=2)
    path = tmp_path_factory.mktemp("spaces") / "bundle"
    write_bundle(simulate(params, seed=1, scenario="synthetic2"), path)
    return read_bundle(path)


@pytest.fixture(scope="module")
def task(bundle):
    return build_task(bundle, "task_0", n_components=16, seed=0)


@pytest.fixture
def registered(monkeypatch):
    """Register toy models for one test only."""

    def add(*classes):
        for cls in classes:
            monkeypatch.setitem(model_registry._REGISTRY, cls.name, cls)

    return add


def test_every_registered_model_accepts_a_fit_context():
    for name in list_models():
        assert "context" in inspect.signature(get_model_class(name).fit).parameters, name
        assert get_model_class(name).input_space in INPUT_SPACES


def test_identity_in_lognorm_and_counts_scores_exactly_as_identity(bundle, registered):
    registered(LognormIdentity, CountsIdentity)
    table = evaluate(bundle, models=["lognorm_identity", "counts_identity"], **FAST)
    keys = ["space", "metric"]
    identity = table[table.model == "identity"].set_index(keys)["value"]
    assert {"mse", "pearson", "mse_affected"} <= set(identity.loc["genes"].index)
    for model in ("lognorm_identity", "counts_identity"):
        rows = table[(table.model == model) & (table.metric != "gap_closed")]
        assert len(rows) == len(identity)
        # every score, gene space, PCA space, distributional and leakage, bit for bit
        np.testing.assert_array_equal(rows.set_index(keys)["value"].loc[identity.index], identity)


def test_hvg_space_keeps_the_source_outside_the_subset(bundle, task):
    inputs = task.model_inputs("hvg", 10)
    assert inputs.x_train.dtype == np.float32 and inputs.x_train.shape == (task.train.size, 10)
    # the 10 genes of highest variance over the log-normalised train cells
    lognorm = task.preprocessor.lognorm(task._counts[task.train])
    expected = np.sort(np.argsort(-lognorm.var(axis=0), kind="stable")[:10])
    np.testing.assert_array_equal(inputs.genes, expected)
    np.testing.assert_array_equal(inputs.x_train, lognorm[:, expected].astype(np.float32))
    assert inputs.gene_names == tuple(task.gene_names[i] for i in expected)
    genes, pcs = task.from_model_space(inputs.x_intervene + 1.0, inputs)
    outside = np.setdiff1d(np.arange(genes.shape[1]), inputs.genes)
    np.testing.assert_array_equal(genes[:, outside], task.intervene_genes[:, outside])
    np.testing.assert_allclose(genes[:, inputs.genes], task.intervene_genes[:, inputs.genes] + 1)
    np.testing.assert_array_equal(pcs, task.preprocessor.to_pca(genes))
    # built once per task: the same arrays come back
    assert task.model_inputs("hvg", 10) is inputs
    # the subset does not depend on which space a model asked for first
    fresh = build_task(bundle, "task_0", n_components=16, seed=0)
    fresh.model_inputs("lognorm")
    np.testing.assert_array_equal(fresh.model_inputs("hvg", 10).genes, inputs.genes)
    # more genes than the bundle has: every gene, the lognorm space's arrays
    assert task.model_inputs("hvg", 10_000).x_train is task.model_inputs("lognorm").x_train


def test_counts_predictions_are_normalised_by_their_own_totals(task):
    inputs = task.model_inputs("counts")
    assert inputs.x_train.dtype == np.float32
    doubled = 2.0 * inputs.x_intervene  # twice the library size, same proportions
    genes, _ = task.from_model_space(doubled, inputs)
    np.testing.assert_allclose(genes, task.intervene_genes, rtol=1e-12, atol=1e-12)


def test_fit_context_carries_the_dag_of_the_causal_scenario(tmp_path, registered):
    params = scenarios.load("causal", n_cells=1200, n_genes=60, n_tasks=1)
    causal = simulate(params, seed=3, scenario="causal")
    write_bundle(causal, tmp_path / "bundle")
    bundle = read_bundle(tmp_path / "bundle")
    registered(ContextRecorder)
    data = build_task(bundle, "task_0", n_components=8, seed=0)
    annotations = data.annotations_for()
    model, inputs = _fit_model("context_recorder", data, annotations, EvaluationConfig(models=()))
    context = model.context
    assert isinstance(context, FitContext)
    assert context.dag == schema.concept_dag(bundle.factual) and len(context.dag) > 0
    assert context.concept_names == annotations.names
    assert context.gene_names == inputs.gene_names and len(context.gene_names) == 7
    np.testing.assert_array_equal(context.cell_types, schema.cell_types(bundle.factual)[data.train])
    totals = np.asarray(bundle.factual.X[data.train].sum(axis=1)).ravel()
    np.testing.assert_array_equal(context.library_size, totals)
    assert model.x_fit is inputs.x_train


class TwoBlocks:
    has_representation = True

    def encode(self, x, concepts):
        return Representation(
            {"invariant": x[:, :2], "concept": x[:, 2:]}, targets={"invariant": "z_invariant"}
        )


def test_a_two_block_representation_gives_a_row_per_block(monkeypatch):
    monkeypatch.setattr(metric_registry, "_REGISTRY", dict(metric_registry._REGISTRY))

    @metric_registry.register_metric("latent_corr", direction="higher", level="latent")
    def latent_corr(embedding, latent_true):
        return float(abs(np.corrcoef(embedding[:, 0], latent_true[:, 0])[0, 1]))

    rng = np.random.default_rng(0)
    z = rng.normal(size=(300, 2))
    concepts = (rng.random((300, 2)) < 0.5).astype(float)
    x = np.concatenate([z, concepts + 0.1 * rng.normal(size=(300, 2))], axis=1)
    types = np.arange(300) % 3
    rows = _representation_rows(
        "t", "m", 0, TwoBlocks(), x, concepts, concepts, types, latents={"z_invariant": z}
    )
    names = [row.metric for row in rows]
    concept_metrics = [
        metric.name
        for metric in metric_registry.list_metrics("latent")
        if "latent_true" not in metric.inputs
    ]
    for name in concept_metrics:
        assert f"{name}:invariant" in names and f"{name}:concept" in names, name
    # the true latent only for the block that names it
    assert "latent_corr:invariant" in names and "latent_corr:concept" not in names
    value = {row.metric: row.value for row in rows}["latent_corr:invariant"]
    assert value == pytest.approx(1.0)
    # one block (a plain array): the rows keep their names
    one = _representation_rows("t", "m", 0, _Plain(), x, concepts, concepts, types)
    assert sorted(row.metric for row in one) == sorted(concept_metrics)


class _Plain:
    has_representation = True

    def encode(self, x, concepts):
        return x


def test_true_latents_are_read_from_obsm(bundle):
    factual = bundle.factual
    assert schema.true_latents(factual) == {}
    copy = factual.copy()
    copy.obsm["simcell_latent_z_invariant"] = np.ones((copy.n_obs, 3), dtype=np.float32)
    latents = schema.true_latents(copy)
    assert list(latents) == ["z_invariant"] and latents["z_invariant"].shape == (copy.n_obs, 3)


def test_bad_input_is_a_one_line_error(bundle, task, registered):
    registered(BadSpace, OneRowShort)
    with pytest.raises(SimcellError, match="input_space 'rna'") as error:
        evaluate(bundle, models=["bad_space"], **FAST)
    assert "\n" not in str(error.value)
    with pytest.raises(SimcellError, match=r"returned shape \(\d+, \d+\)"):
        evaluate(bundle, models=["one_row_short"], cell_level=False, **FAST)
    counts = task.model_inputs("counts")
    with pytest.raises(SimcellError, match="negative counts"):
        task.from_model_space(counts.x_intervene - 1.0, counts)
    lognorm = task.model_inputs("lognorm")
    with pytest.raises(SimcellError, match="NaN"):
        task.from_model_space(np.full_like(lognorm.x_intervene, np.nan), lognorm)
    with pytest.raises(SimcellError, match="one named block"):
        Representation({})
    with pytest.raises(SimcellError, match="different numbers of cells"):
        Representation({"a": np.zeros((3, 1)), "b": np.zeros((4, 1))})
    with pytest.raises(SimcellError, match="name no block"):
        Representation({"a": np.zeros((3, 1))}, targets={"b": "z"})
    model = HvgIdentity()
    model.n_hvg = 0
    with pytest.raises(SimcellError, match="n_hvg must be a positive integer"):
        check_input_space(model)


def test_the_export_and_the_lognorm_space_share_one_normalisation(bundle, task, tmp_path):
    import anndata as ad

    from simcell.evaluation.export import export_tasks

    out = export_tasks(bundle, tmp_path / "export", space="lognorm", tasks=["task_0"])
    exported = ad.read_h5ad(out / "task_0" / "train.h5ad").X.toarray()
    x_train = task.model_inputs("lognorm").x_train
    np.testing.assert_array_equal(exported.astype(np.float32), x_train)
