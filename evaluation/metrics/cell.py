"""Cell-level metrics: each predicted cell against its own true counterfactual.

Every function here is ``fn(pred, truth) -> ndarray, shape (n_cells,)`` (one
score per cell; the harness averages them and bootstraps the mean with
:func:`bootstrap_ci`). Row ``i`` of ``pred`` is the prediction for the cell
whose true counterfactual is row ``i`` of ``truth``.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from simcell import SimcellError
from simcell.evaluation.metrics._registry import register_metric
from simcell.evaluation.metrics._validation import check_fraction, constant_rows, same_shape_cells

__all__ = ["bootstrap_ci", "mae", "mse", "pearson", "r2"]

_ERROR_REFERENCE = (
    "0 for a perfect prediction; the oracle (exact posterior mean) is the lowest error "
    "any predictor can reach, identity the trivial baseline"
)
_FIT_REFERENCE = (
    "1 for a perfect prediction; the oracle (exact posterior mean) is the practical "
    "ceiling, identity the trivial baseline"
)


@register_metric("mse", direction="lower", level="cell", reference=_ERROR_REFERENCE)
def mse(pred: npt.ArrayLike, truth: npt.ArrayLike) -> np.ndarray:
    """Mean squared error of each predicted cell against its true counterfactual.

    ``mse_i = (1/d) Σ_j (pred_ij - truth_ij)²`` (Tables S5, S8 report its mean).

    Parameters
    ----------
    pred : array-like, shape (n_cells, n_dims)
        Predicted counterfactual cells.
    truth : array-like, shape (n_cells, n_dims)
        True counterfactuals, row for row.

    Returns
    -------
    ndarray, shape (n_cells,)
    """
    pred_cells, truth_cells = same_shape_cells(pred, truth)
    return np.mean((pred_cells - truth_cells) ** 2, axis=1)


@register_metric("mae", direction="lower", level="cell", reference=_ERROR_REFERENCE)
def mae(pred: npt.ArrayLike, truth: npt.ArrayLike) -> np.ndarray:
    """Mean absolute error of each predicted cell: ``(1/d) Σ_j |pred_ij - truth_ij|``.

    Parameters
    ----------
    pred : array-like, shape (n_cells, n_dims)
    truth : array-like, shape (n_cells, n_dims)

    Returns
    -------
    ndarray, shape (n_cells,)
    """
    pred_cells, truth_cells = same_shape_cells(pred, truth)
    return np.mean(np.abs(pred_cells - truth_cells), axis=1)


@register_metric("pearson", direction="higher", level="cell", reference=_FIT_REFERENCE)
def pearson(pred: npt.ArrayLike, truth: npt.ArrayLike) -> np.ndarray:
    """Pearson correlation across dims between each predicted cell and its truth.

    ``r_i = Σ_j (p_ij - p̄_i)(t_ij - t̄_i) / sqrt(Σ_j (p_ij - p̄_i)² Σ_j (t_ij - t̄_i)²)``

    Parameters
    ----------
    pred : array-like, shape (n_cells, n_dims)
    truth : array-like, shape (n_cells, n_dims)
        ``n_dims >= 2``.

    Returns
    -------
    ndarray, shape (n_cells,)
        In ``[-1, 1]`` (clipped against rounding). The correlation is undefined
        where the predicted or the true row is constant (all its entries equal);
        those cells are ``NaN``, and only those. Average with ``np.nanmean`` or
        count them separately.
    """
    pred_cells, truth_cells = same_shape_cells(pred, truth)
    if pred_cells.shape[1] < 2:
        raise SimcellError("pearson needs at least 2 dims per cell")
    pred_centred = pred_cells - pred_cells.mean(axis=1, keepdims=True)
    truth_centred = truth_cells - truth_cells.mean(axis=1, keepdims=True)
    defined = ~(constant_rows(pred_cells) | constant_rows(truth_cells))
    correlation = np.full(pred_cells.shape[0], np.nan)
    numerator = np.sum(pred_centred[defined] * truth_centred[defined], axis=1)
    denominator = np.sqrt(
        np.sum(pred_centred[defined] ** 2, axis=1) * np.sum(truth_centred[defined] ** 2, axis=1)
    )
    correlation[defined] = np.clip(numerator / denominator, -1.0, 1.0)
    return correlation


@register_metric("r2", direction="higher", level="cell", reference=_FIT_REFERENCE)
def r2(pred: npt.ArrayLike, truth: npt.ArrayLike) -> np.ndarray:
    """Coefficient of determination of each predicted cell, across dims.

    ``R²_i = 1 - Σ_j (t_ij - p_ij)² / Σ_j (t_ij - t̄_i)²`` with ``t̄_i`` the mean of
    the true cell. Unbounded below (a bad prediction gives ``R² < 0``).

    Parameters
    ----------
    pred : array-like, shape (n_cells, n_dims)
    truth : array-like, shape (n_cells, n_dims)
        ``n_dims >= 2``.

    Returns
    -------
    ndarray, shape (n_cells,)
        ``NaN`` exactly where the true row is constant (``Σ_j (t_ij - t̄_i)² = 0``,
        R² undefined), whatever the prediction.
    """
    pred_cells, truth_cells = same_shape_cells(pred, truth)
    if pred_cells.shape[1] < 2:
        raise SimcellError("r2 needs at least 2 dims per cell")
    defined = ~constant_rows(truth_cells)
    residual = np.sum((truth_cells[defined] - pred_cells[defined]) ** 2, axis=1)
    truth_centred = truth_cells[defined] - truth_cells[defined].mean(axis=1, keepdims=True)
    total = np.sum(truth_centred**2, axis=1)
    score = np.full(pred_cells.shape[0], np.nan)
    score[defined] = 1.0 - residual / total
    return score


def bootstrap_ci(
    values: npt.ArrayLike,
    *,
    n_boot: int = 1000,
    level: float = 0.95,
    rng: np.random.Generator | int,
) -> tuple[float, float, float]:
    """Percentile bootstrap confidence interval of a mean.

    ``n_boot`` resamples of the values (with replacement, same size) are drawn
    from ``rng`` in vectorised chunks; the interval is the ``(1 - level)/2`` and
    ``(1 + level)/2`` quantiles of the resampled means.

    Parameters
    ----------
    values : array-like, shape (n_values,)
        Finite numbers (e.g. per-cell errors); drop undefined (NaN) entries first.
    n_boot : int, default 1000
        Number of bootstrap resamples.
    level : float, default 0.95
        Confidence level, strictly between 0 and 1.
    rng : numpy.random.Generator or int
        Source of randomness (an int is used as a seed).

    Returns
    -------
    mean : float
        Mean of ``values``.
    low, high : float
        Bounds of the percentile interval.
    """
    sample = np.asarray(values, dtype=np.float64)
    if sample.ndim != 1 or sample.size == 0:
        raise SimcellError(f"values must be a non-empty 1-D array; got shape {sample.shape}")
    if not np.isfinite(sample).all():
        raise SimcellError("values contains NaN or infinite values")
    if int(n_boot) != n_boot or n_boot < 1:
        raise SimcellError(f"n_boot must be a positive integer; got {n_boot!r}")
    check_fraction(level, "level")
    generator = np.random.default_rng(rng)
    n_values = sample.size
    chunk = max(1, 2**22 // n_values)
    means = np.concatenate(
        [
            sample[
                generator.integers(0, n_values, size=(min(chunk, n_boot - start), n_values))
            ].mean(axis=1)
            for start in range(0, int(n_boot), chunk)
        ]
    )
    low, high = np.quantile(means, [(1.0 - level) / 2.0, (1.0 + level) / 2.0])
    return float(sample.mean()), float(low), float(high)
