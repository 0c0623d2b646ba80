"""Classifiers and clusterings: kNN accuracy of predictions, concept probes, NMI / ARI, leakage."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
from sklearn.cluster import KMeans
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import adjusted_rand_score, f1_score, normalized_mutual_info_score
from sklearn.model_selection import train_test_split
from sklearn.multiclass import OneVsRestClassifier
from sklearn.neighbors import NearestNeighbors
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from simcell import SimcellError
from simcell.evaluation.metrics._registry import register_metric
from simcell.evaluation.metrics._validation import (
    as_cells,
    as_concepts,
    as_labels,
    check_fraction,
    same_dims,
)

__all__ = [
    "ConceptLeakage",
    "ari",
    "concept_accuracy",
    "concept_f1",
    "concept_leakage",
    "knn_accuracy",
    "nmi",
]

_PROBE_REFERENCE = (
    "1 = every concept linearly decodable from the embedding; chance: the majority rate"
)
_CLUSTER_REFERENCE = (
    "1 = clusters of the embedding match the cell types; about 0 for random clusters"
)


@register_metric(
    "knn_accuracy",
    direction="higher",
    level="classification",
    reference=(
        "ceiling: the score of the true counterfactuals (their k nearest observed cells "
        "need not all carry the target label); identity: the trivial baseline"
    ),
)
def knn_accuracy(
    pred: npt.ArrayLike,
    reference: npt.ArrayLike,
    reference_labels: npt.ArrayLike,
    target_label: Any,
    *,
    k: int = 15,
) -> float:
    """Fraction of predicted cells that a kNN classifier of observed cells assigns the target label.

    Paper Appendix D.11 (Table S17): each predicted cell is classified by the
    labels of its ``k = 15`` nearest (Euclidean) cells in ``reference``, uniform
    votes, and the score is the fraction classified as ``target_label``. The
    reference holds **observed** cells only, e.g. the training cells labelled by
    cell type × state of the intervened concept together with the task's
    held-out cells of the target population labelled ``target_label``; it must
    not contain the true counterfactuals, or a prediction that sits next to
    its own twin (identity included) is scored as if it had reached the target.
    The true counterfactuals' own score is then the ceiling a prediction can
    reach.

    A cell whose largest vote count is shared by ``t`` labels including the
    target counts ``1/t`` (the expected outcome of a uniformly random tie
    break), so no label is favoured by its sort order.

    Parameters
    ----------
    pred : array-like, shape (n_cells, n_dims)
        Predicted (edited) cells.
    reference : array-like, shape (n_reference, n_dims)
        Observed, labelled cells.
    reference_labels : array-like, shape (n_reference,)
        Their labels (any comparable values, no missing ones).
    target_label : scalar
        The label a correct prediction is classified as; must occur in
        ``reference_labels``.
    k : int, default 15
        Number of neighbours, ``1 <= k <= n_reference``.

    Returns
    -------
    float
        In ``[0, 1]``.
    """
    pred_cells = as_cells(pred, "pred")
    reference_cells = as_cells(reference, "reference")
    same_dims(pred_cells, reference_cells, "pred and reference")
    labels = as_labels(reference_labels, "reference_labels", reference_cells.shape[0])
    if int(k) != k or not 1 <= k <= reference_cells.shape[0]:
        raise SimcellError(f"k must be an integer in [1, {reference_cells.shape[0]}]; got {k}")
    classes, codes = np.unique(labels, return_inverse=True)
    target = np.flatnonzero(classes == target_label)
    if target.size != 1:
        raise SimcellError(f"target_label {target_label!r} does not occur in reference_labels")
    neighbours = (
        NearestNeighbors(n_neighbors=int(k))
        .fit(reference_cells)
        .kneighbors(pred_cells, return_distance=False)
    )
    votes = np.zeros((pred_cells.shape[0], classes.size), dtype=np.int64)
    np.add.at(votes, (np.arange(pred_cells.shape[0])[:, None], codes[neighbours]), 1)
    winners = votes == votes.max(axis=1, keepdims=True)
    return float(np.mean(winners[:, target[0]] / winners.sum(axis=1)))


def _probe(seed: int) -> Pipeline:
    """Standardised, seeded logistic-regression probe."""
    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000, random_state=seed))


def _held_out_concept_predictions(
    embedding: npt.ArrayLike, concepts: npt.ArrayLike, test_fraction: float, seed: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Fit one probe per concept on a seeded train split; return (truth, prediction) per concept."""
    cells = as_cells(embedding, "embedding", min_cells=4)
    labels = as_concepts(concepts, "concepts", cells.shape[0])
    check_fraction(test_fraction, "test_fraction")
    train, test = train_test_split(
        np.arange(cells.shape[0]), test_size=test_fraction, random_state=seed
    )
    outcomes = []
    for column in range(labels.shape[1]):
        if np.unique(labels[train, column]).size < 2:
            raise SimcellError(
                f"concept {column} takes a single value on the training split; "
                "it cannot be predicted"
            )
        probe = _probe(seed).fit(cells[train], labels[train, column])
        outcomes.append((labels[test, column], probe.predict(cells[test])))
    return outcomes


@register_metric("concept_accuracy", direction="higher", level="latent", reference=_PROBE_REFERENCE)
def concept_accuracy(
    embedding: npt.ArrayLike,
    concepts_true: npt.ArrayLike,
    *,
    test_fraction: float = 0.3,
    seed: int = 0,
) -> float:
    """Held-out accuracy of a linear probe predicting each concept from an embedding.

    For every concept a standardised logistic regression (seeded) is fitted on a
    seeded ``1 - test_fraction`` share of the cells and scored on the rest; the
    accuracies are averaged over concepts.

    Parameters
    ----------
    embedding : array-like, shape (n_cells, n_latent)
        A model's representation of the cells.
    concepts_true : array-like, shape (n_cells,) or (n_cells, n_concepts)
        Discrete (integer-valued) true concept labels.
    test_fraction : float, default 0.3
    seed : int, default 0
        Seed of the split and of the classifier.

    Returns
    -------
    float
        In ``[0, 1]``.
    """
    outcomes = _held_out_concept_predictions(embedding, concepts_true, test_fraction, seed)
    return float(np.mean([np.mean(truth == guess) for truth, guess in outcomes]))


@register_metric("concept_f1", direction="higher", level="latent", reference=_PROBE_REFERENCE)
def concept_f1(
    embedding: npt.ArrayLike,
    concepts_true: npt.ArrayLike,
    *,
    test_fraction: float = 0.3,
    seed: int = 0,
) -> float:
    """Held-out macro F1 of a linear probe predicting each concept, averaged over concepts.

    Same probe and split as :func:`concept_accuracy`; per concept the F1 is the
    unweighted mean over its classes (``average="macro"``; for a binary concept
    the mean of the F1 of ``0`` and of ``1``), so rare values weigh as much as
    frequent ones.

    Parameters
    ----------
    embedding : array-like, shape (n_cells, n_latent)
    concepts_true : array-like, shape (n_cells,) or (n_cells, n_concepts)
        Discrete (integer-valued) true concept labels.
    test_fraction : float, default 0.3
    seed : int, default 0

    Returns
    -------
    float
        In ``[0, 1]``.
    """
    outcomes = _held_out_concept_predictions(embedding, concepts_true, test_fraction, seed)
    return float(
        np.mean(
            [f1_score(truth, guess, average="macro", zero_division=0) for truth, guess in outcomes]
        )
    )


def _kmeans_clusters(
    embedding: npt.ArrayLike, labels: npt.ArrayLike, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    cells = as_cells(embedding, "embedding")
    truth = as_labels(labels, "cell_types", cells.shape[0])
    n_clusters = np.unique(truth).size
    if not 2 <= n_clusters <= cells.shape[0] - 1:
        raise SimcellError(
            f"cell_types must take between 2 and n_cells - 1 distinct values; got {n_clusters}"
        )
    clusters = KMeans(n_clusters=n_clusters, n_init=1, random_state=seed).fit_predict(cells)
    return truth, clusters


@register_metric("nmi", direction="higher", level="latent", reference=_CLUSTER_REFERENCE)
def nmi(embedding: npt.ArrayLike, cell_types: npt.ArrayLike, *, seed: int = 0) -> float:
    """Normalised mutual information between cell types and a KMeans clustering of an embedding.

    KMeans with ``k`` = number of distinct labels, one seeded k-means++ run
    (``n_init=1``, no best-of-many sweep over resolutions or seeds).

    Parameters
    ----------
    embedding : array-like, shape (n_cells, n_latent)
    cell_types : array-like, shape (n_cells,)
        At least 2 distinct values.
    seed : int, default 0

    Returns
    -------
    float
        In ``[0, 1]`` (arithmetic-mean normalisation).
    """
    truth, clusters = _kmeans_clusters(embedding, cell_types, seed)
    return float(normalized_mutual_info_score(truth, clusters))


@register_metric("ari", direction="higher", level="latent", reference=_CLUSTER_REFERENCE)
def ari(embedding: npt.ArrayLike, cell_types: npt.ArrayLike, *, seed: int = 0) -> float:
    """Adjusted Rand index between cell types and a KMeans clustering of an embedding.

    Same clustering as :func:`nmi`.

    Parameters
    ----------
    embedding : array-like, shape (n_cells, n_latent)
    cell_types : array-like, shape (n_cells,)
    seed : int, default 0

    Returns
    -------
    float
        At most 1; about 0 for a random clustering.
    """
    truth, clusters = _kmeans_clusters(embedding, cell_types, seed)
    return float(adjusted_rand_score(truth, clusters))


@dataclass(frozen=True, eq=False)
class ConceptLeakage:
    """Outcome of the concept-leakage test (paper Appendix D.7, Table S7).

    Attributes
    ----------
    cell_type_accuracy_before : float
        Fraction of test cells whose cell type the cell-type classifier gets
        right before the intervention (``f(cell type)``, "Before").
    cell_type_accuracy_after : float
        Same on the intervened (counterfactual) cells; their cell type is
        unchanged, so without leakage it stays close to the "before" value.
    concept_rate_before : float
        Fraction of test cells the concept classifier assigns the intervention's
        target value, before the intervention (``f(stim)``, "Before"; near 0
        when the test cells carry another value).
    concept_rate_after : float
        Same after the intervention; near 1 when the edit took effect.
    by_cell_type : pandas.DataFrame
        The same four numbers per cell type (index: cell type; columns
        ``cell_type_accuracy_before``, ``cell_type_accuracy_after``,
        ``concept_rate_before``, ``concept_rate_after``, ``n_cells``), the
        layout of Table S7.
    """

    cell_type_accuracy_before: float
    cell_type_accuracy_after: float
    concept_rate_before: float
    concept_rate_after: float
    by_cell_type: pd.DataFrame


def concept_leakage(
    train_cells: npt.ArrayLike,
    train_cell_types: npt.ArrayLike,
    train_concept: npt.ArrayLike,
    cells_before: npt.ArrayLike,
    cells_after: npt.ArrayLike,
    cell_types: npt.ArrayLike,
    *,
    target_value: float = 1,
    seed: int = 0,
) -> ConceptLeakage:
    """Concept-leakage test: do edits of one concept leave cell identity alone?

    Paper Appendix D.7 (Table S7): two classifiers are trained on the training
    cells, (i) a one-vs-rest logistic regression predicting **cell type** and
    (ii) a logistic regression predicting the **intervened concept** (both
    standardised and seeded). They are applied to test cells before the
    intervention and to the same cells after ``do(concept := target_value)``.
    Without leakage the concept prediction flips to ``target_value`` (rate
    ``0 -> 1``) while the cell-type accuracy stays where it was.

    Parameters
    ----------
    train_cells : array-like, shape (n_train, n_dims)
        Training cells, in the representation the classifiers read (e.g. PCA).
    train_cell_types : array-like, shape (n_train,)
        Cell type of each training cell.
    train_concept : array-like, shape (n_train,)
        The intervened concept's value on each training cell (discrete).
    cells_before : array-like, shape (n_test, n_dims)
        Test cells before the intervention.
    cells_after : array-like, shape (n_test, n_dims)
        The same cells after the intervention (a model's counterfactuals),
        row for row.
    cell_types : array-like, shape (n_test,)
        Cell type of each test cell (unchanged by the intervention).
    target_value : float, default 1
        The value the intervention sets; must occur in ``train_concept``.
    seed : int, default 0
        Seed of both classifiers.

    Returns
    -------
    ConceptLeakage
    """
    train = as_cells(train_cells, "train_cells", min_cells=2)
    before = as_cells(cells_before, "cells_before")
    after = as_cells(cells_after, "cells_after")
    same_dims(train, before, "train_cells and cells_before")
    if before.shape != after.shape:
        raise SimcellError(
            f"cells_before and cells_after must have the same shape; got {before.shape} vs "
            f"{after.shape}"
        )
    train_types = as_labels(train_cell_types, "train_cell_types", train.shape[0])
    if np.ndim(train_concept) != 1:
        raise SimcellError(f"train_concept must be 1-D; got shape {np.shape(train_concept)}")
    concept = as_concepts(train_concept, "train_concept", train.shape[0])[:, 0]
    test_types = as_labels(cell_types, "cell_types", before.shape[0])
    if target_value not in set(concept.tolist()):
        raise SimcellError(f"target_value {target_value!r} never occurs in train_concept")
    if np.unique(concept).size < 2 or np.unique(train_types).size < 2:
        raise SimcellError("train_concept and train_cell_types need at least 2 distinct values")

    type_classifier = make_pipeline(
        StandardScaler(),
        OneVsRestClassifier(LogisticRegression(max_iter=1000, random_state=seed)),
    ).fit(train, train_types)
    concept_classifier = _probe(seed).fit(train, concept)

    table = pd.DataFrame(
        {
            "cell_type": test_types,
            "cell_type_accuracy_before": type_classifier.predict(before) == test_types,
            "cell_type_accuracy_after": type_classifier.predict(after) == test_types,
            "concept_rate_before": concept_classifier.predict(before) == target_value,
            "concept_rate_after": concept_classifier.predict(after) == target_value,
        }
    )
    by_cell_type = table.groupby("cell_type", sort=True).mean().astype(np.float64)
    by_cell_type["n_cells"] = table.groupby("cell_type", sort=True).size()
    overall = table.drop(columns="cell_type").mean()
    return ConceptLeakage(
        cell_type_accuracy_before=float(overall["cell_type_accuracy_before"]),
        cell_type_accuracy_after=float(overall["cell_type_accuracy_after"]),
        concept_rate_before=float(overall["concept_rate_before"]),
        concept_rate_after=float(overall["concept_rate_after"]),
        by_cell_type=by_cell_type,
    )
