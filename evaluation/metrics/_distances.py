"""Numerical kernels behind the distribution-level metrics.

Private to :mod:`simcell.evaluation.metrics`: inputs arrive validated (finite
``float64`` arrays of matching width), so nothing here checks them again.

* :func:`blocked_pair_sum` sums a function of squared Euclidean distances over
  every pair of rows of two samples, tile by tile, so memory stays
  ``O(block_size**2 + n * n_dims)`` whatever the sample sizes.
* :func:`rbf_tile_sum` and :func:`euclidean_tile_sum` are the two reductions
  it is used with (MMD and energy distance).
* :func:`frechet_trace_sqrt` is the stable ``tr((Σ1 Σ2)^{1/2})``;
  :func:`scatter_without_blocks` the covariances its jackknife needs.
* :func:`matched_pair_sum` sums a kernel over the matched rows of paired samples.
* :func:`entropic_ot` is the entropic optimal-transport objective through POT,
  :func:`symmetric_log_scaling` the warm start that makes its symmetric terms fast.
"""

from __future__ import annotations

import contextlib
import functools
import math
import warnings
from collections.abc import Callable, Sequence

import numpy as np
import ot
import torch
from scipy.spatial.distance import pdist

from simcell import SimcellWarning
from simcell._device import resolve_device as _resolve_device

TileReduction = Callable[[torch.Tensor], torch.Tensor]

# Largest number of squarings used to derive one RBF bandwidth from another
# (error grows like 2**p ulp; 2**6 ulp of float32 is still ~4e-6 relative).
_MAX_SQUARINGS = 6
# Stop the symmetric Sinkhorn warm start when the potential moves less than this (units of ε).
_POTENTIAL_TOL = 1e-10


def resolve_device(device: str | torch.device) -> torch.device:
    """Turn ``"auto"`` / ``"cpu"`` / ``"cuda[:i]"`` into a :class:`torch.device`.

    Parameters
    ----------
    device : str or torch.device
        ``"auto"`` picks CUDA when available, the CPU otherwise (see
        :func:`simcell._device.resolve_device`, the one resolver).

    Returns
    -------
    torch.device
    """
    return torch.device(_resolve_device(device))


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
    scale: float = 1.0,
    refine_near: float = 0.0,
) -> float:
    """Sum ``reduce_tile(scale · d²)`` over all pairs ``(a_i, b_j)``, tile by tile.

    Each tile of ``scale · ||a_i - b_j||²`` is one matrix product of the augmented
    rows ``scale · [-2 a_i, ||a_i||², 1]`` and ``[b_j, 1, ||b_j||²]``, so the
    expansion ``||a||² + ||b||² - 2 a·b`` costs no extra pass over the tile.

    Parameters
    ----------
    a : torch.Tensor, shape (n_a, n_dims)
    b : torch.Tensor, shape (n_b, n_dims)
        Same dtype and device as ``a``; pass ``b = a`` with ``same=True`` for a
        within-sample sum.
    reduce_tile : callable
        Maps a tile of scaled squared distances, shape (rows, cols), to a float64
        scalar tensor; it may overwrite the tile.
    block_size : int
        Tile edge; peak extra memory is a few ``block_size**2`` entries.
    same : bool
        ``a`` and ``b`` are the same sample: only tiles on or above the
        diagonal are computed (off-diagonal tiles count twice) and the
        squared distance of every point to itself is set to exactly 0.
    scale : float, default 1
        Factor applied to every squared distance (e.g. ``-γ`` of an RBF kernel).
    refine_near : float, default 0
        With ``scale = 1`` only. Entries below ``refine_near · (max ||a||² + max
        ||b||²)`` over the tile, where the expansion may have lost most of its
        digits to cancellation (and may even be negative), are recomputed from
        the differences ``a_i - b_j``; afterwards every entry is ``>= 0``. This
        matters for ``sqrt(d²)`` (energy distance), not for a kernel that is flat
        at 0. ``0`` disables it.

    Returns
    -------
    float
        ``Σ_i Σ_j reduce(scale · ||a_i - b_j||²)`` accumulated in float64.
    """
    if refine_near > 0 and scale != 1.0:
        raise ValueError("refine_near needs scale = 1")
    a_sq = (a * a).sum(dim=1)
    b_sq = (b * b).sum(dim=1)
    a_aug = torch.cat(
        [a * (-2.0 * scale), (a_sq * scale)[:, None], a_sq.new_full((len(a), 1), scale)], 1
    )
    b_aug = torch.cat([b, b_sq.new_ones((len(b), 1)), b_sq[:, None]], 1)
    starts_a = range(0, a.shape[0], block_size)
    starts_b = range(0, b.shape[0], block_size)
    if refine_near > 0:
        a_max = {row: float(a_sq[row : row + block_size].max()) for row in starts_a}
        b_max = {col: float(b_sq[col : col + block_size].max()) for col in starts_b}
    total = torch.zeros((), dtype=torch.float64, device=a.device)
    for row in starts_a:
        a_rows = a_aug[row : row + block_size]
        for col in starts_b[row // block_size :] if same else starts_b:
            tile = a_rows @ b_aug[col : col + block_size].T
            on_diagonal = same and col == row
            if refine_near > 0:
                bound = refine_near * (a_max[row] + b_max[col])
                if on_diagonal or float(tile.min()) < bound:
                    _refine_near_pairs(
                        tile, a[row : row + block_size], b[col : col + block_size], bound
                    )
            if on_diagonal:
                tile.fill_diagonal_(0.0)
            tile_sum = reduce_tile(tile)
            total += tile_sum if on_diagonal or not same else 2.0 * tile_sum
    return float(total)


def _refine_near_pairs(
    sq_dist: torch.Tensor, a_rows: torch.Tensor, b_cols: torch.Tensor, bound: float
) -> None:
    """Recompute, in place, the squared distances below ``bound`` from differences."""
    rows, cols = torch.nonzero(sq_dist < bound, as_tuple=True)
    if rows.numel():
        difference = a_rows[rows] - b_cols[cols]
        sq_dist[rows, cols] = (difference * difference).sum(dim=1)


def refine_threshold(dtype: torch.dtype) -> float:
    """Relative threshold below which squared distances are recomputed exactly.

    The expansion's absolute error is about ``eps_dtype · (||a||² + ||b||²)``; a
    pair above the threshold keeps a relative error of order ``eps_dtype /
    threshold`` (about 1e-12 in float64, 1e-5 in float32).
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
    list of (factor, squarings)
        In increasing ``γ``; ``factor = γ_b / min(γ)`` and ``squarings`` is
        ``None`` where the kernel needs its own ``exp``, else the number of
        squarings of the previous kernel.
    """
    ordered = sorted(gammas)
    plan: list[tuple[float, int | None]] = []
    for index, gamma in enumerate(ordered):
        squarings: int | None = None
        if index > 0:
            power = math.log2(gamma / ordered[index - 1])
            if abs(power - round(power)) < 1e-9 and round(power) <= _MAX_SQUARINGS:
                squarings = round(power)
        plan.append((gamma / ordered[0], squarings))
    return plan


def rbf_tile_sum(plan: Sequence[tuple[float, int | None]]) -> TileReduction:
    """Reduction ``Σ_b Σ_entries exp(factor_b · t)`` over a tile ``t = -min(γ) d²``.

    Follows :func:`rbf_plan`; the tile is overwritten by the last ``exp``.

    Parameters
    ----------
    plan : sequence of (factor, squarings)

    Returns
    -------
    callable
        Tile ``-min(γ) · d²``, shape (rows, cols) -> float64 scalar tensor.
    """
    steps = [
        (factor, squarings, all(later is not None for _, later in plan[index + 1 :]))
        for index, (factor, squarings) in enumerate(plan)
    ]

    def reduce_tile(scaled_sq_dist: torch.Tensor) -> torch.Tensor:
        total = torch.zeros((), dtype=torch.float64, device=scaled_sq_dist.device)
        kernel = scaled_sq_dist
        for factor, squarings, last_exp in steps:
            if squarings is None:
                exponent = scaled_sq_dist if last_exp else scaled_sq_dist.clone()
                kernel = (exponent if factor == 1.0 else exponent.mul_(factor)).exp_()
            else:
                for _ in range(squarings):
                    kernel = kernel.square_()
            total += kernel.sum(dtype=torch.float64)
        return total

    return reduce_tile


def euclidean_tile_sum(sq_dist: torch.Tensor) -> torch.Tensor:
    """Reduction ``Σ_entries sqrt(d²)`` over a tile (overwrites the tile).

    The entries must be ``>= 0`` (``blocked_pair_sum(..., refine_near > 0)``
    guarantees it).

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


def psd_factor(cov: np.ndarray) -> np.ndarray:
    """A factor ``R`` with ``cov = R Rᵀ``: Cholesky, or the symmetric root when singular.

    Parameters
    ----------
    cov : ndarray, shape (n_dims, n_dims)
        Symmetric positive semi-definite.

    Returns
    -------
    ndarray, shape (n_dims, n_dims)
    """
    try:
        return np.linalg.cholesky(cov)
    except np.linalg.LinAlgError:
        return sqrtm_psd(cov)


def factored_trace_sqrt(factor: np.ndarray, cov: np.ndarray) -> float:
    """``tr((Σ1 Σ2)^{1/2})`` for ``Σ1 = R Rᵀ`` given by its factor ``R`` (see
    :func:`frechet_trace_sqrt`): ``Σ sqrt(eig(Rᵀ Σ2 R))``, clipped at 0.

    Parameters
    ----------
    factor : ndarray, shape (n_dims, n_dims)
        ``R``, e.g. from :func:`psd_factor`.
    cov : ndarray, shape (n_dims, n_dims)
        ``Σ2``, symmetric positive semi-definite.

    Returns
    -------
    float
    """
    middle = factor.T @ cov @ factor
    middle = 0.5 * (middle + middle.T)
    return float(np.sqrt(np.clip(np.linalg.eigvalsh(middle), 0.0, None)).sum())


def frechet_trace_sqrt(cov1: np.ndarray, cov2: np.ndarray) -> float:
    """``tr((Σ1 Σ2)^{1/2})`` from the eigenvalues of a symmetric matrix similar to ``Σ1 Σ2``.

    With any factor ``Σ1 = R Rᵀ``, ``Σ1 Σ2 = R (Rᵀ Σ2 R) R⁻¹`` (or, for singular
    ``Σ1``, the same non-zero spectrum) is similar to the symmetric PSD matrix
    ``Rᵀ Σ2 R``, so ``tr((Σ1 Σ2)^{1/2}) = Σ sqrt(eig(Rᵀ Σ2 R))``. ``R`` is the
    Cholesky factor when ``Σ1`` is positive definite (cheap: the whole
    computation needs eigenvalues only), else the symmetric square root from
    ``eigh``. Rounding negatives are clipped at 0, which keeps the result real
    and finite on singular covariances. The value is symmetric in its
    arguments (``Σ1 Σ2`` and ``Σ2 Σ1`` have one spectrum), so a caller comparing
    many ``Σ2`` with one ``Σ1`` factors ``Σ1`` once (:func:`psd_factor`,
    :func:`factored_trace_sqrt`).

    Parameters
    ----------
    cov1, cov2 : ndarray, shape (n_dims, n_dims)
        Symmetric positive semi-definite.

    Returns
    -------
    float
    """
    return factored_trace_sqrt(psd_factor(cov1), cov2)


@contextlib.contextmanager
def one_blas_thread():
    """Run small dense linear algebra (``n_dims``² matrices) on one BLAS thread.

    A threaded 128 × 128 Cholesky or eigendecomposition gains nothing from a
    second thread and, where the cores are busy, waits for it: measured 30-50×
    slower on a loaded 2-core machine (37 ms vs 0.7 ms per Cholesky). The
    result does not depend on the thread count beyond rounding.
    """
    with _blas_controller().limit(limits=1, user_api="blas"):
        yield


@functools.lru_cache(maxsize=1)
def _blas_controller():
    # threadpoolctl ships with scikit-learn (a dependency); the controller
    # inspects the loaded libraries once, so entering a limit is cheap
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()


def squared_distance_matrix(source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Full matrix of squared Euclidean distances (the OT cost).

    Parameters
    ----------
    source : torch.Tensor, shape (n, n_dims)
    target : torch.Tensor, shape (m, n_dims)
        Pass ``target = source`` for a within-sample cost, which is then made
        exactly symmetric with a zero diagonal.

    Returns
    -------
    torch.Tensor, shape (n, m)
    """
    cost = (
        (source * source).sum(dim=1)[:, None]
        + (target * target).sum(dim=1)[None, :]
        - 2.0 * source @ target.T
    ).clamp_min_(0.0)
    if source is target:
        cost = 0.5 * (cost + cost.T)
        cost.fill_diagonal_(0.0)
    return cost


def uniform_log_weights(n_points: int, like: torch.Tensor) -> torch.Tensor:
    """``log(1 / n)`` repeated, shape (n_points,), dtype and device of ``like``."""
    return torch.full((n_points,), -math.log(n_points), dtype=like.dtype, device=like.device)


def symmetric_log_scaling(
    cost: torch.Tensor, log_weights: torch.Tensor, *, epsilon: float, max_iter: int, tol: float
) -> torch.Tensor:
    """Log-scaling of the symmetric problem ``OT_ε(α, α)`` by averaged Sinkhorn updates.

    Alternating Sinkhorn stalls on a symmetric problem (the plan is close to the
    identity). The averaged fixed point of Feydy et al. (2019),
    ``f <- ½ (f + softmin_ε(C, log α + f / ε))``, converges in a few dozen
    steps; its result warm-starts POT's ``sinkhorn_log``, which then only has to
    confirm convergence.

    Parameters
    ----------
    cost : torch.Tensor, shape (n, n)
        Symmetric cost.
    log_weights : torch.Tensor, shape (n,)
    epsilon : float
    max_iter : int
    tol : float
        Stop once the L2 marginal violation is below ``tol`` (POT's criterion)
        or the potential no longer moves.

    Returns
    -------
    torch.Tensor, shape (n,)
        ``log α + f / ε``: POT's ``u`` (and ``v``) for this problem.
    """
    scaled_cost = cost / epsilon
    weights = log_weights.exp()
    potential = torch.zeros_like(log_weights)  # f / ε
    for iteration in range(max_iter):
        update = 0.5 * (
            potential - torch.logsumexp((log_weights + potential)[None, :] - scaled_cost, dim=1)
        )
        if iteration % 10 == 0:  # checks synchronise a GPU: every 10th step, as POT does
            scaling = log_weights + update
            marginal = (scaling[:, None] + scaling[None, :] - scaled_cost).exp().sum(dim=0)
            violation = torch.linalg.vector_norm(marginal - weights)
            step = (update - potential).abs().max()
            if float(violation) < tol or float(step) < _POTENTIAL_TOL:
                return scaling
        potential = update
    return log_weights + potential


def entropic_ot(
    cost: torch.Tensor,
    log_source: torch.Tensor,
    log_target: torch.Tensor,
    *,
    epsilon: float,
    max_iter: int,
    tol: float,
    warmstart: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> float:
    """Entropic OT objective between two weighted point clouds, solved by POT.

    ``OT_ε(α, β) = min_P <P, C> + ε KL(P | α ⊗ β)`` over couplings ``P`` of the
    weights, solved by log-domain Sinkhorn (``ot.bregman.sinkhorn_log``, which
    warns when ``max_iter`` is reached first); ``KL`` uses the exact log-plan
    ``log u_i - C_ij / ε + log v_j``.

    Parameters
    ----------
    cost : torch.Tensor, shape (n, m)
    log_source : torch.Tensor, shape (n,)
        Log-weights of the source points (summing to 1 once exponentiated).
    log_target : torch.Tensor, shape (m,)
    epsilon : float
        Entropic regularisation, same units as the cost.
    max_iter : int
    tol : float
        Tolerance on the L2 marginal violation (POT's ``stopThr``).
    warmstart : (torch.Tensor, torch.Tensor), optional
        Initial log-scalings ``(u, v)``, shapes (n,) and (m,).

    Returns
    -------
    float
    """
    with warnings.catch_warnings():
        # replaced below by a warning that says how far from converged it stopped
        warnings.filterwarnings("ignore", "Sinkhorn did not converge", UserWarning)
        plan, log = ot.bregman.sinkhorn_log(
            log_source.exp(),
            log_target.exp(),
            cost,
            epsilon,
            numItermax=max_iter,
            stopThr=tol,
            log=True,
            warmstart=warmstart,
        )
    if log["niter"] >= max_iter - 1 and log["err"]:
        error = float(log["err"][-1])
        if error > tol:
            warnings.warn(
                f"Sinkhorn stopped after {max_iter} iterations with a marginal error of "
                f"{error:.2g} (tolerance {tol:.2g}); the value is approximate",
                SimcellWarning,
                stacklevel=2,
            )
    log_plan = log["log_u"][:, None] - cost / epsilon + log["log_v"][None, :]
    log_product = log_source[:, None] + log_target[None, :]
    value = (plan * cost).sum() + epsilon * (plan * (log_plan - log_product)).sum()
    return float(value)


def matched_pair_sum(
    a: torch.Tensor, b: torch.Tensor, reduce_tile: TileReduction, *, scale: float = 1.0
) -> float:
    """Sum ``reduce_tile(scale · ||a_i - b_i||²)`` over the matched rows ``i`` only.

    The squared distances come from the differences ``a_i - b_i`` (no
    cancellation), so every entry is ``>= 0`` before scaling.

    Parameters
    ----------
    a, b : torch.Tensor, shape (n, n_dims)
    reduce_tile : callable
        As in :func:`blocked_pair_sum`; here it receives one row of ``n`` entries.
    scale : float, default 1

    Returns
    -------
    float
        ``Σ_i reduce(scale · ||a_i - b_i||²)`` accumulated in float64.
    """
    difference = a - b
    sq_dist = (difference * difference).sum(dim=1)
    return float(reduce_tile((sq_dist * scale)[None, :]))


def scatter_without_blocks(
    centred: np.ndarray, blocks: Sequence[np.ndarray]
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Unbiased covariance of a sample, and of the sample without each block of rows.

    Parameters
    ----------
    centred : ndarray, shape (n, n_dims)
        The sample centred on its mean (only the column sums' rounding is lost).
    blocks : sequence of ndarray of int
        Disjoint row indices; every complement must hold at least 2 rows.

    Returns
    -------
    cov : ndarray, shape (n_dims, n_dims)
    cov_without : list of ndarray, each shape (n_dims, n_dims)
        ``cov_without[g]`` is the covariance (``ddof=1``) of the rows outside
        ``blocks[g]``, from the full scatter minus the block's (one pass each).
    """
    n = centred.shape[0]
    scatter = centred.T @ centred
    total = centred.sum(axis=0)
    cov = scatter / (n - 1)
    cov_without = []
    for block in blocks:
        rows = centred[block]
        kept = n - rows.shape[0]
        kept_sum = total - rows.sum(axis=0)
        kept_scatter = scatter - rows.T @ rows - np.outer(kept_sum, kept_sum) / kept
        cov_without.append(kept_scatter / (kept - 1))
    return cov, cov_without
