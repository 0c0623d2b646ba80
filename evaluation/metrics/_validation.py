"""Input checks shared by the metric families: one-line :class:`simcell.SimcellError`s."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pandas as pd

from simcell import SimcellError


def as_cells(values: npt.ArrayLike, name: str, *, min_cells: int = 1) -> np.ndarray:
    """Validate a (n_cells, n_dims) matrix of finite numbers and return it as float64."""
    try:
        array = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise SimcellError(f"{name} must be a numeric array: {error}") from None
    if array.ndim != 2:
        raise SimcellError(
            f"{name} must be 2-D with shape (n_cells, n_dims); got shape {array.shape}"
        )
    if array.shape[1] == 0:
        raise SimcellError(f"{name} has no dims (shape {array.shape})")
    if array.shape[0] < min_cells:
        raise SimcellError(f"{name} needs at least {min_cells} cells; got {array.shape[0]}")
    if not np.isfinite(array).all():
        raise SimcellError(f"{name} contains NaN or infinite values")
    return array


def same_dims(first: np.ndarray, second: np.ndarray, names: str) -> None:
    """Raise unless two (n_cells, n_dims) matrices have the same number of dims."""
    if first.shape[1] != second.shape[1]:
        raise SimcellError(
            f"{names} have different numbers of dims: {first.shape[1]} vs {second.shape[1]}"
        )


def same_shape_cells(pred: npt.ArrayLike, truth: npt.ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Validate predicted cells and their true twins, row for row."""
    pred_cells = as_cells(pred, "pred")
    truth_cells = as_cells(truth, "truth")
    if pred_cells.shape != truth_cells.shape:
        raise SimcellError(
            f"pred and truth must have the same shape; got {pred_cells.shape} vs "
            f"{truth_cells.shape}"
        )
    return pred_cells, truth_cells


def two_samples(
    pred: npt.ArrayLike, truth: npt.ArrayLike, *, min_cells: int, paired: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Validate two populations; with ``paired`` row ``i`` of each comes from one source cell."""
    pred_cells = as_cells(pred, "pred", min_cells=min_cells)
    truth_cells = as_cells(truth, "truth", min_cells=min_cells)
    same_dims(pred_cells, truth_cells, "pred and truth")
    if paired and pred_cells.shape[0] != truth_cells.shape[0]:
        raise SimcellError(
            f"paired=True needs as many pred as truth rows; got {pred_cells.shape[0]} vs "
            f"{truth_cells.shape[0]}"
        )
    return pred_cells, truth_cells


def as_labels(values: npt.ArrayLike, name: str, n_cells: int) -> np.ndarray:
    """Validate a 1-D label vector of length ``n_cells`` without missing values."""
    labels = np.asarray(values)
    if labels.ndim != 1 or labels.shape[0] != n_cells:
        raise SimcellError(f"{name} must have shape ({n_cells},); got shape {labels.shape}")
    if pd.isna(labels).any():
        raise SimcellError(f"{name} contains missing values")
    return labels


def as_concepts(values: npt.ArrayLike, name: str, n_cells: int) -> np.ndarray:
    """Validate discrete concept labels, shape (n_cells,) or (n_cells, n_concepts)."""
    concepts = np.asarray(values, dtype=np.float64)
    if concepts.ndim == 1:
        concepts = concepts[:, None]
    if concepts.ndim != 2 or concepts.shape[0] != n_cells:
        raise SimcellError(
            f"{name} must have shape ({n_cells},) or ({n_cells}, n_concepts); "
            f"got shape {np.shape(values)}"
        )
    if not np.isfinite(concepts).all():
        raise SimcellError(f"{name} contains NaN or infinite values")
    if not np.array_equal(concepts, np.round(concepts)):
        raise SimcellError(f"{name} must hold discrete (integer-valued) concept labels")
    return concepts.astype(np.int64)


def check_fraction(value: float, name: str) -> None:
    """Raise unless ``0 < value < 1``."""
    if not 0.0 < value < 1.0:
        raise SimcellError(f"{name} must lie strictly between 0 and 1; got {value}")


def check_positive(value: float, name: str) -> None:
    """Raise unless ``value`` is a positive finite number."""
    if not (np.isfinite(value) and value > 0):
        raise SimcellError(f"{name} must be a positive finite number; got {value}")


def constant_rows(cells: np.ndarray) -> np.ndarray:
    """Rows whose entries are all equal (peak-to-peak exactly 0), shape (n_cells,)."""
    return np.ptp(cells, axis=1) == 0
