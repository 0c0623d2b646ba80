"""CLIPR: a causal matrix read from a drift model's perturbation responses.

For a linear drift f_k(x) = A x + b + c_k, the fixed point x*_k of perturbation
k satisfies A x*_k + b + c_k = 0, so the drift at the origin is
f_k(0) = b + c_k = −A x*_k. Stacking K perturbations as columns,

    F₀ = −A X*   =>   Â = −F₀ · pinv(X*),
    b̂ = −Â x*_ctrl,   ĉ_k = −Â (x*_k − x*_ctrl),

which identifies A when the fixed points span R^d (K ≥ d). With a Tikhonov
weight λ > 0, pinv(X*) is replaced by X*ᵀ (X* X*ᵀ + λ I)⁻¹.

What it recovers depends on what the drift is. For the true drift it is A.
For the **score** of the stationary law N(μ_k, Σ) (what denoising score
matching learns), f_k(x) = −Σ⁻¹(x − μ_k), so f_k(0) = Σ⁻¹ μ_k and x*_k = μ_k:
CLIPR returns −Σ⁻¹, a symmetric matrix, not A (tested).

Reference: Lorch et al., *Latent causal diffusions for single-cell
perturbation modeling* (2026).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from simcell import SimcellError

__all__ = [
    "CliprEstimate",
    "clipr",
    "clipr_from_drift",
    "differential_expression_matrix",
    "find_fixed_points",
]

Drift = Callable[[np.ndarray, np.ndarray], np.ndarray]


@dataclass(frozen=True, eq=False)
class CliprEstimate:
    """The linear drift CLIPR reads from perturbation responses.

    Attributes
    ----------
    drift_matrix : ndarray, shape (d, d)
        Â; ``Â[i, j]`` estimates the direct effect of program j on program i.
    bias : ndarray, shape (d,)
        b̂ (NaN when no control fixed point was given).
    shifts : ndarray, shape (K, d)
        ĉ_k per perturbation (NaN when no control fixed point was given).
    """

    drift_matrix: np.ndarray
    bias: np.ndarray
    shifts: np.ndarray


def _matrix(value, name: str, d: int | None = None) -> np.ndarray:
    array = np.asarray(value, dtype=np.float64)
    if array.ndim != 2 or (d is not None and array.shape[1] != d):
        raise SimcellError(f"{name} must have shape (K, {d or 'd'}), got {array.shape}")
    if not np.isfinite(array).all():
        raise SimcellError(f"{name} holds NaN or infinite values")
    return array


def clipr(
    drift_at_origin: np.ndarray,
    fixed_points: np.ndarray,
    control_fixed_point: np.ndarray | None = None,
    *,
    tikhonov: float = 0.0,
) -> CliprEstimate:
    """Â = −F₀ · pinv(X*) from the drift at the origin and the fixed points.

    Parameters
    ----------
    drift_at_origin : ndarray, shape (K, d)
        f_k(0) of each perturbation k (rows).
    fixed_points : ndarray, shape (K, d)
        x*_k with f_k(x*_k) = 0 (rows).
    control_fixed_point : ndarray, shape (d,), optional
        x*_ctrl, for b̂ and ĉ_k.
    tikhonov : float
        λ ≥ 0: pinv(X*) -> X*ᵀ (X* X*ᵀ + λ I)⁻¹ (0: the Moore–Penrose pseudo-inverse).

    Returns
    -------
    CliprEstimate
    """
    fixed = _matrix(fixed_points, "fixed_points")
    d = fixed.shape[1]
    f0 = _matrix(drift_at_origin, "drift_at_origin", d)
    if f0.shape != fixed.shape:
        raise SimcellError(f"drift_at_origin {f0.shape} and fixed_points {fixed.shape} differ")
    if not (np.isfinite(tikhonov) and tikhonov >= 0):
        raise SimcellError(f"tikhonov must be finite and >= 0, got {tikhonov}")
    columns = fixed.T  # X*: (d, K)
    if tikhonov > 0:
        inverse = np.linalg.solve(columns @ columns.T + tikhonov * np.eye(d), columns).T
    else:
        inverse = np.linalg.pinv(columns)  # (K, d)
    drift_matrix = -f0.T @ inverse
    if control_fixed_point is None:
        return CliprEstimate(
            drift_matrix=drift_matrix,
            bias=np.full(d, np.nan),
            shifts=np.full(fixed.shape, np.nan),
        )
    control = _matrix(np.reshape(control_fixed_point, (1, -1)), "control_fixed_point", d)[0]
    return CliprEstimate(
        drift_matrix=drift_matrix,
        bias=-drift_matrix @ control,
        shifts=-(fixed - control) @ drift_matrix.T,
    )


def find_fixed_points(
    drift: Drift,
    indicators: np.ndarray,
    *,
    start: np.ndarray,
    step: float = 0.05,
    n_steps: int = 2000,
    tol: float = 1e-6,
) -> np.ndarray:
    """Fixed points of f(·, u) by following the flow dx/dt = f(x, u) (Euler steps).

    Parameters
    ----------
    drift : callable
        ``drift(x, indicators) -> f``, arrays of shape (K, d), (K, p) -> (K, d).
    indicators : ndarray, shape (K, p)
        One perturbation per row.
    start : ndarray, shape (d,) or (K, d)
        Initial points.
    step, n_steps, tol : float, int, float
        Euler step, iteration budget and the max-norm of f at which a row stops.

    Returns
    -------
    ndarray, shape (K, d)

    Raises
    ------
    SimcellError
        If the flow diverges (non-finite values).
    """
    indicators = np.asarray(indicators, dtype=np.float64)
    start = np.asarray(start, dtype=np.float64)
    x = np.array(np.broadcast_to(start, (indicators.shape[0], start.shape[-1])))
    for _ in range(n_steps):
        f = np.asarray(drift(x, indicators), dtype=np.float64)
        if not np.isfinite(f).all():
            raise SimcellError("the drift's flow diverged while seeking fixed points")
        if np.abs(f).max() < tol:
            break
        with np.errstate(over="ignore", invalid="ignore"):  # divergence is caught above
            x = x + step * f
    return x


def clipr_from_drift(
    drift: Drift,
    perturbations: np.ndarray,
    *,
    start: np.ndarray,
    tikhonov: float = 0.0,
    step: float = 0.05,
    n_steps: int = 2000,
) -> CliprEstimate:
    """CLIPR on a drift model: fixed points of the control and each perturbation by
    following the flow from ``start``, f_k at the origin, then :func:`clipr`.

    Parameters
    ----------
    drift : callable
        ``drift(x, indicators)``, (K, d), (K, p) -> (K, d).
    perturbations : ndarray, shape (K, p)
        Indicators of the single perturbations (the control is all zeros).
    start : ndarray, shape (d,)
        Where the flow starts (e.g. the training cells' mean).
    """
    perturbations = np.asarray(perturbations, dtype=np.float64)
    control = np.zeros((1, perturbations.shape[1]))
    queries = np.vstack([control, perturbations])
    fixed = find_fixed_points(drift, queries, start=start, step=step, n_steps=n_steps)
    origin = np.zeros((queries.shape[0], fixed.shape[1]))
    f0 = np.asarray(drift(origin, queries), dtype=np.float64)
    return clipr(f0[1:], fixed[1:], fixed[0], tikhonov=tikhonov)


def differential_expression_matrix(
    x: np.ndarray, indicators: np.ndarray, *, programs: np.ndarray | None = None
) -> np.ndarray:
    """The naive causal estimate: column k = mean of cells perturbed on k (alone) minus
    the control mean, i.e. the **total** effect −A⁻¹ c_k of perturbing k.

    Parameters
    ----------
    x : ndarray, shape (n_cells, d)
    indicators : ndarray, shape (n_cells, d)
        Perturbation indicators (column k: program k perturbed).
    programs : ndarray of int, optional
        The single perturbations to estimate (default: every one observed alone).

    Returns
    -------
    ndarray, shape (d, d)
        Entry [i, k]: the mean shift of program i under perturbation k; 0 in the
        columns of perturbations not observed alone.
    """
    x = np.asarray(x, dtype=np.float64)
    indicators = np.asarray(indicators)
    if x.shape != indicators.shape:
        raise SimcellError(f"x {x.shape} and indicators {indicators.shape} must match")
    counts = indicators.sum(axis=1)
    control = counts == 0
    if not control.any():
        raise SimcellError("differential expression needs control cells")
    d = x.shape[1]
    out = np.zeros((d, d))
    chosen = range(d) if programs is None else np.asarray(programs, dtype=np.int64)
    for k in chosen:
        cells = (counts == 1) & (indicators[:, k] == 1)
        if cells.any():
            out[:, k] = x[cells].mean(axis=0) - x[control].mean(axis=0)
    return out
