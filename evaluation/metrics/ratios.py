"""Ratios of a distance to the distance of the closest observed population (paper eq. 10).

Every function here is ``fn(pred, truth, references, *, paired=False, ...) ->
float``:

``ratio = distance(pred, truth) / min_r distance(reference_r, truth)``

with the estimators of :mod:`simcell.evaluation.metrics.distribution` and one
kernel / ``ε`` for every term. ``truth`` is the true target population and the
``references`` the populations observed in training. ``paired`` applies to the
numerator only (a reference population is never paired with the truth). A
ratio below 1 means the prediction is closer to the target than the closest
observed population; compare it with the same ratio of an independent sample
of the true law (the noise floor), since every distance has sampling error.

The denominator depends on the truth and the references only, so a caller that
scores many predictions against one target passes it once computed as
``denominator=`` (a ratio function called with ``pred`` = the nearest
reference and ``denominator=1.0`` returns that distance itself); the result is
then exactly the ratio computed without it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import numpy.typing as npt

from simcell import SimcellError
from simcell.evaluation.metrics._registry import register_metric
from simcell.evaluation.metrics._validation import as_cells, check_positive, same_dims
from simcell.evaluation.metrics.distribution import (
    _FID_CELLS_PER_DIM,
    SINKHORN_EPSILON_SCALE,
    FidEstimator,
    Precision,
    _resolve_bandwidths,
    _sinkhorn_epsilon,
    frechet_distance,
    mmd,
    sinkhorn_divergence,
)

__all__ = ["competing_references", "rfid", "rmmd", "rsd"]

_RATIO_REFERENCE = (
    "1 = as close to the target as the closest observed population; noise floor: the "
    "same ratio for an independent sample of the true law"
)

Distance = Callable[[np.ndarray, np.ndarray, bool], float]


def _ratio(
    name: str,
    distance: Distance,
    pred: np.ndarray,
    truth: np.ndarray,
    references: Sequence[np.ndarray],
    paired: bool,
    denominator: float | None = None,
) -> float:
    """``distance(pred, truth, paired) / min_r distance(r, truth, False)``; the
    minimum is ``denominator`` when the caller computed it already."""
    if denominator is None:
        nearest = min(distance(reference, truth, False) for reference in references)
    else:
        nearest = float(denominator)
        if not np.isfinite(nearest):
            raise SimcellError(f"{name}: denominator must be finite; got {denominator!r}")
    if not nearest > 0:
        raise SimcellError(
            f"{name} is undefined: the closest reference population is at distance "
            f"{nearest:.3g} <= 0 from the truth"
        )
    return distance(pred, truth, paired) / nearest


def competing_references(
    metric: str, sizes: Sequence[int], n_dims: int, *, estimator: FidEstimator = "unbiased"
) -> list[int]:
    """Indices of the reference populations that may be a ratio's closest population.

    The bias-corrected FID over-corrects samples below ``2 · n_dims`` cells
    (their FID to the truth can be negative), so for ``rfid`` with the
    ``"unbiased"`` estimator only populations of at least that many cells
    compete, unless none has that many. Every population competes for the other
    ratios. :func:`rfid` applies this itself; a caller that searches the closest
    population on its own (to pass ``denominator=``) must apply it too.

    Parameters
    ----------
    metric : str
        The ratio's registered name (``"rmmd"``, ``"rfid"``, ``"rsd"``).
    sizes : sequence of int
        Cells of each reference population, as it will be compared.
    n_dims : int
        Dimensions of the compared space.
    estimator : {"unbiased", "plugin"}, default "unbiased"
        The FID estimator (``rfid`` only).

    Returns
    -------
    list of int
    """
    everyone = list(range(len(sizes)))
    if metric != "rfid" or estimator != "unbiased":
        return everyone
    enough = _FID_CELLS_PER_DIM * n_dims
    return [index for index in everyone if sizes[index] >= enough] or everyone


def _ratio_inputs(
    pred: npt.ArrayLike,
    truth: npt.ArrayLike,
    references: Sequence[npt.ArrayLike],
    *,
    min_cells: int,
    paired: bool,
) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    pred_cells = as_cells(pred, "pred", min_cells=min_cells)
    truth_cells = as_cells(truth, "truth", min_cells=min_cells)
    same_dims(pred_cells, truth_cells, "pred and truth")
    if paired and pred_cells.shape[0] != truth_cells.shape[0]:
        raise SimcellError(
            f"paired=True needs as many pred as truth rows; got {pred_cells.shape[0]} vs "
            f"{truth_cells.shape[0]}"
        )
    if isinstance(references, np.ndarray) and references.ndim == 2:
        raise SimcellError("references must be a sequence of populations, not one array")
    if len(references) == 0:
        raise SimcellError("references must hold at least one population")
    reference_cells = []
    for index, reference in enumerate(references):
        cells = as_cells(reference, f"references[{index}]", min_cells=min_cells)
        same_dims(cells, truth_cells, f"references[{index}] and truth")
        reference_cells.append(cells)
    return pred_cells, truth_cells, reference_cells


@register_metric("rmmd", direction="lower", level="distribution", reference=_RATIO_REFERENCE)
def rmmd(
    pred: npt.ArrayLike,
    truth: npt.ArrayLike,
    references: Sequence[npt.ArrayLike],
    *,
    paired: bool = False,
    bandwidths: Sequence[float] | None = None,
    seed: int = 0,
    block_size: int | None = None,
    device: str = "auto",
    precision: Precision = "float32",
    denominator: float | None = None,
) -> float:
    """MMD ratio of a predicted counterfactual population (paper eq. 10 and 50).

    ``rMMD = MMD(p̂_pred, p̂*_{c→c'}) / min_γ MMD(p̂_γ, p̂*_{c→c'})``

    where ``p̂*_{c→c'}`` is the true target population (``truth``), ``p̂_pred``
    the predicted one and ``p̂_γ`` ranges over the ``references``: the
    populations observed in training (one per observed concept configuration /
    cell group). MMD is the squared, unbiased :func:`mmd` (paired in the
    numerator when ``paired``). One kernel is used for every term: unless
    ``bandwidths`` is given, the median heuristic of the **truth** population
    (seed ``seed``).

    Parameters
    ----------
    pred : array-like, shape (n_pred, n_dims)
    truth : array-like, shape (n_truth, n_dims)
        ``n_truth = n_pred`` when ``paired``.
    references : sequence of array-like, each shape (n_r, n_dims)
        At least one population; every sample needs at least 2 cells.
    paired : bool, default False
        Row ``i`` of ``pred`` and of ``truth`` come from the same source cell.
    bandwidths, seed, block_size, device, precision
        As in :func:`mmd`.
    denominator : float, optional
        ``min_r distance(r, truth)`` when already computed (see the module
        docstring); ``references`` are then validated but not compared again.

    Returns
    -------
    float
        May be slightly negative for a perfect prediction (unbiased MMD).

    Raises
    ------
    SimcellError
        If the closest reference has MMD ``<= 0`` to the truth (ratio undefined).
    """
    pred_cells, truth_cells, reference_cells = _ratio_inputs(
        pred, truth, references, min_cells=2, paired=paired
    )
    widths = _resolve_bandwidths(bandwidths, truth_cells, seed)

    def distance(first: np.ndarray, second: np.ndarray, pairs: bool) -> float:
        return mmd(
            first,
            second,
            paired=pairs,
            bandwidths=widths,
            block_size=block_size,
            device=device,
            precision=precision,
        )

    return _ratio("rmmd", distance, pred_cells, truth_cells, reference_cells, paired, denominator)


@register_metric("rfid", direction="lower", level="distribution", reference=_RATIO_REFERENCE)
def rfid(
    pred: npt.ArrayLike,
    truth: npt.ArrayLike,
    references: Sequence[npt.ArrayLike],
    *,
    paired: bool = False,
    seed: int = 0,
    estimator: FidEstimator = "unbiased",
    denominator: float | None = None,
) -> float:
    """Fréchet-distance ratio (paper eq. 52-53).

    ``rFID = FID(p̂_pred, p̂*_{c→c'}) / min_γ FID(p̂_γ, p̂*_{c→c'})`` with FID the
    bias-corrected :func:`frechet_distance` (paired in the numerator when
    ``paired``) and ``p̂_γ`` ranging over the reference populations observed in
    training.

    Parameters
    ----------
    pred : array-like, shape (n_pred, n_dims)
    truth : array-like, shape (n_truth, n_dims)
    references : sequence of array-like, each shape (n_r, n_dims)
        Every sample needs at least 3 cells (2 for ``"plugin"``).
    paired : bool, default False
    seed : int, default 0
        Seed of the jackknife blocks.
    estimator : {"unbiased", "plugin"}, default "unbiased"
        As in :func:`frechet_distance`.
    denominator : float, optional
        ``min_r distance(r, truth)`` when already computed (see the module
        docstring); ``references`` are then validated but not compared again.

    Returns
    -------
    float

    Raises
    ------
    SimcellError
        If the closest reference has FID ``<= 0`` to the truth.
    """
    pred_cells, truth_cells, reference_cells = _ratio_inputs(
        pred, truth, references, min_cells=2 if estimator == "plugin" else 3, paired=paired
    )

    def distance(first: np.ndarray, second: np.ndarray, pairs: bool) -> float:
        return frechet_distance(first, second, paired=pairs, seed=seed, estimator=estimator)

    # the bias correction over-corrects small samples (negative FIDs), which would
    # make a tiny population the "closest": it competes only if large enough
    sizes = [cells.shape[0] for cells in reference_cells]
    allowed = competing_references("rfid", sizes, truth_cells.shape[1], estimator=estimator)
    reference_cells = [reference_cells[index] for index in allowed]
    return _ratio("rfid", distance, pred_cells, truth_cells, reference_cells, paired, denominator)


@register_metric("rsd", direction="lower", level="distribution", reference=_RATIO_REFERENCE)
def rsd(
    pred: npt.ArrayLike,
    truth: npt.ArrayLike,
    references: Sequence[npt.ArrayLike],
    *,
    paired: bool = False,
    epsilon: float | None = None,
    epsilon_scale: float = SINKHORN_EPSILON_SCALE,
    seed: int = 0,
    max_iter: int = 10_000,
    tol: float = 1e-8,
    device: str = "auto",
    denominator: float | None = None,
) -> float:
    """Sinkhorn-divergence ratio (paper eq. 54-55).

    ``rSD = SD_ε(p̂_pred, p̂*_{c→c'}) / min_γ SD_ε(p̂_γ, p̂*_{c→c'})`` with
    ``SD_ε`` the :func:`sinkhorn_divergence` (on disjoint halves of the rows in
    the numerator when ``paired``) and ``p̂_γ`` ranging over the reference
    populations observed in training. A single ``ε`` serves every term: unless
    given, ``epsilon_scale`` × the median squared pairwise distance of the
    **truth** population (seeded subsample).

    Parameters
    ----------
    pred : array-like, shape (n_pred, n_dims)
    truth : array-like, shape (n_truth, n_dims)
    references : sequence of array-like, each shape (n_r, n_dims)
    paired : bool, default False
    epsilon, epsilon_scale, seed, max_iter, tol, device
        As in :func:`sinkhorn_divergence`.
    denominator : float, optional
        ``min_r distance(r, truth)`` when already computed (see the module
        docstring); ``references`` are then validated but not compared again.

    Returns
    -------
    float

    Raises
    ------
    SimcellError
        If the closest reference has divergence ``<= 0`` to the truth.
    """
    pred_cells, truth_cells, reference_cells = _ratio_inputs(
        pred, truth, references, min_cells=2 if paired else 1, paired=paired
    )
    if epsilon is None:
        if truth_cells.shape[0] < 2:
            raise SimcellError("truth needs at least 2 cells to derive epsilon; pass epsilon")
        epsilon = _sinkhorn_epsilon(truth_cells, epsilon_scale, seed)
    check_positive(epsilon, "epsilon")

    def distance(first: np.ndarray, second: np.ndarray, pairs: bool) -> float:
        return sinkhorn_divergence(
            first,
            second,
            paired=pairs,
            epsilon=float(epsilon),
            seed=seed,
            max_iter=max_iter,
            tol=tol,
            device=device,
        )

    return _ratio("rsd", distance, pred_cells, truth_cells, reference_cells, paired, denominator)
