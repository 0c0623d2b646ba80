"""The harness: runs models (or reads predictions) on a bundle's tasks and scores them."""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from simcell import SimcellError, SimcellWarning
from simcell.evaluation import metrics as m
from simcell.evaluation.oracle import OracleInputs, oracle_counterfactual
from simcell.evaluation.preprocess import Preprocessor
from simcell.simulator import Bundle, read_bundle

log = logging.getLogger(__name__)

IDENTITY, ORACLE = "identity", "oracle"
CELL_METRICS = ("mse", "mae", "pearson", "r2")
#: cells per population used for distribution metrics (seeded subsample)
MAX_DISTRIBUTION_CELLS = 1000
#: cells per population for the Sinkhorn divergence, whose log-domain solver is
#: the costliest metric, and its iteration budget
MAX_SINKHORN_CELLS = 150
SINKHORN_OPTIONS = {"max_iter": 1000, "tol": 1e-6}

RESULT_COLUMNS = ["task", "model", "seed", "space", "metric", "value", "ci_low", "ci_high"]


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
        }


@dataclass(frozen=True, eq=False)
class TaskData:
    """One task's cells, in the harness's representation."""

    name: str
    concept: str
    cell_type: str
    train: np.ndarray  # positions
    intervene: np.ndarray  # positions, in counterfactual-row order
    truth_counts: sp.csr_matrix
    truth_concepts: np.ndarray
    preprocessor: Preprocessor


def _dense(matrix) -> np.ndarray:
    return matrix.toarray() if sp.issparse(matrix) else np.asarray(matrix)


def task_data(bundle: Bundle, task: str, *, n_components: int, seed: int) -> TaskData:
    """Split, ground truth and preprocessing of one task."""
    factual, truth = bundle.factual, bundle.counterfactual
    split = factual.obs[f"split:{task}"].to_numpy().astype(str)
    rows = np.flatnonzero(truth.obs["task"].to_numpy().astype(str) == task)
    sources = factual.obs_names.get_indexer(truth.obs["source_cell"].to_numpy()[rows])
    train = np.flatnonzero(split == "train")
    meta = bundle.factual.uns["simcell"]["tasks"]
    info = meta[meta["name"] == task].iloc[0]
    preprocessor = Preprocessor.fit(factual.X[train], n_components=n_components, seed=seed)
    return TaskData(
        name=task,
        concept=str(info["concept"]),
        cell_type=str(info["cell_type"]),
        train=train,
        intervene=sources,
        truth_counts=truth.X[rows],
        truth_concepts=truth.obsm["concepts_true"].to_numpy()[rows],
        preprocessor=preprocessor,
    )


def oracle_prediction(
    bundle: Bundle, data: TaskData, *, n_samples: int, rng: np.random.Generator
) -> np.ndarray:
    """The oracle's log-normalised prediction for a task's intervene cells."""
    return oracle_counterfactual(
        oracle_inputs(bundle, data), data.preprocessor.lognorm, n_samples=n_samples, rng=rng
    )


def oracle_inputs(bundle: Bundle, data: TaskData) -> OracleInputs:
    """What the oracle knows about a task's intervene cells: counts and true parameters."""
    factual = bundle.factual
    meta = factual.uns["simcell"]
    cells = data.intervene
    obs = factual.obs.iloc[cells]
    concepts = factual.obsm["concepts_true"].to_numpy()[cells]
    effects = np.asarray(factual.varm["concept_effects"]).T  # (K, G)
    log_rate = (
        factual.var["baseline"].to_numpy()[None, :]
        + np.asarray(factual.varm["batch_effects"]).T[obs["batch"].cat.codes.to_numpy()]
        + np.asarray(factual.varm["tissue_effects"]).T[obs["tissue"].cat.codes.to_numpy()]
        + np.asarray(factual.varm["cell_type_effects"]).T[obs["cell_type"].cat.codes.to_numpy()]
        + concepts @ effects
    )
    shift = (data.truth_concepts - concepts) @ effects
    return OracleInputs(
        counts=_dense(factual.X[cells]),
        log_rate_mean=log_rate,
        shift=shift,
        library_size_sd=np.asarray(meta["world"]["library_size_sd"])[
            obs["batch"].cat.codes.to_numpy()
        ],
        noise_sd=float(meta["params"]["noise_sd"]),
    )


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


def _cell_rows(task, model, seed, space, pred, truth, n_boot, rng, suffix="", halves=None):
    rows = []
    for name in CELL_METRICS:
        if name == "mse" and halves is not None:
            per_cell = debiased_mse(*halves, truth)
        else:
            per_cell = m.get_metric(name).fn(pred, truth)
        per_cell = per_cell[np.isfinite(per_cell)]
        if per_cell.size == 0:
            continue
        mean, low, high = m.bootstrap_ci(per_cell, n_boot=n_boot, rng=rng)
        rows.append((task, model, seed, space, name + suffix, mean, low, high))
    return rows


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


def _subsample(cells: np.ndarray, seed: int, limit: int = MAX_DISTRIBUTION_CELLS) -> np.ndarray:
    if cells.shape[0] <= limit:
        return cells
    rng = np.random.default_rng(seed)
    return cells[np.sort(rng.choice(cells.shape[0], limit, replace=False))]


@dataclass(frozen=True, eq=False)
class _Target:
    """A task's target population, its reference populations and the kernel / ε of
    every distribution metric, computed once so each model costs one distance."""

    target: np.ndarray
    small_target: np.ndarray
    bandwidths: tuple[float, ...]
    epsilon: float
    nearest: dict  # ratio name -> the closest reference population

    @classmethod
    def build(cls, target: np.ndarray, references: list[np.ndarray], seed: int) -> _Target:
        target_s = _subsample(target, seed + 1)
        refs = [_subsample(r, seed + 2 + i) for i, r in enumerate(references)]
        small_target = _subsample(target_s, seed + 100, MAX_SINKHORN_CELLS)
        small_refs = [_subsample(r, seed + 101 + i, MAX_SINKHORN_CELLS) for i, r in enumerate(refs)]
        bandwidths = m.median_heuristic_bandwidths(target_s, seed=0)
        epsilon = 0.05 * float(
            np.median(
                ((small_target[:, None, :] - small_target[None, :, :]) ** 2).sum(-1)[
                    np.triu_indices(small_target.shape[0], 1)
                ]
            )
        )
        with _budget_notes("reference populations"):
            distances = {
                "rmmd": [m.mmd(r, target_s, bandwidths=bandwidths) for r in refs],
                "rfid": [m.frechet_distance(r, target_s) for r in refs],
                "rsd": [
                    m.sinkhorn_divergence(r, small_target, epsilon=epsilon, **SINKHORN_OPTIONS)
                    for r in small_refs
                ],
            }
        pools = {"rmmd": refs, "rfid": refs, "rsd": small_refs}
        nearest = {k: pools[k][int(np.argmin(v))] for k, v in distances.items()}
        return cls(target_s, small_target, bandwidths, epsilon, nearest)


def _distribution_rows(task, model, seed, pred, target: _Target):
    pred_s = _subsample(pred, seed)
    small = _subsample(pred_s, seed + 100, MAX_SINKHORN_CELLS)
    t, eps = target, {"epsilon": target.epsilon, **SINKHORN_OPTIONS}
    with _budget_notes(f"{task} {model} sinkhorn"):
        values = {
            "mmd": m.mmd(pred_s, t.target, bandwidths=t.bandwidths),
            "energy": m.energy_distance(pred_s, t.target),
            "fid": m.frechet_distance(pred_s, t.target),
            "sinkhorn": m.sinkhorn_divergence(small, t.small_target, **eps),
        }
    # the ratio's denominator is the closest training population (found once per task)
    ratios = (
        ("rmmd", lambda: m.rmmd(pred_s, t.target, [t.nearest["rmmd"]], bandwidths=t.bandwidths)),
        ("rfid", lambda: m.rfid(pred_s, t.target, [t.nearest["rfid"]])),
        ("rsd", lambda: m.rsd(small, t.small_target, [t.nearest["rsd"]], **eps)),
    )
    for name, compute in ratios:
        try:
            with _budget_notes(f"{task} {model} {name}"):
                values[name] = compute()
        except SimcellError as error:  # undefined ratio: reported as missing, with the reason
            log.warning("%s %s %s: %s", task, model, name, error)
    return [(task, model, seed, "pca", k, float(v), np.nan, np.nan) for k, v in values.items()]


def _score(
    task: TaskData,
    model: str,
    seed: int,
    pred_pcs: np.ndarray,
    pred_genes: np.ndarray,
    truth_pcs: np.ndarray,
    truth_genes: np.ndarray,
    affected: np.ndarray,
    references: _Target,
    knn: tuple[np.ndarray, np.ndarray, np.ndarray],
    n_boot: int,
    halves: tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]] | None = None,
) -> list[tuple]:
    """Every metric of one prediction; ``halves`` (PCA pair, genes pair) debias its MSE."""
    pca_halves, gene_halves = halves if halves is not None else (None, None)
    rng = np.random.default_rng([seed, 17])
    rows = _cell_rows(
        task.name, model, seed, "pca", pred_pcs, truth_pcs, n_boot, rng, halves=pca_halves
    )
    rows += _cell_rows(
        task.name, model, seed, "genes", pred_genes, truth_genes, n_boot, rng, halves=gene_halves
    )
    if affected.sum() >= 2:  # correlations need two genes
        rows += _cell_rows(
            task.name,
            model,
            seed,
            "genes",
            pred_genes[:, affected],
            truth_genes[:, affected],
            n_boot,
            rng,
            suffix="_affected",
            halves=None if gene_halves is None else tuple(h[:, affected] for h in gene_halves),
        )
    rows += _distribution_rows(task.name, model, seed, pred_pcs, references)
    reference, reference_labels, target_label = knn
    accuracy = m.knn_accuracy(
        pred=pred_pcs,
        reference=reference,
        reference_labels=reference_labels,
        target_label=target_label,
    )
    rows.append((task.name, model, seed, "pca", "knn_accuracy", accuracy, np.nan, np.nan))
    return rows


def _fit_model(name, x_train, c_train, kinds, config):
    from simcell.models import create_model

    model = create_model(
        name, preset=config.preset, device=config.device, seed=config.seed, progress_bar=False
    )
    return model.fit(x_train, c_train, concept_kinds=kinds)


def _inversion_rows(task, model_name, seed, model, x, concepts):
    """``edit``-mode flows: MSE of the round trip with the condition unchanged.

    The solver's error along the learned flow, a floor under every edit; the
    cells come back within it (tested).
    """
    if getattr(model, "mode", None) != "edit" or not hasattr(model, "inversion_error"):
        return []
    error = model.inversion_error(x, concepts)
    return [(task, model_name, seed, "pca", "inversion_error", error, np.nan, np.nan)]


def _leakage_rows(task, model, seed, leak_inputs, before, after):
    """Table S7: classifiers trained on train cells, applied before and after the edit."""
    train_x, train_types, train_concept, types = leak_inputs
    result = m.concept_leakage(train_x, train_types, train_concept, before, after, types, seed=seed)
    return [
        (
            task,
            model,
            seed,
            "pca",
            "leakage_cell_type_after",
            result.cell_type_accuracy_after,
            np.nan,
            np.nan,
        ),
        (
            task,
            model,
            seed,
            "pca",
            "leakage_concept_after",
            result.concept_rate_after,
            np.nan,
            np.nan,
        ),
    ]


def _representation_rows(task, model_name, seed, model, x, concepts_true, annotated, cell_types):
    """Disentanglement and identifiability of a model's embedding of the train cells."""
    if not getattr(model, "has_representation", False):
        return []
    embedding = np.asarray(model.encode(x, annotated), dtype=np.float64)
    # a constant latent dimension (e.g. a dead ReLU unit) carries no information
    embedding = embedding[:, embedding.std(axis=0) > 0]
    if embedding.shape[1] == 0:
        log.warning("%s %s: the embedding is constant; no latent metrics", task, model_name)
        return []
    metrics = {
        "concept_accuracy": lambda: m.concept_accuracy(embedding, concepts_true, seed=seed),
        "concept_f1": lambda: m.concept_f1(embedding, concepts_true, seed=seed),
        "nmi": lambda: m.nmi(embedding, cell_types, seed=seed),
        "ari": lambda: m.ari(embedding, cell_types, seed=seed),
        "linear_r2": lambda: m.linear_r2(embedding, concepts_true, seed=seed),
        "mcc": lambda: m.mcc(embedding, concepts_true),
    }
    rows = []
    for name, compute in metrics.items():
        try:
            value = float(compute())
        except SimcellError as error:  # undefined here (e.g. a rare concept): left out, said why
            log.warning("%s %s %s: %s", task, model_name, name, error)
            continue
        rows.append((task, model_name, seed, "latent", name, value, np.nan, np.nan))
    return rows


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
    progress: Callable[[str], None] | None = None,
) -> pd.DataFrame:
    """Score models and/or predictions on every task of a bundle.

    For each task the harness normalises counts to the median library size of
    the task's ``train`` cells, applies log1p and fits a PCA (128 components) on
    the ``train`` cells only; models are trained on the train cells' PCs and
    annotated concepts and asked for ``do(concept := 1)`` of the ``intervene``
    cells. Every task also gets the ``identity`` row (the factual cell) and the
    ``oracle`` row (the Bayes-optimal predictor, see
    :mod:`simcell.evaluation.oracle`), and each model's ``gap_closed`` =
    (identity − model) / (identity − oracle) of the cell-level MSE. The
    oracle's ``mse`` is that of the exact posterior mean, without the
    Monte-Carlo excess of its estimate (see :func:`debiased_mse`); its other
    metrics score the Monte-Carlo mean itself.

    Parameters
    ----------
    bundle : path or Bundle
    models : sequence of str, optional
        Registered model names (default: ``simcell.models.DEFAULT_MODELS``).
    predictions : path or AnnData, optional
        Predictions brought as a file (see :func:`read_predictions`), scored as
        the model ``predictions``.
    preset, device, seed : str, str, int
        Model preset, torch device, seed of models and of the harness.
    n_components, oracle_samples, n_boot : int
        PCA components; the oracle's posterior draws per cell (at least 2, in
        two halves); bootstrap resamples of the cell-level CIs.
    tasks : sequence of str, optional
        A subset of the bundle's tasks.
    progress : callable, optional
        Called with a short message before each step.

    Returns
    -------
    DataFrame
        Columns ``task, model, seed, space, metric, value, ci_low, ci_high``.
        ``space`` is ``pca`` or ``genes`` for prediction metrics (cell-level
        ``mse``, ``mae``, ``pearson``, ``r2`` with a bootstrap CI, also on the
        genes the concept affects as ``*_affected``; ``mmd``, ``energy``,
        ``fid``, ``sinkhorn`` and the ratios ``rmmd``, ``rfid``, ``rsd``;
        ``knn_accuracy``; ``inversion_error`` of ``edit``-mode flows (the
        round trip's MSE with the condition unchanged); the leakage test of Table S7 as
        ``leakage_cell_type_after`` / ``leakage_concept_after``; ``gap_closed``),
        and ``latent`` for a model's embedding of the train cells
        (``concept_accuracy``, ``concept_f1``, ``nmi``, ``ari`` against cell type,
        ``linear_r2`` and ``mcc`` against the true concepts).
    """
    if not isinstance(bundle, Bundle):
        bundle = read_bundle(bundle)
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
    all_tasks = list(bundle.factual.uns["simcell"]["tasks"]["name"])
    tasks = list(tasks) if tasks else all_tasks
    missing = sorted(set(tasks) - set(all_tasks))
    if missing:
        raise SimcellError(f"unknown task(s) {missing}; the bundle has {all_tasks}")
    if not tasks:
        raise SimcellError("the bundle has no intervention tasks to evaluate")
    if oracle_samples < 2:
        raise SimcellError(f"oracle_samples must be >= 2 (two halves), got {oracle_samples}")
    brought = read_predictions(predictions, bundle) if predictions is not None else None
    say = progress or (lambda message: None)

    factual = bundle.factual
    concepts_seen = factual.obsm["concepts"]
    kinds_all = dict(
        zip(
            [f"concept_{k}" for k in range(len(factual.uns["simcell"]["concept_kinds"]))],
            factual.uns["simcell"]["concept_kinds"],
            strict=True,
        )
    )
    kinds = tuple(str(kinds_all.get(c, "binary")) for c in concepts_seen.columns)
    annotated = concepts_seen.to_numpy(dtype=np.float32)
    cell_type = factual.obs["cell_type"].to_numpy().astype(str)
    concepts_true = factual.obsm["concepts_true"]
    rows: list[tuple] = []
    for name in tasks:
        say(f"{name}: preprocessing")
        data = task_data(bundle, name, n_components=n_components, seed=seed)
        pre = data.preprocessor
        column = list(concepts_seen.columns).index(data.concept)
        factual_genes = pre.lognorm(factual.X[data.intervene])
        truth_genes = pre.lognorm(data.truth_counts)
        truth_pcs = pre.to_pca(truth_genes)
        x_train = pre.to_pca(pre.lognorm(factual.X[data.train]))
        x_int = pre.to_pca(factual_genes)
        c_train, c_int = annotated[data.train], annotated[data.intervene]
        c_target = c_int.copy()
        c_target[:, column] = 1.0
        k_index = list(concepts_true.columns).index(data.concept)
        state = concepts_true.to_numpy()[:, k_index]
        groups = pd.Series(cell_type[data.train]) + "|" + pd.Series(state[data.train]).astype(str)
        populations = [
            x_train[(groups == g).to_numpy()]
            for g in sorted(groups.unique())
            if (groups == g).sum() >= 2
        ]
        references = _Target.build(truth_pcs, populations, seed)
        reference = np.concatenate([x_train, truth_pcs])
        reference_labels = np.concatenate(
            [groups.to_numpy(), np.full(truth_pcs.shape[0], f"{data.cell_type}|1.0")]
        )
        knn = (reference, reference_labels, f"{data.cell_type}|1.0")
        affected = np.asarray(factual.varm["concept_effects"])[:, k_index] != 0

        def score(
            model_name,
            pcs,
            genes,
            halves=None,
            data=data,
            truth_pcs=truth_pcs,
            truth_genes=truth_genes,
            affected=affected,
            references=references,
            knn=knn,
        ):
            rows.extend(
                _score(
                    data,
                    model_name,
                    seed,
                    pcs,
                    genes,
                    truth_pcs,
                    truth_genes,
                    affected,
                    references,
                    knn,
                    n_boot,
                    halves,
                )
            )

        true_train = concepts_true.to_numpy()[data.train]
        score(IDENTITY, x_int, factual_genes)
        say(f"{name}: oracle")
        # two independent half-means: their average is the prediction, their
        # cross product the Bayes MSE without the Monte-Carlo excess
        oracle_rng = np.random.default_rng([seed, 29])
        inputs = oracle_inputs(bundle, data)
        gene_halves = tuple(
            oracle_counterfactual(
                inputs, pre.lognorm, n_samples=oracle_samples // 2, rng=oracle_rng
            )
            for _ in range(2)
        )
        oracle_genes = 0.5 * (gene_halves[0] + gene_halves[1])
        pca_halves = tuple(pre.to_pca(half) for half in gene_halves)
        score(ORACLE, pre.to_pca(oracle_genes), oracle_genes, (pca_halves, gene_halves))
        config = EvaluationConfig(models=tuple(models), preset=preset, device=device, seed=seed)
        leak_inputs = (x_train, cell_type[data.train], state[data.train], cell_type[data.intervene])
        for model_name in models:
            say(f"{name}: {model_name}")
            model = _fit_model(model_name, x_train, c_train, kinds, config)
            pcs = model.counterfactual(x_int, c_int, c_target)
            if not np.isfinite(pcs).all():
                raise SimcellError(f"model {model_name} returned NaN or infinite values on {name}")
            score(model_name, pcs, pre.to_genes_keeping(pcs, factual_genes))
            rows.extend(_inversion_rows(name, model_name, seed, model, x_int, c_int))
            rows.extend(_leakage_rows(name, model_name, seed, leak_inputs, x_int, pcs))
            rows.extend(
                _representation_rows(
                    name,
                    model_name,
                    seed,
                    model,
                    x_train,
                    true_train,
                    c_train,
                    cell_type[data.train],
                )
            )
        if brought is not None:
            genes = _brought_genes(brought, data, factual, pre)
            score("predictions", pre.to_pca(genes), genes)
    table = pd.DataFrame(rows, columns=RESULT_COLUMNS)
    return add_gap_closed(table)


def add_gap_closed(table: pd.DataFrame) -> pd.DataFrame:
    """Append ``gap_closed`` = (identity − model) / (identity − oracle) of cell-level MSE."""
    mse = table[table["metric"] == "mse"].set_index(["task", "space", "model"])["value"]
    extra = []
    for (task, space, model), value in mse.items():
        if model in (IDENTITY, ORACLE):
            continue
        identity = mse.get((task, space, IDENTITY))
        oracle = mse.get((task, space, ORACLE))
        gap = identity - oracle
        closed = (identity - value) / gap if gap > 0 else np.nan
        seed = table["seed"].iloc[0]
        extra.append((task, model, seed, space, "gap_closed", closed, np.nan, np.nan))
    if not extra:
        return table
    return pd.concat([table, pd.DataFrame(extra, columns=RESULT_COLUMNS)], ignore_index=True)


# ----------------------------------------------------------------------------- predictions
SPACES = ("counts", "lognorm")


def read_predictions(source: str | os.PathLike | ad.AnnData, bundle: Bundle) -> ad.AnnData:
    """Read and validate predictions brought as an h5ad file.

    The file has one row per counterfactual row of the bundle (``obs``: ``task``,
    ``source_cell``), the bundle's genes as ``var_names`` (any order) and
    ``uns["space"]`` = ``"counts"`` or ``"lognorm"``.

    Raises
    ------
    SimcellError
        Naming missing or extra cells or genes, non-finite values or a wrong space.
    """
    if isinstance(source, ad.AnnData):
        adata = source
    else:
        path = Path(source)
        if not path.is_file():
            raise SimcellError(f"predictions file not found: {path}")
        try:
            adata = ad.read_h5ad(path)
        except Exception as error:  # h5py / anndata raise many types on a bad file
            raise SimcellError(f"cannot read predictions {path}: {error}") from None
    space = adata.uns.get("space")
    if space not in SPACES:
        raise SimcellError(
            f"predictions: uns['space'] must be 'counts' or 'lognorm', got {space!r}"
        )
    for column in ("task", "source_cell"):
        if column not in adata.obs:
            raise SimcellError(f"predictions: obs has no {column!r} column")
    truth = bundle.counterfactual.obs
    expected = set(zip(truth["task"].astype(str), truth["source_cell"].astype(str), strict=True))
    keys = list(
        zip(adata.obs["task"].astype(str), adata.obs["source_cell"].astype(str), strict=True)
    )
    if len(set(keys)) != len(keys):
        raise SimcellError("predictions: duplicated (task, source_cell) rows")
    missing, extra = expected - set(keys), set(keys) - expected
    if missing:
        raise SimcellError(f"predictions: {len(missing)} cells missing, e.g. {sorted(missing)[:3]}")
    if extra:
        raise SimcellError(f"predictions: {len(extra)} unknown cells, e.g. {sorted(extra)[:3]}")
    genes = set(bundle.factual.var_names)
    given = set(adata.var_names)
    if genes - given:
        raise SimcellError(
            f"predictions: {len(genes - given)} genes missing, e.g. {sorted(genes - given)[:3]}"
        )
    if given - genes:
        raise SimcellError(
            f"predictions: {len(given - genes)} unknown genes, e.g. {sorted(given - genes)[:3]}"
        )
    values = _dense(adata.X)
    if not np.isfinite(values).all():
        bad = int((~np.isfinite(values)).sum())
        raise SimcellError(f"predictions: {bad} NaN or infinite values")
    if (values < 0).any():
        raise SimcellError("predictions: negative values (neither counts nor lognorm)")
    if space == "counts" and not np.allclose(values, np.round(values)) and values.max() < 30:
        raise SimcellError("predictions: uns['space'] is 'counts' but values look log-normalised")
    if space == "lognorm" and values.max() > 50:
        raise SimcellError("predictions: uns['space'] is 'lognorm' but values look like counts")
    out = adata[:, bundle.factual.var_names].copy()
    out.X = values[:, adata.var_names.get_indexer(bundle.factual.var_names)]
    return out


def _brought_genes(brought: ad.AnnData, data: TaskData, factual: ad.AnnData, pre) -> np.ndarray:
    names = factual.obs_names[data.intervene]
    rows = brought.obs.reset_index(drop=True)
    mask = (rows["task"].astype(str) == data.name).to_numpy()
    index = pd.Index(rows.loc[mask, "source_cell"].astype(str)).get_indexer(names)
    values = np.asarray(brought.X)[np.flatnonzero(mask)[index]]
    return pre.lognorm(values) if brought.uns["space"] == "counts" else values.astype(np.float64)
