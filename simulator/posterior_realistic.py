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
   neglected in this step only, as in :mod:`simcell.simulator.posterior`);
2. ε_ij | y_ij, l, p by a 16-node Gauss–Hermite quadrature of its exact posterior;
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

The harness dispatches here with one line in ``evaluation/oracle.py``
(``oracle_posterior``)::

    if is_realistic(bundle): return realistic_posterior(bundle, intervene, intervention)
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numba
import numpy as np
from scipy import special

from simcell import SimcellError
from simcell.simulator import schema
from simcell.simulator.counts import ConceptTerms
from simcell.simulator.nbinom import binom_ppf, nbinom_ppf
from simcell.simulator.poisson import poisson_ppf
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


@numba.njit(parallel=True, nogil=True, cache=True)
def _grid_log_likelihood(counts, log_rate, shift, dispersion, out):  # pragma: no cover
    """Σ_j log NB(y_ij; e^{log_rate_ij + s}, α_j) up to constants, for every grid s."""
    n_cells, n_genes = counts.shape
    for i in numba.prange(n_cells):
        for g in range(shift.shape[1]):
            s = shift[i, g]
            acc = 0.0
            for j in range(n_genes):
                y = counts[i, j]
                mu = math.exp(log_rate[i, j] + s)
                if dispersion[j] > 0.0:
                    r = 1.0 / dispersion[j]
                    acc += y * s - (y + r) * math.log(r + mu)
                else:
                    acc += y * s - mu
            out[i, g] = acc


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

    The cost is n_cells × 861 grid points × n_genes evaluations of the NB
    likelihood; :class:`RealisticTwinPosterior` computes it once and reuses it
    for every later draw.

    Returns
    -------
    LibraryCaptureGrid
    """
    sd = cells.base.library_size_sd
    capture = _capture_grid(cells.capture)
    library = sd[:, None] * _LIBRARY_GRID[None, :]  # (n, L)
    n, n_l, n_p = cells.n_cells, _LIBRARY_GRID.size, capture.size
    shift = (library[:, :, None] + np.log(capture)[None, None, :]).reshape(n, -1)
    log_rate = cells.log_rate(cells.base.concepts, slice(None)) + cells.base.noise_sd**2 / 2
    log_post = np.empty((n, n_l * n_p))
    _grid_log_likelihood(
        np.ascontiguousarray(cells.counts, dtype=np.float64),
        np.ascontiguousarray(log_rate),
        np.ascontiguousarray(shift),
        np.ascontiguousarray(cells.dispersion),
        log_post,
    )
    log_post += np.repeat(-0.5 * _LIBRARY_GRID**2, n_p)[None, :]
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


def _uniform_on(lower: np.ndarray, upper: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return np.minimum(lower + rng.random(lower.shape) * (upper - lower), _BELOW_ONE)


def _sample_twin(
    cells: RealisticCells,
    rows: slice,
    log_rate: np.ndarray,
    library: np.ndarray,
    capture: np.ndarray,
    shift: np.ndarray,
    rng: np.random.Generator,
) -> np.ndarray:
    """One posterior twin of ``rows`` given (l, p) draws and Δ, shape (n_rows, n_genes)."""
    y_all = np.asarray(cells.counts[rows], dtype=np.int64)
    twin = y_all.copy()
    r_idx, g_idx = np.nonzero(shift)
    if r_idx.size == 0:
        return twin
    y = y_all[r_idx, g_idx]
    alpha = cells.dispersion[g_idx]
    p = capture[r_idx]
    mean = log_rate[r_idx, g_idx] + library[r_idx]
    sigma = cells.base.noise_sd
    if sigma > 0:  # step 2: ε | y, l, p
        nodes = np.sqrt(2.0) * sigma * _HERMITE_NODES
        mu = p[:, None] * np.exp(mean[:, None] + nodes[None, :])
        safe = np.where(alpha > 0, alpha, 1.0)
        r = 1.0 / safe
        nb_term = (y + r)[:, None] * np.log(r[:, None] + mu)
        log_w = np.log(_HERMITE_WEIGHTS)[None, :] + y[:, None] * np.log(mu)
        log_w -= np.where((alpha > 0)[:, None], nb_term, mu)
        log_w -= log_w.max(axis=1, keepdims=True)
        cdf = np.cumsum(np.exp(log_w), axis=1)
        target = rng.random(y.size) * cdf[:, -1]
        pick = np.minimum((cdf < target[:, None]).sum(axis=1), nodes.size - 1)
        mean = mean + nodes[pick]
    lam = np.exp(mean)
    # step 3: the pre-capture count x | y
    extra = np.zeros(y.size, dtype=np.int64)
    if cells.capture is not None:
        nb = alpha > 0
        r = 1.0 / alpha[nb]
        ratio = r / lam[nb]
        extra[nb] = rng.negative_binomial(r + y[nb], (ratio + p[nb]) / (ratio + 1.0))
        extra[~nb] = rng.poisson((1.0 - p[~nb]) * lam[~nb])
    x = y + extra
    # step 4: δ on x's step, ν on y's step given x
    delta = _uniform_on(_nb_cdf(x - 1, lam, alpha), _nb_cdf(x, lam, alpha), rng)
    lam_twin = lam * np.exp(shift[r_idx, g_idx])
    x_twin = np.empty(y.size, dtype=np.int64)
    nb = alpha > 0
    x_twin[nb] = nbinom_ppf(delta[nb], lam_twin[nb], alpha[nb])
    x_twin[~nb] = poisson_ppf(delta[~nb], lam_twin[~nb])
    if cells.capture is None:
        y_twin = x_twin
    else:
        lower = np.where(y > 0, special.bdtr(np.maximum(y - 1, 0), x, p), 0.0)
        nu = _uniform_on(lower, special.bdtr(y, x, p), rng)
        y_twin = binom_ppf(nu, x_twin, p)
    twin[r_idx, g_idx] = y_twin
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
        for start in range(0, cells.n_cells, chunk):
            rows = slice(start, min(start + chunk, cells.n_cells))
            factual = cells.log_rate(cells.base.concepts[rows], rows)
            for s in range(n_samples):
                shift = cells.log_rate(targets[s, rows], rows) - factual
                yield (
                    rows,
                    _sample_twin(
                        cells, rows, factual, library[s, rows], capture[s, rows], shift, rng
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
