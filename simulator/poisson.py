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
* for larger λ a Cornish–Fisher guess k₀ gets one exact anchor F(k₀ − 1) from
  ``pdtr`` and the compiled kernel walks the pmf (from ``lgamma``) to the answer,
  certified the same way.
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
_MAX_WALK = 64
_PMF_REL_ERROR = 1e-9
# the walk starts from pdtr itself (no long running sum), so it certifies down to
# 1e-13 relative: 10x above pdtr's own worst relative error
_ANCHOR_REL_TOL = 1e-13


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


@numba.njit(nogil=True, cache=True)
def _walk_from_anchor(q, lam, guess, anchor, out):  # pragma: no cover - compiled
    """Walk the pmf from ``guess`` with F(guess - 1) = ``anchor`` (from pdtr).

    p(k) = exp(k log λ − λ − lgamma(k + 1)) is accurate to ~1e-12 absolute even
    at λ = 1e5, so a few steps keep the running CDF within the certification
    tolerance; long walks are left uncertain.
    """
    for i in range(q.size):
        k = guess[i]
        rate = lam[i]
        pmf = math.exp(k * math.log(rate) - rate - math.lgamma(k + 1.0))
        below = anchor[i]  # F(k - 1)
        steps = 0
        if below >= q[i]:  # walk down while F(k - 1) >= q
            while k > 0 and below >= q[i] and steps < _MAX_WALK:
                pmf = pmf * k / rate  # p(k - 1)
                k -= 1
                below -= pmf
                steps += 1
            at = below + pmf
        else:  # walk up while F(k) < q
            at = below + pmf
            while at < q[i] and steps < _MAX_WALK:
                k += 1
                pmf *= rate / k
                below = at
                at += pmf
                steps += 1
        # error of the running CDF: relative to its size (pdtr, summation) plus the
        # lgamma-based pmf's ~1e-10 relative error, so the far lower tail is
        # certified relative to q rather than left to scipy
        slack = _PMF_REL_ERROR * pmf + _ANCHOR_REL_TOL * max(at, anchor[i])
        if steps >= _MAX_WALK or at - q[i] < slack or (k > 0 and q[i] - below <= slack):
            out[i] = _UNCERTAIN
        else:
            out[i] = k


def _ppf_large(q: np.ndarray, lam: np.ndarray) -> np.ndarray:
    """Guess, one exact ``pdtr`` anchor, then a compiled walk; ``_UNCERTAIN`` near a step."""
    guess = _cornish_fisher_guess(q, lam).astype(np.int64)
    anchor = np.where(guess > 0, special.pdtr(np.maximum(guess - 1, 0), lam), 0.0)
    out = np.empty(q.size, dtype=np.int64)
    _walk_from_anchor(q, lam, guess, anchor, out)
    return out


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
