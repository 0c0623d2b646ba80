"""The harness: runs models (or reads predictions) on a bundle's tasks and scores them.

It is a loop. For each task a :class:`~simcell.evaluation.tasks.TaskData` is built
once; each prediction (a model's, a reference row's or a file's) gets a context
of named arrays, and every registered metric whose declared inputs are in the
context is called (:func:`simcell.evaluation.metrics.list_metrics`). Results are
typed :class:`ResultRow` values, gathered into a DataFrame.

Rows beside the models, for every task:

* ``identity`` — the factual cell, unchanged (the trivial baseline);
* ``oracle`` — the exact posterior mean E[x' | x] (the Bayes-optimal predictor),
  scored by the cell-level errors only: it is a floor under every model's error;
* ``oracle_sample`` — one exact posterior draw per cell (the Bayes-optimal
  sampler), scored by the distributional and classification metrics;
* ``noise_floor`` — an independent sample of the true counterfactual law (same
  cells' covariates and concepts, fresh exogenous noise): what a perfect
  sampler scores on a distributional metric, given the finite populations; on
  a bundle without truth (real cells), one seeded half of the heldout cells
  against the other half (:func:`_split_floor_rows`);
* ``heldout`` — the task's real (u, k = 1) cells against the truth: how far an
  observed population of the target type is.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import astuple, dataclass, field, fields

import anndata as ad
import numpy as np
import pandas as pd

from simcell import SimcellError, SimcellWarning
from simcell._random import int_seed, stream
from simcell.evaluation import metrics as m
from simcell.evaluation.metrics.distribution import SINKHORN_EPSILON_SCALE
from simcell.evaluation.metrics.ratios import competing_references
from simcell.evaluation.oracle import oracle_available, oracle_posterior
from simcell.evaluation.predictions import brought_for_task, check_pca_settings, read_predictions
from simcell.evaluation.tasks import NO_CORRUPTION, Corruption, TaskData, build_task
from simcell.simulator import Bundle, read_bundle, schema

log = logging.getLogger(__name__)

IDENTITY, ORACLE, ORACLE_SAMPLE = "identity", "oracle", "oracle_sample"
NOISE_FLOOR, HELDOUT, PREDICTIONS = "noise_floor", "heldout", "predictions"
#: rows that are not models: the report shows them as references
REFERENCE_ROWS = (ORACLE, ORACLE_SAMPLE, NOISE_FLOOR, HELDOUT, IDENTITY)
#: cells per population used for distribution metrics (seeded subsample)
MAX_DISTRIBUTION_CELLS = 1000
#: cells per population for metrics with an entropic ε (Sinkhorn), whose
#: log-domain solver is the costliest metric, and its iteration budget
MAX_SINKHORN_CELLS = 150
SINKHORN_OPTIONS = {"max_iter": 1000, "tol": 1e-6}
#: cells per reference population when searching for the nearest one (once per
#: task and ratio metric; the ratios themselves use the full populations)
MAX_SEARCH_CELLS = 300


@dataclass(frozen=True)
class ResultRow:
    """One score.

    Attributes
    ----------
    task, model : str
    seed : int
        The harness / model seed.
    space : {"pca", "genes", "latent"}
    metric : str
        A registered metric's name, possibly with a suffix (``mse_affected``,
        ``leakage_concept_after``, ``gap_closed``, ``inversion_error``).
    value, ci_low, ci_high : float
        The score and its bootstrap CI (cell-level metrics; NaN otherwise).
    scenario : str
    data_seed : int
        The bundle's simulation seed (-1 if unknown).
    corruption : str
        Corruption kind of the annotations the model saw (``none``).
    level : int
        Its level (0 for ``none``).
    """

    task: str
    model: str
    seed: int
    space: str
    metric: str
    value: float
    ci_low: float = math.nan
    ci_high: float = math.nan
    scenario: str = ""
    data_seed: int = -1
    corruption: str = "none"
    level: int = 0


RESULT_COLUMNS = [f.name for f in fields(ResultRow)]


def results_frame(rows: Iterable[ResultRow]) -> pd.DataFrame:
    """Rows -> the results table (columns :data:`RESULT_COLUMNS`)."""
    return pd.DataFrame([astuple(row) for row in rows], columns=RESULT_COLUMNS)


@dataclass(frozen=True)
class EvaluationConfig:
    """Settings of one evaluation run (written next to its results)."""

    models: tuple[str, ...]
    preset: str = "fast"
    device: str = "auto"
    seed: int = 0
    n_components: int = 128
    oracle_samples: int = 32
    n_boot: int = 1000
    predictions: str | None = None
    tasks: tuple[str, ...] = field(default=())
    corruptions: tuple[str, ...] = field(default=())

    def to_dict(self) -> dict:
        return {
            "models": list(self.models),
            "preset": self.preset,
            "device": self.device,
            "seed": self.seed,
            "n_components": self.n_components,
            "oracle_samples": self.oracle_samples,
            "n_boot": self.n_boot,
            "predictions": self.predictions,
            "tasks": list(self.tasks),
            "corruptions": list(self.corruptions),
        }


def debiased_mse(half_a: np.ndarray, half_b: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Per-cell MSE of the exact posterior mean, estimated from two Monte-Carlo halves.

    The MSE of a Monte-Carlo mean of S draws exceeds the Bayes MSE by the
    posterior variance / S (3-4 % of the oracle's MSE with S = 32 on synthetic2,
    a fifth of identity's gap to the oracle on some tasks). With two independent
    half-means ``a`` and ``b``, ``E[(a - y)·(b - y)]`` is the Bayes MSE exactly,
    because their Monte-Carlo errors are independent with mean 0. Per cell the
    estimate can be negative; its mean over cells is unbiased.

    Returns
    -------
    ndarray, shape (n_cells,)
    """
    return np.mean((half_a - truth) * (half_b - truth), axis=1)


@contextlib.contextmanager
def _budget_notes(what: str):
    """Log, rather than raise, the warnings of solvers run on a fixed budget.

    The harness gives Sinkhorn a fixed iteration budget; a solve that uses it up
    is kept and logged with the marginal error it reached. Other warnings pass.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    for warning in caught:
        if issubclass(warning.category, SimcellWarning):
            log.warning("%s: %s", what, warning.message)
        else:
            warnings.warn(warning.message, warning.category, stacklevel=3)


# ----------------------------------------------------------------------------- per task


@dataclass(frozen=True, eq=False)
class _Populations:
    """What every distributional score of a task shares, computed once.

    ``cells`` / ``small`` index the intervene rows kept for the distributional
    metrics (and, for metrics with an entropic ε, the smaller set): a paired
    prediction and the truth are subsampled with the SAME indices. ``target`` is
    the truth, or the heldout cells when the bundle has no truth. ``nearest``
    holds, per ratio metric, the closest reference population (found once), and
    ``denominators`` its distance to the target (computed once, for the ratio
    metrics that take a precomputed ``denominator``).
    """

    cells: np.ndarray
    small: np.ndarray
    target: np.ndarray
    small_target: np.ndarray
    paired_target: bool
    bandwidths: tuple[float, ...]
    epsilon: float
    nearest: dict
    denominators: dict


def _pick(n: int, limit: int, rng: np.random.Generator) -> np.ndarray:
    return np.arange(n) if n <= limit else np.sort(rng.choice(n, limit, replace=False))


def _uses_epsilon(metric: m.Metric) -> bool:
    """Entropic-OT metrics (they take ``epsilon``) run on the smaller subsample."""
    return "epsilon" in metric.options


def _populations(data: TaskData, seed: int) -> _Populations:
    if data.truth is not None:
        full, paired = data.truth.pcs, True
    elif data.heldout_pcs.shape[0] >= 2:
        full, paired = data.heldout_pcs, False
    else:
        raise SimcellError(f"{data.name}: no truth and fewer than 2 heldout cells to compare with")
    cells = _pick(full.shape[0], MAX_DISTRIBUTION_CELLS, stream(seed, data.name, "dist cells"))
    small = cells[_pick(cells.size, MAX_SINKHORN_CELLS, stream(seed, data.name, "ot cells"))]
    target, small_target = full[cells], full[small]
    bandwidths = tuple(m.median_heuristic_bandwidths(target, seed=0))
    pairs = ((small_target[:, None, :] - small_target[None, :, :]) ** 2).sum(-1)
    median = float(np.median(pairs[np.triu_indices(small_target.shape[0], 1)]))
    epsilon = SINKHORN_EPSILON_SCALE * median
    shared = {"bandwidths": bandwidths, "epsilon": epsilon, "seed": 0, **SINKHORN_OPTIONS}
    nearest, denominators = {}, {}
    rng = stream(seed, data.name, "ot references")
    for metric in m.list_metrics("distribution"):
        if "references" not in metric.inputs or not data.references:
            continue
        limit = MAX_SINKHORN_CELLS if _uses_epsilon(metric) else MAX_SEARCH_CELLS
        picks = [_pick(r.shape[0], limit, rng) for r in data.references]
        goal = small_target if _uses_epsilon(metric) else target[: 2 * MAX_SEARCH_CELLS]
        search = [r[pick] for r, pick in zip(data.references, picks, strict=True)]
        index = _nearest(metric, search, goal, shared, data.name)
        if index is None:
            continue
        population = search[index] if _uses_epsilon(metric) else data.references[index]
        nearest[metric.name] = population
        if "denominator" in metric.options:
            # the ratio's denominator depends on the target and this population
            # only: computed here once, not again for every row
            context = {
                **shared,
                "paired": False,
                "pred": population,
                "truth": small_target if _uses_epsilon(metric) else target,
                "references": [population],
                "denominator": 1.0,
            }
            if not _uses_epsilon(metric):
                context = {k: v for k, v in context.items() if k not in SINKHORN_OPTIONS}
            try:
                with _budget_notes(f"{data.name} {metric.name} denominator"):
                    denominators[metric.name] = float(_call(metric, context))
            except SimcellError as error:
                log.warning("%s %s denominator: %s", data.name, metric.name, error)
    return _Populations(
        cells, small, target, small_target, paired, bandwidths, epsilon, nearest, denominators
    )


def _call(metric: m.Metric, context: Mapping) -> float | np.ndarray:
    """Call a metric with the inputs it declares (and the options the context has)."""
    kwargs = {k: context[k] for k in metric.inputs}
    kwargs.update({k: context[k] for k in metric.options if k in context})
    return metric.fn(**kwargs)


def _nearest(metric: m.Metric, refs: list, goal: np.ndarray, shared: dict, task: str):
    """Index of the reference population closest to ``goal`` under a ratio metric's
    distance (None when every candidate denominator is at distance <= 0).

    Only the populations the metric itself lets compete (see
    :func:`~simcell.evaluation.metrics.ratios.competing_references`: rFID leaves
    out populations too small for its bias correction) are candidates, so the
    denominator is the one the metric would choose. A ratio with a unit
    ``denominator`` is its distance, so the metric itself measures each
    population once without the harness knowing its distance. A ratio metric
    without that option orders the populations by their ratio against one fixed
    denominator population (one more distance per call).
    """
    candidates = competing_references(metric.name, [r.shape[0] for r in refs], goal.shape[1])
    if "denominator" in metric.options:
        with _budget_notes(f"{task} reference populations"):
            distances = [
                float(
                    _call(
                        metric,
                        {
                            **shared,
                            "pred": refs[index],
                            "truth": goal,
                            "references": [refs[index]],
                            "denominator": 1.0,
                        },
                    )
                )
                for index in candidates
            ]
        return candidates[int(np.argmin(distances))] if max(distances) > 0 else None
    for denominator in (refs[index] for index in candidates):
        try:
            with _budget_notes(f"{task} reference populations"):
                ratios = [
                    float(
                        _call(
                            metric,
                            {
                                **shared,
                                "pred": refs[index],
                                "truth": goal,
                                "references": [denominator],
                            },
                        )
                    )
                    for index in candidates
                ]
        except SimcellError:  # this denominator is at distance <= 0: try another
            continue
        return candidates[int(np.argmin(ratios))]
    return None


@dataclass(frozen=True)
class _Labels:
    """The columns a row carries beyond its task, model and metric."""

    seed: int
    scenario: str
    data_seed: int
    corruption: Corruption = NO_CORRUPTION

    def row(self, task, model, space, metric, value, low=math.nan, high=math.nan) -> ResultRow:
        return ResultRow(
            task=task,
            model=model,
            seed=self.seed,
            space=space,
            metric=metric,
            value=float(value),
            ci_low=float(low),
            ci_high=float(high),
            scenario=self.scenario,
            data_seed=self.data_seed,
            corruption=self.corruption.kind,
            level=self.corruption.level,
        )


_ROW_BLOCK = 512


def _by_rows(per_cell: Callable, keep: np.ndarray | None, *arrays: np.ndarray) -> np.ndarray:
    """A per-cell metric computed on blocks of rows (and the ``keep`` columns).

    Every cell-level metric is a function of each row alone, so the values are
    those of one call on all rows, without its cell x gene temporaries (the
    oracle's step at full size held several hundred MB of them).
    """
    parts = []
    for start in range(0, arrays[0].shape[0], _ROW_BLOCK):
        block = [a[start : start + _ROW_BLOCK] for a in arrays]
        if keep is not None:
            block = [a[:, keep] for a in block]
        parts.append(np.asarray(per_cell(*block)))
    return np.concatenate(parts) if parts else np.zeros(0)


def _cell_rows(
    data: TaskData,
    model: str,
    pcs: np.ndarray,
    genes: np.ndarray,
    labels: _Labels,
    n_boot: int,
    halves: tuple | None = None,
) -> list[ResultRow]:
    """Cell-level errors against each cell's own twin, in PCA and gene space."""
    truth = data.truth
    rng = stream(labels.seed, data.name, model, "bootstrap")
    pca_halves, gene_halves = halves if halves is not None else (None, None)
    spaces = [
        ("pca", "", pcs, truth.pcs, pca_halves, None),
        ("genes", "", genes, truth.genes, gene_halves, None),
    ]
    if data.affected.sum() >= 2:  # correlations need two genes
        spaces.append(("genes", "_affected", genes, truth.genes, gene_halves, data.affected))
    rows = []
    for space, suffix, pred, target, pair, keep in spaces:
        for metric in m.list_metrics("cell"):
            if metric.name == "mse" and pair is not None:
                per_cell = _by_rows(lambda a, b, t: debiased_mse(a, b, t), keep, *pair, target)
            else:
                per_cell = _by_rows(
                    lambda p, t, metric=metric: np.asarray(_call(metric, {"pred": p, "truth": t})),
                    keep,
                    pred,
                    target,
                )
            per_cell = per_cell[np.isfinite(per_cell)]
            if per_cell.size == 0:
                continue
            mean, low, high = m.bootstrap_ci(per_cell, n_boot=n_boot, rng=rng)
            rows.append(labels.row(data.name, model, space, metric.name + suffix, mean, low, high))
    return rows


def _population_rows(
    data: TaskData,
    model: str,
    pcs: np.ndarray,
    labels: _Labels,
    pops: _Populations,
    *,
    paired: bool,
    classify: bool = True,
) -> list[ResultRow]:
    """Distributional metrics against the target population, and the kNN classifier.

    A paired prediction (row i predicts truth row i) is subsampled with the
    target's own indices; an unpaired population (heldout cells) is subsampled
    on its own, with ``paired=False``.
    """
    # without truth the target is the heldout cells: nothing is paired with them
    paired = paired and pops.paired_target
    if paired:
        pred, small = pcs[pops.cells], pcs[pops.small]
    else:
        rng = stream(labels.seed, data.name, model, "population cells")
        pred = pcs[_pick(pcs.shape[0], MAX_DISTRIBUTION_CELLS, rng)]
        small = pred[_pick(pred.shape[0], MAX_SINKHORN_CELLS, rng)]
    shared = {"paired": paired, "bandwidths": pops.bandwidths, "epsilon": pops.epsilon, "seed": 0}
    rows = []
    for metric in m.list_metrics("distribution"):
        entropic = _uses_epsilon(metric)
        context = {
            **shared,
            **(SINKHORN_OPTIONS if entropic else {}),
            "pred": small if entropic else pred,
            "truth": pops.small_target if entropic else pops.target,
        }
        if "references" in metric.inputs:
            nearest = pops.nearest.get(metric.name)
            if nearest is None:
                continue
            context["references"] = [nearest]
            if metric.name in pops.denominators:
                context["denominator"] = pops.denominators[metric.name]
        try:
            with _budget_notes(f"{data.name} {model} {metric.name}"):
                value = float(_call(metric, context))
        except SimcellError as error:  # undefined here (e.g. a ratio at distance 0): said why
            log.warning("%s %s %s: %s", data.name, model, metric.name, error)
            continue
        rows.append(labels.row(data.name, model, "pca", metric.name, value))
    if classify and data.knn_reference.shape[0] and data.heldout_pcs.shape[0]:
        context = {
            "pred": pcs,
            "reference": data.knn_reference,
            "reference_labels": data.knn_labels,
            "target_label": data.target_label,
        }
        for metric in m.list_metrics("classification"):
            if not set(metric.inputs) <= context.keys():
                continue
            value = float(_call(metric, context))
            rows.append(labels.row(data.name, model, "pca", metric.name, value))
    return rows


def _split_floor_rows(data: TaskData, labels: _Labels, seed: int) -> list[ResultRow]:
    """``noise_floor`` without truth: every distributional metric between two seeded
    halves of the real heldout population, the second half as the target (what a
    perfect sampler of that population scores, at half its size)."""
    import dataclasses

    n = data.heldout_pcs.shape[0]
    if n < 4:
        return []
    order = stream(seed, data.name, "heldout halves").permutation(n)
    half_a = data.heldout_pcs[np.sort(order[: n // 2])]
    half_b = data.heldout_pcs[np.sort(order[n // 2 :])]
    target = dataclasses.replace(data, heldout_pcs=half_b)
    pops = _populations(target, seed)
    return _population_rows(target, NOISE_FLOOR, half_a, labels, pops, paired=False, classify=False)


def _leakage(data: TaskData, after: np.ndarray, seed: int):
    return m.concept_leakage(
        data.classifier_cells,
        data.classifier_types,
        data.classifier_concept,
        data.x_intervene,
        after,
        data.intervene_types,
        seed=int_seed(seed, data.name, "leakage"),
    )


def _leakage_rows(data: TaskData, model: str, pcs, labels: _Labels, truth_leak) -> list[ResultRow]:
    """Table S7, readable alone: classifiers trained on out-of-sample train cells,
    applied to the factual cells (before), the prediction (after) and, when the
    bundle has them, the true twins (truth)."""
    try:
        after = _leakage(data, pcs, labels.seed)
    except SimcellError as error:
        log.warning("%s %s leakage: %s", data.name, model, error)
        return []
    values = {
        "leakage_cell_type_before": after.cell_type_accuracy_before,
        "leakage_cell_type_after": after.cell_type_accuracy_after,
        "leakage_concept_before": after.concept_rate_before,
        "leakage_concept_after": after.concept_rate_after,
    }
    if truth_leak is not None:
        values["leakage_cell_type_truth"] = truth_leak.cell_type_accuracy_after
        values["leakage_concept_truth"] = truth_leak.concept_rate_after
    return [labels.row(data.name, model, "pca", k, v) for k, v in values.items()]


#: out-of-sample train cells the causal-consistency classifiers learn from (seeded subsample)
MAX_CAUSAL_CELLS = 2000
CAUSAL_ROLES = ("intervened", "descendant", "non_descendant")


def _causal_reference(bundle, data: TaskData, seed: int):
    """Out-of-sample train cells (PCs), their true concepts and the concept names, for
    :func:`_causal_consistency_rows`; None unless the task's do() propagates along a concept DAG."""
    intervention = data.intervention
    if data.truth is None or intervention.mode != "causal" or not intervention.dag:
        return None
    concepts = schema.true_concepts(bundle.factual).to_numpy()[data.train]
    rest = np.flatnonzero(np.isin(data.train, data.reference_cells))
    kept = rest[_pick(rest.size, MAX_CAUSAL_CELLS, stream(seed, data.name, "causal cells"))]
    return data.x_train[kept], concepts[kept], schema.concept_names(bundle.factual)


def _causal_consistency_rows(
    data: TaskData, model: str, pcs, labels: _Labels, reference
) -> list[ResultRow]:
    """:func:`~simcell.evaluation.metrics.causal_consistency` by role: the mean
    ``|shift read from the prediction − shift read from the twins|`` over the
    intervened concept (``causal_shift_error_intervened``), its descendants in
    the DAG and the other concepts (``..._descendant``, ``..._non_descendant``).
    Only on tasks whose intervention propagates (``_causal_reference``)."""
    if reference is None:
        return []
    cells, concepts, names = reference
    try:
        table = m.causal_consistency(
            cells,
            concepts,
            data.x_intervene,
            pcs,
            data.truth.pcs,
            concept_names=names,
            intervened=list(data.intervention.do),
            descendants=data.intervention.descendants(),
            seed=int_seed(labels.seed, data.name, "causal"),
        )
    except SimcellError as error:  # e.g. continuous concepts: no classifier reads them
        log.warning("%s %s causal consistency: %s", data.name, model, error)
        return []
    rows = []
    for role in CAUSAL_ROLES:
        errors = table.loc[table["role"] == role, "shift_error"] if len(table) else []
        if len(errors):
            metric = f"causal_shift_error_{role}"
            rows.append(labels.row(data.name, model, "pca", metric, float(np.mean(errors))))
    return rows


def _fit_model(name, data: TaskData, annotations, config: EvaluationConfig):
    """Create the model, give it the train cells in its declared input space and a
    :class:`~simcell.models.FitContext`, and fit it; returns (model, inputs)."""
    from simcell.models import create_model
    from simcell.models.base import check_input_space

    model = create_model(
        name, preset=config.preset, device=config.device, seed=config.seed, progress_bar=False
    )
    space = check_input_space(model)
    inputs = data.model_inputs(space, getattr(model, "n_hvg", 2000))
    kwargs = {"concept_kinds": annotations.kinds}
    if _takes_context(model.fit):
        kwargs["context"] = _fit_context(data, annotations, inputs)
    return model.fit(inputs.x_train, annotations.train, **kwargs), inputs


def _takes_context(fit) -> bool:
    """Whether a model's ``fit`` accepts ``context`` (models written before it may not)."""
    import inspect

    try:
        parameters = inspect.signature(fit).parameters.values()
    except (TypeError, ValueError):  # pragma: no cover - builtins without a signature
        return False
    return any(p.name == "context" or p.kind is p.VAR_KEYWORD for p in parameters)


def _fit_context(data: TaskData, annotations, inputs):
    from simcell.models import FitContext

    return FitContext(
        concept_names=annotations.names,
        dag=data.intervention.dag,
        gene_names=inputs.gene_names,
        cell_types=data.train_types,
        library_size=data.train_library_size,
    )


def _predict(model, data: TaskData, annotations, inputs=None) -> np.ndarray:
    """The model's answer to the task's Intervention, in its input space (models that
    do not model the DAG get the direct question's targets, see
    ``CounterfactualModel.predict``)."""
    x = data.x_intervene if inputs is None else inputs.x_intervene
    return model.predict(x, annotations.intervene, data.intervention, annotations.names)


def _inversion_rows(
    data: TaskData, model_name, model, annotations, labels, inputs=None
) -> list[ResultRow]:
    """``edit``-mode flows: MSE of the round trip with the condition unchanged.

    The solver's error along the learned flow, a floor under every edit; the
    cells come back within it (tested).
    """
    if getattr(model, "mode", None) != "edit" or not hasattr(model, "inversion_error"):
        return []
    x = data.x_intervene if inputs is None else inputs.x_intervene
    error = model.inversion_error(x, annotations.intervene)
    return [labels.row(data.name, model_name, "pca", "inversion_error", error)]


def _representation_rows(
    task,
    model_name,
    seed,
    model,
    x,
    concepts_true,
    annotated,
    cell_types,
    labels=None,
    latents: Mapping[str, np.ndarray] | None = None,
    exogenous: np.ndarray | None = None,
):
    """Disentanglement and identifiability of a model's embedding of the train cells:
    every registered ``latent`` metric whose inputs the context has, per block of its
    :class:`~simcell.models.Representation`.

    Each block is scored against the true concepts (``concepts_true``) and, when
    it names a target present in ``latents`` (true latent name -> array of the same
    cells), against that true latent (``latent_true``). A metric's row is named
    ``"<metric>:<block>"`` when there is more than one block, ``"<metric>"``
    otherwise. ``exogenous``: a perturbation bundle's exogenous term of the same
    cells (:func:`simcell.simulator.perturb.exogenous_latent`), what the
    responsive latents are identifiable as; a block targeting ``z_responsive``
    is also scored against it (``latent_mcc:<block>:z_exogenous`` and its
    rotation bar).

    Raises
    ------
    SimcellError
        If ``encode`` returns neither an array nor a Representation of ``x``'s cells.
    """
    if not getattr(model, "has_representation", False):
        return []
    from simcell.models import Representation

    encoded = model.encode(x, annotated)
    representation = Representation.of(encoded)
    if representation.n_cells != len(x):
        raise SimcellError(
            f"model {model_name} encoded {representation.n_cells} cells on {task}; "
            f"expected {len(x)}"
        )
    latents = latents or {}
    labels = labels or _Labels(seed=seed, scenario="", data_seed=-1)
    several = len(representation.blocks) > 1
    rows = []
    for block_name, block in representation.blocks.items():
        # a constant latent dimension (e.g. a dead ReLU unit) carries no information
        embedding = block[:, block.std(axis=0) > 0]
        where = f"{task} {model_name}" + (f" block {block_name}" if several else "")
        if embedding.shape[1] == 0:
            log.warning("%s: the embedding is constant; no latent metrics", where)
            continue
        context = {
            "embedding": embedding,
            "concepts_true": concepts_true,
            "cell_types": cell_types,
            "seed": seed,
        }
        target = representation.targets.get(block_name)
        if target is not None:
            if target in latents:
                context["latent_true"] = latents[target]
            else:
                log.warning("%s: the bundle has no true latent %r", where, target)
        for metric in m.list_metrics("latent"):
            if not set(metric.inputs) <= context.keys():
                continue
            try:
                value = float(_call(metric, context))
            except SimcellError as error:  # undefined here (e.g. a rare concept): said why
                log.warning("%s %s: %s", where, metric.name, error)
                continue
            name = f"{metric.name}:{block_name}" if several else metric.name
            rows.append(labels.row(task, model_name, "latent", name, value))
    rows += _identifiability_rows(task, model_name, representation, latents, labels)
    if exogenous is not None:
        rows += _exogenous_rows(task, model_name, representation, exogenous, labels)
    return rows


def _exogenous_rows(task, model_name, representation, exogenous, labels):
    """``latent_mcc:<block>:z_exogenous`` and ``latent_mcc_rotation95:<block>:z_exogenous``
    of every block that targets ``z_responsive``."""
    from simcell.evaluation.metrics.identifiability import latent_mcc, rotation_mcc_reference
    from simcell.simulator.perturb import EXOGENOUS

    rows = []
    for block, target in representation.targets.items():
        embedding = representation.blocks[block]
        embedding = embedding[:, embedding.std(axis=0) > 0]
        if target != "z_responsive" or not embedding.shape[1] or exogenous.shape[1] < 2:
            continue
        reference = rotation_mcc_reference(exogenous, seed=labels.seed)
        for metric, value in (
            (f"latent_mcc:{block}:{EXOGENOUS}", latent_mcc(embedding, exogenous)),
            (f"latent_mcc_rotation95:{block}:{EXOGENOUS}", np.quantile(reference, 0.95)),
        ):
            rows.append(labels.row(task, model_name, "latent", metric, float(value)))
    return rows


def _identifiability_rows(task, model_name, representation, latents, labels):
    """Per block with a true latent: the wrong-block leakage
    ``wrong_block_r2:<block>:<latent>`` (linear R² of a latent the block does not
    target) and two bars for reading its scores: ``latent_mcc_rotation95:<block>``
    (95th percentile of the MCC of randomly rotated true latents: an MCC below it
    says no more than "identified up to a linear map") and
    ``block_r2_random_split95:<block>`` (95th percentile of the block R² of a
    random subspace of all the true latents as wide as the block: a block R²
    below it says the split between blocks is not identified)."""
    from simcell.evaluation.metrics.identifiability import (
        _split_reference95,
        rotation_mcc_reference,
        wrong_block_r2,
    )

    present = {b: t for b, t in representation.targets.items() if t in latents}
    blocks = {b: representation.blocks[b] for b in present}
    blocks = {b: v[:, v.std(axis=0) > 0] for b, v in blocks.items()}
    blocks = {b: v for b, v in blocks.items() if v.shape[1]}
    present = {b: t for b, t in present.items() if b in blocks}
    rows = []
    try:
        for (block, latent), value in wrong_block_r2(
            blocks, present, latents, seed=labels.seed
        ).items():
            metric = f"wrong_block_r2:{block}:{latent}"
            rows.append(labels.row(task, model_name, "latent", metric, value))
        for block, target in present.items():
            if latents[target].shape[1] >= 2:
                reference = rotation_mcc_reference(latents[target], seed=labels.seed)
                metric = f"latent_mcc_rotation95:{block}"
                rows.append(
                    labels.row(task, model_name, "latent", metric, np.quantile(reference, 0.95))
                )
            if len(latents) > 1:
                value = _split_reference95(blocks[block], target, latents, labels.seed)
                metric = f"block_r2_random_split95:{block}"
                rows.append(labels.row(task, model_name, "latent", metric, value))
    except SimcellError as error:  # e.g. a constant true latent dim: said why
        log.warning("%s %s identifiability rows: %s", task, model_name, error)
    return rows


# ----------------------------------------------------------------------------- the loop


class _Clock:
    """Progress with the step, its number and an ETA; seconds spent per kind of step."""

    def __init__(self, total: int, progress: Callable[[str], None] | None, bar: bool) -> None:
        self.total, self.done = total, 0
        self.started = time.perf_counter()
        self.seconds: dict[str, float] = {}
        self.say = progress
        self.bar = None
        if bar:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, unit="step", dynamic_ncols=True, leave=False)

    @contextlib.contextmanager
    def step(self, task: str, what: str):
        message = f"{task}: {what}"
        if self.say is not None:
            elapsed = time.perf_counter() - self.started
            eta = elapsed / self.done * (self.total - self.done) if self.done else math.nan
            suffix = "" if math.isnan(eta) else f", ETA {eta:.0f} s"
            self.say(f"[{self.done + 1}/{self.total}] {message}{suffix}")
        if self.bar is not None:
            self.bar.set_description(message)
        start = time.perf_counter()
        try:
            yield
        finally:
            key = what.split(" ")[0]
            self.seconds[key] = self.seconds.get(key, 0.0) + time.perf_counter() - start
            self.done += 1
            if self.bar is not None:
                self.bar.update(1)

    def close(self) -> dict:
        if self.bar is not None:
            self.bar.close()
        return {k: round(v, 3) for k, v in self.seconds.items()}


def _causal_matrix_rows(factual, train, concepts, labels, task, model=None, config=None):
    """Causal-matrix scores against a ``linear-sde`` bundle's true A (space ``latent``):
    the DE baseline (no ``model``) or the model refitted on the true programs."""
    from simcell.evaluation.metrics.causal import DE_BASELINE, causal_scores

    options = {} if config is None else {"preset": config.preset, "device": config.device}
    scores = causal_scores(factual, train, concepts, model, seed=labels.seed, **options)
    return [labels.row(task, model or DE_BASELINE, "latent", k, v) for k, v in scores.items()]


def _train_latents(factual, data: TaskData) -> dict[str, np.ndarray]:
    """The bundle's true latents of the task's train cells (empty when it stores none)."""
    return {name: value[data.train] for name, value in schema.true_latents(factual).items()}


def _train_exogenous(factual, data: TaskData) -> np.ndarray | None:
    """A perturbation bundle's exogenous term of the task's train cells (else None)."""
    from simcell.simulator.perturb import exogenous_latent

    exogenous = exogenous_latent(factual)
    return None if exogenous is None else exogenous[data.train]


def _check_models(models: Sequence[str] | None) -> list[str]:
    if models is None:
        from simcell.models import DEFAULT_MODELS

        models = DEFAULT_MODELS
    models = [name for name in models if name != IDENTITY]
    if models:
        from simcell.models import list_models

        unknown = sorted(set(models) - set(list_models()))
        if unknown:
            raise SimcellError(
                f"unknown model(s) {', '.join(unknown)}; choose from {', '.join(list_models())}"
            )
        from simcell.models import get_model_class
        from simcell.models._registry import check_available
        from simcell.models.base import check_input_space

        for name in models:  # before any work: a missing extra, an unknown input space
            check_available(name)
            check_input_space(get_model_class(name))
    return models


def _check_corruptions(factual, corruptions) -> list[Corruption]:
    """The corruption conditions (default: the scenario's own), checked before any work."""
    if corruptions is None or len(corruptions) == 0:
        kind, level, p = schema.scenario_corruption(factual)
        chosen = [Corruption(kind, level, p)]
    else:
        chosen = [Corruption.parse(c) for c in corruptions]
    n_free = factual.obsm[schema.CONCEPTS].shape[1] - 1  # a task protects its own concept
    from simcell.simulator.corrupt import check_corruption

    for corruption in chosen:
        check_corruption(corruption.kind, corruption.level, n_free)
    return list(dict.fromkeys(chosen))


def evaluate(
    bundle: str | os.PathLike | Bundle,
    models: Sequence[str] | None = None,
    predictions: str | os.PathLike | ad.AnnData | None = None,
    *,
    preset: str = "fast",
    device: str = "auto",
    seed: int = 0,
    n_components: int = 128,
    oracle_samples: int = 32,
    n_boot: int = 1000,
    tasks: Sequence[str] | None = None,
    corruptions: Sequence[str | tuple] | None = None,
    cell_level: bool | None = None,
    progress: Callable[[str], None] | None = None,
    progress_bar: bool = False,
) -> pd.DataFrame:
    """Score models and/or predictions on every task of a bundle.

    For each task (see :func:`simcell.evaluation.tasks.build_task`) counts are
    normalised to the median library size of the task's ``train`` cells, log1p'd
    and projected on a PCA (128 components) fitted on a seeded half of the train
    cells; every population a metric compares is projected out of sample. Models
    train on every train cell's PCs and annotations (corrupted per task when
    asked) and answer the task's :class:`~simcell.models.Intervention` for the
    ``intervene`` cells. Each metric registered in
    :mod:`simcell.evaluation.metrics` is computed wherever its inputs exist.

    Rows beside the models (see the module docstring): ``identity``, ``oracle``
    (posterior mean, cell-level errors; its ``mse`` without the Monte-Carlo
    excess, see :func:`debiased_mse`), ``oracle_sample`` (one posterior draw per
    cell, distributional metrics), ``noise_floor`` (an independent same-law
    sample) and ``heldout`` (the real (u, k = 1) cells). Each model gets
    ``gap_closed`` = (identity − model) / (identity − oracle) of cell-level MSE.

    Parameters
    ----------
    bundle : path or Bundle
        A bundle without true counterfactuals (``counterfactual`` None) is
        scored on the distributional metrics against its heldout cells.
    models : sequence of str, optional
        Registered model names (default: ``simcell.models.DEFAULT_MODELS``).
    predictions : path or AnnData, optional
        Predictions brought as a file (see :func:`read_predictions`), scored as
        the model ``predictions``.
    preset, device, seed : str, str, int
        Model preset, torch device, seed of models and of the harness (every
        random choice is a named stream of it, :func:`simcell._random.stream`).
    n_components, oracle_samples, n_boot : int
        PCA components; the oracle's posterior draws per cell (at least 2, in
        two halves); bootstrap resamples of the cell-level CIs.
    tasks : sequence of str, optional
        A subset of the bundle's tasks.
    corruptions : sequence of "KIND:LEVEL" or (kind, level[, p]), optional
        Corruption conditions of the annotations models see (paper C.4); each
        is applied per task, protecting only its concept, seeded by (seed, task,
        kind, level). Models are trained once per condition. Default: the
        scenario's own corruption (none for the presets).
    cell_level : bool, optional
        True: require the cell-level scores (an error on a bundle without
        truth); False: skip them; default: computed when the truth is present.
    progress : callable, optional
        Called with ``"[step/total] task: what, ETA s"`` before each step.
    progress_bar : bool
        Show a progress bar (tqdm, on stderr) with the step and an ETA.

    Returns
    -------
    DataFrame
        Columns :data:`RESULT_COLUMNS` (one :class:`ResultRow` each); seconds
        spent per kind of step in ``.attrs["timings"]``.
    """
    if not isinstance(bundle, Bundle):
        bundle = read_bundle(bundle, truth_backed=True)  # truth rows read per task
    factual = bundle.factual
    models = _check_models(models)
    tasks = schema.check_tasks(factual, tasks)
    if oracle_samples < 2:
        raise SimcellError(f"oracle_samples must be >= 2 (two halves), got {oracle_samples}")
    truth_present = schema.has_truth(bundle)
    if cell_level and not truth_present:
        raise SimcellError(
            "cell-level scores need the true counterfactuals, and this bundle has no "
            f"{schema.COUNTERFACTUAL}; leave cell_level unset for distributional metrics"
        )
    conditions = _check_corruptions(factual, corruptions)
    brought = None
    if predictions is not None:
        brought = read_predictions(predictions, bundle, tasks)
        check_pca_settings(brought, seed=seed, n_components=n_components, tasks=tasks)
    config = EvaluationConfig(models=tuple(models), preset=preset, device=device, seed=seed)
    base = _Labels(
        seed=seed,
        scenario=schema.scenario_name(factual),
        data_seed=schema.data_seed(factual) if schema.data_seed(factual) is not None else -1,
    )
    per_task = (
        2 + (2 if truth_present else 0) + len(models) * len(conditions) + (brought is not None)
    )
    clock = _Clock(len(tasks) * per_task, progress, progress_bar)
    rows: list[ResultRow] = []
    try:
        for name in tasks:
            rows += _evaluate_task(
                bundle,
                name,
                models,
                brought,
                conditions,
                config,
                base,
                clock,
                n_components=n_components,
                oracle_samples=oracle_samples,
                n_boot=n_boot,
                cells=truth_present and cell_level is not False,
            )
    finally:
        timings = clock.close()
    table = add_gap_closed(results_frame(rows))
    table.attrs["timings"] = timings
    return table


def _evaluate_task(
    bundle,
    name,
    models,
    brought,
    conditions,
    config,
    base,
    clock,
    *,
    n_components,
    oracle_samples,
    n_boot,
    cells: bool,
) -> list[ResultRow]:
    """Every row of one task; ``cells``: compute the cell-level errors."""
    seed = config.seed
    with clock.step(name, "preprocessing"):
        data = build_task(bundle, name, n_components=n_components, seed=seed)
    truth = data.truth
    rows: list[ResultRow] = []
    with clock.step(name, "metrics (reference rows)"):
        pops = _populations(data, seed)
        truth_leak = None
        if truth is not None:
            with contextlib.suppress(SimcellError):
                truth_leak = _leakage(data, truth.pcs, seed)
        causal_reference = _causal_reference(bundle, data, seed)
        # identity: the factual cells
        if cells:
            rows += _cell_rows(data, IDENTITY, data.x_intervene, data.intervene_genes, base, n_boot)
        rows += _population_rows(data, IDENTITY, data.x_intervene, base, pops, paired=True)
        rows += _leakage_rows(data, IDENTITY, data.x_intervene, base, truth_leak)
        rows += _causal_consistency_rows(data, IDENTITY, data.x_intervene, base, causal_reference)
        # the real (u, k = 1) cells against the truth
        if truth is not None and data.heldout_pcs.shape[0] >= 2:
            rows += _population_rows(
                data, HELDOUT, data.heldout_pcs, base, pops, paired=False, classify=False
            )
        if truth is None:  # real cells: the floor is a split of the heldout population
            rows += _split_floor_rows(data, base, seed)
        rows += _causal_matrix_rows(bundle.factual, data.train, None, base, name)
    has_oracle = oracle_available(bundle)
    if truth is not None and not has_oracle:
        process = schema.process_name(bundle.factual)
        reason = " with a residual (noise_sd > 0)" if process == schema.PROCESS_PERTURB else ""
        log.info(
            "%s: no oracle for process %s%s; oracle/oracle_sample/noise_floor skipped",
            name,
            process,
            reason,
        )
    if truth is not None and has_oracle:
        posterior = oracle_posterior(bundle, data.intervene, data.intervention)
        with clock.step(name, "oracle"):
            if cells:
                # two independent half-means: their average is the prediction, their
                # cross product the Bayes MSE without the Monte-Carlo excess
                gene_halves = posterior.mean_halves(
                    data.preprocessor.lognorm, oracle_samples, stream(seed, name, "oracle")
                )
                oracle_genes = 0.5 * (gene_halves[0] + gene_halves[1])
                pca_halves = tuple(data.preprocessor.to_pca(h) for h in gene_halves)
                rows += _cell_rows(
                    data,
                    ORACLE,
                    data.preprocessor.to_pca(oracle_genes),
                    oracle_genes,
                    base,
                    n_boot,
                    (pca_halves, gene_halves),
                )
                oracle_pcs = data.preprocessor.to_pca(oracle_genes)
                rows += _causal_consistency_rows(data, ORACLE, oracle_pcs, base, causal_reference)
                # cell x gene arrays (hundreds of MB at full size) freed as soon as
                # scored, so that they do not add to the next step's peak
                del gene_halves, oracle_genes, pca_halves
                ess = getattr(posterior, "effective_sample_size", None)
                if ess is not None and ess.size:  # an importance-sampled oracle
                    log.info(
                        "%s: oracle ESS min %.0f, median %.0f", name, ess.min(), np.median(ess)
                    )
            sample = posterior.sample(stream(seed, name, "oracle_sample"))
            _, sample_pcs = data.project(sample)
            del sample
            rows += _population_rows(data, ORACLE_SAMPLE, sample_pcs, base, pops, paired=True)
        with clock.step(name, "noise_floor"):
            # the oracle's posterior holds exactly the cells same_law_sample(bundle,
            # intervene, intervention, rng) would build again
            floor = posterior.same_law_sample(stream(seed, name, "noise_floor"))
            del posterior
            _, floor_pcs = data.project(floor)
            del floor
            rows += _population_rows(data, NOISE_FLOOR, floor_pcs, base, pops, paired=True)
    for corruption in conditions:
        labels = _Labels(base.seed, base.scenario, base.data_seed, corruption)
        annotations = data.annotations_for(corruption)
        for model_name in models:
            with clock.step(name, f"{model_name} ({corruption.kind}:{corruption.level})"):
                model, inputs = _fit_model(model_name, data, annotations, config)
                predicted = _predict(model, data, annotations, inputs)
                # log-normalised genes for the cell-level errors, their PCs (the
                # task's one projection) for everything else
                genes, pcs = data.from_model_space(predicted, inputs, model_name)
                del predicted
                if cells:
                    rows += _cell_rows(data, model_name, pcs, genes, labels, n_boot)
                del genes
                rows += _population_rows(data, model_name, pcs, labels, pops, paired=True)
                rows += _inversion_rows(data, model_name, model, annotations, labels, inputs)
                rows += _leakage_rows(data, model_name, pcs, labels, truth_leak)
                rows += _causal_consistency_rows(data, model_name, pcs, labels, causal_reference)
                rows += _representation_rows(
                    name,
                    model_name,
                    seed,
                    model,
                    inputs.x_train,
                    schema.true_concepts(bundle.factual).to_numpy()[data.train],
                    annotations.train,
                    schema.cell_types(bundle.factual)[data.train],
                    labels,
                    _train_latents(bundle.factual, data),
                    _train_exogenous(bundle.factual, data),
                )
                rows += _causal_matrix_rows(
                    bundle.factual, data.train, annotations.train, labels, name, model_name, config
                )
    if brought is not None:
        with clock.step(name, "predictions"):
            genes, pcs = brought_for_task(brought, data, bundle.factual)
            if cells:
                rows += _cell_rows(data, PREDICTIONS, pcs, genes, base, n_boot)
            rows += _population_rows(data, PREDICTIONS, pcs, base, pops, paired=True)
            rows += _leakage_rows(data, PREDICTIONS, pcs, base, truth_leak)
            rows += _causal_consistency_rows(data, PREDICTIONS, pcs, base, causal_reference)
    return rows


def add_gap_closed(table: pd.DataFrame) -> pd.DataFrame:
    """Append ``gap_closed`` = (identity − model) / (identity − oracle) of cell-level MSE."""
    mse = table[table["metric"] == "mse"]
    keys = ["task", "space"]
    reference = mse[mse["model"].isin([IDENTITY, ORACLE])].pivot_table(
        index=keys, columns="model", values="value", aggfunc="first"
    )
    if IDENTITY not in reference or ORACLE not in reference:
        return table
    extra = []
    for row in mse[~mse["model"].isin([IDENTITY, ORACLE])].itertuples(index=False):
        key = (row.task, row.space)
        if key not in reference.index:
            continue
        identity, oracle = reference.loc[key, IDENTITY], reference.loc[key, ORACLE]
        gap = identity - oracle
        closed = (identity - row.value) / gap if gap > 0 else math.nan
        extra.append(
            row._replace(metric="gap_closed", value=closed, ci_low=math.nan, ci_high=math.nan)
        )
    if not extra:
        return table
    added = pd.DataFrame(extra, columns=table.columns)
    return pd.concat([table, added], ignore_index=True)
