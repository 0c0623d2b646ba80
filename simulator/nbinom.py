"""Exact inverse CDFs of the negative binomial and the binomial (the realistic layers).

The realistic count model (``SimulationParams.dispersion_trend``,
``capture_mean``) replaces the Poisson draw of a cell's pre-capture count by a
negative binomial draw and thins it with the cell's capture efficiency:

    x_ij = Q_NB(δ_ij; λ_ij, α_j)        (gamma–Poisson: mean λ, variance λ + α λ²)
    y_ij = Q_Bin(ν_ij; x_ij, p_i)       (binomial thinning, p_i the capture efficiency)

with δ_ij, ν_ij ~ U(0, 1) exogenous. Both quantiles are exact in the sense of
:mod:`simcell.simulator.poisson`: a compiled kernel walks the CDF upwards by
the pmf recursion and certifies its answer whenever q is farther than
``_CERTIFY_TOL`` from both neighbouring CDF steps; the rare uncertain entries
(long walks, underflowing p(0), q next to a step) are settled by scipy's own
``nbinom.ppf`` / ``binom.ppf``, so the result equals scipy's element for element.
"""

from __future__ import annotations

import math

import numba
import numpy as np
from scipy import stats

from simcell import SimcellError
from simcell.simulator.poisson import _CERTIFY_TOL, _UNCERTAIN

#: the longest CDF walk the compiled kernels attempt (longer: settled by scipy)
_MAX_STEPS = 4096
#: below this log p(0) the pmf recursion starts in the subnormal range
_LOG_TINY = -700.0


@numba.njit(inline="always")
def _nb_scalar(q: float, mean: float, dispersion: float) -> int:
    """Q_NB(q; mean, α) by the pmf recursion; ``_UNCERTAIN`` when it cannot certify.

    With size r = 1/α and success probability s = r / (r + mean):
    p(0) = s^r, p(k) = p(k − 1) (k − 1 + r) / k · (1 − s).
    """
    if q <= 0.0 or mean <= 0.0:
        return 0
    # p(0) = (1 + α μ)^(−1/α) ≥ e^{−μ} ≥ 1 − μ: a q that far below 1 − μ is certified
    # to give 0 without the logarithm and exponential of p(0)
    if q < 1.0 - mean - _CERTIFY_TOL:
        return 0
    size = 1.0 / dispersion
    return _nb_size_scalar(q, size, mean / (size + mean))


@numba.njit(inline="always")
def _nb_size_scalar(q: float, size: float, fail: float) -> int:
    """Q(q) of the NB with real size r > 0 and failure probability 1 − s = ``fail``.

    p(0) = s^r, p(k) = p(k − 1) (k − 1 + r) / k · (1 − s); ``_UNCERTAIN`` when the
    walk cannot certify its answer (settle those with scipy's ``nbinom.ppf``).
    """
    if q <= 0.0 or fail <= 0.0:
        return 0
    log_zero = size * math.log1p(-fail)
    if log_zero < _LOG_TINY:  # p(0) subnormal: the recursion would lose precision
        return _UNCERTAIN
    pmf = math.exp(log_zero)
    cdf = pmf
    below = 0.0
    k = 0
    while cdf < q:
        k += 1
        pmf *= (k - 1.0 + size) / k * fail
        below = cdf
        cdf += pmf
        if k > _MAX_STEPS or pmf == 0.0:
            return _UNCERTAIN
    if cdf - q < _CERTIFY_TOL or (k > 0 and q - below <= _CERTIFY_TOL):
        return _UNCERTAIN
    return k


@numba.njit(inline="always")
def _nb_step(k: int, size: float, fail: float) -> tuple[float, float]:
    """(F(k − 1), F(k)) of the NB with size r and failure probability ``fail``.

    The step of the CDF that an inverse-CDF uniform of count k lies on. (−1, −1)
    when the pmf walk cannot certify it to ``_CERTIFY_TOL``: p(0) subnormal, a walk
    longer than ``_MAX_STEPS``, or a step narrower than the tolerance.
    """
    log_zero = size * math.log1p(-fail)
    if log_zero < _LOG_TINY or k > _MAX_STEPS:
        return -1.0, -1.0
    pmf = math.exp(log_zero)
    cdf = pmf
    below = 0.0
    for i in range(1, k + 1):
        pmf *= (i - 1.0 + size) / i * fail
        below = cdf
        cdf += pmf
    if pmf < _CERTIFY_TOL:
        return -1.0, -1.0
    return below, min(cdf, 1.0)


@numba.njit(inline="always")
def _binom_step(k: int, n: int, p: float) -> tuple[float, float]:
    """(F(k − 1), F(k)) of Bin(n, p) for 0 ≤ k ≤ n, certified as :func:`_nb_step`."""
    if p <= 0.0:
        return (0.0, 1.0) if k == 0 else (-1.0, -1.0)
    if p >= 1.0:
        return (0.0, 1.0) if k == n else (-1.0, -1.0)
    log_zero = n * math.log1p(-p)
    if log_zero < _LOG_TINY or k > _MAX_STEPS:
        return -1.0, -1.0
    odds = p / (1.0 - p)
    pmf = math.exp(log_zero)
    cdf = pmf
    below = 0.0
    for i in range(1, k + 1):
        pmf *= (n - i + 1.0) / i * odds
        below = cdf
        cdf += pmf
    if pmf < _CERTIFY_TOL:
        return -1.0, -1.0
    return below, min(cdf, 1.0)


@numba.njit(inline="always")
def _poisson_step(k: int, lam: float) -> tuple[float, float]:
    """(F(k − 1), F(k)) of Poisson(λ), certified as :func:`_nb_step`."""
    if lam > -_LOG_TINY or k > _MAX_STEPS:
        return -1.0, -1.0
    pmf = math.exp(-lam)
    cdf = pmf
    below = 0.0
    for i in range(1, k + 1):
        pmf *= lam / i
        below = cdf
        cdf += pmf
    if pmf < _CERTIFY_TOL:
        return -1.0, -1.0
    return below, min(cdf, 1.0)


@numba.njit(inline="always")
def _binom_scalar(q: float, n: int, p: float) -> int:
    """Q_Bin(q; n, p) by the pmf recursion; ``_UNCERTAIN`` when it cannot certify.

    p(0) = (1 − p)^n, p(k) = p(k − 1) (n − k + 1) / k · p / (1 − p).
    """
    if q <= 0.0 or n == 0 or p <= 0.0:
        return 0
    if p >= 1.0:
        return n
    # p(0) = (1 − p)^n ≥ 1 − n p (Bernoulli's inequality): certified 0 without log / exp
    if q < 1.0 - n * p - _CERTIFY_TOL:
        return 0
    if n > _MAX_STEPS:
        return _UNCERTAIN
    odds = p / (1.0 - p)
    log_zero = n * math.log1p(-p)
    if log_zero < _LOG_TINY:  # p(0) subnormal: the recursion would lose precision
        return _UNCERTAIN
    pmf = math.exp(log_zero)
    cdf = pmf
    below = 0.0
    k = 0
    while cdf < q:
        k += 1
        if k > n or pmf == 0.0:
            return _UNCERTAIN
        pmf *= (n - k + 1.0) / k * odds
        below = cdf
        cdf += pmf
    if cdf - q < _CERTIFY_TOL or (k > 0 and q - below <= _CERTIFY_TOL):
        return _UNCERTAIN
    return k


@numba.njit(parallel=True, nogil=True, cache=True)
def _nb_flat(q, mean, dispersion, out):  # pragma: no cover - compiled
    for i in numba.prange(q.size):
        out[i] = _nb_scalar(q[i], mean[i], dispersion[i])


@numba.njit(parallel=True, nogil=True, cache=True)
def _binom_flat(q, n, p, out):  # pragma: no cover - compiled
    for i in numba.prange(q.size):
        out[i] = _binom_scalar(q[i], n[i], p[i])


def settle_nb(q: np.ndarray, mean: np.ndarray, dispersion: np.ndarray, out: np.ndarray) -> None:
    """Replace ``_UNCERTAIN`` entries of ``out`` (flat, int64) by scipy's ``nbinom.ppf``."""
    bad = np.flatnonzero(out == _UNCERTAIN)
    if bad.size:
        size = 1.0 / dispersion[bad]
        value = stats.nbinom.ppf(q[bad], size, size / (size + mean[bad]))
        if not np.all(np.isfinite(value)):
            raise SimcellError("negative binomial quantile is not finite (rate too large)")
        out[bad] = value.astype(np.int64)


def settle_binom(q: np.ndarray, n: np.ndarray, p: np.ndarray, out: np.ndarray) -> None:
    """Replace ``_UNCERTAIN`` entries of ``out`` (flat, int64) by scipy's ``binom.ppf``."""
    bad = np.flatnonzero(out == _UNCERTAIN)
    if bad.size:
        out[bad] = stats.binom.ppf(q[bad], n[bad], p[bad]).astype(np.int64)


def _check_q(q: np.ndarray, name: str) -> None:
    if not np.all((q >= 0.0) & (q < 1.0)):
        raise SimcellError(f"{name}: q must lie in [0, 1) (got NaN or a value outside)")


def nbinom_ppf(q, mean, dispersion) -> np.ndarray:
    """Exact negative-binomial inverse CDF in the (mean, dispersion) parametrisation.

    Q(q; μ, α) = min{k ≥ 0 : F_NB(k; μ, α) ≥ q}, the law with mean μ and variance
    μ + α μ² (a Poisson(μ G) count with G ~ Gamma(1/α, α)); equal element for
    element to ``scipy.stats.nbinom.ppf(q, 1/α, 1/(1 + α μ))`` for 0 < q < 1.

    Parameters
    ----------
    q : array-like, shape (...)
        Probabilities in [0, 1); q = 0 gives 0.
    mean : array-like, shape (...)
        μ ≥ 0, broadcast against ``q``.
    dispersion : array-like, shape (...)
        α > 0, broadcast against ``q``.

    Returns
    -------
    ndarray of int64, shape broadcast(q, mean, dispersion)

    Raises
    ------
    SimcellError
        If q is outside [0, 1), a mean is negative or not finite, or a
        dispersion is not positive and finite.
    """
    q, mean, dispersion = (
        np.ascontiguousarray(a, dtype=np.float64)
        for a in np.broadcast_arrays(
            np.asarray(q, float), np.asarray(mean, float), np.asarray(dispersion, float)
        )
    )
    _check_q(q, "nbinom_ppf")
    if not np.all(np.isfinite(mean) & (mean >= 0.0)):
        raise SimcellError("nbinom_ppf: mean must be finite and >= 0")
    if not np.all(np.isfinite(dispersion) & (dispersion > 0.0)):
        raise SimcellError("nbinom_ppf: dispersion must be finite and > 0")
    shape = q.shape
    q, mean, dispersion = q.reshape(-1), mean.reshape(-1), dispersion.reshape(-1)
    out = np.empty(q.size, dtype=np.int64)
    _nb_flat(q, mean, dispersion, out)
    settle_nb(q, mean, dispersion, out)
    return out.reshape(shape)


def binom_ppf(q, n, p) -> np.ndarray:
    """Exact binomial inverse CDF, Q(q; n, p) = min{k ≥ 0 : F_Bin(k; n, p) ≥ q}.

    Equal element for element to ``scipy.stats.binom.ppf(q, n, p)`` for 0 < q < 1.

    Parameters
    ----------
    q : array-like, shape (...)
        Probabilities in [0, 1); q = 0 gives 0.
    n : array-like of int, shape (...)
        Trials n ≥ 0, broadcast against ``q``.
    p : array-like, shape (...)
        Success probabilities in [0, 1].

    Returns
    -------
    ndarray of int64, shape broadcast(q, n, p)

    Raises
    ------
    SimcellError
        If q is outside [0, 1), n is negative or p is outside [0, 1].
    """
    q, n, p = np.broadcast_arrays(
        np.asarray(q, np.float64), np.asarray(n, np.int64), np.asarray(p, np.float64)
    )
    _check_q(q, "binom_ppf")
    if np.any(n < 0):
        raise SimcellError("binom_ppf: n must be >= 0")
    if not np.all((p >= 0.0) & (p <= 1.0)):
        raise SimcellError("binom_ppf: p must lie in [0, 1]")
    shape = q.shape
    q, n, p = (np.ascontiguousarray(a).reshape(-1) for a in (q, n, p))
    out = np.empty(q.size, dtype=np.int64)
    _binom_flat(q, n, p, out)
    settle_binom(q, n, p, out)
    return out.reshape(shape)
