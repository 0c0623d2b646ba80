"""The exact twin posterior (the oracle) of realistic and graded-difficulty bundles.

A realistic cell i has, for gene j (:mod:`simcell.simulator.nbinom`),

    λ_ij = exp(m_ij + T_ij(v_i) + l_i + ε_ij),
    x_ij = Q_NB(δ_ij; λ_ij, α_j)   (Poisson where α_j = 0),
    y_ij = Q_Bin(ν_ij; x_ij, p_i)  (y = x without capture),

with m_ij the covariate terms, T_ij(v) the concept term (cell-type-specific
effects, concept pairs, saturation: :class:`~simcell.simulator.counts.ConceptTerms`),
and exogenous l_i ~ N(0, s_b²), capture p_i ~ Beta(m κ, (1 − m) κ),
ε_ij ~ N(0, σ²), δ_ij, ν_ij ~ U(0, 1). Given the observed y_i the posterior is
drawn in this order:

1. (l_i, p_i) | y_i on a grid (41 library sizes over ±5 prior sd × 21 Beta
   quantile midpoints), with the likelihood of y_ij ~ NB(p e^{m + T + l + σ²/2}, α_j)
   (a thinned NB is NB with the same α; the residual's extra dispersion is
   neglected in this step only, as in :mod:`simcell.simulator.posterior`; grid
   points whose weight is below e^-50 of their capture level's maximum are skipped);
2. ε_ij | y_ij, l, p by a 16-node Gauss–Hermite quadrature of its exact posterior
   (drawn by rejection: a node from the prior weights, accepted with probability
   L(node) / max L over the nodes; after 8 rejections from the categorical itself);
3. the pre-capture count x_ij | y_ij, λ, p: with G the gamma multiplier,
   G | y ~ Gamma(r + y, rate r/λ + p) and x − y | G ~ Poisson((1 − p) G), so
   x − y | y ~ NB(size r + y, success (r/λ + p) / (r/λ + 1)), r = 1/α
   (Poisson((1 − p) λ) for a Poisson gene) — exact;
4. δ_ij | x_ij uniform on [F_NB(x − 1; λ, α), F_NB(x; λ, α)) and
   ν_ij | x_ij, y_ij uniform on [F_Bin(y − 1; x, p), F_Bin(y; x, p)) — the exact
   posteriors of the inverse-CDF noise;
5. the counterfactual concepts v' from :meth:`TwinPosterior.concept_draws`.

The twin is x' = Q_NB(δ; λ e^{Δ}, α), y' = Q_Bin(ν; x', p) with
Δ_ij = T_ij(v') − T_ij(v), computed only where Δ ≠ 0 (elsewhere y' = y exactly).

Steps 2–4 and the twin run in one compiled kernel per draw (``_twin_kernel``,
parallel over cells), each step by the inverse CDF of uniforms. An entry's
uniforms are SplitMix64 outputs at a counter of (draw, cell, gene, stream) in a
stream keyed once per call from ``rng``: a posterior's draws are the
same bytes whatever the chunk size and the number of numba threads. The rare
entries whose CDF walk cannot be certified (an underflowing p(0), a walk past
4,096 steps, a step narrower than 1e-11) are settled with the same uniforms by
``_twin_reference``, the numpy/scipy version of the same map.

The harness dispatches here with one line in ``evaluation/oracle.py``
(``oracle_posterior``)::

    if is_realistic(bundle): return realistic_posterior(bundle, intervene, intervention)
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import numba
import numpy as np
from scipy import special, stats

from simcell import SimcellError
from simcell.simulator import schema
from simcell.simulator.counts import ConceptTerms
from simcell.simulator.nbinom import (
    _binom_scalar,
    _binom_step,
    _nb_scalar,
    _nb_size_scalar,
    _nb_step,
    _poisson_step,
    binom_ppf,
    nbinom_ppf,
)
from simcell.simulator.poisson import _UNCERTAIN, _ppf_scalar, poisson_ppf
from simcell.simulator.posterior import (
    CellPosterior,
    InterventionLike,
    Transform,
    TwinPosterior,
    _check_chunk,
    cell_posterior,
)

_BELOW_ONE = float(np.nextafter(1.0, 0.0))
_LIBRARY_GRID = np.linspace(-5.0, 5.0, 41)
_CAPTURE_GRID = 21
_HERMITE_NODES, _HERMITE_WEIGHTS = np.polynomial.hermite.hermgauss(16)
#: the prior categorical of ε's node (step 2's proposal), its last entry exactly 1
_PRIOR_CDF = np.cumsum(_HERMITE_WEIGHTS) / _HERMITE_WEIGHTS.sum()
_PRIOR_CDF[-1] = 1.0
DEFAULT_CHUNK = 256

#: bundle keys of the realistic layers (written by :func:`simcell.simulator.process.prepare`)
_DISPERSION, _CAPTURE = "dispersion", "capture_efficiency"
_TYPED, _PAIRS = "concept_effects_by_cell_type", "concept_pair_effects"


def _params(factual) -> dict:
    return dict(factual.uns.get(schema.UNS, {}).get(schema.UNS_PARAMS, {}))


def is_realistic(bundle) -> bool:
    """Whether a bundle was simulated with a layer the Poisson posterior does not model.

    Parameters
    ----------
    bundle : Bundle or Dataset
        Anything with the bundle's ``factual`` AnnData.

    Returns
    -------
    bool
    """
    factual = bundle.factual
    params = _params(factual)
    return (
        _DISPERSION in factual.var.columns
        or _CAPTURE in factual.obs.columns
        or _TYPED in factual.varm
        or _PAIRS in factual.varm
        or float(np.asarray(params.get("concept_saturation", 0.0))) > 0
    )


@dataclass(frozen=True, eq=False)
class RealisticCells:
    """What is known about a set of cells of a realistic bundle.

    Attributes
    ----------
    base : CellPosterior
        Counts, concepts and the concept SCM (its ``log_rate_mean`` is not used).
    covariate_rate : ndarray, shape (n_cells, n_genes)
        m_ij = w_j + γ_{b_i j} + τ_{t_i j} + ω_{u_i j}.
    cell_type : ndarray of int64, shape (n_cells,)
    terms : ConceptTerms
        T(v), the concept part of the log-rate.
    dispersion : ndarray, shape (n_genes,)
        α_j (0: Poisson gene).
    capture : (float, float) or None
        (mean m, concentration κ) of the capture Beta law; ``None``: no thinning.
    """

    base: CellPosterior
    covariate_rate: np.ndarray
    cell_type: np.ndarray
    terms: ConceptTerms
    dispersion: np.ndarray
    capture: tuple[float, float] | None

    @property
    def n_cells(self) -> int:
        return self.base.n_cells

    @property
    def counts(self) -> np.ndarray:
        return self.base.counts

    def log_rate(self, concepts: np.ndarray, rows: slice | np.ndarray) -> np.ndarray:
        """m_ij + T_ij(v) of ``rows`` under concepts ``concepts`` (rows of those cells)."""
        return self.covariate_rate[rows] + self.terms(concepts, self.cell_type[rows])


def realistic_cells(bundle, positions: np.ndarray) -> RealisticCells:
    """What a realistic bundle's world says about the factual cells at ``positions``.

    Parameters
    ----------
    bundle : Bundle or Dataset
    positions : ndarray of int, shape (n_cells,)

    Returns
    -------
    RealisticCells
    """
    base = cell_posterior(bundle, positions)
    factual = bundle.factual
    world = schema.world_arrays(factual)
    codes = schema.covariate_codes(factual, np.asarray(positions))
    cell_type = codes[schema.OBS_CELL_TYPE]
    covariate = (
        world.baseline[None, :]
        + world.batch_effects[codes[schema.OBS_BATCH]]
        + world.tissue_effects[codes[schema.OBS_TISSUE]]
        + world.cell_type_effects[cell_type]
    )
    n_genes, n_concepts = base.n_genes, len(base.concept_names)
    typed = world.concept_effects[None]
    if _TYPED in factual.varm:
        flat = np.asarray(factual.varm[_TYPED], dtype=np.float64)
        typed = np.moveaxis(flat.reshape(n_genes, -1, n_concepts), 0, 2)
    pairs = np.zeros((0, 0, n_genes))
    if _PAIRS in factual.varm:
        flat = np.asarray(factual.varm[_PAIRS], dtype=np.float64)
        pairs = np.moveaxis(flat.reshape(n_genes, n_concepts, n_concepts), 0, 2)
    params = _params(factual)
    saturation = float(np.asarray(params.get("concept_saturation", 0.0)))
    saturate = np.array([k == "continuous" and saturation > 0 for k in base.concept_kinds])
    dispersion = (
        factual.var[_DISPERSION].to_numpy(dtype=np.float64)
        if _DISPERSION in factual.var.columns
        else np.zeros(n_genes)
    )
    capture = None
    if _CAPTURE in factual.obs.columns:
        capture = (
            float(np.asarray(params["capture_mean"])),
            float(np.asarray(params.get("capture_concentration", 20.0))),
        )
    return RealisticCells(
        base=base,
        covariate_rate=covariate,
        cell_type=cell_type.astype(np.int64),
        terms=ConceptTerms(
            typed=np.ascontiguousarray(typed),
            pairs=np.ascontiguousarray(pairs),
            saturate=saturate,
            saturation=saturation,
        ),
        dispersion=dispersion,
        capture=capture,
    )


# ----------------------------------------------------------------- step 1


#: grid points more than this below their capture level's maximum log posterior are not
#: evaluated (weight < e^-50 ≈ 2e-22 of the maximum's: below float64's resolution)
_GRID_CUTOFF = 50.0


@numba.njit(inline="always")
def _log_likelihood_at(s, rate, weight, size, total, poisson_rate):
    """Σ_j log NB(y_j; rate_j e^s, α_j) up to constants (Poisson genes folded in)."""
    scale = math.exp(s)
    acc = 0.0
    for e in range(rate.size):
        acc += weight[e] * math.log(size[e] + rate[e] * scale)
    return total * s - scale * poisson_rate - acc


@numba.njit(parallel=True, nogil=True, cache=True)
def _grid_log_posterior(
    counts, log_rate, library, log_capture, prior, dispersion, out
):  # pragma: no cover - compiled
    """log p(l_a, p_b | y_i) up to a constant on the grid, −inf where not evaluated.

    ``out[i, a * n_capture + b]``. Σ_j y_ij s and the Poisson genes' Σ_j μ_ij are
    factored out of the gene loop (one logarithm per NB gene and grid point). The
    log-likelihood is concave in s = l + log p and the prior is Gaussian in l, so on
    each capture level the log posterior is concave in l: climb to its maximum, then
    walk out on each side until it is ``_GRID_CUTOFF`` below it; farther points
    (weight below float64's resolution) stay −inf.
    """
    n_cells, n_genes = counts.shape
    n_l, n_p = library.shape[1], log_capture.size
    nb_genes = np.flatnonzero(dispersion > 0.0)
    size = 1.0 / dispersion[nb_genes]
    for i in numba.prange(n_cells):
        total = 0.0
        poisson_rate = 0.0
        for j in range(n_genes):
            total += counts[i, j]
            if dispersion[j] <= 0.0:
                poisson_rate += math.exp(log_rate[i, j])
        rate = np.empty(nb_genes.size)
        weight = np.empty(nb_genes.size)
        for e in range(nb_genes.size):
            j = nb_genes[e]
            rate[e] = math.exp(log_rate[i, j])
            weight[e] = counts[i, j] + size[e]
        for g in range(n_l * n_p):
            out[i, g] = -math.inf
        start = n_l // 2
        for b in range(n_p):
            a = start
            here = prior[a] + _log_likelihood_at(
                library[i, a] + log_capture[b], rate, weight, size, total, poisson_rate
            )
            out[i, a * n_p + b] = here
            for step in (1, -1):  # climb
                while 0 <= a + step < n_l:
                    value = prior[a + step] + _log_likelihood_at(
                        library[i, a + step] + log_capture[b],
                        rate,
                        weight,
                        size,
                        total,
                        poisson_rate,
                    )
                    out[i, (a + step) * n_p + b] = value
                    if value <= here:
                        break
                    a += step
                    here = value
            start = a
            for step in (1, -1):  # walk out to the cutoff
                k = a + step
                while 0 <= k < n_l:
                    value = out[i, k * n_p + b]
                    if value == -math.inf:
                        value = prior[k] + _log_likelihood_at(
                            library[i, k] + log_capture[b],
                            rate,
                            weight,
                            size,
                            total,
                            poisson_rate,
                        )
                        out[i, k * n_p + b] = value
                    if value < here - _GRID_CUTOFF:
                        break
                    k += step


def _capture_grid(capture: tuple[float, float] | None) -> np.ndarray:
    if capture is None:
        return np.ones(1)
    m, kappa = capture
    levels = (np.arange(_CAPTURE_GRID) + 0.5) / _CAPTURE_GRID
    return special.betaincinv(m * kappa, (1 - m) * kappa, levels)


@dataclass(frozen=True, eq=False)
class LibraryCaptureGrid:
    """The grid posterior of (l_i, p_i) | y_i (step 1), computed once per set of cells.

    Attributes
    ----------
    library : ndarray, shape (n_cells, n_library)
        The library-size grid of each cell, sd_i · (−5 … 5).
    capture : ndarray, shape (n_capture,)
        The Beta quantile midpoints (``[1.0]`` without capture).
    cdf : ndarray, shape (n_cells, n_library · n_capture)
        Each cell's posterior CDF over the grid, flattened library-major.
    """

    library: np.ndarray
    capture: np.ndarray
    cdf: np.ndarray

    def draw(self, n_samples: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Draws of (l_i, p_i), each of shape (n_samples, n_cells)."""
        n, size = self.cdf.shape
        n_p = self.capture.size
        u = rng.random((n_samples, n))
        pick = np.empty((n_samples, n), dtype=np.int64)
        for i in range(n):
            pick[:, i] = np.minimum(np.searchsorted(self.cdf[i], u[:, i], side="right"), size - 1)
        rows = np.arange(n)[None, :]
        return self.library[rows, pick // n_p], self.capture[pick % n_p]


def library_capture_grid(cells: RealisticCells) -> LibraryCaptureGrid:
    """The grid posterior of (l_i, p_i) given the observed counts (step 1).

    The cost is n_cells × n_genes NB log-likelihood terms per grid point, at the
    grid points within ``_GRID_CUTOFF`` of their capture level's maximum (about a
    third of the 861 on a realistic bundle); :class:`RealisticTwinPosterior`
    computes it once and reuses it for every later draw.

    Returns
    -------
    LibraryCaptureGrid
    """
    sd = cells.base.library_size_sd
    capture = _capture_grid(cells.capture)
    library = sd[:, None] * _LIBRARY_GRID[None, :]  # (n, L)
    n, n_l, n_p = cells.n_cells, _LIBRARY_GRID.size, capture.size
    log_rate = cells.log_rate(cells.base.concepts, slice(None)) + cells.base.noise_sd**2 / 2
    log_post = np.empty((n, n_l * n_p))
    _grid_log_posterior(
        np.ascontiguousarray(cells.counts, dtype=np.float64),
        np.ascontiguousarray(log_rate),
        np.ascontiguousarray(library),
        np.log(capture),
        -0.5 * _LIBRARY_GRID**2,
        np.ascontiguousarray(cells.dispersion, dtype=np.float64),
        log_post,
    )
    log_post -= log_post.max(axis=1, keepdims=True)
    cdf = np.cumsum(np.exp(log_post), axis=1)
    cdf /= cdf[:, -1:]
    return LibraryCaptureGrid(library=library, capture=capture, cdf=cdf)


def library_capture_draws(
    cells: RealisticCells, n_samples: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Draws of (l_i, p_i) from their grid posterior (step 1).

    Returns
    -------
    library, capture : ndarray, each shape (n_samples, n_cells)
    """
    return library_capture_grid(cells).draw(n_samples, rng)


# ----------------------------------------------------------------- steps 2-4
#
# One twin draw of an entry uses uniforms for ε's node, x − y, δ and ν. They are a
# counter-based function of (key, draw, cell, gene, stream) — SplitMix64's output
# at that counter — so a twin does not depend on the chunk size, on the number of
# threads, nor on which other entries the intervention changes.

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX_1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX_2 = np.uint64(0x94D049BB133111EB)
#: step 2 tries this many prior proposals before it computes the full categorical
_REJECT_TRIES = 8
#: streams per entry: 0 the categorical's uniform, 1 x − y, 2 δ, 3 ν, then the
#: (proposal, acceptance) pairs of step 2's rejection sampler
_FIRST_REJECT = 4
_N_STREAMS = _FIRST_REJECT + 2 * _REJECT_TRIES


@numba.njit(inline="always")
def _node_log_likelihood(y, node, mu, size, nb):
    """log p(y | ε = node) up to terms free of the node, with μ = p e^{m + l + node}."""
    if nb:
        return y * node - (y + size) * math.log(size + mu)
    return y * node - mu


@numba.njit(inline="always")
def _counter_uniform(key, counter):
    """U[0, 1) from SplitMix64 at position ``counter`` of the stream ``key`` (uint64)."""
    z = key + (counter + np.uint64(1)) * _GOLDEN
    z = (z ^ (z >> np.uint64(30))) * _MIX_1
    z = (z ^ (z >> np.uint64(27))) * _MIX_2
    z = z ^ (z >> np.uint64(31))
    return float(z >> np.uint64(11)) * (1.0 / 9007199254740992.0)


@numba.njit(inline="always")
def _entry_counter(draw, cell, gene, n_cells, n_genes):
    return (
        (np.uint64(draw) * np.uint64(n_cells) + np.uint64(cell)) * np.uint64(n_genes)
        + np.uint64(gene)
    ) * np.uint64(_N_STREAMS)


@numba.njit(nogil=True, cache=True)
def _entry_uniforms(key, draw, cell, gene, n_cells, n_genes, out):  # pragma: no cover
    """Every uniform of entries (cell[e], gene[e]) of draw ``draw``, out (n, _N_STREAMS)."""
    for e in range(cell.size):
        base = _entry_counter(draw, cell[e], gene[e], n_cells, n_genes)
        for k in range(_N_STREAMS):
            out[e, k] = _counter_uniform(key, base + np.uint64(k))


@numba.njit(parallel=True, nogil=True, cache=True)
def _twin_kernel(
    counts,
    log_rate,
    shift,
    library,
    capture,
    thinned,
    dispersion,
    nodes,
    log_weights,
    prior_cdf,
    key,
    draw,
    first_cell,
    n_cells,
    out,
):  # pragma: no cover - compiled
    """Steps 2–4 and the twin of every entry with Δ ≠ 0, fused; the others copy y.

    ``out[i, j] = _UNCERTAIN`` where a CDF walk could not certify its answer
    (:func:`_twin_reference` settles those with the same uniforms).
    """
    n_rows, n_genes = counts.shape
    n_nodes = nodes.size
    exp_nodes = np.exp(nodes)
    for i in numba.prange(n_rows):
        p = capture[i]
        log_p = math.log(p)
        weights = np.empty(max(n_nodes, 1))
        for j in range(n_genes):
            y = counts[i, j]
            if shift[i, j] == 0.0:
                out[i, j] = y
                continue
            base = _entry_counter(draw, first_cell + i, j, n_cells, n_genes)
            alpha = dispersion[j]
            size = 1.0 / alpha if alpha > 0.0 else 0.0
            mean = log_rate[i, j] + library[i]
            if n_nodes > 0:  # step 2: ε | y, l, p on the Gauss–Hermite nodes
                scale = p * math.exp(mean)
                nb = alpha > 0.0
                # the log-likelihood f(t) of node t is concave, largest at t* = log(y / scale):
                # its maximum over the nodes is at one of the two nodes around t*
                upper = 0
                if y > 0:
                    star = math.log(y) - log_p - mean
                    while upper < n_nodes and nodes[upper] < star:
                        upper += 1
                top = -math.inf
                for k in range(max(upper - 1, 0), min(upper, n_nodes - 1) + 1):
                    top = max(
                        top, _node_log_likelihood(y, nodes[k], scale * exp_nodes[k], size, nb)
                    )
                # rejection from the prior weights, accepting node k with probability
                # e^{f(k) − max f}: exactly the posterior categorical, at one likelihood
                # per proposal instead of all 16
                pick = -1
                for attempt in range(_REJECT_TRIES):
                    stream = base + np.uint64(_FIRST_REJECT + 2 * attempt)
                    u = _counter_uniform(key, stream)
                    k = 0
                    while k < n_nodes - 1 and prior_cdf[k] <= u:
                        k += 1
                    f = _node_log_likelihood(y, nodes[k], scale * exp_nodes[k], size, nb)
                    if _counter_uniform(key, stream + np.uint64(1)) < math.exp(f - top):
                        pick = k
                        break
                if pick < 0:  # every proposal rejected: the categorical itself
                    top = -math.inf
                    for k in range(n_nodes):
                        w = log_weights[k] + _node_log_likelihood(
                            y, nodes[k], scale * exp_nodes[k], size, nb
                        )
                        weights[k] = w
                        top = max(top, w)
                    total = 0.0
                    for k in range(n_nodes):
                        total += math.exp(weights[k] - top)
                        weights[k] = total
                    target = _counter_uniform(key, base) * total
                    pick = 0
                    for k in range(n_nodes):
                        if weights[k] < target:
                            pick += 1
                    pick = min(pick, n_nodes - 1)
                mean += nodes[pick]
            lam = math.exp(mean)
            # step 3: x − y | y
            extra = 0
            if thinned:
                u = _counter_uniform(key, base + np.uint64(1))
                if alpha > 0.0:
                    ratio = size / lam
                    extra = _nb_size_scalar(u, size + y, (1.0 - p) / (ratio + 1.0))
                else:
                    extra = _ppf_scalar(u, (1.0 - p) * lam)
                if extra < 0:
                    out[i, j] = _UNCERTAIN
                    continue
            x = y + extra
            # step 4: δ on x's CDF step, the twin pre-capture count under λ e^Δ
            if alpha > 0.0:
                low, high = _nb_step(x, size, lam / (size + lam))
            else:
                low, high = _poisson_step(x, lam)
            if high < 0.0:
                out[i, j] = _UNCERTAIN
                continue
            delta = low + _counter_uniform(key, base + np.uint64(2)) * (high - low)
            delta = min(delta, _BELOW_ONE)
            lam_twin = lam * math.exp(shift[i, j])
            if alpha > 0.0:
                x_twin = _nb_scalar(delta, lam_twin, alpha)
            else:
                x_twin = _ppf_scalar(delta, lam_twin)
            if x_twin < 0:
                out[i, j] = _UNCERTAIN
                continue
            if not thinned:
                out[i, j] = x_twin
                continue
            # ν on y's CDF step given x, the twin's capture of x'
            low, high = _binom_step(y, x, p)
            if high < 0.0:
                out[i, j] = _UNCERTAIN
                continue
            nu = min(low + _counter_uniform(key, base + np.uint64(3)) * (high - low), _BELOW_ONE)
            out[i, j] = _binom_scalar(nu, x_twin, p)


def _nb_cdf(k: np.ndarray, lam: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """F(k; λ, α) of the NB (Poisson where α = 0); 0 for k < 0."""
    out = np.zeros(k.shape)
    ok = k >= 0
    nb = ok & (alpha > 0)
    poisson = ok & (alpha == 0)
    r = 1.0 / alpha[nb]
    out[nb] = special.betainc(r, k[nb] + 1.0, r / (r + lam[nb]))
    out[poisson] = special.pdtr(k[poisson], lam[poisson])
    return out


def _uniform_on(lower: np.ndarray, upper: np.ndarray, u: np.ndarray) -> np.ndarray:
    return np.minimum(lower + u * (upper - lower), _BELOW_ONE)


def _twin_reference(
    y: np.ndarray,
    mean: np.ndarray,
    shift: np.ndarray,
    alpha: np.ndarray,
    p: np.ndarray,
    sigma: float,
    thinned: bool,
    uniforms: np.ndarray,
) -> np.ndarray:
    """Steps 2–4 and the twin in numpy/scipy, for flat entries given their uniforms.

    The same map from the four uniforms to the twin as :func:`_twin_kernel`, with
    scipy's CDFs and quantiles: it settles the entries the kernel cannot certify,
    and is the reference the kernel is tested and benchmarked against.

    Parameters
    ----------
    y : ndarray of int64, shape (n,)
        Observed counts.
    mean : ndarray, shape (n,)
        m + T(v) + l, the log-rate without the residual ε.
    shift : ndarray, shape (n,)
        Δ.
    alpha : ndarray, shape (n,)
        Dispersion of each entry's gene (0: Poisson).
    p : ndarray, shape (n,)
        Capture draw of each entry's cell (1 without capture).
    sigma : float
        σ, the sd of ε.
    thinned : bool
        Whether the bundle has capture.
    uniforms : ndarray, shape (n, _N_STREAMS)

    Returns
    -------
    ndarray of int64, shape (n,)
    """
    if sigma > 0:  # step 2: ε | y, l, p
        nodes = np.sqrt(2.0) * sigma * _HERMITE_NODES
        mu = p[:, None] * np.exp(mean[:, None] + nodes[None, :])
        safe = np.where(alpha > 0, alpha, 1.0)
        r = (1.0 / safe)[:, None]
        log_lik = y[:, None] * nodes[None, :] - np.where(
            (alpha > 0)[:, None], (y[:, None] + r) * np.log(r + mu), mu
        )
        top = log_lik.max(axis=1)
        rows = np.arange(y.size)
        pick = np.full(y.size, -1)
        for attempt in range(_REJECT_TRIES):  # rejection from the prior weights
            proposal = np.minimum(
                (_PRIOR_CDF[None, :] <= uniforms[:, _FIRST_REJECT + 2 * attempt, None]).sum(axis=1),
                nodes.size - 1,
            )
            accept = uniforms[:, _FIRST_REJECT + 2 * attempt + 1] < np.exp(
                log_lik[rows, proposal] - top
            )
            pick = np.where((pick < 0) & accept, proposal, pick)
        log_w = np.log(_HERMITE_WEIGHTS)[None, :] + log_lik
        log_w -= log_w.max(axis=1, keepdims=True)
        cdf = np.cumsum(np.exp(log_w), axis=1)
        target = uniforms[:, 0] * cdf[:, -1]
        full = np.minimum((cdf < target[:, None]).sum(axis=1), nodes.size - 1)
        mean = mean + nodes[np.where(pick < 0, full, pick)]
    lam = np.exp(mean)
    nb = alpha > 0
    # step 3: the pre-capture count x | y
    extra = np.zeros(y.size, dtype=np.int64)
    if thinned:
        r = 1.0 / alpha[nb]
        ratio = r / lam[nb]
        value = stats.nbinom.ppf(uniforms[nb, 1], r + y[nb], (ratio + p[nb]) / (ratio + 1.0))
        extra[nb] = np.maximum(value, 0)
        extra[~nb] = np.maximum(stats.poisson.ppf(uniforms[~nb, 1], (1.0 - p[~nb]) * lam[~nb]), 0)
    x = y + extra
    # step 4: δ on x's step, ν on y's step given x
    delta = _uniform_on(_nb_cdf(x - 1, lam, alpha), _nb_cdf(x, lam, alpha), uniforms[:, 2])
    lam_twin = lam * np.exp(shift)
    x_twin = np.empty(y.size, dtype=np.int64)
    x_twin[nb] = nbinom_ppf(delta[nb], lam_twin[nb], alpha[nb])
    x_twin[~nb] = poisson_ppf(delta[~nb], lam_twin[~nb])
    if not thinned:
        return x_twin
    lower = np.where(y > 0, special.bdtr(np.maximum(y - 1, 0), x, p), 0.0)
    nu = _uniform_on(lower, special.bdtr(y, x, p), uniforms[:, 3])
    return binom_ppf(nu, x_twin, p)


@dataclass(frozen=True)
class _DrawStream:
    """Where one twin draw's uniforms come from: draw ``draw`` of stream ``key``."""

    key: np.uint64
    draw: int
    n_cells: int


def _sample_twin(
    cells: RealisticCells,
    rows: slice,
    log_rate: np.ndarray,
    library: np.ndarray,
    capture: np.ndarray,
    shift: np.ndarray,
    stream: _DrawStream,
    *,
    engine: Literal["numba", "numpy"] = "numba",
) -> np.ndarray:
    """One posterior twin of ``rows`` given (l, p) draws and Δ, shape (n_rows, n_genes).

    ``engine="numpy"`` runs :func:`_twin_reference` on every changed entry (the
    reference of tests and benchmarks); both engines give the same twin up to
    floating-point ties.
    """
    counts = np.ascontiguousarray(cells.counts[rows], dtype=np.int64)
    thinned = cells.capture is not None
    p_rows = np.ascontiguousarray(capture if thinned else np.ones(counts.shape[0]))
    if engine == "numba":
        sigma = cells.base.noise_sd
        nodes = np.sqrt(2.0) * sigma * _HERMITE_NODES if sigma > 0 else np.zeros(0)
        twin = np.empty_like(counts)
        _twin_kernel(
            counts,
            np.ascontiguousarray(log_rate, dtype=np.float64),
            np.ascontiguousarray(shift, dtype=np.float64),
            np.ascontiguousarray(library, dtype=np.float64),
            p_rows,
            thinned,
            np.ascontiguousarray(cells.dispersion, dtype=np.float64),
            nodes,
            np.log(_HERMITE_WEIGHTS),
            _PRIOR_CDF,
            stream.key,
            stream.draw,
            rows.start,
            stream.n_cells,
            twin,
        )
        r_idx, g_idx = np.nonzero(twin == _UNCERTAIN)
    else:
        twin = counts.copy()
        r_idx, g_idx = np.nonzero(shift)
    if r_idx.size:
        uniforms = np.empty((r_idx.size, _N_STREAMS))
        _entry_uniforms(
            stream.key,
            stream.draw,
            (r_idx + rows.start).astype(np.int64),
            g_idx.astype(np.int64),
            stream.n_cells,
            counts.shape[1],
            uniforms,
        )
        twin[r_idx, g_idx] = _twin_reference(
            counts[r_idx, g_idx],
            log_rate[r_idx, g_idx] + library[r_idx],
            shift[r_idx, g_idx],
            cells.dispersion[g_idx],
            p_rows[r_idx],
            cells.base.noise_sd,
            thinned,
            uniforms,
        )
    return twin


# ----------------------------------------------------------------- the twin


class RealisticTwinPosterior:
    """The exact posterior of realistic cells' twins under an intervention.

    The same public methods as :class:`~simcell.simulator.TwinPosterior`
    (``sample``, ``mean``, ``mean_halves``, ``same_law_sample``, ``concept_draws``).

    Parameters
    ----------
    cells : RealisticCells
    intervention : simcell.models.Intervention
    """

    def __init__(self, cells: RealisticCells, intervention: InterventionLike) -> None:
        self.cells = cells
        self.intervention = intervention
        self._concepts = TwinPosterior(cells.base, intervention)  # validates, draws v'
        self._grid: LibraryCaptureGrid | None = None

    #: "numpy": every changed entry through :func:`_twin_reference` (tests, benchmarks)
    _engine: Literal["numba", "numpy"] = "numba"

    @property
    def library_capture(self) -> LibraryCaptureGrid:
        """The grid posterior of (l, p), computed on first use and then reused: it
        depends on the observed cells only, and is the oracle's costly step."""
        if self._grid is None:
            self._grid = library_capture_grid(self.cells)
        return self._grid

    def concept_draws(self, n_samples: int, rng: np.random.Generator) -> np.ndarray:
        """Draws of v', shape (n_samples, n_cells, n_concepts)."""
        return self._concepts.concept_draws(n_samples, rng)

    def _draws(
        self, n_samples: int, rng: np.random.Generator, chunk: int
    ) -> Iterator[tuple[slice, np.ndarray]]:
        cells = self.cells
        library, capture = self.library_capture.draw(n_samples, rng)
        targets = self.concept_draws(n_samples, rng)
        key = np.uint64(rng.integers(0, 2**63, dtype=np.int64))
        for start in range(0, cells.n_cells, chunk):
            rows = slice(start, min(start + chunk, cells.n_cells))
            factual = cells.log_rate(cells.base.concepts[rows], rows)
            for s in range(n_samples):
                shift = cells.log_rate(targets[s, rows], rows) - factual
                stream = _DrawStream(key=key, draw=s, n_cells=cells.n_cells)
                yield (
                    rows,
                    _sample_twin(
                        cells,
                        rows,
                        factual,
                        library[s, rows],
                        capture[s, rows],
                        shift,
                        stream,
                        engine=self._engine,
                    ),
                )

    def sample(self, rng: np.random.Generator, *, chunk: int = DEFAULT_CHUNK) -> np.ndarray:
        """One exact posterior draw of every cell's counterfactual counts.

        Returns
        -------
        ndarray of int64, shape (n_cells, n_genes)
        """
        out = np.empty(self.cells.counts.shape, dtype=np.int64)
        for rows, twin in self._draws(1, rng, _check_chunk(chunk)):
            out[rows] = twin
        return out

    def mean(
        self,
        transform: Transform,
        n_samples: int,
        rng: np.random.Generator,
        *,
        chunk: int = DEFAULT_CHUNK,
    ) -> np.ndarray:
        """Monte-Carlo posterior mean E[transform(x') | x], shape (n_cells, n_out)."""
        if n_samples < 1:
            raise SimcellError(f"n_samples must be >= 1, got {n_samples}")
        parts, total = [], None
        for count, (_, twin) in enumerate(self._draws(n_samples, rng, _check_chunk(chunk))):
            value = transform(twin)
            total = value if total is None else total + value
            if count % n_samples == n_samples - 1:
                parts.append(total / n_samples)
                total = None
        if not parts:
            return transform(self.cells.counts[:0].astype(np.int64))
        return np.concatenate(parts, axis=0)

    #: two independent half-means, exactly as the Poisson posterior's (its ``mean`` is ours)
    mean_halves = TwinPosterior.mean_halves

    def same_law_sample(
        self, rng: np.random.Generator, *, chunk: int = DEFAULT_CHUNK
    ) -> np.ndarray:
        """An independent sample of the counterfactual law of these cells.

        Same covariates and factual concepts; fresh l, p, ε and count noise from
        their priors, and v' from its posterior given the factual concepts.

        Returns
        -------
        ndarray of int64, shape (n_cells, n_genes)
        """
        cells = self.cells
        chunk = _check_chunk(chunk)
        targets = self.concept_draws(1, rng)[0]
        out = np.empty(cells.counts.shape, dtype=np.int64)
        nb = cells.dispersion > 0
        for start in range(0, cells.n_cells, chunk):
            rows = slice(start, min(start + chunk, cells.n_cells))
            n_rows = rows.stop - rows.start
            library = cells.base.library_size_sd[rows] * rng.standard_normal(n_rows)
            residual = cells.base.noise_sd * rng.standard_normal((n_rows, cells.base.n_genes))
            lam = np.exp(cells.log_rate(targets[rows], rows) + library[:, None] + residual)
            gamma = np.ones_like(lam)
            alpha = cells.dispersion[nb]
            gamma[:, nb] = rng.gamma(1.0 / alpha, alpha, size=(n_rows, int(nb.sum())))
            x = rng.poisson(lam * gamma)
            if cells.capture is not None:
                m, kappa = cells.capture
                p = rng.beta(m * kappa, (1 - m) * kappa, size=n_rows)
                x = rng.binomial(x, p[:, None])
            out[rows] = x
        return out


def realistic_posterior(
    bundle, intervene: np.ndarray, intervention: InterventionLike
) -> RealisticTwinPosterior:
    """The oracle of a realistic bundle's task: the exact posterior of its twins.

    Parameters
    ----------
    bundle : Bundle or Dataset
    intervene : ndarray of int, shape (n_cells,)
        Factual positions of the task's ``intervene`` cells.
    intervention : simcell.models.Intervention

    Returns
    -------
    RealisticTwinPosterior
    """
    return RealisticTwinPosterior(realistic_cells(bundle, intervene), intervention)
