"""Pure metric functions of the evaluation layer, and their registry.

Every metric is a function of arrays (no files, no training state kept) and is
registered with the direction in which it improves and the level it works at.
Call conventions per level:

* ``"cell"``: ``fn(pred, truth) -> ndarray, shape (n_cells,)``; one score per
  predicted cell against its own true counterfactual (the harness averages and
  bootstraps them with :func:`bootstrap_ci`).
* ``"distribution"``: ``fn(x, y) -> float`` for the distances ``mmd``, ``fid``,
  ``sinkhorn``, ``energy``; ``fn(pred, target, references) -> float`` for the
  ratios ``rmmd``, ``rfid``, ``rsd`` (paper eq. 10 and eq. 50-55).
* ``"classification"``: ``knn_accuracy(pred, pred_labels, reference,
  reference_labels)``, ``concept_accuracy`` / ``concept_f1(embedding,
  concepts)``, ``nmi`` / ``ari(embedding, labels)``; each returns a float.
* ``"identifiability"``: ``fn(learned, true) -> float``.

Inputs containing NaN or infinite values, or with mismatched shapes, raise
:class:`simcell.SimcellError` with a one-line message. Stochastic metrics take an
explicit ``seed`` (or ``rng``) and never touch global random state.

References
----------
.. [1] scCBGM paper, ``papers/scCBGM.txt``: eq. 10, Appendix D.2 (eq. 50-55),
   D.7 (Table S7), D.11.
.. [2] A. Gretton et al., "A kernel two-sample test", JMLR 13 (2012).
.. [3] G. Székely and M. Rizzo, "Energy statistics", J. Stat. Plan. Inference (2013).
.. [4] J. Feydy et al., "Interpolating between optimal transport and MMD using
   Sinkhorn divergences", AISTATS (2019).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import numpy as np
import numpy.typing as npt
import pandas as pd
import torch
from scipy.optimize import linear_sum_assignment
from sklearn.cluster import KMeans
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.metrics import adjusted_rand_score, f1_score, normalized_mutual_info_score
from sklearn.model_selection import train_test_split
from sklearn.multiclass import OneVsRestClassifier
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from simcell import SimcellError
from simcell.evaluation import _distances

__all__ = [
    "ConceptLeakage",
    "Metric",
    "ari",
    "bootstrap_ci",
    "concept_accuracy",
    "concept_f1",
    "concept_leakage",
    "energy_distance",
    "frechet_distance",
    "frechet_from_moments",
    "get_metric",
    "knn_accuracy",
    "linear_r2",
    "list_metrics",
    "mae",
    "mcc",
    "median_heuristic_bandwidths",
    "mmd",
    "mse",
    "nmi",
    "pearson",
    "r2",
    "register_metric",
    "rfid",
    "rmmd",
    "rsd",
    "sinkhorn_divergence",
]

Direction = Literal["lower", "higher"]
Level = Literal["cell", "distribution", "classification", "identifiability"]
Precision = Literal["float32", "float64"]
MetricFn = TypeVar("MetricFn", bound=Callable[..., Any])

_LEVELS: tuple[str, ...] = ("cell", "distribution", "classification", "identifiability")
_DIRECTIONS: tuple[str, ...] = ("lower", "higher")
_TORCH_DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "float64": torch.float64}
_MEDIAN_MAX_CELLS = 1000
_DEFAULT_BANDWIDTH_SCALES = (0.5, 1.0, 2.0)


# ----------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class Metric:
    """A registered metric.

    Attributes
    ----------
    name : str
        Registry key, e.g. ``"rmmd"``.
    fn : callable
        The metric function (call convention by ``level``, see the module docstring).
    direction : {"lower", "higher"}
        Which way is better.
    level : {"cell", "distribution", "classification", "identifiability"}
        What the metric compares.
    """

    name: str
    fn: Callable[..., Any]
    direction: Direction
    level: Level


_REGISTRY: dict[str, Metric] = {}


def register_metric(
    name: str, *, direction: Direction, level: Level
) -> Callable[[MetricFn], MetricFn]:
    """Register a metric function under ``name`` (decorator).

    Parameters
    ----------
    name : str
        Registry key; must not be registered already.
    direction : {"lower", "higher"}
        Which way is better.
    level : {"cell", "distribution", "classification", "identifiability"}

    Returns
    -------
    callable
        Decorator that registers the function and returns it unchanged.

    Examples
    --------
    >>> @register_metric("my_rmse", direction="lower", level="cell")  # doctest: +SKIP
    ... def my_rmse(pred, truth): ...
    """
    if direction not in _DIRECTIONS:
        raise SimcellError(f"direction must be one of {_DIRECTIONS}; got {direction!r}")
    if level not in _LEVELS:
        raise SimcellError(f"level must be one of {_LEVELS}; got {level!r}")

    def decorate(fn: MetricFn) -> MetricFn:
        if name in _REGISTRY:
            raise SimcellError(f"metric {name!r} is already registered")
        _REGISTRY[name] = Metric(name=name, fn=fn, direction=direction, level=level)
        return fn

    return decorate


def get_metric(name: str) -> Metric:
    """Look up a registered metric by name.

    Parameters
    ----------
    name : str

    Returns
    -------
    Metric

    Raises
    ------
    SimcellError
        If ``name`` is not registered; the message lists the valid names.
    """
    try:
        return _REGISTRY[name]
    except KeyError:
        valid = ", ".join(sorted(_REGISTRY))
        raise SimcellError(f"unknown metric {name!r}; valid metrics: {valid}") from None


def list_metrics(level: Level | None = None) -> list[Metric]:
    """All registered metrics, optionally of one level, in registration order.

    Parameters
    ----------
    level : {"cell", "distribution", "classification", "identifiability"}, optional

    Returns
    -------
    list of Metric
    """
    if level is not None and level not in _LEVELS:
        raise SimcellError(f"level must be one of {_LEVELS}; got {level!r}")
    return [metric for metric in _REGISTRY.values() if level is None or metric.level == level]


# ----------------------------------------------------------------------------- validation


def _as_cells(values: npt.ArrayLike, name: str, *, min_cells: int = 1) -> np.ndarray:
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


def _same_dims(first: np.ndarray, second: np.ndarray, names: str) -> None:
    if first.shape[1] != second.shape[1]:
        raise SimcellError(
            f"{names} have different numbers of dims: {first.shape[1]} vs {second.shape[1]}"
        )


def _as_labels(values: npt.ArrayLike, name: str, n_cells: int) -> np.ndarray:
    """Validate a 1-D label vector of length ``n_cells`` without missing values."""
    labels = np.asarray(values)
    if labels.ndim != 1 or labels.shape[0] != n_cells:
        raise SimcellError(f"{name} must have shape ({n_cells},); got shape {labels.shape}")
    if pd.isna(labels).any():
        raise SimcellError(f"{name} contains missing values")
    return labels


def _as_concepts(values: npt.ArrayLike, name: str, n_cells: int) -> np.ndarray:
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


def _check_fraction(value: float, name: str) -> None:
    if not 0.0 < value < 1.0:
        raise SimcellError(f"{name} must lie strictly between 0 and 1; got {value}")


def _check_positive(value: float, name: str) -> None:
    if not (np.isfinite(value) and value > 0):
        raise SimcellError(f"{name} must be a positive finite number; got {value}")


def _same_shape_cells(pred: npt.ArrayLike, truth: npt.ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    pred_cells = _as_cells(pred, "pred")
    truth_cells = _as_cells(truth, "truth")
    if pred_cells.shape != truth_cells.shape:
        raise SimcellError(
            f"pred and truth must have the same shape; got {pred_cells.shape} vs "
            f"{truth_cells.shape}"
        )
    return pred_cells, truth_cells


# ----------------------------------------------------------------------------- cell level


@register_metric("mse", direction="lower", level="cell")
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
    pred_cells, truth_cells = _same_shape_cells(pred, truth)
    return np.mean((pred_cells - truth_cells) ** 2, axis=1)


@register_metric("mae", direction="lower", level="cell")
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
    pred_cells, truth_cells = _same_shape_cells(pred, truth)
    return np.mean(np.abs(pred_cells - truth_cells), axis=1)


def _constant_rows(cells: np.ndarray) -> np.ndarray:
    """Rows whose entries are all equal (peak-to-peak exactly 0), shape (n_cells,)."""
    return np.ptp(cells, axis=1) == 0


@register_metric("pearson", direction="higher", level="cell")
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
    pred_cells, truth_cells = _same_shape_cells(pred, truth)
    if pred_cells.shape[1] < 2:
        raise SimcellError("pearson needs at least 2 dims per cell")
    pred_centred = pred_cells - pred_cells.mean(axis=1, keepdims=True)
    truth_centred = truth_cells - truth_cells.mean(axis=1, keepdims=True)
    defined = ~(_constant_rows(pred_cells) | _constant_rows(truth_cells))
    correlation = np.full(pred_cells.shape[0], np.nan)
    numerator = np.sum(pred_centred[defined] * truth_centred[defined], axis=1)
    denominator = np.sqrt(
        np.sum(pred_centred[defined] ** 2, axis=1) * np.sum(truth_centred[defined] ** 2, axis=1)
    )
    correlation[defined] = np.clip(numerator / denominator, -1.0, 1.0)
    return correlation


@register_metric("r2", direction="higher", level="cell")
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
    pred_cells, truth_cells = _same_shape_cells(pred, truth)
    if pred_cells.shape[1] < 2:
        raise SimcellError("r2 needs at least 2 dims per cell")
    defined = ~_constant_rows(truth_cells)
    residual = np.sum((truth_cells[defined] - pred_cells[defined]) ** 2, axis=1)
    truth_centred = truth_cells[defined] - truth_cells[defined].mean(axis=1, keepdims=True)
    total = np.sum(truth_centred**2, axis=1)
    score = np.full(pred_cells.shape[0], np.nan)
    score[defined] = 1.0 - residual / total
    return score


# ----------------------------------------------------------------------------- distributions


def _two_samples(
    x: npt.ArrayLike, y: npt.ArrayLike, *, min_cells: int
) -> tuple[np.ndarray, np.ndarray]:
    x_cells = _as_cells(x, "x", min_cells=min_cells)
    y_cells = _as_cells(y, "y", min_cells=min_cells)
    _same_dims(x_cells, y_cells, "x and y")
    return x_cells, y_cells


def median_heuristic_bandwidths(
    sample: npt.ArrayLike,
    *,
    scales: Sequence[float] = _DEFAULT_BANDWIDTH_SCALES,
    max_cells: int = _MEDIAN_MAX_CELLS,
    seed: int = 0,
) -> tuple[float, ...]:
    """RBF bandwidths around the median pairwise distance of a sample.

    ``σ_b = s_b · median_{i<j} ||z_i - z_j||`` over a seeded subsample of at most
    ``max_cells`` rows (all rows when the sample is smaller), so the result is
    deterministic for a given ``seed``.

    Parameters
    ----------
    sample : array-like, shape (n_cells, n_dims)
        At least two cells.
    scales : sequence of float, default (0.5, 1, 2)
        Multipliers ``s_b`` of the median distance.
    max_cells : int, default 1000
        Size of the subsample the median is estimated on.
    seed : int, default 0
        Seed of the subsample.

    Returns
    -------
    tuple of float
        One bandwidth per scale.

    Raises
    ------
    SimcellError
        If the median distance is 0 (more than half the pairs coincide): no
        bandwidth can be derived; pass ``bandwidths`` explicitly.
    """
    cells = _as_cells(sample, "sample", min_cells=2)
    for scale in scales:
        _check_positive(scale, "every bandwidth scale")
    median_distance = _distances.median_pairwise_distance(
        cells, squared=False, max_cells=max_cells, seed=seed
    )
    if median_distance == 0:
        raise SimcellError(
            "median pairwise distance is 0 (most cells coincide); pass bandwidths explicitly"
        )
    return tuple(float(scale * median_distance) for scale in scales)


def _resolve_bandwidths(
    bandwidths: Sequence[float] | None, sample: np.ndarray, seed: int
) -> tuple[float, ...]:
    if bandwidths is None:
        return median_heuristic_bandwidths(sample, seed=seed)
    bandwidths = tuple(float(bandwidth) for bandwidth in bandwidths)
    if not bandwidths:
        raise SimcellError("bandwidths must not be empty")
    for bandwidth in bandwidths:
        _check_positive(bandwidth, "every bandwidth")
    return bandwidths


@register_metric("mmd", direction="lower", level="distribution")
def mmd(
    x: npt.ArrayLike,
    y: npt.ArrayLike,
    *,
    bandwidths: Sequence[float] | None = None,
    seed: int = 0,
    block_size: int | None = None,
    device: str = "auto",
    precision: Precision = "float32",
) -> float:
    """Squared maximum mean discrepancy, unbiased estimator, multi-bandwidth RBF kernel.

    Paper eq. 51 with the unbiased estimator of Gretton et al. (2012):

    ``MMD²_u = 1/(m(m-1)) Σ_{i≠i'} k(x_i, x_i') + 1/(n(n-1)) Σ_{j≠j'} k(y_j, y_j')
    - 2/(mn) Σ_{i,j} k(x_i, y_j)``

    with ``k(a, b) = (1/B) Σ_b exp(-||a - b||² / (2 σ_b²))``. Self-pairs are excluded,
    so the estimate is unbiased and can be slightly negative when both samples
    come from one law. In particular ``mmd(x, x) = -2 (1 - k̄) / m < 0``, with
    ``k̄`` the mean off-diagonal kernel value, not 0.

    Parameters
    ----------
    x : array-like, shape (m, n_dims)
        First sample, ``m >= 2``.
    y : array-like, shape (n, n_dims)
        Second sample, ``n >= 2``.
    bandwidths : sequence of float, optional
        ``σ_b``. Default: :func:`median_heuristic_bandwidths` of the pooled sample
        (median pairwise distance × {0.5, 1, 2}, median on a ``seed``-ed subsample
        of at most 1000 cells).
    seed : int, default 0
        Seed of the median subsample (unused when ``bandwidths`` is given).
    block_size : int, optional
        Tile edge of the blocked computation; default 1024 on CPU, 4096 on CUDA.
        Memory is ``O(block_size² + (m + n) n_dims)``; the value changes the
        result only by floating-point rounding.
    device : str, default "auto"
        ``"auto"`` (CUDA when available, else CPU), ``"cpu"`` or ``"cuda[:i]"``.
    precision : {"float32", "float64"}, default "float32"
        Arithmetic of the distance tiles (one matrix product each) and of the
        kernels; every tile sum is accumulated in float64. Data are centred on
        the pooled mean before the cast, so float32 agrees with float64 to about
        1e-7 relative on the kernel means (1e-8 relative on MMD² of 10,000 vs
        10,000 cells in 128 dims, far below the estimator's sampling error) at
        half the cost; ``"float64"`` for bit-level checks.

    Returns
    -------
    float

    References
    ----------
    Gretton et al., "A kernel two-sample test", JMLR 13 (2012), eq. 3.
    """
    x_cells, y_cells = _two_samples(x, y, min_cells=2)
    widths = _resolve_bandwidths(bandwidths, np.vstack([x_cells, y_cells]), seed)
    torch_device = _distances.resolve_device(device)
    tile = _block_size(block_size, torch_device)
    dtype = _torch_dtype(precision)
    gammas = [1.0 / (2.0 * width**2) for width in widths]
    reduce_tile = _distances.rbf_tile_sum(_distances.rbf_plan(gammas))
    options = {"block_size": tile, "scale": -min(gammas)}
    x_t, y_t = _distances.to_centred_tensors([x_cells, y_cells], dtype=dtype, device=torch_device)
    m, n, n_kernels = x_cells.shape[0], y_cells.shape[0], len(widths)
    # Self-pairs have d² = 0 exactly, hence kernel value exactly 1 per bandwidth.
    within_x = _distances.blocked_pair_sum(x_t, x_t, reduce_tile, same=True, **options)
    within_y = _distances.blocked_pair_sum(y_t, y_t, reduce_tile, same=True, **options)
    between = _distances.blocked_pair_sum(x_t, y_t, reduce_tile, same=False, **options)
    within_x = (within_x - m * n_kernels) / (m * (m - 1))
    within_y = (within_y - n * n_kernels) / (n * (n - 1))
    return float((within_x + within_y - 2.0 * between / (m * n)) / n_kernels)


@register_metric("energy", direction="lower", level="distribution")
def energy_distance(
    x: npt.ArrayLike,
    y: npt.ArrayLike,
    *,
    block_size: int | None = None,
    device: str = "auto",
    precision: Precision = "float32",
) -> float:
    """Energy distance between two samples, V-statistic, Euclidean (not squared) distance.

    ``E(x, y) = 2/(mn) Σ_{i,j} ||x_i - y_j|| - 1/m² Σ_{i,i'} ||x_i - x_i'||
    - 1/n² Σ_{j,j'} ||y_j - y_j'||``

    Self-pairs are kept (they contribute 0), so ``E(x, x) = 0`` up to rounding
    and ``E >= 0`` always.

    Parameters
    ----------
    x : array-like, shape (m, n_dims)
    y : array-like, shape (n, n_dims)
    block_size : int, optional
        Tile edge; default 1024 on CPU, 4096 on CUDA. Memory is
        ``O(block_size² + (m + n) n_dims)``; the value changes the result only by
        floating-point rounding.
    device : str, default "auto"
        ``"auto"``, ``"cpu"`` or ``"cuda[:i]"``.
    precision : {"float32", "float64"}, default "float32"
        Arithmetic of the distance tiles; every tile sum is accumulated in
        float64. Squared distances come from ``||x||² + ||y||² - 2 x·y`` on data
        centred on the pooled mean, and pairs much closer than their norms
        (where that expansion cancels) are recomputed from their differences.
        float32 loses about 1e-7 relative on each mean distance, which the
        three-term difference amplifies by ``mean distance / E``: on 10,000 vs
        10,000 cells in 128 dims the distance agrees with float64 to 4e-7
        relative. ``"float64"`` for bit-level checks.

    Returns
    -------
    float

    References
    ----------
    Székely and Rizzo, "Energy statistics: A class of statistics based on
    distances", J. Stat. Plan. Inference 143 (2013).
    """
    x_cells, y_cells = _two_samples(x, y, min_cells=1)
    torch_device = _distances.resolve_device(device)
    tile = _block_size(block_size, torch_device)
    dtype = _torch_dtype(precision)
    x_t, y_t = _distances.to_centred_tensors([x_cells, y_cells], dtype=dtype, device=torch_device)
    options = {
        "block_size": tile,
        "refine_near": _distances.refine_threshold(dtype),
    }
    reduce_tile = _distances.euclidean_tile_sum
    within_x = _distances.blocked_pair_sum(x_t, x_t, reduce_tile, same=True, **options)
    within_y = _distances.blocked_pair_sum(y_t, y_t, reduce_tile, same=True, **options)
    between = _distances.blocked_pair_sum(x_t, y_t, reduce_tile, same=False, **options)
    m, n = x_cells.shape[0], y_cells.shape[0]
    return float(2.0 * between / (m * n) - within_x / m**2 - within_y / n**2)


def _block_size(block_size: int | None, device: torch.device) -> int:
    if block_size is None:
        return _distances.default_block_size(device)
    if int(block_size) != block_size or block_size < 1:
        raise SimcellError(f"block_size must be a positive integer; got {block_size!r}")
    return int(block_size)


def _torch_dtype(precision: str) -> torch.dtype:
    try:
        return _TORCH_DTYPES[precision]
    except KeyError:
        raise SimcellError(
            f"precision must be one of {tuple(_TORCH_DTYPES)}; got {precision!r}"
        ) from None


def frechet_from_moments(
    mu1: npt.ArrayLike, cov1: npt.ArrayLike, mu2: npt.ArrayLike, cov2: npt.ArrayLike
) -> float:
    """Fréchet (2-Wasserstein²) distance between two Gaussians given by their moments.

    Paper eq. 53:
    ``FID = ||μ1 - μ2||² + tr(Σ1 + Σ2 - 2 (Σ1 Σ2)^{1/2})``, with
    ``tr((Σ1 Σ2)^{1/2}) = tr((Σ1^{1/2} Σ2 Σ1^{1/2})^{1/2})`` evaluated through
    symmetric eigendecompositions with eigenvalues clipped at 0. The result is
    real, finite and ``>= 0`` on singular covariances; a rounding-level negative
    total is returned as 0. A covariance with an eigenvalue below ``-1e-8`` times
    its largest entry is rejected.

    Parameters
    ----------
    mu1 : array-like, shape (n_dims,)
    cov1 : array-like, shape (n_dims, n_dims)
        Symmetric positive semi-definite.
    mu2 : array-like, shape (n_dims,)
    cov2 : array-like, shape (n_dims, n_dims)

    Returns
    -------
    float
    """
    means = [np.asarray(mu, dtype=np.float64) for mu in (mu1, mu2)]
    covariances = [np.asarray(cov, dtype=np.float64) for cov in (cov1, cov2)]
    n_dims = means[0].shape[0] if means[0].ndim == 1 and means[0].size else -1
    for index, (mean, cov) in enumerate(zip(means, covariances, strict=True), start=1):
        if mean.shape != (n_dims,) or cov.shape != (n_dims, n_dims):
            raise SimcellError(
                f"mu{index} must have shape (n_dims,) and cov{index} (n_dims, n_dims) with the "
                f"same n_dims for both Gaussians; got {mean.shape} and {cov.shape}"
            )
        if not (np.isfinite(mean).all() and np.isfinite(cov).all()):
            raise SimcellError(f"mu{index} or cov{index} contains NaN or infinite values")
        scale = max(float(np.abs(cov).max()), np.finfo(np.float64).tiny)
        if np.abs(cov - cov.T).max() > 1e-8 * scale:
            raise SimcellError(f"cov{index} is not symmetric")
        if np.linalg.eigvalsh(0.5 * (cov + cov.T))[0] < -1e-8 * scale:
            raise SimcellError(f"cov{index} is not positive semi-definite")
    cov_a, cov_b = covariances
    cov_a, cov_b = 0.5 * (cov_a + cov_a.T), 0.5 * (cov_b + cov_b.T)
    mean_term = float(np.sum((means[0] - means[1]) ** 2))
    trace_term = float(np.trace(cov_a) + np.trace(cov_b))
    value = mean_term + trace_term - 2.0 * _distances.frechet_trace_sqrt(cov_a, cov_b)
    return max(value, 0.0)


@register_metric("fid", direction="lower", level="distribution")
def frechet_distance(x: npt.ArrayLike, y: npt.ArrayLike) -> float:
    """Fréchet distance between Gaussians fitted to two samples (paper eq. 53).

    Means and unbiased covariances (``ddof=1``) of each sample are passed to
    :func:`frechet_from_moments`.

    Parameters
    ----------
    x : array-like, shape (m, n_dims)
        ``m >= 2``.
    y : array-like, shape (n, n_dims)
        ``n >= 2``.

    Returns
    -------
    float
        ``>= 0``; ``0`` up to rounding for ``frechet_distance(x, x)``.
    """
    x_cells, y_cells = _two_samples(x, y, min_cells=2)
    return frechet_from_moments(
        x_cells.mean(axis=0),
        np.atleast_2d(np.cov(x_cells, rowvar=False)),
        y_cells.mean(axis=0),
        np.atleast_2d(np.cov(y_cells, rowvar=False)),
    )


def _sinkhorn_epsilon(sample: np.ndarray, epsilon_scale: float, seed: int) -> float:
    """``epsilon_scale`` × median squared pairwise distance of a seeded subsample."""
    _check_positive(epsilon_scale, "epsilon_scale")
    median = _distances.median_pairwise_distance(
        sample, squared=True, max_cells=_MEDIAN_MAX_CELLS, seed=seed
    )
    if median == 0:
        raise SimcellError(
            "median pairwise distance is 0 (most cells coincide); pass epsilon explicitly"
        )
    return epsilon_scale * median


def _sinkhorn_divergence(
    x_cells: np.ndarray,
    y_cells: np.ndarray,
    *,
    epsilon: float,
    max_iter: int,
    tol: float,
    device: torch.device,
) -> float:
    """``OT_ε(x, y) - ½ OT_ε(x, x) - ½ OT_ε(y, y)`` on validated samples (eq. 55).

    The symmetric terms are warm-started from their averaged fixed points, and
    the cross term from the pair of those (exact when ``x`` and ``y`` coincide).
    """
    x_t, y_t = _distances.to_centred_tensors([x_cells, y_cells], dtype=torch.float64, device=device)
    options = {"epsilon": epsilon, "max_iter": max_iter, "tol": tol}
    log_x = _distances.uniform_log_weights(x_t.shape[0], x_t)
    log_y = _distances.uniform_log_weights(y_t.shape[0], y_t)
    cost_xx = _distances.squared_distance_matrix(x_t, x_t)
    cost_yy = _distances.squared_distance_matrix(y_t, y_t)
    scaling_x = _distances.symmetric_log_scaling(cost_xx, log_x, **options)
    scaling_y = _distances.symmetric_log_scaling(cost_yy, log_y, **options)
    within_x = _distances.entropic_ot(
        cost_xx, log_x, log_x, warmstart=(scaling_x, scaling_x), **options
    )
    within_y = _distances.entropic_ot(
        cost_yy, log_y, log_y, warmstart=(scaling_y, scaling_y), **options
    )
    cost_xy = _distances.squared_distance_matrix(x_t, y_t)
    cross = _distances.entropic_ot(
        cost_xy, log_x, log_y, warmstart=(scaling_x, scaling_y), **options
    )
    return cross - 0.5 * (within_x + within_y)


@register_metric("sinkhorn", direction="lower", level="distribution")
def sinkhorn_divergence(
    x: npt.ArrayLike,
    y: npt.ArrayLike,
    *,
    epsilon: float | None = None,
    epsilon_scale: float = 0.05,
    seed: int = 0,
    max_iter: int = 10_000,
    tol: float = 1e-8,
    device: str = "auto",
) -> float:
    """Debiased Sinkhorn divergence, squared Euclidean cost (paper eq. 55).

    ``S_ε(x, y) = OT_ε(x, y) - ½ OT_ε(x, x) - ½ OT_ε(y, y)`` with, for uniform
    weights ``α, β``, ``OT_ε(α, β) = min_P <P, C> + ε KL(P | α ⊗ β)`` and
    ``C_ij = ||x_i - y_j||²`` (the full entropic objective of Feydy et al., 2019,
    for which ``S_ε >= 0`` and ``S_ε(x, x) = 0``). The three terms are solved by
    POT's log-domain Sinkhorn (``ot.bregman.sinkhorn_log``, float64, torch
    backend on ``device``) with one and the same ``ε``. Plain Sinkhorn stalls on
    the symmetric terms, so those are first brought to convergence by the
    averaged fixed point of Feydy et al. (2019) and POT is warm-started from it;
    the cross term is warm-started from the two symmetric solutions.

    Parameters
    ----------
    x : array-like, shape (m, n_dims)
    y : array-like, shape (n, n_dims)
    epsilon : float, optional
        Entropic regularisation in squared-distance units. Default:
        ``epsilon_scale`` × the median squared pairwise distance of the pooled
        sample (seeded subsample of at most 1000 cells), computed once.
    epsilon_scale : float, default 0.05
        Used only when ``epsilon`` is None.
    seed : int, default 0
        Seed of the median subsample.
    max_iter : int, default 10000
        Sinkhorn iterations per term; POT warns when they do not converge.
    tol : float, default 1e-8
        Tolerance on the L2 violation of the marginal (POT's ``stopThr``); on
        typical data the divergence is then accurate to about 1e-7 relative.
    device : str, default "auto"
        ``"auto"``, ``"cpu"`` or ``"cuda[:i]"``.

    Returns
    -------
    float

    Notes
    -----
    Memory is ``O(m n + m² + n²)``: POT works on full cost matrices.

    References
    ----------
    Feydy et al., "Interpolating between optimal transport and MMD using Sinkhorn
    divergences", AISTATS (2019).
    """
    x_cells, y_cells = _two_samples(x, y, min_cells=1)
    if epsilon is None:
        epsilon = _sinkhorn_epsilon(np.vstack([x_cells, y_cells]), epsilon_scale, seed)
    _check_positive(epsilon, "epsilon")
    return _sinkhorn_divergence(
        x_cells,
        y_cells,
        epsilon=float(epsilon),
        max_iter=max_iter,
        tol=tol,
        device=_distances.resolve_device(device),
    )


# ----------------------------------------------------------------------------- ratios


def _ratio(
    name: str,
    distance: Callable[[np.ndarray, np.ndarray], float],
    pred: np.ndarray,
    target: np.ndarray,
    references: Sequence[np.ndarray],
) -> float:
    """``distance(pred, target) / min_r distance(r, target)``."""
    nearest = min(distance(reference, target) for reference in references)
    if not nearest > 0:
        raise SimcellError(
            f"{name} is undefined: the closest reference population is at distance "
            f"{nearest:.3g} <= 0 from the target"
        )
    return distance(pred, target) / nearest


def _ratio_inputs(
    pred: npt.ArrayLike,
    target: npt.ArrayLike,
    references: Sequence[npt.ArrayLike],
    *,
    min_cells: int,
) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    pred_cells = _as_cells(pred, "pred", min_cells=min_cells)
    target_cells = _as_cells(target, "target", min_cells=min_cells)
    _same_dims(pred_cells, target_cells, "pred and target")
    if isinstance(references, np.ndarray) and references.ndim == 2:
        raise SimcellError("references must be a sequence of populations, not one array")
    if len(references) == 0:
        raise SimcellError("references must hold at least one population")
    reference_cells = []
    for index, reference in enumerate(references):
        cells = _as_cells(reference, f"references[{index}]", min_cells=min_cells)
        _same_dims(cells, target_cells, f"references[{index}] and target")
        reference_cells.append(cells)
    return pred_cells, target_cells, reference_cells


@register_metric("rmmd", direction="lower", level="distribution")
def rmmd(
    pred: npt.ArrayLike,
    target: npt.ArrayLike,
    references: Sequence[npt.ArrayLike],
    *,
    bandwidths: Sequence[float] | None = None,
    seed: int = 0,
    block_size: int | None = None,
    device: str = "auto",
    precision: Precision = "float32",
) -> float:
    """MMD ratio of a predicted counterfactual population (paper eq. 10 and 50).

    ``rMMD = MMD(p̂_pred, p̂*_{c→c'}) / min_γ MMD(p̂_γ, p̂*_{c→c'})``

    where ``p̂*_{c→c'}`` is the true target population, ``p̂_pred`` the predicted
    one and ``p̂_γ`` ranges over the ``references``: the populations observed in
    training (one per observed concept configuration / cell group). MMD is the
    squared, unbiased :func:`mmd`. One kernel is used for every term: unless
    ``bandwidths`` is given, the median heuristic of the **target** population
    (seed ``seed``). ``rMMD < 1`` means the prediction is closer to the target
    than the closest observed population.

    Parameters
    ----------
    pred : array-like, shape (n_pred, n_dims)
    target : array-like, shape (n_target, n_dims)
    references : sequence of array-like, each shape (n_r, n_dims)
        At least one population; every sample needs at least 2 cells.
    bandwidths, seed, block_size, device, precision
        As in :func:`mmd`.

    Returns
    -------
    float
        May be slightly negative for a perfect prediction (unbiased MMD).

    Raises
    ------
    SimcellError
        If the closest reference has MMD ``<= 0`` to the target (ratio undefined).
    """
    pred_cells, target_cells, reference_cells = _ratio_inputs(pred, target, references, min_cells=2)
    widths = _resolve_bandwidths(bandwidths, target_cells, seed)

    def distance(first: np.ndarray, second: np.ndarray) -> float:
        return mmd(
            first,
            second,
            bandwidths=widths,
            block_size=block_size,
            device=device,
            precision=precision,
        )

    return _ratio("rmmd", distance, pred_cells, target_cells, reference_cells)


@register_metric("rfid", direction="lower", level="distribution")
def rfid(
    pred: npt.ArrayLike,
    target: npt.ArrayLike,
    references: Sequence[npt.ArrayLike],
) -> float:
    """Fréchet-distance ratio (paper eq. 52-53).

    ``rFID = FID(p̂_pred, p̂*_{c→c'}) / min_γ FID(p̂_γ, p̂*_{c→c'})`` with FID the
    :func:`frechet_distance` and ``p̂_γ`` ranging over the reference populations
    observed in training.

    Parameters
    ----------
    pred : array-like, shape (n_pred, n_dims)
    target : array-like, shape (n_target, n_dims)
    references : sequence of array-like, each shape (n_r, n_dims)
        Every sample needs at least 2 cells.

    Returns
    -------
    float

    Raises
    ------
    SimcellError
        If the closest reference has FID 0 to the target.
    """
    pred_cells, target_cells, reference_cells = _ratio_inputs(pred, target, references, min_cells=2)
    return _ratio("rfid", frechet_distance, pred_cells, target_cells, reference_cells)


@register_metric("rsd", direction="lower", level="distribution")
def rsd(
    pred: npt.ArrayLike,
    target: npt.ArrayLike,
    references: Sequence[npt.ArrayLike],
    *,
    epsilon: float | None = None,
    epsilon_scale: float = 0.05,
    seed: int = 0,
    max_iter: int = 10_000,
    tol: float = 1e-8,
    device: str = "auto",
) -> float:
    """Sinkhorn-divergence ratio (paper eq. 54-55).

    ``rSD = SD_ε(p̂_pred, p̂*_{c→c'}) / min_γ SD_ε(p̂_γ, p̂*_{c→c'})`` with
    ``SD_ε`` the :func:`sinkhorn_divergence` and ``p̂_γ`` ranging over the
    reference populations observed in training. A single ``ε`` serves every
    term: unless given, ``epsilon_scale`` × the median squared pairwise distance
    of the **target** population (seeded subsample).

    Parameters
    ----------
    pred : array-like, shape (n_pred, n_dims)
    target : array-like, shape (n_target, n_dims)
    references : sequence of array-like, each shape (n_r, n_dims)
    epsilon, epsilon_scale, seed, max_iter, tol, device
        As in :func:`sinkhorn_divergence`.

    Returns
    -------
    float

    Raises
    ------
    SimcellError
        If the closest reference has divergence ``<= 0`` to the target.
    """
    pred_cells, target_cells, reference_cells = _ratio_inputs(pred, target, references, min_cells=1)
    if epsilon is None:
        if target_cells.shape[0] < 2:
            raise SimcellError("target needs at least 2 cells to derive epsilon; pass epsilon")
        epsilon = _sinkhorn_epsilon(target_cells, epsilon_scale, seed)
    _check_positive(epsilon, "epsilon")
    torch_device = _distances.resolve_device(device)

    def distance(first: np.ndarray, second: np.ndarray) -> float:
        return _sinkhorn_divergence(
            first, second, epsilon=float(epsilon), max_iter=max_iter, tol=tol, device=torch_device
        )

    return _ratio("rsd", distance, pred_cells, target_cells, reference_cells)


# ----------------------------------------------------------------------------- classification


@register_metric("knn_accuracy", direction="higher", level="classification")
def knn_accuracy(
    pred: npt.ArrayLike,
    pred_labels: npt.ArrayLike,
    reference: npt.ArrayLike,
    reference_labels: npt.ArrayLike,
    *,
    k: int = 15,
) -> float:
    """Fraction of predicted cells whose k nearest reference cells vote for their true label.

    Paper Appendix D.11 (Table S17): a Euclidean kNN classifier with ``k = 15``
    fitted on ``reference`` (uniform votes; scikit-learn breaks a tied vote
    towards the smallest label) predicts the label of each predicted cell.

    Parameters
    ----------
    pred : array-like, shape (n_cells, n_dims)
        Predicted (edited) cells.
    pred_labels : array-like, shape (n_cells,)
        The label each predicted cell should keep (e.g. its cell subtype).
    reference : array-like, shape (n_reference, n_dims)
        Labelled reference cells.
    reference_labels : array-like, shape (n_reference,)
    k : int, default 15
        Number of neighbours, ``1 <= k <= n_reference``.

    Returns
    -------
    float
        In ``[0, 1]``.
    """
    pred_cells = _as_cells(pred, "pred")
    reference_cells = _as_cells(reference, "reference")
    _same_dims(pred_cells, reference_cells, "pred and reference")
    truth = _as_labels(pred_labels, "pred_labels", pred_cells.shape[0])
    labels = _as_labels(reference_labels, "reference_labels", reference_cells.shape[0])
    if not 1 <= k <= reference_cells.shape[0]:
        raise SimcellError(f"k must lie in [1, {reference_cells.shape[0]}]; got {k}")
    classifier = KNeighborsClassifier(n_neighbors=k).fit(reference_cells, labels)
    return float(np.mean(classifier.predict(pred_cells) == truth))


def _probe(seed: int) -> Pipeline:
    """Standardised, seeded logistic-regression probe."""
    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000, random_state=seed))


def _held_out_concept_predictions(
    embedding: npt.ArrayLike, concepts: npt.ArrayLike, test_fraction: float, seed: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Fit one probe per concept on a seeded train split; return (truth, prediction) per concept."""
    cells = _as_cells(embedding, "embedding", min_cells=4)
    labels = _as_concepts(concepts, "concepts", cells.shape[0])
    _check_fraction(test_fraction, "test_fraction")
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


@register_metric("concept_accuracy", direction="higher", level="classification")
def concept_accuracy(
    embedding: npt.ArrayLike,
    concepts: npt.ArrayLike,
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
    concepts : array-like, shape (n_cells,) or (n_cells, n_concepts)
        Discrete (integer-valued) true concept labels.
    test_fraction : float, default 0.3
    seed : int, default 0
        Seed of the split and of the classifier.

    Returns
    -------
    float
        In ``[0, 1]``.
    """
    outcomes = _held_out_concept_predictions(embedding, concepts, test_fraction, seed)
    return float(np.mean([np.mean(truth == guess) for truth, guess in outcomes]))


@register_metric("concept_f1", direction="higher", level="classification")
def concept_f1(
    embedding: npt.ArrayLike,
    concepts: npt.ArrayLike,
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
    concepts : array-like, shape (n_cells,) or (n_cells, n_concepts)
        Discrete (integer-valued) true concept labels.
    test_fraction : float, default 0.3
    seed : int, default 0

    Returns
    -------
    float
        In ``[0, 1]``.
    """
    outcomes = _held_out_concept_predictions(embedding, concepts, test_fraction, seed)
    return float(
        np.mean(
            [f1_score(truth, guess, average="macro", zero_division=0) for truth, guess in outcomes]
        )
    )


def _kmeans_clusters(
    embedding: npt.ArrayLike, labels: npt.ArrayLike, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    cells = _as_cells(embedding, "embedding")
    truth = _as_labels(labels, "labels", cells.shape[0])
    n_clusters = np.unique(truth).size
    if not 2 <= n_clusters <= cells.shape[0] - 1:
        raise SimcellError(
            f"labels must take between 2 and n_cells - 1 distinct values; got {n_clusters}"
        )
    clusters = KMeans(n_clusters=n_clusters, n_init=1, random_state=seed).fit_predict(cells)
    return truth, clusters


@register_metric("nmi", direction="higher", level="classification")
def nmi(embedding: npt.ArrayLike, labels: npt.ArrayLike, *, seed: int = 0) -> float:
    """Normalised mutual information between labels and a KMeans clustering of an embedding.

    KMeans with ``k`` = number of distinct labels, one seeded k-means++ run
    (``n_init=1``, no best-of-many sweep over resolutions or seeds).

    Parameters
    ----------
    embedding : array-like, shape (n_cells, n_latent)
    labels : array-like, shape (n_cells,)
        At least 2 distinct values.
    seed : int, default 0

    Returns
    -------
    float
        In ``[0, 1]`` (arithmetic-mean normalisation).
    """
    truth, clusters = _kmeans_clusters(embedding, labels, seed)
    return float(normalized_mutual_info_score(truth, clusters))


@register_metric("ari", direction="higher", level="classification")
def ari(embedding: npt.ArrayLike, labels: npt.ArrayLike, *, seed: int = 0) -> float:
    """Adjusted Rand index between labels and a KMeans clustering of an embedding.

    Same clustering as :func:`nmi`.

    Parameters
    ----------
    embedding : array-like, shape (n_cells, n_latent)
    labels : array-like, shape (n_cells,)
    seed : int, default 0

    Returns
    -------
    float
        At most 1; about 0 for a random clustering.
    """
    truth, clusters = _kmeans_clusters(embedding, labels, seed)
    return float(adjusted_rand_score(truth, clusters))


# ----------------------------------------------------------------------------- identifiability


def _latent_pair(learned: npt.ArrayLike, true: npt.ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    learned_latents = _as_cells(learned, "learned", min_cells=3)
    true_latents = _as_cells(true, "true", min_cells=3)
    if learned_latents.shape[0] != true_latents.shape[0]:
        raise SimcellError(
            f"learned and true must describe the same cells; got {learned_latents.shape[0]} "
            f"vs {true_latents.shape[0]} rows"
        )
    for name, latents in (("learned", learned_latents), ("true", true_latents)):
        constant = np.flatnonzero(_constant_rows(latents.T))
        if constant.size:
            raise SimcellError(f"{name} latent dim {constant[0]} is constant")
    return learned_latents, true_latents


@register_metric("linear_r2", direction="higher", level="identifiability")
def linear_r2(
    learned: npt.ArrayLike,
    true: npt.ArrayLike,
    *,
    test_fraction: float = 0.3,
    seed: int = 0,
) -> float:
    """Held-out R² of a linear regression from learned to true latents, mean over true dims.

    An affine map ``true ≈ learned W + b`` is fitted by least squares on a seeded
    ``1 - test_fraction`` share of the cells and scored on the rest; the R² of
    each true dim (``1 - SS_res / SS_tot`` around the held-out mean) is averaged
    uniformly. It is 1 when the true latents are an affine function of the
    learned ones (identifiability up to an invertible linear map).

    Parameters
    ----------
    learned : array-like, shape (n_cells, n_learned)
    true : array-like, shape (n_cells, n_true)
        No constant dim.
    test_fraction : float, default 0.3
    seed : int, default 0
        Seed of the split.

    Returns
    -------
    float
        At most 1, unbounded below.
    """
    learned_latents, true_latents = _latent_pair(learned, true)
    _check_fraction(test_fraction, "test_fraction")
    train, test = train_test_split(
        np.arange(learned_latents.shape[0]), test_size=test_fraction, random_state=seed
    )
    if test.size < 2:
        raise SimcellError("linear_r2 needs at least 2 held-out cells; use more cells")
    regression = LinearRegression().fit(learned_latents[train], true_latents[train])
    predicted = regression.predict(learned_latents[test])
    residual = np.sum((true_latents[test] - predicted) ** 2, axis=0)
    total = np.sum((true_latents[test] - true_latents[test].mean(axis=0)) ** 2, axis=0)
    if np.any(total == 0):
        raise SimcellError("a true latent dim is constant on the held-out cells")
    return float(np.mean(1.0 - residual / total))


@register_metric("mcc", direction="higher", level="identifiability")
def mcc(learned: npt.ArrayLike, true: npt.ArrayLike) -> float:
    """Mean correlation coefficient after optimal one-to-one matching of latent dims.

    ``|ρ_ab|`` is the absolute Pearson correlation between learned dim ``a`` and
    true dim ``b`` over all cells; ``scipy.optimize.linear_sum_assignment`` picks
    the one-to-one matching maximising ``Σ |ρ|`` and the matched values are
    averaged. When the numbers of dims differ, ``min(n_learned, n_true)`` pairs are
    matched. Invariant to permutation, sign flip and rescaling of the learned
    dims.

    Parameters
    ----------
    learned : array-like, shape (n_cells, n_learned)
    true : array-like, shape (n_cells, n_true)
        No constant dim in either.

    Returns
    -------
    float
        In ``[0, 1]``.
    """
    learned_latents, true_latents = _latent_pair(learned, true)

    def standardise(latents: np.ndarray) -> np.ndarray:
        centred = latents - latents.mean(axis=0)
        return centred / np.linalg.norm(centred, axis=0)

    correlation = np.abs(standardise(learned_latents).T @ standardise(true_latents))
    correlation = np.clip(correlation, 0.0, 1.0)
    rows, cols = linear_sum_assignment(correlation, maximize=True)
    return float(correlation[rows, cols].mean())


# ----------------------------------------------------------------------------- concept leakage


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
    train = _as_cells(train_cells, "train_cells", min_cells=2)
    before = _as_cells(cells_before, "cells_before")
    after = _as_cells(cells_after, "cells_after")
    _same_dims(train, before, "train_cells and cells_before")
    if before.shape != after.shape:
        raise SimcellError(
            f"cells_before and cells_after must have the same shape; got {before.shape} vs "
            f"{after.shape}"
        )
    train_types = _as_labels(train_cell_types, "train_cell_types", train.shape[0])
    if np.ndim(train_concept) != 1:
        raise SimcellError(f"train_concept must be 1-D; got shape {np.shape(train_concept)}")
    concept = _as_concepts(train_concept, "train_concept", train.shape[0])[:, 0]
    test_types = _as_labels(cell_types, "cell_types", before.shape[0])
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


# ----------------------------------------------------------------------------- bootstrap


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
    _check_fraction(level, "level")
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
