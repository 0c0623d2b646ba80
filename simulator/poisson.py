"""The exact Poisson inverse CDF, x = Q(δ; λ) = min{k ≥ 0 : F(k; λ) ≥ δ}.

Exactness is defined against ``scipy.special.pdtr`` (the CDF scipy itself uses),
so ``poisson_ppf`` returns what ``scipy.stats.poisson.ppf`` returns, element for
element, at a fraction of its cost:

* for λ ≤ ``_SEQUENTIAL_MAX_RATE`` a compiled kernel walks the CDF upwards by the
  pmf recursion p(k) = p(k-1) λ / k, starting from p(0) = e^{-λ} (so x = 0 exactly
  when δ ≤ e^{-λ}). The running sum is within ``_CERTIFY_TOL`` of the true CDF,
  so whenever δ is farther than that from both F(x-1) and F(x) the answer is
  certified; the rare uncertain elements (about 2e-11 of them) are settled by
  scipy's own rule;
* for larger λ a Cornish–Fisher guess is refined by an exact search on ``pdtr``
  (typically two evaluations) and certified the same way.
"""

from __future__ import annotations

import math

import numba
import numpy as np
from scipy import special

from simcell import SimcellError

_SEQUENTIAL_MAX_RATE = 40.0
_CERTIFY_TOL = 1e-11
_UNCERTAIN = -1


@numba.njit(inline="always")
def _ppf_scalar(q: float, lam: float) -> int:
    """Sequential inverse CDF; returns ``_UNCERTAIN`` when it cannot certify."""
    if q <= 0.0:
        return 0
    pmf = math.exp(-lam)
    cdf = pmf
    below = 0.0
    k = 0
    limit = lam + 12.0 * math.sqrt(lam) + 40.0
    while cdf < q:
        k += 1
        pmf *= lam / k
        below = cdf
        cdf += pmf
        if k > limit or pmf == 0.0:
            return _UNCERTAIN
    if cdf - q < _CERTIFY_TOL or (k > 0 and q - below <= _CERTIFY_TOL):
        return _UNCERTAIN
    return k


@numba.njit(parallel=True, nogil=True, cache=True)
def _ppf_sequential(q, lam, out):  # pragma: no cover - compiled
    for i in numba.prange(q.size):
        out[i] = _ppf_scalar(q[i], lam[i])


def _ppf_search(q: np.ndarray, lam: np.ndarray, guess: np.ndarray):
    """Smallest k with pdtr(k, λ) ≥ q, searching from ``guess``.

    Returns ``(k, cdf_below, cdf_at)`` with cdf_below = pdtr(k - 1, λ) (0 for k = 0)
    and cdf_at = pdtr(k, λ), the two values that bracket q.
    """
    k = np.maximum(guess.astype(np.int64), 0)
    cdf_at = special.pdtr(k, lam)
    active = np.flatnonzero(cdf_at < q)
    while active.size:  # walk up while F(k) < q
        k[active] += 1
        cdf_at[active] = special.pdtr(k[active], lam[active])
        active = active[cdf_at[active] < q[active]]
    cdf_below = np.zeros_like(cdf_at)
    active = np.flatnonzero(k > 0)
    cdf_below[active] = special.pdtr(k[active] - 1, lam[active])
    active = active[cdf_below[active] >= q[active]]
    while active.size:  # walk down while F(k - 1) >= q
        k[active] -= 1
        cdf_at[active] = cdf_below[active]
        has_below = k[active] > 0
        cdf_below[active[~has_below]] = 0.0
        active = active[has_below]
        cdf_below[active] = special.pdtr(k[active] - 1, lam[active])
        active = active[cdf_below[active] >= q[active]]
    return k, cdf_below, cdf_at


def _cornish_fisher_guess(q: np.ndarray, lam: np.ndarray) -> np.ndarray:
    z = special.ndtri(q)
    root = np.sqrt(lam)
    value = lam + root * z + (z * z - 1.0) / 6.0 + (z**3 - 7.0 * z) / (72.0 * root)
    return np.floor(np.clip(value + 0.5, 0.0, 1e18))


def _ppf_flat(q: np.ndarray, lam: np.ndarray) -> np.ndarray:
    """Inverse CDF of contiguous float64 1-d arrays without validation."""
    out = np.empty(q.size, dtype=np.int64)
    small = lam <= _SEQUENTIAL_MAX_RATE
    if small.all():
        _ppf_sequential(q, lam, out)
    else:
        idx = np.flatnonzero(small)
        part = np.empty(idx.size, dtype=np.int64)
        _ppf_sequential(q[idx], lam[idx], part)
        out[idx] = part
        large = np.flatnonzero(~small)
        out[large] = _ppf_large(q[large], lam[large])
    settle_uncertain(q, lam, out)
    return out


def _ppf_large(q: np.ndarray, lam: np.ndarray) -> np.ndarray:
    """Guess-and-search inverse CDF; ``_UNCERTAIN`` where q is within tolerance of a step."""
    k, cdf_below, cdf_at = _ppf_search(q, lam, _cornish_fisher_guess(q, lam))
    uncertain = (cdf_at - q < _CERTIFY_TOL) | ((k > 0) & (q - cdf_below <= _CERTIFY_TOL))
    k[uncertain] = _UNCERTAIN
    return k


def settle_uncertain(q: np.ndarray, lam: np.ndarray, out: np.ndarray) -> None:
    """Replace ``_UNCERTAIN`` entries of ``out`` by scipy's own answer, in place.

    Within ``_CERTIFY_TOL`` of a CDF step the answer is decided as scipy decides
    it (``ceil(pdtrik(q, λ))``, then one step down if ``pdtr`` allows), which is
    what makes the result equal to ``scipy.stats.poisson.ppf`` even where
    ``pdtrik`` is off by a step in the far tail.
    """
    flat = out.reshape(-1)
    uncertain = np.flatnonzero(flat == _UNCERTAIN)
    if uncertain.size:
        qs = np.broadcast_to(q, out.shape).reshape(-1)[uncertain]
        lams = np.broadcast_to(lam, out.shape).reshape(-1)[uncertain]
        step = np.ceil(special.pdtrik(qs, lams))
        lower = np.maximum(step - 1, 0)
        flat[uncertain] = np.where(special.pdtr(lower, lams) >= qs, lower, step).astype(np.int64)


def poisson_ppf(q: np.ndarray, lam: np.ndarray) -> np.ndarray:
    """Exact Poisson inverse CDF, vectorised.

    Q(q; λ) = min{k ≥ 0 : F_Poisson(k; λ) ≥ q} (scCBGM paper eq. 41), equal element
    for element to ``scipy.stats.poisson.ppf(q, lam)`` for 0 < q < 1 and λ > 0.

    Parameters
    ----------
    q : array-like, shape (...)
        Probabilities in [0, 1); q = 0 gives 0.
    lam : array-like, shape (...)
        Rates λ ≥ 0, broadcast against ``q``.

    Returns
    -------
    ndarray of int64, shape broadcast(q, lam)
        The quantiles.

    Raises
    ------
    SimcellError
        If a probability is outside [0, 1) or a rate is negative or not finite.
    """
    q_arr, lam_arr = np.broadcast_arrays(
        np.asarray(q, dtype=np.float64), np.asarray(lam, dtype=np.float64)
    )
    if not np.all((q_arr >= 0.0) & (q_arr < 1.0)):
        raise SimcellError("poisson_ppf: q must lie in [0, 1) (got NaN or a value outside)")
    if not np.all(np.isfinite(lam_arr) & (lam_arr >= 0.0)):
        raise SimcellError("poisson_ppf: lam must be finite and >= 0")
    shape = q_arr.shape
    flat_q = np.ascontiguousarray(q_arr).reshape(-1)
    flat_lam = np.ascontiguousarray(lam_arr).reshape(-1)
    return _ppf_flat(flat_q, flat_lam).reshape(shape)
