"""Exact posteriors of a cell's exogenous noise, and of its counterfactual twin.

For a cell i with covariates (batch b, tissue t, cell type u), factual concepts v_i
and counts x_i, the simulator's world gives, for every gene j,

    m_ij = w_j + γ_{b_i j} + τ_{t_i j} + ω_{u_i j} + Σ_k v_ik c_kj,

and the unseen exogenous quantities are the library size l_i ~ N(0, s_{b_i}²), the
residuals ε_ij ~ N(0, σ_ε²), the uniforms δ_ij and the concept noise η_i. Under an
intervention the twin is x'_ij = Q(δ_ij; exp(m_ij + Δ_ij + l_i + ε_ij)) with
Δ_ij = Σ_k (v'_ik − v_ik) c_kj. Given (x_i, covariates, v_i) the posterior factorises:

1. l_i | x_i on a grid of 41 points over ±5 prior sd, with the Poisson likelihood
   Σ_j x_ij l − e^l Σ_j e^{m_ij + σ_ε²/2} (the residual's extra dispersion is
   neglected here only; at σ_ε ≤ 0.08 it changes the gene variances by under 2 %);
2. ε_ij | x_ij, l_i by a 16-node Gauss–Hermite quadrature of its exact posterior
   ∝ N(ε; 0, σ_ε²) Poisson(x_ij; e^{m_ij + l_i + ε});
3. δ_ij | x_ij, λ_ij uniform on [F(x_ij − 1; λ_ij), F(x_ij; λ_ij)) — the exact
   posterior of the inverse-CDF noise;
4. η_i | v_i, independent of the counts (which depend on η only through v): for a
   binary concept v_d = 1[h_d > 0] with h_d = μ_{u d} + Σ_p B_pd v_p + η_d, so η_d
   is a standard normal truncated to the half-line that reproduces v_d; for a
   continuous concept η_d = v_d − μ_{u d} − Σ_p B_pd v_p exactly.

In ``causal`` mode the descendants of the intervened concepts are recomputed in
topological order, h'_d = μ_{u d} + Σ_p B_pd v'_p + η_d. For a binary descendant only
the event {η_d > −t'_d} (t'_d = μ_{u d} + Σ_p B_pd v'_p) matters, so v'_d is drawn
from its exact conditional law given the truncation of step 4,

    P(v'_d = 1 | v_d = 1) = Φ(min(t_d, t'_d)) / Φ(t_d),
    P(v'_d = 1 | v_d = 0) = max(0, Φ(−t_d) − Φ(−t'_d)) / Φ(−t_d),

which is the law of 1[h'_d > 0] under the truncated-normal η_d, without drawing η_d.
Finally x'_ij = Q(δ_ij; λ_ij e^{Δ_ij}), computed only where Δ_ij ≠ 0 (elsewhere
x' = x exactly).

:class:`TwinPosterior` draws from this posterior (:meth:`TwinPosterior.sample`, the
Bayes-optimal sampler) and averages it (:meth:`TwinPosterior.mean`, the Bayes
predictor under squared error in any space reached from counts by a map f:
E[f(x') | x]). :func:`same_law_sample` draws an *independent* sample of the same
counterfactual law: the same cells' covariates and factual concepts, fresh
l, ε, δ and η (the noise floor of a distributional metric).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol

import numba
import numpy as np
from scipy import special

from simcell import SimcellError
from simcell.simulator import schema
from simcell.simulator.poisson import (
    _SEQUENTIAL_MAX_RATE,
    _UNCERTAIN,
    _ppf_scalar,
    poisson_ppf,
    settle_uncertain,
)

_BELOW_ONE = float(np.nextafter(1.0, 0.0))
_GRID = np.linspace(-5.0, 5.0, 41)
_HERMITE_NODES, _HERMITE_WEIGHTS = np.polynomial.hermite.hermgauss(16)
#: cells processed together by default (memory bound)
DEFAULT_CHUNK = 256

Transform = Callable[[np.ndarray], np.ndarray]


class InterventionLike(Protocol):
    """What the posterior reads of an intervention (:class:`simcell.models.Intervention`).

    The simulator does not import the models package; any object with these
    attributes is accepted.
    """

    do: dict[str, float]
    mode: str
    dag: tuple[tuple[str, str, float], ...]

    def descendants(self) -> tuple[str, ...]: ...


@dataclass(frozen=True, eq=False)
class CellPosterior:
    """What is known about a set of cells: the conditioning side of the posterior.

    Attributes
    ----------
    counts : ndarray of int64, shape (n_cells, n_genes)
        Factual counts x.
    log_rate_mean : ndarray, shape (n_cells, n_genes)
        m_ij, every known term of the factual log-rate (covariates and concepts).
    library_size_sd : ndarray, shape (n_cells,)
        Prior sd of each cell's library size (its batch's).
    noise_sd : float
        σ_ε.
    concepts : ndarray, shape (n_cells, n_concepts)
        The factual (true) concepts v.
    concept_effects : ndarray, shape (n_concepts, n_genes)
        c_kj.
    concept_liability_mean : ndarray, shape (n_cells, n_concepts)
        μ_{u_i k} = Φ⁻¹(p_{u_i k}) of each cell's type.
    concept_names : tuple of str, length n_concepts
    concept_kinds : tuple of {"binary", "continuous"}, length n_concepts
    concept_dag : tuple of (str, str, float)
        The (parent, child, weight) edges of the concept SCM.
    """

    counts: np.ndarray
    log_rate_mean: np.ndarray
    library_size_sd: np.ndarray
    noise_sd: float
    concepts: np.ndarray
    concept_effects: np.ndarray
    concept_liability_mean: np.ndarray
    concept_names: tuple[str, ...]
    concept_kinds: tuple[str, ...]
    concept_dag: tuple[tuple[str, str, float], ...]

    def __post_init__(self) -> None:
        n, g = np.shape(self.counts)
        k = len(self.concept_names)
        expected = {
            "log_rate_mean": (n, g),
            "library_size_sd": (n,),
            "concepts": (n, k),
            "concept_effects": (k, g),
            "concept_liability_mean": (n, k),
        }
        for name, shape in expected.items():
            if np.shape(getattr(self, name)) != shape:
                raise SimcellError(
                    f"CellPosterior: {name} has shape {np.shape(getattr(self, name))}, "
                    f"expected {shape}"
                )
        if len(self.concept_kinds) != k:
            raise SimcellError("CellPosterior: one concept kind per concept name is needed")
        if not (math.isfinite(self.noise_sd) and self.noise_sd >= 0):
            raise SimcellError(f"CellPosterior: noise_sd must be >= 0, got {self.noise_sd}")

    @property
    def n_cells(self) -> int:
        return self.counts.shape[0]

    @property
    def n_genes(self) -> int:
        return self.counts.shape[1]


def _dense(matrix) -> np.ndarray:
    return matrix.toarray() if hasattr(matrix, "toarray") else np.asarray(matrix)


def concept_dag(bundle) -> tuple[tuple[str, str, float], ...]:
    """The concept DAG of a bundle as (parent, child, weight) concept names.

    Parameters
    ----------
    bundle : Bundle or Dataset
        Anything with the bundle's ``factual`` AnnData.

    Returns
    -------
    tuple of (str, str, float)
    """
    return schema.concept_dag(bundle.factual)


def cell_posterior(bundle, positions: np.ndarray) -> CellPosterior:
    """What the simulator's world says about the factual cells at ``positions``.

    Parameters
    ----------
    bundle : Bundle or Dataset
        Anything with the bundle's ``factual`` AnnData (counts in ``X``).
    positions : ndarray of int, shape (n_cells,)
        Positions of the cells in ``factual``.

    Returns
    -------
    CellPosterior
    """
    factual = bundle.factual
    positions = np.asarray(positions)
    if positions.ndim != 1 or positions.dtype.kind not in "iu":
        raise SimcellError("cell_posterior: positions must be a 1-d integer array")
    n_total = factual.n_obs
    if positions.size and (positions.min() < 0 or positions.max() >= n_total):
        raise SimcellError(f"cell_posterior: a position is out of range for {n_total} cells")
    if factual.X is None:
        raise SimcellError("cell_posterior: the factual cells have no counts")
    world = schema.world_arrays(factual)
    codes = schema.covariate_codes(factual, positions)
    concepts_true = schema.true_concepts(factual)
    names = tuple(str(c) for c in concepts_true.columns)
    concepts = np.asarray(concepts_true.to_numpy(), dtype=np.float64)[positions]
    cell_type = codes[schema.OBS_CELL_TYPE]
    # summed in the order of the simulator's log-rate (then the concepts)
    log_rate = (
        world.baseline[None, :]
        + world.batch_effects[codes[schema.OBS_BATCH]]
        + world.tissue_effects[codes[schema.OBS_TISSUE]]
        + world.cell_type_effects[cell_type]
        + concepts @ world.concept_effects
    )
    return CellPosterior(
        counts=_dense(factual.X[positions]).astype(np.int64),
        log_rate_mean=log_rate,
        library_size_sd=world.library_size_sd[codes[schema.OBS_BATCH]],
        noise_sd=world.noise_sd,
        concepts=concepts,
        concept_effects=world.concept_effects,
        concept_liability_mean=special.ndtri(world.concept_probability)[cell_type],
        concept_names=names,
        concept_kinds=tuple(schema.concept_kinds(factual).values()),
        concept_dag=schema.concept_dag(factual),
    )


# ----------------------------------------------------------------- kernels


def _library_size_draws(
    cells: CellPosterior, n_samples: int, rng: np.random.Generator
) -> np.ndarray:
    """Samples of l_i from its grid posterior (step 1), shape (n_samples, n_cells)."""
    grid = cells.library_size_sd[:, None] * _GRID[None, :]  # (n, L)
    total = cells.counts.sum(axis=1, dtype=np.float64)[:, None]
    scale = np.exp(cells.log_rate_mean + cells.noise_sd**2 / 2).sum(axis=1)[:, None]
    log_post = -0.5 * _GRID[None, :] ** 2 + grid * total - np.exp(grid) * scale
    log_post -= log_post.max(axis=1, keepdims=True)
    cdf = np.cumsum(np.exp(log_post), axis=1)
    cdf /= cdf[:, -1:]
    u = rng.random((n_samples, grid.shape[0]))
    index = np.minimum((u[:, :, None] > cdf[None, :, :]).sum(axis=2), grid.shape[1] - 1)
    return np.take_along_axis(grid[None, :, :].repeat(n_samples, 0), index[:, :, None], 2)[..., 0]


@numba.njit(parallel=True, nogil=True, cache=True)
def _posterior_twin_kernel(
    counts,
    log_rate_mean,
    library,
    shift,
    offsets,
    nodes,
    log_weights,
    u_pick,
    u_delta,
    twin,
    rates,
    deltas,
    out,
    position,
):  # pragma: no cover - compiled
    """One posterior twin of a chunk of cells (steps 2, 3 and the twin), in place.

    Entries with Δ = 0 are copied; the others, numbered in row-major order from
    ``offsets[row]``, take the uniforms ``u_pick`` (ε) and ``u_delta`` (δ) of their
    number, so the result does not depend on how rows are spread over threads.
    Entries left ``_UNCERTAIN`` (rate above the sequential range: ``deltas`` is
    NaN; or a δ within the certification tolerance of a step) are settled outside.
    """
    n_rows, n_genes = counts.shape
    n_nodes = nodes.size
    for row in numba.prange(n_rows):
        weights = np.empty(max(n_nodes, 1))
        i = offsets[row]
        for j in range(n_genes):
            if shift[row, j] == 0.0:
                twin[row, j] = counts[row, j]
                continue
            x = counts[row, j]
            value = log_rate_mean[row, j] + library[row]
            if n_nodes > 0:  # ε | x, l from its quadrature posterior
                top = -np.inf
                for h in range(n_nodes):
                    weights[h] = log_weights[h] + x * nodes[h] - math.exp(value + nodes[h])
                    top = max(top, weights[h])
                total = 0.0
                for h in range(n_nodes):
                    weights[h] = math.exp(weights[h] - top)
                    total += weights[h]
                target, running, pick = u_pick[i] * total, 0.0, n_nodes - 1
                for h in range(n_nodes):
                    running += weights[h]
                    if running > target:
                        pick = h
                        break
                value += nodes[pick]
            rate = math.exp(value)
            rates[i] = rate * math.exp(shift[row, j])
            position[i] = row * n_genes + j
            if rate > _SEQUENTIAL_MAX_RATE:
                deltas[i] = np.nan  # interval computed with pdtr outside
                out[i] = _UNCERTAIN
            else:
                pmf = math.exp(-rate)
                cdf, below = pmf, 0.0
                for k in range(1, x + 1):  # F(x - 1) and F(x) by the pmf recursion
                    pmf *= rate / k
                    below = cdf
                    cdf += pmf
                delta = min(below + u_delta[i] * (cdf - below), _BELOW_ONE)
                deltas[i] = delta
                out[i] = _ppf_scalar(delta, rates[i])
            twin[row, j] = out[i]
            i += 1


@numba.njit(parallel=True, nogil=True, cache=True)
def _concept_shift_kernel(change, effects, shift, n_changed):  # pragma: no cover - compiled
    """Δ_ij = Σ_k (v'_ik − v_ik) c_kj (exactly 0 where no changed concept acts) and
    the number of non-zero Δ of each row."""
    n_rows, n_genes = shift.shape
    for row in numba.prange(n_rows):
        count = 0
        for j in range(n_genes):
            acc = 0.0
            for k in range(change.shape[1]):
                if change[row, k] != 0.0:
                    acc += change[row, k] * effects[k, j]
            shift[row, j] = acc
            if acc != 0.0:
                count += 1
        n_changed[row] = count


def _offsets(n_changed: np.ndarray) -> np.ndarray:
    """Row offsets of the changed entries, shape (n_rows + 1,)."""
    offsets = np.zeros(n_changed.size + 1, dtype=np.int64)
    np.cumsum(n_changed, out=offsets[1:])
    return offsets


def _sample_twin(
    counts: np.ndarray,
    log_rate_mean: np.ndarray,
    library: np.ndarray,
    shift: np.ndarray,
    offsets: np.ndarray,
    sigma: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """One posterior draw of the twin of a chunk of cells, shape (n_rows, n_genes), int64.

    Parameters
    ----------
    counts : ndarray of int64, shape (n_rows, n_genes)
    log_rate_mean : ndarray, shape (n_rows, n_genes)
    library : ndarray, shape (n_rows,)
        One draw of l_i.
    shift : ndarray, shape (n_rows, n_genes)
        Δ_ij; entries with Δ = 0 are the factual counts.
    offsets : ndarray of int64, shape (n_rows + 1,)
        Cumulated number of non-zero Δ per row (see :func:`_offsets`).
    """
    if sigma > 0:
        nodes = np.sqrt(2.0) * sigma * _HERMITE_NODES
        log_weights = np.log(_HERMITE_WEIGHTS)
    else:
        nodes = log_weights = np.zeros(0)
    n_changed = int(offsets[-1])
    u_pick, u_delta = rng.random(n_changed), rng.random(n_changed)
    rates, deltas = np.empty(n_changed), np.empty(n_changed)
    out = np.empty(n_changed, dtype=np.int64)
    position = np.empty(n_changed, dtype=np.int64)
    twin = np.empty(counts.shape, dtype=np.int64)
    _posterior_twin_kernel(
        counts,
        log_rate_mean,
        library,
        shift,
        offsets,
        nodes,
        log_weights,
        u_pick,
        u_delta,
        twin,
        rates,
        deltas,
        out,
        position,
    )
    large = np.flatnonzero(np.isnan(deltas))
    if large.size:  # rates above the sequential range: the interval from pdtr
        where = position[large]
        rate = rates[large] / np.exp(shift.reshape(-1)[where])
        x = counts.reshape(-1)[where]
        below = np.where(x > 0, special.pdtr(np.maximum(x - 1, 0), rate), 0.0)
        at = special.pdtr(x, rate)
        deltas[large] = np.minimum(below + u_delta[large] * (at - below), _BELOW_ONE)
    uncertain = np.flatnonzero(out == _UNCERTAIN)
    if uncertain.size:
        settle_uncertain(deltas, rates, out)
        twin.reshape(-1)[position[uncertain]] = out[uncertain]
    return twin


# ----------------------------------------------------------------- the twin


class TwinPosterior:
    """The exact posterior of cells' counterfactual twins under an intervention.

    Parameters
    ----------
    cells : CellPosterior
        The factual cells (counts, covariate log-rate, concepts, world pieces).
    intervention : simcell.models.Intervention
        ``do`` (concept name -> value), ``mode`` and the concept DAG; in
        ``causal`` mode the DAG must be the cells' own.

    Raises
    ------
    SimcellError
        If ``do`` names an unknown concept, or a causal intervention's DAG is
        not the one the cells were simulated with.

    Notes
    -----
    The posterior conditions on the factual counts, covariates and factual
    concepts only, never on the true counterfactual concepts: in ``causal`` mode
    the descendants' exogenous noise is integrated over its posterior.
    """

    def __init__(self, cells: CellPosterior, intervention: InterventionLike) -> None:
        names = list(cells.concept_names)
        unknown = [k for k in intervention.do if k not in names]
        if unknown:
            raise SimcellError(f"do(): unknown concept(s) {unknown}; concepts are {names}")
        if intervention.mode not in ("causal", "direct"):
            raise SimcellError(
                f"intervention mode must be 'causal' or 'direct', got {intervention.mode!r}"
            )
        self.cells = cells
        self.intervention = intervention
        direct = cells.concepts.copy()
        for name, value in intervention.do.items():
            direct[:, names.index(name)] = value
        self._direct_targets = direct
        self._descendants: tuple[int, ...] = ()
        if intervention.mode == "causal":
            if not _same_dag(intervention.dag, cells.concept_dag):
                raise SimcellError(
                    "a causal intervention's DAG must be the scenario's concept DAG "
                    f"{list(cells.concept_dag)}, got {list(intervention.dag)}"
                )
            self._descendants = tuple(names.index(d) for d in intervention.descendants())
        self._parents = {
            d: [(names.index(p), w) for p, c, w in cells.concept_dag if c == names[d]]
            for d in self._descendants
        }
        self._binary = tuple(d for d in self._descendants if cells.concept_kinds[d] == "binary")
        self._fixed_shift: np.ndarray | None = None
        if not self._binary:  # nothing random in v': one shift for every draw
            targets = self._propagate(direct[None], np.zeros((1, cells.n_cells, 0)))[0]
            self._fixed_shift = (targets - cells.concepts) @ cells.concept_effects

    @classmethod
    def from_shift(cls, cells: CellPosterior, shift: np.ndarray) -> TwinPosterior:
        """The twin under a known change Δ of the log-rate instead of a concept edit.

        Parameters
        ----------
        cells : CellPosterior
        shift : ndarray, shape (n_cells, n_genes)
            Δ_ij, added to the log-rate of the twin.

        Returns
        -------
        TwinPosterior
        """
        shift = np.asarray(shift, dtype=np.float64)
        if shift.shape != cells.counts.shape:
            raise SimcellError(
                f"shift has shape {shift.shape}, expected {cells.counts.shape} (cells x genes)"
            )
        self = cls.__new__(cls)
        self.cells = cells
        self.intervention = None
        self._direct_targets = cells.concepts
        self._descendants = self._binary = ()
        self._parents = {}
        self._fixed_shift = shift
        return self

    # ------------------------------------------------------------- concepts

    def _propagate(self, targets: np.ndarray, uniform: np.ndarray) -> np.ndarray:
        """Recompute the descendants in ``targets`` (draws, n_cells, K) in place.

        ``uniform`` (draws, n_cells, n_binary descendants) decides the binary ones.
        """
        cells = self.cells
        v, mu = cells.concepts, cells.concept_liability_mean
        column = 0
        for d in self._descendants:
            parents = self._parents[d]
            if cells.concept_kinds[d] == "continuous":
                noise = v[:, d] - mu[:, d]  # η_d, exactly
                for p, w in parents:
                    noise = noise - w * v[:, p]
                liability = mu[:, d] + noise  # in the simulator's order
                for p, w in parents:
                    liability = liability + w * targets[..., p]
                targets[..., d] = liability
                continue
            factual = mu[:, d].copy()  # t_d: η_d > −t_d  ⟺  v_d = 1
            for p, w in parents:
                factual = factual + w * v[:, p]
            after = np.broadcast_to(mu[:, d], targets.shape[:-1])
            for p, w in parents:
                after = after + w * targets[..., p]
            log_on = special.log_ndtr(factual)
            log_off = special.log_ndtr(-factual)
            stays_on = np.exp(special.log_ndtr(np.minimum(factual, after)) - log_on)
            turns_on = np.where(after > factual, -np.expm1(special.log_ndtr(-after) - log_off), 0.0)
            p_on = np.where(v[:, d] > 0.5, stays_on, turns_on)
            targets[..., d] = (uniform[..., column] < p_on).astype(np.float64)
            column += 1
        return targets

    def concept_draws(self, n_samples: int, rng: np.random.Generator) -> np.ndarray:
        """Draws of the counterfactual concepts v' from their posterior.

        Parameters
        ----------
        n_samples : int
        rng : numpy.random.Generator
            Not used when v' is deterministic (``direct`` mode, or no binary
            descendant).

        Returns
        -------
        ndarray, shape (n_samples, n_cells, n_concepts)
        """
        n, k = self._direct_targets.shape
        targets = np.broadcast_to(self._direct_targets, (n_samples, n, k)).copy()
        if not self._binary:
            return self._propagate(targets, np.zeros((n_samples, n, 0)))
        return self._propagate(targets, rng.random((n_samples, n, len(self._binary))))

    # ------------------------------------------------------------- draws

    def _draws(
        self, n_samples: int, rng: np.random.Generator, chunk: int
    ) -> Iterator[tuple[slice, np.ndarray]]:
        """Posterior twins of each chunk of cells, ``n_samples`` in a row per chunk."""
        cells = self.cells
        n_cells = cells.n_cells
        library = _library_size_draws(cells, n_samples, rng)  # (S, n)
        concept_draws = (
            None if self._fixed_shift is not None else self.concept_draws(n_samples, rng)
        )
        sigma = cells.noise_sd
        effects = np.ascontiguousarray(cells.concept_effects, dtype=np.float64)
        for start in range(0, n_cells, chunk):
            rows = slice(start, min(start + chunk, n_cells))
            x = np.ascontiguousarray(cells.counts[rows], dtype=np.int64)
            m = np.ascontiguousarray(cells.log_rate_mean[rows], dtype=np.float64)
            if self._fixed_shift is not None:
                shift = np.ascontiguousarray(self._fixed_shift[rows])
                offsets = _offsets(np.count_nonzero(shift, axis=1))
            else:
                shift = np.empty(x.shape)
                n_changed = np.empty(x.shape[0], dtype=np.int64)
            for s in range(n_samples):
                if concept_draws is not None:
                    change = concept_draws[s, rows] - cells.concepts[rows]
                    _concept_shift_kernel(change, effects, shift, n_changed)
                    offsets = _offsets(n_changed)
                twin = _sample_twin(x, m, library[s, rows], shift, offsets, sigma, rng)
                yield rows, twin

    def sample(self, rng: np.random.Generator, *, chunk: int = DEFAULT_CHUNK) -> np.ndarray:
        """One exact posterior draw of every cell's counterfactual counts.

        The Bayes-optimal sampler (``oracle_sample``): the draw shares the
        factual cell's exogenous posterior, so a gene the intervention does not
        change is the factual count.

        Parameters
        ----------
        rng : numpy.random.Generator
        chunk : int
            Cells processed together (memory bound).

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
        """Monte-Carlo posterior mean E[transform(x') | x] of each cell's twin.

        Parameters
        ----------
        transform : callable
            Maps counts, shape (n, n_genes), to the scored space (e.g.
            log-normalised expression), row by row.
        n_samples : int
            Posterior draws per cell.
        rng : numpy.random.Generator
        chunk : int
            Cells processed together (memory bound).

        Returns
        -------
        ndarray, shape (n_cells, n_out)
        """
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

    def mean_halves(
        self,
        transform: Transform,
        n_samples: int,
        rng: np.random.Generator,
        *,
        chunk: int = DEFAULT_CHUNK,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Two independent posterior means of ``n_samples // 2`` draws each.

        Their average is the prediction; ``mean((a − y)·(b − y))`` estimates the
        Bayes MSE without the Monte-Carlo excess (their errors are independent
        with mean 0).

        Parameters
        ----------
        transform : callable
        n_samples : int
            Draws per cell in all (at least 2).
        rng : numpy.random.Generator
        chunk : int

        Returns
        -------
        (ndarray, ndarray), each shape (n_cells, n_out)
        """
        if n_samples < 2:
            raise SimcellError(f"n_samples must be >= 2 (two halves), got {n_samples}")
        half = n_samples // 2
        first = self.mean(transform, half, rng, chunk=chunk)
        return first, self.mean(transform, half, rng, chunk=chunk)

    def same_law_sample(
        self, rng: np.random.Generator, *, chunk: int = DEFAULT_CHUNK
    ) -> np.ndarray:
        """An independent sample of the counterfactual law of these cells.

        Same covariates and factual concepts, fresh l, ε, δ (from their priors:
        they are independent of the concepts) and fresh η for the descendants
        (from their posterior given the factual concepts); the factual counts
        are not used.

        Parameters
        ----------
        rng : numpy.random.Generator
        chunk : int

        Returns
        -------
        ndarray of int64, shape (n_cells, n_genes)
        """
        cells = self.cells
        chunk = _check_chunk(chunk)
        if self._fixed_shift is None:
            targets = self.concept_draws(1, rng)[0]
        out = np.empty(cells.counts.shape, dtype=np.int64)
        for start in range(0, cells.n_cells, chunk):
            rows = slice(start, min(start + chunk, cells.n_cells))
            if self._fixed_shift is not None:
                shift = self._fixed_shift[rows]
            else:
                shift = (targets[rows] - cells.concepts[rows]) @ cells.concept_effects
            n_rows = shift.shape[0]
            library = cells.library_size_sd[rows] * rng.standard_normal(n_rows)
            residual = cells.noise_sd * rng.standard_normal((n_rows, cells.n_genes))
            uniform = rng.random((n_rows, cells.n_genes))
            log_rate = cells.log_rate_mean[rows] + shift + library[:, None] + residual
            out[rows] = poisson_ppf(uniform, np.exp(log_rate))
        return out


def _same_dag(a, b) -> bool:
    def edges(dag):
        return {(str(p), str(c)): float(w) for p, c, w in dag}

    ea, eb = edges(a), edges(b)
    return ea.keys() == eb.keys() and all(
        math.isclose(ea[e], eb[e], rel_tol=1e-9, abs_tol=1e-12) for e in ea
    )


def _check_chunk(chunk: int) -> int:
    if int(chunk) < 1:
        raise SimcellError(f"chunk must be >= 1, got {chunk}")
    return int(chunk)


def same_law_sample(
    bundle, positions: np.ndarray, intervention: InterventionLike, rng: np.random.Generator
) -> np.ndarray:
    """An independent sample of the true counterfactual law of the cells at ``positions``.

    The same cells' covariates (batch, tissue, cell type) and factual concepts,
    with fresh exogenous noise: l, ε, δ and, in ``causal`` mode, the
    descendants' η given the factual concepts. The same metric between the
    truth and this sample is what a perfect sampler scores (the noise floor).

    Parameters
    ----------
    bundle : Bundle or Dataset
    positions : ndarray of int, shape (n_cells,)
        Factual positions of the cells (e.g. a task's ``intervene`` cells).
    intervention : simcell.models.Intervention
    rng : numpy.random.Generator

    Returns
    -------
    ndarray of int64, shape (n_cells, n_genes)
    """
    return TwinPosterior(cell_posterior(bundle, positions), intervention).same_law_sample(rng)
