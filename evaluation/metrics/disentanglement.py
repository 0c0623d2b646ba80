"""Disentanglement, reconstruction and causal-consistency scores (the CausCell paper's).

* :func:`block_concept_scores` — for a representation made of named blocks
  (one token per concept plus an unexplained one), a held-out linear probe from
  **each block** to **each concept**: accuracy and weighted F1 (a table; the
  block of concept k should read k and the unexplained block nothing).
* ``concept_f1_weighted`` (registered, ``latent``) — the weighted-F1 probe of
  a whole embedding, next to ``concept_accuracy`` / ``concept_f1`` / ``nmi`` /
  ``ari``.
* :func:`reconstruction_scores` — per-cell Pearson and MSE of predictions
  against their twins, and against a seeded shuffle of the twins (the control:
  how much better than a random cell of the same population).
* ``concept_agreement`` (registered, ``classification``) and
  :func:`causal_consistency` — a classifier trained on observed cells reads the
  concepts of generated cells; after ``do(c_k)`` the descendants of k should
  move as they move in the simulator's exact causal-mode twins and the
  non-descendants should not move.

All are pure functions of arrays; stochastic ones take ``seed``.

References
----------
CausCell paper, ``papers/CausCell.txt`` (disentanglement and reconstruction
benchmarks; Fig. 4, causal consistency).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import pandas as pd
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score
from sklearn.model_selection import train_test_split
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
    same_shape_cells,
)

__all__ = [
    "ReconstructionScores",
    "block_concept_scores",
    "causal_consistency",
    "concept_agreement",
    "concept_f1_weighted",
    "reconstruction_scores",
]

_PROBE_REFERENCE = (
    "1 = every concept linearly decodable from the embedding; chance: the majority rate"
)


def _classifier(seed: int) -> Pipeline:
    """Standardised, seeded logistic regression."""
    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000, random_state=seed))


def _probe_scores(
    cells: np.ndarray, labels: np.ndarray, train: np.ndarray, test: np.ndarray, seed: int
) -> tuple[float, float]:
    """Held-out (accuracy, weighted F1) of a probe from ``cells`` to one concept's labels."""
    if np.unique(labels[train]).size < 2:
        raise SimcellError("a concept takes a single value on the training split")
    guess = _classifier(seed).fit(cells[train], labels[train]).predict(cells[test])
    truth = labels[test]
    return float(np.mean(guess == truth)), float(
        f1_score(truth, guess, average="weighted", zero_division=0)
    )


@register_metric(
    "concept_f1_weighted", direction="higher", level="latent", reference=_PROBE_REFERENCE
)
def concept_f1_weighted(
    embedding: npt.ArrayLike,
    concepts_true: npt.ArrayLike,
    *,
    test_fraction: float = 0.3,
    seed: int = 0,
) -> float:
    """Held-out weighted F1 of a linear probe per concept, averaged over concepts.

    The probe and split of :func:`~simcell.evaluation.metrics.concept_accuracy`;
    per concept, the F1 of each class weighted by its support (CausCell's
    "weighted F1"), so frequent values weigh more than in ``concept_f1``.

    Parameters
    ----------
    embedding : array-like, shape (n_cells, n_latent)
    concepts_true : array-like, shape (n_cells,) or (n_cells, n_concepts)
        Discrete true concept labels.
    test_fraction : float, default 0.3
    seed : int, default 0

    Returns
    -------
    float
        In ``[0, 1]``.
    """
    cells = as_cells(embedding, "embedding", min_cells=4)
    labels = as_concepts(concepts_true, "concepts_true", cells.shape[0])
    check_fraction(test_fraction, "test_fraction")
    train, test = train_test_split(
        np.arange(cells.shape[0]), test_size=test_fraction, random_state=seed
    )
    return float(
        np.mean([_probe_scores(cells, column, train, test, seed)[1] for column in labels.T])
    )


def block_concept_scores(
    blocks: Mapping[str, npt.ArrayLike],
    concepts_true: npt.ArrayLike,
    *,
    concept_names: Sequence[str] | None = None,
    test_fraction: float = 0.3,
    seed: int = 0,
) -> pd.DataFrame:
    """Probe every concept from every block of a representation.

    Parameters
    ----------
    blocks : mapping of str to array-like, each of shape (n_cells, d_block)
        E.g. ``Representation.blocks``: one token per concept and ``unexplained``.
    concepts_true : array-like, shape (n_cells, n_concepts)
        Discrete true concept labels.
    concept_names : sequence of str, optional
        Column names (``concept_0``, ... when omitted).
    test_fraction : float, default 0.3
    seed : int, default 0
        The split and the probes (the same split for every block).

    Returns
    -------
    DataFrame
        One row per (block, concept): ``block``, ``concept``, ``accuracy``,
        ``f1_weighted``, and ``majority`` (the accuracy of always guessing the
        most frequent training value: chance).
    """
    if not blocks:
        raise SimcellError("block_concept_scores needs at least one block")
    arrays = {
        name: as_cells(values, f"block {name!r}", min_cells=4) for name, values in blocks.items()
    }
    n_cells = next(iter(arrays.values())).shape[0]
    for name, array in arrays.items():
        if array.shape[0] != n_cells:
            raise SimcellError(f"block {name!r} has {array.shape[0]} cells, expected {n_cells}")
    labels = as_concepts(concepts_true, "concepts_true", n_cells)
    names = (
        list(concept_names)
        if concept_names is not None
        else [f"concept_{k}" for k in range(labels.shape[1])]
    )
    if len(names) != labels.shape[1]:
        raise SimcellError(f"{len(names)} concept names for {labels.shape[1]} concepts")
    check_fraction(test_fraction, "test_fraction")
    train, test = train_test_split(np.arange(n_cells), test_size=test_fraction, random_state=seed)
    rows = []
    for block, cells in arrays.items():
        for name, column in zip(names, labels.T, strict=True):
            accuracy, f1 = _probe_scores(cells, column, train, test, seed)
            values, counts = np.unique(column[train], return_counts=True)
            majority = float(np.mean(column[test] == values[np.argmax(counts)]))
            rows.append(
                {
                    "block": block,
                    "concept": name,
                    "accuracy": accuracy,
                    "f1_weighted": f1,
                    "majority": majority,
                }
            )
    return pd.DataFrame(rows)


@dataclass(frozen=True)
class ReconstructionScores:
    """Mean per-cell scores of predictions against their twins and a shuffled control.

    Attributes
    ----------
    pearson, pearson_shuffled : float
        Mean over cells of Pearson(pred_i, truth_i), and of Pearson(pred_i, truth_π(i)).
    mse, mse_shuffled : float
        The same for the mean squared error.
    """

    pearson: float
    pearson_shuffled: float
    mse: float
    mse_shuffled: float


def _row_pearson(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a - a.mean(axis=1, keepdims=True)
    b = b - b.mean(axis=1, keepdims=True)
    denominator = np.sqrt((a**2).sum(axis=1) * (b**2).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, (a * b).sum(axis=1) / denominator, 0.0)


def reconstruction_scores(
    pred: npt.ArrayLike, truth: npt.ArrayLike, *, seed: int = 0
) -> ReconstructionScores:
    """Per-cell Pearson and MSE of ``pred`` against ``truth``, and against shuffled truth.

    The control pairs each prediction with the twin of another cell (a seeded
    derangement), so a prediction that only reproduces the population scores
    the same on both.

    Parameters
    ----------
    pred, truth : array-like, shape (n_cells, n_dims)
        Row i of ``truth`` is the twin of row i of ``pred``; at least 2 cells.
    seed : int, default 0

    Returns
    -------
    ReconstructionScores
        A row with zero variance contributes a Pearson of 0.
    """
    pred_cells, truth_cells = same_shape_cells(pred, truth)
    n = pred_cells.shape[0]
    if n < 2:
        raise SimcellError("reconstruction_scores needs at least 2 cells")
    rng = np.random.default_rng(seed)
    shift = int(rng.integers(1, n))
    order = rng.permutation(n)
    partner = np.empty(n, dtype=np.int64)
    partner[order] = order[(np.arange(n) + shift) % n]  # no cell paired with itself
    shuffled = truth_cells[partner]
    return ReconstructionScores(
        pearson=float(_row_pearson(pred_cells, truth_cells).mean()),
        pearson_shuffled=float(_row_pearson(pred_cells, shuffled).mean()),
        mse=float(np.mean((pred_cells - truth_cells) ** 2)),
        mse_shuffled=float(np.mean((pred_cells - shuffled) ** 2)),
    )


@register_metric(
    "concept_agreement",
    direction="higher",
    level="classification",
    reference="1 = the label read from every prediction is the one read from its true twin",
)
def concept_agreement(
    pred: npt.ArrayLike,
    truth: npt.ArrayLike,
    reference: npt.ArrayLike,
    reference_labels: npt.ArrayLike,
    *,
    seed: int = 0,
) -> float:
    """Fraction of predictions whose label a classifier reads as it reads their twin's.

    A standardised logistic regression (seeded) is trained on the observed
    ``reference`` cells and their labels (e.g. one concept), then applied to each
    predicted cell and to its true twin.

    Parameters
    ----------
    pred, truth : array-like, shape (n_cells, n_dims)
        Predictions and their true twins, row for row.
    reference : array-like, shape (n_ref, n_dims)
    reference_labels : array-like, shape (n_ref,)
        At least two distinct labels.
    seed : int, default 0

    Returns
    -------
    float
        In ``[0, 1]``.
    """
    pred_cells, truth_cells = same_shape_cells(pred, truth)
    reference_cells = as_cells(reference, "reference", min_cells=2)
    same_dims(pred_cells, reference_cells, "pred and reference")
    labels = as_labels(reference_labels, "reference_labels", reference_cells.shape[0])
    if np.unique(labels).size < 2:
        raise SimcellError("reference_labels take a single value; nothing to classify")
    classifier = _classifier(seed).fit(reference_cells, labels)
    return float(np.mean(classifier.predict(pred_cells) == classifier.predict(truth_cells)))


def causal_consistency(
    reference: npt.ArrayLike,
    reference_concepts: npt.ArrayLike,
    source: npt.ArrayLike,
    pred: npt.ArrayLike,
    truth: npt.ArrayLike,
    *,
    concept_names: Sequence[str],
    intervened: Sequence[str],
    descendants: Sequence[str],
    seed: int = 0,
) -> pd.DataFrame:
    """Do generated cells' concepts move as the SCM says after ``do()``?

    For each concept a classifier (standardised logistic regression, seeded)
    is trained on the observed ``reference`` cells and their true values, then
    reads the concept from the factual ``source`` cells, from the model's
    counterfactual ``pred`` and from the exact causal-mode twins ``truth``.
    The shift a model induces, ``rate(pred) − rate(source)``, is compared with
    the true shift ``rate(truth) − rate(source)``, read by the same classifier
    (its bias cancels); ``agreement`` is the paired fraction of cells read the
    same from the prediction and from its twin.

    Parameters
    ----------
    reference : array-like, shape (n_ref, n_dims)
        Observed cells (e.g. the train cells).
    reference_concepts : array-like, shape (n_ref, n_concepts)
        Their true, discrete concept values.
    source, pred, truth : array-like, shape (n_cells, n_dims)
        Factual cells, predictions, twins; row for row.
    concept_names : sequence of str, length n_concepts
    intervened : sequence of str
        The concepts set by ``do``.
    descendants : sequence of str
        Their descendants in the DAG (``Intervention.descendants()``).
    seed : int, default 0

    Returns
    -------
    DataFrame
        One row per concept: ``concept``, ``role`` (``intervened``,
        ``descendant``, ``non_descendant``), ``rate_source``, ``rate_pred``,
        ``rate_truth`` (mean value read), ``shift_pred``, ``shift_truth``,
        ``shift_error`` (``|shift_pred − shift_truth|``) and ``agreement``.
        A concept with a single value among the reference cells is left out.
    """
    reference_cells = as_cells(reference, "reference", min_cells=2)
    labels = as_concepts(reference_concepts, "reference_concepts", reference_cells.shape[0])
    source_cells, pred_cells = same_shape_cells(source, pred)
    _, truth_cells = same_shape_cells(pred_cells, truth)
    same_dims(reference_cells, pred_cells, "reference and pred")
    names = [str(n) for n in concept_names]
    if len(names) != labels.shape[1]:
        raise SimcellError(f"{len(names)} concept names for {labels.shape[1]} concepts")
    unknown = sorted(set(intervened) | set(descendants) - set(names))
    unknown = [n for n in unknown if n not in names]
    if unknown:
        raise SimcellError(f"unknown concept(s) {unknown}; concepts are {names}")
    rows = []
    for name, column in zip(names, labels.T, strict=True):
        if np.unique(column).size < 2:
            continue
        classifier = _classifier(seed).fit(reference_cells, column)
        read = {
            "source": classifier.predict(source_cells).astype(np.float64),
            "pred": classifier.predict(pred_cells).astype(np.float64),
            "truth": classifier.predict(truth_cells).astype(np.float64),
        }
        role = (
            "intervened"
            if name in intervened
            else "descendant"
            if name in descendants
            else "non_descendant"
        )
        shift_pred = float(read["pred"].mean() - read["source"].mean())
        shift_truth = float(read["truth"].mean() - read["source"].mean())
        rows.append(
            {
                "concept": name,
                "role": role,
                "rate_source": float(read["source"].mean()),
                "rate_pred": float(read["pred"].mean()),
                "rate_truth": float(read["truth"].mean()),
                "shift_pred": shift_pred,
                "shift_truth": shift_truth,
                "shift_error": abs(shift_pred - shift_truth),
                "agreement": float(np.mean(read["pred"] == read["truth"])),
            }
        )
    return pd.DataFrame(rows)
