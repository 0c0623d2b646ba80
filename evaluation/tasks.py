"""The task layer: everything about one task that every model and seed reuses.

:func:`build_task` reads a task once — its split, the ground truth when the
bundle has it, the preprocessing, the reference populations, the kNN reference,
the leakage classifier cells and the :class:`~simcell.models.Intervention` — and
:meth:`TaskData.annotations_for` gives the annotations a model sees under one
corruption condition.

Projection (defect 1 of issue 10). The PCA is fitted on a seeded part of the
train cells (half of them, at most :data:`MAX_PCA_FIT_CELLS`), and every
population a distributional or classification metric compares — reference
populations, the kNN reference, the leakage classifiers' cells, the heldout
cells, predictions and the truth — is drawn from cells the PCA was *not*
fitted on, so all of them are projected out of sample. Cells the PCA was fitted
on have inflated norms along the leading components, which made the training
populations look far from any target. Models still train on every train cell.
The normalisation's ``target_sum`` stays the median total count of *all* train
cells, so gene-space scores do not depend on the PCA split.

Model input spaces (issue 10, "models declare what they need"). A model gets
its cells in the space it declares (:data:`simcell.models.InputSpace`):
:meth:`TaskData.model_inputs` builds the ``lognorm``, ``hvg`` and ``counts``
arrays (float32) only when a model asks for one, once per task, and
:meth:`TaskData.from_model_space` maps a prediction back to log-normalised genes
and PCs, so every model is scored in the same spaces with the same projection.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import scipy.sparse as sp
from sklearn.decomposition import PCA

from simcell import SimcellError
from simcell._random import int_seed, stream
from simcell.evaluation.metrics._distances import one_blas_thread
from simcell.evaluation.preprocess import Preprocessor, lognormalise
from simcell.simulator import schema
from simcell.simulator.corrupt import CorruptionRecord, check_corruption, corrupt_for_task

if TYPE_CHECKING:  # pragma: no cover
    from simcell.models import Intervention

#: train cells the PCA is fitted on: this fraction of them, at most the cap
PCA_FIT_FRACTION = 0.5
MAX_PCA_FIT_CELLS = 5000
#: cells per population kept for distributional metrics (seeded subsample)
MAX_POPULATION_CELLS = 1000
#: a reference population needs at least this many out-of-sample cells
MIN_POPULATION_CELLS = 10
#: out-of-sample train cells the leakage classifiers are trained on (seeded subsample)
MAX_CLASSIFIER_CELLS = 3000
#: cells projected at once (bounds the dense log-normalised block)
PROJECTION_CHUNK = 2048


@dataclass(frozen=True)
class Corruption:
    """One corruption condition of the annotations a model sees (paper C.4).

    Attributes
    ----------
    kind : {"none", "missing", "irrelevant", "incorrect", "duplicate"}
    level : int
        Columns corrupted or added.
    p : float, optional
        Per-entry probability (the kind's default when None).
    """

    kind: str = "none"
    level: int = 0
    p: float | None = None

    def __post_init__(self) -> None:
        check_corruption(self.kind, self.level)

    @classmethod
    def parse(cls, value: str | tuple | Corruption) -> Corruption:
        """From ``"missing:3"``, ``("missing", 3)``, ``("missing", 3, 0.5)`` or a Corruption."""
        from simcell.simulator.corrupt import parse_corruption

        if isinstance(value, Corruption):
            return value
        if isinstance(value, str):
            return cls(*parse_corruption(value))
        if isinstance(value, (tuple, list)) and len(value) in (2, 3):
            return cls(str(value[0]), value[1], *(value[2:]))
        raise SimcellError(f"a corruption is 'KIND:LEVEL' or (kind, level), got {value!r}")

    @property
    def is_none(self) -> bool:
        return self.kind == "none" or self.level == 0


NO_CORRUPTION = Corruption()


@dataclass(frozen=True, eq=False)
class Annotations:
    """The annotations a model sees for one task under one corruption.

    Attributes
    ----------
    names : tuple of str
        Column names (corruptions may add columns).
    kinds : tuple of {"binary", "continuous"}
    train, intervene : ndarray of float32, shape (n, n_columns)
        NaN where not annotated.
    record : CorruptionRecord or None
    """

    names: tuple[str, ...]
    kinds: tuple[str, ...]
    train: np.ndarray
    intervene: np.ndarray
    record: CorruptionRecord | None


@dataclass(frozen=True, eq=False)
class TaskTruth:
    """A task's true counterfactual twins in the harness's spaces.

    Attributes
    ----------
    counts : scipy.sparse.csr_matrix, shape (n_intervene, n_genes)
    genes : ndarray, shape (n_intervene, n_genes)
        Log-normalised.
    pcs : ndarray of float32, shape (n_intervene, n_components)
    concepts : ndarray, shape (n_intervene, n_concepts)
    """

    counts: sp.csr_matrix
    genes: np.ndarray
    pcs: np.ndarray
    concepts: np.ndarray


@dataclass(frozen=True, eq=False)
class ModelInputs:
    """A task's cells in one model input space (see :meth:`TaskData.model_inputs`).

    Attributes
    ----------
    space : {"pca", "lognorm", "hvg", "counts"}
    x_train : ndarray of float32, shape (n_train, n_columns)
    x_intervene : ndarray of float32, shape (n_intervene, n_columns)
    genes : ndarray of int64 or None
        The gene positions of the columns (``hvg``: the subset, ascending);
        None for ``pca``.
    gene_names : tuple of str or None
        The names of those genes (None for ``pca``).
    """

    space: str
    x_train: np.ndarray
    x_intervene: np.ndarray
    genes: np.ndarray | None
    gene_names: tuple[str, ...] | None


@dataclass(frozen=True, eq=False)
class TaskData:
    """One task, built once and reused by every model, seed and corruption.

    Attributes
    ----------
    name, cell_type, concept : str
        The task and its held-out pair (u, k).
    intervention : simcell.models.Intervention
        ``do(concept := 1)`` with the bundle's mode and concept DAG.
    train, intervene, heldout : ndarray of int64
        Factual positions; ``intervene`` in the ground truth's row order.
    pca_cells, reference_cells : ndarray of int64
        The train cells the PCA is fitted on, and the rest (out of sample).
    preprocessor : Preprocessor
    x_train : ndarray of float32, shape (n_train, n_components)
        Every train cell's PCs (what models train on).
    x_intervene : ndarray of float32, shape (n_intervene, n_components)
    intervene_genes : ndarray, shape (n_intervene, n_genes)
        Log-normalised factual intervene cells.
    heldout_pcs : ndarray of float32, shape (n_heldout_kept, n_components)
        The real (u, k = 1) population (seeded subsample), out of sample.
    references : tuple of ndarray
        Observed populations (out-of-sample train cells of one cell type x state
        of the task's concept), each shape (n_r, n_components).
    reference_labels : tuple of str
        ``"<cell type>|<state>"`` of each reference population.
    knn_reference : ndarray of float32, shape (n_knn, n_components)
        Out-of-sample train cells plus the heldout cells (paper D.11).
    knn_labels : ndarray of str, shape (n_knn,)
    target_label : str
        ``"<cell type>|1"``: the label of the heldout population.
    classifier_cells : ndarray of float32, shape (n_clf, n_components)
        Out-of-sample train cells the leakage classifiers learn from.
    classifier_types, classifier_concept : ndarray, shape (n_clf,)
    intervene_types : ndarray of str, shape (n_intervene,)
    affected : ndarray of bool, shape (n_genes,)
        Genes the task's concept changes (empty mask on real data).
    truth : TaskTruth or None
        None for a bundle without true counterfactuals.
    gene_names : tuple of str
        The bundle's genes (``var_names``).
    train_types : ndarray of str, shape (n_train,)
        The train cells' types.
    """

    name: str
    cell_type: str
    concept: str
    intervention: Intervention
    train: np.ndarray
    intervene: np.ndarray
    heldout: np.ndarray
    pca_cells: np.ndarray
    reference_cells: np.ndarray
    preprocessor: Preprocessor
    x_train: np.ndarray
    x_intervene: np.ndarray
    intervene_genes: np.ndarray
    heldout_pcs: np.ndarray
    references: tuple[np.ndarray, ...]
    reference_labels: tuple[str, ...]
    knn_reference: np.ndarray
    knn_labels: np.ndarray
    target_label: str
    classifier_cells: np.ndarray
    classifier_types: np.ndarray
    classifier_concept: np.ndarray
    intervene_types: np.ndarray
    affected: np.ndarray
    truth: TaskTruth | None
    _clean: pd.DataFrame
    _kinds: dict
    _seed: int
    gene_names: tuple[str, ...] = ()
    train_types: np.ndarray | None = None
    #: the factual counts (a reference, not a copy): model spaces are built from them
    _counts: object = None
    #: model input spaces built so far, by (space, n_hvg)
    _spaces: dict = field(default_factory=dict, repr=False)

    @property
    def has_truth(self) -> bool:
        return self.truth is not None

    @property
    def train_library_size(self) -> np.ndarray:
        """Total count of each train cell, float64, shape (n_train,)."""
        if "library_size" not in self._spaces:
            totals = np.asarray(self._counts[self.train].sum(axis=1), dtype=np.float64)
            self._spaces["library_size"] = totals.ravel()
        return self._spaces["library_size"]

    def model_inputs(self, space: str = "pca", n_hvg: int = 2000) -> ModelInputs:
        """The train and intervene cells in a model input space, built once per task.

        ``pca``: :attr:`x_train` / :attr:`x_intervene`. ``lognorm``: the
        preprocessor's log-normalised genes (the function every space and the
        export share), float32. ``hvg``: ``lognorm`` on the ``n_hvg`` genes of
        highest variance over the train cells (variance in float64 of the
        log-normalised values; ties to the lower gene position; all genes when
        ``n_hvg`` is at least their number). ``counts``: raw counts, float32.
        A space is built only when first asked for, block by block (no float64
        copy of the train cells).

        Raises
        ------
        SimcellError
            On an unknown space.
        """
        from simcell.models import INPUT_SPACES

        if space not in INPUT_SPACES:
            raise SimcellError(f"unknown input space {space!r}; choose from {INPUT_SPACES}")
        if space == "pca":
            return ModelInputs("pca", self.x_train, self.x_intervene, None, None)
        n_genes = self.intervene_genes.shape[1]
        key = (space, min(int(n_hvg), n_genes)) if space == "hvg" else (space, None)
        if key in self._spaces:
            return self._spaces[key]
        if key == ("hvg", n_genes):  # every gene: the lognorm space itself
            inputs = self.model_inputs("lognorm")
            inputs = replace(inputs, space="hvg")
        elif space == "counts":
            inputs = ModelInputs(
                "counts",
                _dense_rows(self._counts, self.train),
                _dense_rows(self._counts, self.intervene),
                np.arange(n_genes),
                self.gene_names,
            )
        elif space == "lognorm":
            inputs = ModelInputs(
                "lognorm",
                lognorm_rows(self.preprocessor, self._counts, self.train, dtype=np.float32),
                self.intervene_genes.astype(np.float32),
                np.arange(n_genes),
                self.gene_names,
            )
        else:
            genes = self._hvg(key[1])
            inputs = ModelInputs(
                "hvg",
                lognorm_rows(
                    self.preprocessor, self._counts, self.train, dtype=np.float32, genes=genes
                ),
                self.intervene_genes[:, genes].astype(np.float32),
                genes,
                tuple(self.gene_names[i] for i in genes),
            )
        self._spaces[key] = inputs
        return inputs

    def _hvg(self, n_hvg: int) -> np.ndarray:
        """Positions (ascending) of the ``n_hvg`` genes of highest variance over the
        log-normalised train cells; ties go to the lower position."""
        # float64 blocks whether or not the float32 lognorm space exists: the subset
        # must not depend on which model asked first
        # chunk means and sums of squared deviations, pooled (Chan et al.)
        count, mean = 0, np.zeros(self.intervene_genes.shape[1])
        squares = np.zeros_like(mean)
        for block in lognorm_blocks(self.preprocessor, self._counts, self.train):
            n = block.shape[0]
            block_mean = block.mean(axis=0)
            delta = block_mean - mean
            squares += ((block - block_mean) ** 2).sum(axis=0) + delta**2 * count * n / (count + n)
            mean += delta * n / (count + n)
            count += n
        variance = squares / max(count, 1)
        order = np.argsort(-variance, kind="stable")
        return np.sort(order[:n_hvg])

    def from_model_space(
        self, pred: np.ndarray, inputs: ModelInputs, model: str = "model"
    ) -> tuple[np.ndarray, np.ndarray]:
        """A prediction for the intervene cells in a model space -> (genes, PCs).

        ``genes`` (float64, shape (n_intervene, n_genes)) is log-normalised, for
        the gene-space cell-level metrics; ``pcs`` its projection on the task's
        PCA, for the distributional ones (a ``pca`` prediction is kept as is and
        mapped to genes with :meth:`to_genes`). In ``lognorm`` and ``hvg`` the
        prediction's change from the float32 source cell is added to the
        float64 source cell (genes outside the ``hvg`` subset are the source's),
        so an unchanged cell maps back to the factual cell exactly. ``counts``
        rows are normalised by their own totals to ``target_sum`` and log1p'd
        (:meth:`Preprocessor.lognorm`; an all-zero row stays zero).

        Raises
        ------
        SimcellError
            If the prediction's shape is not that of ``inputs.x_intervene``,
            it has NaN or infinite values, or (``counts``) negative ones.
        """
        pred = np.asarray(pred)
        expected = inputs.x_intervene.shape
        if pred.shape != expected:
            raise SimcellError(
                f"model {model} returned shape {pred.shape} on {self.name}; expected {expected} "
                f"(one row per intervene cell in its {inputs.space} space)"
            )
        if not np.isfinite(pred).all():
            raise SimcellError(f"model {model} returned NaN or infinite values on {self.name}")
        if inputs.space == "pca":
            return self.to_genes(pred), pred
        if inputs.space == "counts":
            if (pred < 0).any():
                raise SimcellError(f"model {model} returned negative counts on {self.name}")
            genes = self.preprocessor.lognorm(pred)
        else:
            change = np.asarray(pred, dtype=np.float64) - inputs.x_intervene.astype(np.float64)
            if inputs.genes.size == self.intervene_genes.shape[1]:
                genes = self.intervene_genes + change
            else:
                genes = self.intervene_genes.copy()
                genes[:, inputs.genes] += change
        return genes, self.preprocessor.to_pca(genes)

    def annotations_for(self, corruption: Corruption = NO_CORRUPTION) -> Annotations:
        """The annotations models see for this task under ``corruption``.

        Only this task's concept is protected; the draw depends on
        ``(seed, task, kind, level)`` alone (see
        :func:`simcell.simulator.corrupt.corrupt_for_task`).
        """
        table, record = corrupt_for_task(
            self._clean,
            corruption.kind,
            corruption.level,
            task=self.name,
            concept=self.concept,
            seed=self._seed,
            p=corruption.p,
        )
        names = tuple(map(str, table.columns))
        values = table.to_numpy(dtype=np.float32)
        return Annotations(
            names=names,
            kinds=tuple(_column_kind(name, self._kinds) for name in names),
            train=values[self.train],
            intervene=values[self.intervene],
            record=record,
        )

    def to_genes(self, pcs: np.ndarray) -> np.ndarray:
        """Gene-space prediction of a PCA-space one, keeping the factual cells' part
        outside the PCA subspace (identity maps back to the factual cells exactly)."""
        return self.preprocessor.to_genes_keeping(pcs, self.intervene_genes)

    def project(self, counts) -> tuple[np.ndarray, np.ndarray]:
        """Counts of intervene-aligned cells -> (log-normalised genes, PCs)."""
        genes = self.preprocessor.lognorm(counts)
        return genes, self.preprocessor.to_pca(genes)


def _column_kind(name: str, kinds: dict) -> str:
    if name in kinds:
        return str(kinds[name])
    stem = name.removesuffix("_duplicate")
    return str(kinds.get(stem, "binary"))


def _subsample(positions: np.ndarray, limit: int, rng: np.random.Generator) -> np.ndarray:
    if positions.size <= limit:
        return positions
    return np.sort(rng.choice(positions, limit, replace=False))


def lognorm_blocks(preprocessor: Preprocessor, counts, rows: np.ndarray):
    """Log-normalised cells at ``rows`` (:meth:`Preprocessor.lognorm`), float64 blocks
    of at most :data:`PROJECTION_CHUNK` rows: the harness, its model spaces and the
    export normalise through this one function."""
    for start in range(0, rows.size, PROJECTION_CHUNK):
        yield preprocessor.lognorm(counts[rows[start : start + PROJECTION_CHUNK]])


def lognorm_rows(
    preprocessor: Preprocessor,
    counts,
    rows: np.ndarray,
    *,
    dtype=np.float64,
    genes: np.ndarray | None = None,
) -> np.ndarray:
    """The log-normalised cells at ``rows`` (on ``genes`` when given), built block by
    block with :meth:`Preprocessor.lognorm`: the one normalisation of the harness,
    its model spaces and the export.

    Returns
    -------
    ndarray of ``dtype``, shape (rows.size, n_genes or genes.size)
    """
    width = counts.shape[1] if genes is None else genes.size
    out = np.empty((rows.size, width), dtype=dtype)
    start = 0
    for block in lognorm_blocks(preprocessor, counts, rows):
        out[start : start + block.shape[0]] = block if genes is None else block[:, genes]
        start += block.shape[0]
    return out


def _dense_rows(counts, rows: np.ndarray) -> np.ndarray:
    """Counts of the cells at ``rows`` as a dense float32 array, block by block."""
    out = np.empty((rows.size, counts.shape[1]), dtype=np.float32)
    for start in range(0, rows.size, PROJECTION_CHUNK):
        block = counts[rows[start : start + PROJECTION_CHUNK]]
        out[start : start + block.shape[0]] = block.toarray() if sp.issparse(block) else block
    return out


def _project(preprocessor: Preprocessor, counts, rows: np.ndarray) -> np.ndarray:
    """PCs of the cells at ``rows``, log-normalised block by block (no dense copy of
    them all, and no copy of their sparse rows either)."""
    out = np.empty((rows.size, preprocessor.pca.n_components_), dtype=np.float32)
    start = 0
    for block in lognorm_blocks(preprocessor, counts, rows):
        out[start : start + block.shape[0]] = preprocessor.to_pca(block)
        start += block.shape[0]
    return out


def fit_preprocessor(
    counts, train: np.ndarray, pca_cells: np.ndarray, *, n_components: int, seed: int
) -> Preprocessor:
    """Normalisation on all train cells, PCA on ``pca_cells`` only.

    Parameters
    ----------
    counts : sparse or dense, shape (n_cells, n_genes)
        Every factual cell's counts.
    train, pca_cells : ndarray of int
        Positions: all train cells (target sum = their median total count) and
        the part the PCA is fitted on.
    n_components, seed : int
    """
    totals = np.asarray(counts.sum(axis=1), dtype=np.float64).ravel()[train]
    target_sum = float(np.median(totals))
    fit = lognormalise(counts[pca_cells], target_sum)
    n = min(n_components, fit.shape[0] - 1, fit.shape[1])
    if n < 1:
        raise SimcellError(f"too few train cells ({fit.shape[0]}) to fit a PCA")
    # one BLAS thread: the randomized SVD's tall-skinny QR / LU gain nothing from a
    # second thread and wait for it on a busy machine (3x faster on 2 loaded
    # cores), and the fitted PCA no longer depends on the machine's core count
    with one_blas_thread():
        pca = PCA(n_components=n, svd_solver="randomized", random_state=seed).fit(fit)
    return Preprocessor(target_sum=target_sum, pca=pca)


def _intervention(factual, concept: str) -> Intervention:
    from simcell.models import Intervention

    return Intervention(
        do={concept: 1.0}, mode=schema.intervention_mode(factual), dag=schema.concept_dag(factual)
    )


def build_task(bundle, task: str, *, n_components: int = 128, seed: int = 0) -> TaskData:
    """Read and preprocess one task (see the module docstring for the design).

    Parameters
    ----------
    bundle : Bundle
        Its ``counterfactual`` may be None (real cells: no truth).
    task : str
    n_components : int
        PCA components (fewer if the fit cells or genes are fewer).
    seed : int
        Harness seed: every random choice comes from ``stream(seed, task, ...)``.

    Returns
    -------
    TaskData
    """
    factual = bundle.factual
    info = {t.name: t for t in schema.read_tasks(factual)}.get(task)
    if info is None:
        raise SimcellError(f"unknown task {task!r}")
    split = schema.read_split(factual, task)
    train = np.flatnonzero(split == schema.TRAIN)
    heldout = np.flatnonzero(split == schema.HELDOUT)
    truth_data = schema.read_truth(bundle, task) if schema.has_truth(bundle) else None
    if truth_data is not None:
        intervene = truth_data.sources
        if set(intervene.tolist()) != set(np.flatnonzero(split == schema.INTERVENE).tolist()):
            raise SimcellError(f"{task}: the truth's source cells are not the intervene cells")
    else:
        intervene = np.flatnonzero(split == schema.INTERVENE)
    if train.size < 4 or intervene.size == 0:
        raise SimcellError(f"{task}: too few train ({train.size}) or intervene cells")

    # the PCA is fitted on a seeded part of the train cells; the rest are out of sample
    order = stream(seed, task, "pca cells").permutation(train)
    n_fit = max(2, min(int(train.size * PCA_FIT_FRACTION), MAX_PCA_FIT_CELLS))
    pca_cells, reference_cells = np.sort(order[:n_fit]), np.sort(order[n_fit:])
    counts = factual.X
    pre = fit_preprocessor(
        counts, train, pca_cells, n_components=n_components, seed=int_seed(seed, task, "pca")
    )

    types = schema.cell_types(factual)
    names = schema.concept_names(factual)
    state = schema.true_concepts(factual).to_numpy()[:, names.index(info.concept)]
    labels = np.char.add(np.char.add(types.astype(str), "|"), _state_text(state))
    target_label = f"{info.cell_type}|1"

    x_train = _project(pre, counts, train)
    out_of_sample = np.isin(train, reference_cells)
    intervene_genes = pre.lognorm(counts[intervene])
    x_intervene = pre.to_pca(intervene_genes)
    heldout_kept = _subsample(heldout, MAX_POPULATION_CELLS, stream(seed, task, "heldout"))
    heldout_pcs = _project(pre, counts, heldout_kept) if heldout_kept.size else x_train[:0]

    references, reference_labels = [], []
    x_rest, rest_labels = x_train[out_of_sample], labels[train][out_of_sample]
    for label in sorted(set(rest_labels.tolist())):
        members = np.flatnonzero(rest_labels == label)
        if members.size < MIN_POPULATION_CELLS:
            continue
        kept = _subsample(members, MAX_POPULATION_CELLS, stream(seed, task, "reference", label))
        references.append(x_rest[kept])
        reference_labels.append(label)

    knn_reference = np.concatenate([x_rest, heldout_pcs])
    knn_labels = np.concatenate([rest_labels, np.full(heldout_pcs.shape[0], target_label)])

    clf = _subsample(
        np.arange(x_rest.shape[0]), MAX_CLASSIFIER_CELLS, stream(seed, task, "classifier")
    )
    truth = None
    if truth_data is not None:
        genes = pre.lognorm(truth_data.counts)
        truth = TaskTruth(
            counts=truth_data.counts,
            genes=genes,
            pcs=pre.to_pca(genes),
            concepts=truth_data.concepts,
        )
    try:
        effects = schema.world_arrays(factual).concept_effects[names.index(info.concept)]
        affected = effects != 0
    except KeyError:  # real data: no world
        affected = np.zeros(factual.n_vars, dtype=bool)
    return TaskData(
        name=task,
        cell_type=info.cell_type,
        concept=info.concept,
        intervention=_intervention(factual, info.concept),
        train=train,
        intervene=intervene,
        heldout=heldout,
        pca_cells=pca_cells,
        reference_cells=reference_cells,
        preprocessor=pre,
        x_train=x_train,
        x_intervene=x_intervene,
        intervene_genes=intervene_genes,
        heldout_pcs=heldout_pcs,
        references=tuple(references),
        reference_labels=tuple(reference_labels),
        knn_reference=knn_reference,
        knn_labels=knn_labels,
        target_label=target_label,
        classifier_cells=x_rest[clf],
        classifier_types=types[train][out_of_sample][clf],
        classifier_concept=state[train][out_of_sample][clf],
        intervene_types=types[intervene],
        affected=affected,
        truth=truth,
        _clean=schema.annotations(factual),
        _kinds=schema.concept_kinds(factual),
        _seed=int(seed),
        gene_names=tuple(map(str, factual.var_names)),
        train_types=types[train],
        _counts=counts,
    )


def _state_text(state: np.ndarray) -> np.ndarray:
    """Concept states as labels: ``0`` / ``1`` for binary values, else the value."""
    values = np.asarray(state, dtype=np.float64)
    integral = np.isfinite(values) & (values == np.round(values))
    text = np.where(integral, np.round(values).astype(np.int64).astype(str), values.astype(str))
    return text.astype(str)
