"""Causal-matrix recovery: an estimated drift matrix against the true one.

Entries are compared off the diagonal (the diagonal of a drift matrix is its
self-decay, not a causal edge). The true entries are put in three sign classes,
``sign(a)`` where ``|a| ≥ threshold`` and 0 otherwise; the scores are

* ``causal_auroc`` — one-vs-one AUROC over the sign classes present (pairs
  (−1, 0), (−1, 1), (0, 1)), the estimate's value as the score for the larger
  class, averaged over pairs (insensitive to class imbalance);
* ``causal_f1`` — macro-F1 over the three classes of the signs of the estimate's
  top-k entries by magnitude (k = the number of true edges; the rest predicted 0),
  which makes it free of the estimate's scale;
* ``causal_pearson`` — Pearson correlation of the entries.

Each has an ``_undirected`` twin on the symmetrised matrices: for every pair
i < j the entry of larger magnitude among ``[i, j]`` and ``[j, i]`` (with its
sign). A symmetric estimate such as −Σ⁻¹ (the Jacobian of a Gaussian score)
can score well undirected and poorly directed; recovering A scores well on both.

:func:`causal_scores` is what ``simcell evaluate`` calls on a ``linear-sde``
bundle: every score above for a model that gives a causal matrix (a
``causal_matrix()`` method, e.g. ``lcd`` through CLIPR) refitted on the train
cells' true gene programs, or for the differential-expression baseline.

Reference: Lorch et al., *Latent causal diffusions for single-cell
perturbation modeling* (2026), causal analysis.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from sklearn.metrics import f1_score, roc_auc_score

from simcell import SimcellError
from simcell.evaluation.metrics._registry import list_metrics, register_metric

__all__ = [
    "DE_BASELINE",
    "causal_auroc",
    "causal_auroc_undirected",
    "causal_f1",
    "causal_f1_undirected",
    "causal_pearson",
    "causal_pearson_undirected",
    "causal_scores",
    "sign_classes",
    "undirected_entries",
]

#: |a| below this is "no edge" (the process's edge weights are at least 0.5)
THRESHOLD = 0.25
_REFERENCE = "1 = the true causal matrix's entries are recovered (0.5: chance for AUROC)"
_PAIRS = ((-1, 0), (-1, 1), (0, 1))


def _pair(causal_pred: npt.ArrayLike, causal_true: npt.ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    pred = np.asarray(causal_pred, dtype=np.float64)
    true = np.asarray(causal_true, dtype=np.float64)
    if true.ndim != 2 or true.shape[0] != true.shape[1] or true.shape[0] < 2:
        raise SimcellError(f"causal_true must be a square (d, d) matrix, d >= 2; got {true.shape}")
    if pred.shape != true.shape:
        raise SimcellError(f"causal_pred {pred.shape} and causal_true {true.shape} differ")
    if not (np.isfinite(pred).all() and np.isfinite(true).all()):
        raise SimcellError("causal matrices contain NaN or infinite values")
    return pred, true


def directed_entries(matrix: np.ndarray) -> np.ndarray:
    """The off-diagonal entries, row-major, shape (d (d − 1),)."""
    return matrix[~np.eye(matrix.shape[0], dtype=bool)]


def undirected_entries(matrix: np.ndarray) -> np.ndarray:
    """For each pair i < j the entry of larger magnitude of ``[i, j]`` and ``[j, i]``,
    shape (d (d − 1) / 2,)."""
    upper, lower = (
        matrix[np.triu_indices_from(matrix, 1)],
        matrix.T[np.triu_indices_from(matrix, 1)],
    )
    return np.where(np.abs(upper) >= np.abs(lower), upper, lower)


def sign_classes(values: np.ndarray, threshold: float = THRESHOLD) -> np.ndarray:
    """sign(a) where |a| ≥ threshold, else 0; int64."""
    return np.where(np.abs(values) < threshold, 0, np.sign(values)).astype(np.int64)


def _auroc(pred: np.ndarray, true: np.ndarray, threshold: float) -> float:
    classes = sign_classes(true, threshold)
    scores = []
    for low, high in _PAIRS:
        chosen = np.isin(classes, (low, high))
        if (classes == low).any() and (classes == high).any():
            scores.append(roc_auc_score(classes[chosen] == high, pred[chosen]))
    if not scores:
        raise SimcellError("causal AUROC is undefined: the true matrix has one sign class")
    return float(np.mean(scores))


def _f1(pred: np.ndarray, true: np.ndarray, threshold: float) -> float:
    classes = sign_classes(true, threshold)
    k = int(np.count_nonzero(classes))
    predicted = np.zeros_like(classes)
    if k:
        top = np.argsort(-np.abs(pred), kind="stable")[:k]
        predicted[top] = np.sign(pred[top]).astype(np.int64)
    return float(f1_score(classes, predicted, labels=[-1, 0, 1], average="macro", zero_division=0))


def _pearson(pred: np.ndarray, true: np.ndarray) -> float:
    if np.ptp(pred) == 0 or np.ptp(true) == 0:
        raise SimcellError("causal Pearson is undefined for a constant matrix")
    return float(np.corrcoef(pred, true)[0, 1])


@register_metric("causal_auroc", direction="higher", level="causal", reference=_REFERENCE)
def causal_auroc(
    causal_pred: npt.ArrayLike, causal_true: npt.ArrayLike, *, threshold: float = THRESHOLD
) -> float:
    """One-vs-one AUROC of the directed off-diagonal entries over sign classes.

    Parameters
    ----------
    causal_pred, causal_true : array-like, shape (d, d)
        ``[i, j]``: the (estimated / true) effect of program j on program i.
    threshold : float
        |a| below it is class 0.

    Returns
    -------
    float
        In [0, 1]; 0.5 at chance.
    """
    pred, true = _pair(causal_pred, causal_true)
    return _auroc(directed_entries(pred), directed_entries(true), threshold)


@register_metric(
    "causal_auroc_undirected", direction="higher", level="causal", reference=_REFERENCE
)
def causal_auroc_undirected(
    causal_pred: npt.ArrayLike, causal_true: npt.ArrayLike, *, threshold: float = THRESHOLD
) -> float:
    """:func:`causal_auroc` on the symmetrised matrices (:func:`undirected_entries`)."""
    pred, true = _pair(causal_pred, causal_true)
    return _auroc(undirected_entries(pred), undirected_entries(true), threshold)


@register_metric("causal_f1", direction="higher", level="causal", reference=_REFERENCE)
def causal_f1(
    causal_pred: npt.ArrayLike, causal_true: npt.ArrayLike, *, threshold: float = THRESHOLD
) -> float:
    """Macro-F1 over {−1, 0, 1} of the signs of the estimate's top-k directed entries.

    k is the number of true edges (|a| ≥ threshold); the estimate's other entries
    are predicted 0, so the score does not depend on the estimate's scale.
    """
    pred, true = _pair(causal_pred, causal_true)
    return _f1(directed_entries(pred), directed_entries(true), threshold)


@register_metric("causal_f1_undirected", direction="higher", level="causal", reference=_REFERENCE)
def causal_f1_undirected(
    causal_pred: npt.ArrayLike, causal_true: npt.ArrayLike, *, threshold: float = THRESHOLD
) -> float:
    """:func:`causal_f1` on the symmetrised matrices."""
    pred, true = _pair(causal_pred, causal_true)
    return _f1(undirected_entries(pred), undirected_entries(true), threshold)


@register_metric("causal_pearson", direction="higher", level="causal", reference=_REFERENCE)
def causal_pearson(causal_pred: npt.ArrayLike, causal_true: npt.ArrayLike) -> float:
    """Pearson correlation of the directed off-diagonal entries."""
    pred, true = _pair(causal_pred, causal_true)
    return _pearson(directed_entries(pred), directed_entries(true))


@register_metric(
    "causal_pearson_undirected", direction="higher", level="causal", reference=_REFERENCE
)
def causal_pearson_undirected(causal_pred: npt.ArrayLike, causal_true: npt.ArrayLike) -> float:
    """Pearson correlation of the symmetrised entries."""
    pred, true = _pair(causal_pred, causal_true)
    return _pearson(undirected_entries(pred), undirected_entries(true))


#: the model name of the differential-expression rows (:func:`causal_scores` without a model)
DE_BASELINE = "de_baseline"


def causal_scores(
    factual,
    train: np.ndarray,
    concepts: np.ndarray | None = None,
    model: str | None = None,
    *,
    preset: str = "fast",
    device: str = "auto",
    seed: int = 0,
) -> dict[str, float]:
    """Causal-matrix scores of a model (or of the DE baseline) on a ``linear-sde`` bundle.

    The estimate is read in the space of the true drift matrix A, the gene
    programs x the bundle stores in ``obsm`` (the process's ``gaussian``
    observation): ``model`` is created (``preset``, ``device``, ``seed``), fitted
    on the train cells' programs and ``concepts`` and asked for its
    ``causal_matrix()``; without ``model``, the estimate is
    :func:`~simcell.models.clipr.differential_expression_matrix` of the same cells.

    Parameters
    ----------
    factual : AnnData
        The bundle's factual cells.
    train : ndarray of bool or int
        The task's train cells (mask or positions into ``factual``).
    concepts : ndarray, shape (n_train, d), optional
        Perturbation indicators of those cells as the model sees them (NaN: not
        annotated, read as not perturbed); default: the bundle's true ones.
    model : str, optional
        A registered model name.
    preset, device, seed : str, str, int

    Returns
    -------
    dict
        Registered ``causal``-level metric name -> value; empty when the bundle
        is not ``linear-sde`` or the model gives no causal matrix.
    """
    from simcell.simulator import linear_sde, schema

    if schema.process_name(factual) != linear_sde.PROCESS:
        return {}
    if model is not None:
        from simcell.models import get_model_class

        if not callable(getattr(get_model_class(model), "causal_matrix", None)):
            return {}
    truth = linear_sde.read_system(factual).drift_matrix
    programs = np.asarray(factual.obsm[linear_sde.LATENT_PROGRAMS], dtype=np.float64)[train]
    if concepts is None:
        concepts = schema.true_concepts(factual).to_numpy()[train]
    indicators = np.nan_to_num(np.asarray(concepts, dtype=np.float64), nan=0.0)
    if model is None:
        from simcell.models.clipr import differential_expression_matrix

        estimate = differential_expression_matrix(programs, (indicators != 0).astype(np.int64))
    else:
        from simcell.models import create_model

        fitted = create_model(model, preset=preset, device=device, seed=seed, progress_bar=False)
        fitted.fit(programs.astype(np.float32), indicators.astype(np.float32))
        estimate = fitted.causal_matrix()
    return {
        metric.name: float(metric.fn(causal_pred=estimate, causal_true=truth))
        for metric in list_metrics(level="causal")
    }
