"""Numerical kernels behind the distribution-level metrics.

Private to :mod:`simcell.evaluation.metrics`: inputs arrive validated (finite
``float64`` arrays of matching width), so nothing here checks them again.

* :func:`blocked_pair_sum` sums a function of squared Euclidean distances over
  every pair of rows of two samples, tile by tile, so memory stays
  ``O(block_size**2 + n * n_dims)`` whatever the sample sizes.
* :func:`rbf_tile_sum` and :func:`euclidean_tile_sum` are the two reductions
  it is used with (MMD and energy distance).
* :func:`frechet_trace_sqrt` is the stable ``tr((Σ1 Σ2)^{1/2})``.
* :func:`entropic_ot` is the entropic optimal-transport objective through POT.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import ot
import torch
from scipy.spatial.distance import pdist

from simcell import SimcellError

TileReduction = Callable[[torch.Tensor], torch.Tensor]

# Largest number of squarings used to derive one RBF bandwidth from another
# (error grows like 2**p ulp; 2**6 ulp of float32 is still ~4e-6 relative).
_MAX_SQUARINGS = 6
# Stop the averaged Sinkhorn warm start when no potential moves by more than this (units of ε).
_POTENTIAL_TOL = 1e-10


def resolve_device(device: str | torch.device) -> torch.device:
    """Turn ``"auto"`` / ``"cpu"`` / ``"cuda[:i]"`` into a :class:`torch.device`.

    Parameters
    ----------
    device : str or torch.device
        ``"auto"`` picks CUDA when available, the CPU otherwise.

    Returns
    -------
    torch.device
    """
    if isinstance(device, str) and device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise SimcellError(
            f"device must be 'auto', 'cpu' or 'cuda[:i]'; got {device!r}"
        ) from error
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise SimcellError(f"device={device!r} was requested but CUDA is not available")
    return resolved


def default_block_size(device: torch.device) -> int:
    """Tile edge that is fast on ``device``: small tiles stay in CPU cache, big ones fill a GPU."""
    return 4096 if device.type == "cuda" else 1024


def subsample_rows(sample: np.ndarray, *, max_cells: int, seed: int) -> np.ndarray:
    """Return at most ``max_cells`` rows of ``sample``, chosen without replacement.

    Parameters
    ----------
    sample : ndarray, shape (n_cells, n_dims)
    max_cells : int
    seed : int
        Seed of the row choice; the whole sample is returned (in order) when it
        has at most ``max_cells`` rows.

    Returns
    -------
    ndarray, shape (min(n_cells, max_cells), n_dims)
    """
    if sample.shape[0] <= max_cells:
        return sample
    rows = np.random.default_rng(seed).choice(sample.shape[0], size=max_cells, replace=False)
    return sample[np.sort(rows)]


def median_pairwise_distance(
    sample: np.ndarray, *, squared: bool, max_cells: int, seed: int
) -> float:
    """Median (squared) Euclidean distance over distinct pairs of a seeded subsample.

    Parameters
    ----------
    sample : ndarray, shape (n_cells, n_dims)
        At least two rows.
    squared : bool
        Median of ``||z_i - z_j||²`` instead of ``||z_i - z_j||`` (the two differ
        when the median falls between two pairs).
    max_cells : int
        Size of the subsample the median is estimated on.
    seed : int
        Seed of the subsample.

    Returns
    -------
    float
    """
    rows = subsample_rows(sample, max_cells=max_cells, seed=seed)
    return float(np.median(pdist(rows, metric="sqeuclidean" if squared else "euclidean")))


def to_centred_tensors(
    samples: Sequence[np.ndarray], *, dtype: torch.dtype, device: torch.device
) -> list[torch.Tensor]:
    """Centre samples on their pooled mean (in float64) and move them to ``device``.

    Distances are translation invariant; centring keeps ``||x||²`` small so that the
    expansion ``||x||² + ||y||² - 2 x·y`` loses little to cancellation.

    Parameters
    ----------
    samples : sequence of ndarray, each shape (n_i, n_dims)
    dtype : torch.dtype
    device : torch.device

    Returns
    -------
    list of torch.Tensor, each shape (n_i, n_dims)
    """
    n_total = sum(sample.shape[0] for sample in samples)
    centre = sum(sample.sum(axis=0) for sample in samples) / n_total
    return [torch.as_tensor(sample - centre, dtype=dtype, device=device) for sample in samples]


def blocked_pair_sum(
    a: torch.Tensor,
    b: torch.Tensor,
    reduce_tile: TileReduction,
    *,
    block_size: int,
    same: bool,
    refine_near: float = 0.0,
) -> float:
    """Sum ``reduce_tile`` of squared distances over all pairs ``(a_i, b_j)``, tile by tile.

    Parameters
    ----------
    a : torch.Tensor, shape (n_a, n_dims)
    b : torch.Tensor, shape (n_b, n_dims)
        Same dtype and device as ``a``; pass ``b = a`` with ``same=True`` for a
        within-sample sum.
    reduce_tile : callable
        Maps a tile of squared distances, shape (rows, cols), to a float64
        scalar tensor; it may overwrite the tile.
    block_size : int
        Tile edge; peak extra memory is a few ``block_size**2`` entries.
    same : bool
        ``a`` and ``b`` are the same sample: only tiles on or above the
        diagonal are computed (off-diagonal tiles count twice) and the
        squared distance of every point to itself is set to exactly 0.
    refine_near : float, default 0
        Pairs with ``d² < refine_near · (||a_i||² + ||b_j||²)``, where the
        expansion ``||a||² + ||b||² - 2 a·b`` has lost most of its digits to
        cancellation, are recomputed from their difference ``a_i - b_j``; this
        matters for ``sqrt(d²)`` (energy distance), not for a kernel that is flat
        at 0. ``0`` disables it.

    Returns
    -------
    float
        ``Σ_i Σ_j reduce(||a_i - b_j||²)`` accumulated in float64.
    """
    a_sq = (a * a).sum(dim=1)
    b_sq = (b * b).sum(dim=1)
    total = torch.zeros((), dtype=torch.float64, device=a.device)
    for row in range(0, a.shape[0], block_size):
        a_rows = a[row : row + block_size]
        a_rows_sq = a_sq[row : row + block_size, None]
        for col in range(row if same else 0, b.shape[0], block_size):
            sq_dist = torch.addmm(a_rows_sq, a_rows, b[col : col + block_size].T, alpha=-2.0)
            sq_dist.add_(b_sq[None, col : col + block_size]).clamp_min_(0.0)
            if refine_near > 0:
                _refine_near_pairs(
                    sq_dist, a_rows, b[col : col + block_size], a_rows_sq, b_sq, col, refine_near
                )
            if same and col == row:
                sq_dist.fill_diagonal_(0.0)
            tile_sum = reduce_tile(sq_dist)
            total += 2.0 * tile_sum if same and col != row else tile_sum
    return float(total)


def _refine_near_pairs(
    sq_dist: torch.Tensor,
    a_rows: torch.Tensor,
    b_cols: torch.Tensor,
    a_rows_sq: torch.Tensor,
    b_sq: torch.Tensor,
    col: int,
    threshold: float,
) -> None:
    """Recompute, in place, the tile entries the norm expansion got inaccurate."""
    norms = a_rows_sq + b_sq[None, col : col + b_cols.shape[0]]
    rows, cols = torch.nonzero(sq_dist < threshold * norms, as_tuple=True)
    if rows.numel():
        difference = a_rows[rows] - b_cols[cols]
        sq_dist[rows, cols] = (difference * difference).sum(dim=1)


def refine_threshold(dtype: torch.dtype) -> float:
    """Relative threshold below which squared distances are recomputed exactly.

    The expansion's absolute error is about ``eps_dtype · (||a||² + ||b||²)``; a
    pair above the threshold keeps a relative error below ``eps_dtype / threshold``
    (about 1e-12 in float64, 6e-6 in float32).
    """
    return 1e-4 if dtype == torch.float64 else 1e-2


def rbf_plan(gammas: Sequence[float]) -> list[tuple[float, int | None]]:
    """Order RBF precisions so that most kernels come from squaring the previous one.

    ``exp(-γ' d²) = exp(-γ d²) ** (2**p)`` when ``γ' = 2**p γ``; a squaring is
    several times cheaper than an ``exp``. With the default bandwidths
    (median × {0.5, 1, 2}) one ``exp`` and four squarings give all three kernels.

    Parameters
    ----------
    gammas : sequence of float
        Precisions ``γ_b = 1 / (2 σ_b²)``, all positive.

    Returns
    -------
    list of (gamma, squarings)
        In increasing ``gamma``; ``squarings`` is ``None`` where the kernel needs
        its own ``exp``, else the number of squarings of the previous kernel.
    """
    plan: list[tuple[float, int | None]] = []
    previous: float | None = None
    for gamma in sorted(gammas):
        squarings: int | None = None
        if previous is not None:
            power = math.log2(gamma / previous)
            if abs(power - round(power)) < 1e-9 and round(power) <= _MAX_SQUARINGS:
                squarings = round(power)
        plan.append((gamma, squarings))
        previous = gamma
    return plan


def rbf_tile_sum(plan: Sequence[tuple[float, int | None]]) -> TileReduction:
    """Reduction ``Σ_b Σ_entries exp(-γ_b d²)`` over a tile, following :func:`rbf_plan`.

    Parameters
    ----------
    plan : sequence of (gamma, squarings)

    Returns
    -------
    callable
        Tile of squared distances, shape (rows, cols) -> float64 scalar tensor.
    """

    def reduce_tile(sq_dist: torch.Tensor) -> torch.Tensor:
        total = torch.zeros((), dtype=torch.float64, device=sq_dist.device)
        kernel = sq_dist
        for gamma, squarings in plan:
            if squarings is None:
                kernel = torch.mul(sq_dist, -gamma).exp_()
            else:
                for _ in range(squarings):
                    kernel = kernel.square_()
            total += kernel.sum(dtype=torch.float64)
        return total

    return reduce_tile


def euclidean_tile_sum(sq_dist: torch.Tensor) -> torch.Tensor:
    """Reduction ``Σ_entries sqrt(d²)`` over a tile (overwrites the tile).

    Parameters
    ----------
    sq_dist : torch.Tensor, shape (rows, cols)

    Returns
    -------
    torch.Tensor
        float64 scalar.
    """
    return sq_dist.sqrt_().sum(dtype=torch.float64)


def sqrtm_psd(cov: np.ndarray) -> np.ndarray:
    """Symmetric square root of a positive semi-definite matrix.

    Parameters
    ----------
    cov : ndarray, shape (n_dims, n_dims)
        Symmetric; eigenvalues below 0 (rounding) are clipped to 0.

    Returns
    -------
    ndarray, shape (n_dims, n_dims)
    """
    eigenvalues, eigenvectors = np.linalg.eigh(cov)
    return (eigenvectors * np.sqrt(np.clip(eigenvalues, 0.0, None))) @ eigenvectors.T


def frechet_trace_sqrt(cov1: np.ndarray, cov2: np.ndarray) -> float:
    """``tr((Σ1 Σ2)^{1/2})`` computed as ``tr((Σ1^{1/2} Σ2 Σ1^{1/2})^{1/2})``.

    ``Σ1 Σ2`` is similar to the symmetric PSD matrix ``Σ1^{1/2} Σ2 Σ1^{1/2}``, so
    both have the same non-negative eigenvalues; the symmetric form is solved with
    ``eigh`` and rounding negatives are clipped at 0, which keeps the result real
    and finite on singular covariances.

    Parameters
    ----------
    cov1, cov2 : ndarray, shape (n_dims, n_dims)
        Symmetric positive semi-definite.

    Returns
    -------
    float
    """
    root1 = sqrtm_psd(cov1)
    middle = root1 @ cov2 @ root1
    middle = 0.5 * (middle + middle.T)
    return float(np.sqrt(np.clip(np.linalg.eigvalsh(middle), 0.0, None)).sum())


def _averaged_log_scalings(
    cost: torch.Tensor,
    log_source: torch.Tensor,
    log_target: torch.Tensor,
    *,
    epsilon: float,
    max_iter: int,
    tol: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Dual potentials of ``OT_ε`` by averaged (symmetric) Sinkhorn updates.

    Plain alternating Sinkhorn stalls when the plan is close to a permutation,
    which is the case for ``OT_ε(α, α)`` and for a prediction close to its
    target. The averaged updates of Feydy et al. (2019),
    ``f <- ½ (f + softmin_ε(C, log β + g / ε))`` and the same for ``g``, converge
    in a few dozen to a few hundred steps; their result warm-starts POT's
    ``sinkhorn_log``, which then only has to confirm convergence.

    Parameters
    ----------
    cost : torch.Tensor, shape (n, m)
    log_source : torch.Tensor, shape (n,)
        Log-weights of the source points.
    log_target : torch.Tensor, shape (m,)
    epsilon : float
    max_iter : int
    tol : float
        Stop once the L2 violation of the target marginal is below ``tol`` (the
        criterion POT's ``sinkhorn_log`` checks) or no potential moves.

    Returns
    -------
    (torch.Tensor, torch.Tensor), shapes (n,) and (m,)
        The log-scalings ``log α + f / ε`` and ``log β + g / ε`` (POT's ``u``, ``v``).
    """
    scaled_cost = cost / epsilon
    target_weights = log_target.exp()
    f = torch.zeros_like(log_source)  # potentials in units of ε
    g = torch.zeros_like(log_target)
    for iteration in range(max_iter):
        f_next = 0.5 * (f - torch.logsumexp((log_target + g)[None, :] - scaled_cost, dim=1))
        g_next = 0.5 * (g - torch.logsumexp((log_source + f)[:, None] - scaled_cost, dim=0))
        if iteration % 10 == 0:  # checks synchronise a GPU: every 10th step, as POT does
            step = torch.maximum((f_next - f).abs().max(), (g_next - g).abs().max())
            log_plan = (log_source + f_next)[:, None] + (log_target + g_next)[None, :]
            marginal = (log_plan - scaled_cost).exp().sum(dim=0)
            violation = torch.linalg.vector_norm(marginal - target_weights)
            if float(step) < _POTENTIAL_TOL or float(violation) < tol:
                return log_source + f_next, log_target + g_next
        f, g = f_next, g_next
    return log_source + f, log_target + g


def entropic_ot(
    source: torch.Tensor,
    target: torch.Tensor,
    *,
    epsilon: float,
    max_iter: int,
    tol: float,
) -> float:
    """Entropic OT between two uniform point clouds, squared Euclidean cost.

    ``OT_ε(α, β) = min_P <P, C> + ε KL(P | α ⊗ β)`` over couplings ``P`` of the
    uniform weights, solved by log-domain Sinkhorn (``ot.bregman.sinkhorn_log``)
    warm-started from averaged updates (:func:`_averaged_log_scalings`); ``KL``
    uses the exact log-plan ``log u_i - C_ij / ε + log v_j``.

    Parameters
    ----------
    source : torch.Tensor, shape (n, n_dims)
    target : torch.Tensor, shape (m, n_dims)
        float64, same device as ``source``; pass ``target = source`` for ``OT_ε(α, α)``.
    epsilon : float
        Entropic regularisation, same units as the cost.
    max_iter : int
    tol : float
        Tolerance on the L2 marginal violation (POT's ``stopThr``).

    Returns
    -------
    float
    """
    same = source is target
    cost = (
        (source * source).sum(dim=1)[:, None]
        + (target * target).sum(dim=1)[None, :]
        - 2.0 * source @ target.T
    ).clamp_min_(0.0)
    if same:
        cost.fill_diagonal_(0.0)
        cost = 0.5 * (cost + cost.T)
    weights_source = torch.full(
        (source.shape[0],), 1.0 / source.shape[0], dtype=cost.dtype, device=cost.device
    )
    weights_target = torch.full(
        (target.shape[0],), 1.0 / target.shape[0], dtype=cost.dtype, device=cost.device
    )
    log_source, log_target = torch.log(weights_source), torch.log(weights_target)
    warmstart = _averaged_log_scalings(
        cost, log_source, log_target, epsilon=epsilon, max_iter=max_iter, tol=tol
    )
    plan, log = ot.bregman.sinkhorn_log(
        weights_source,
        weights_target,
        cost,
        epsilon,
        numItermax=max_iter,
        stopThr=tol,
        log=True,
        warmstart=warmstart,
    )
    log_plan = log["log_u"][:, None] - cost / epsilon + log["log_v"][None, :]
    log_product = log_source[:, None] + log_target[None, :]
    value = (plan * cost).sum() + epsilon * (plan * (log_plan - log_product)).sum()
    return float(value)
