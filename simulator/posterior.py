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

import hashlib
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
_GRID_POINTS = 41
_GRID = np.linspace(-5.0, 5.0, _GRID_POINTS)
_HERMITE_NODES, _HERMITE_WEIGHTS = np.polynomial.hermite.hermgauss(16)
#: cells whose draws take consecutive uniforms of the stream (it fixes the draws)
DEFAULT_CHUNK = 256
#: draw x cell x gene entries computed in one kernel call (memory bound)
_BLOCK_ENTRIES = 1 << 21
#: counts below this share their quadrature across a group's cells and draws
_X_CACHED = 32
#: the relaxed ε quadrature runs at rates e^{m + l} up to this (its rounding stays
#: far below the margin), and its pick stands where the uniform is farther than
#: this fraction of the total from both bounds of the picked node
_RELAXED_MAX_RATE = 100.0
_PICK_MARGIN = 1e-9

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
    """Samples of l_i from its grid posterior (step 1) and their grid points, each
    shape (n_samples, n_cells)."""
    grid = cells.library_size_sd[:, None] * _GRID[None, :]  # (n, L)
    total = cells.counts.sum(axis=1, dtype=np.float64)[:, None]
    scale = np.exp(cells.log_rate_mean + cells.noise_sd**2 / 2).sum(axis=1)[:, None]
    log_post = -0.5 * _GRID[None, :] ** 2 + grid * total - np.exp(grid) * scale
    log_post -= log_post.max(axis=1, keepdims=True)
    cdf = np.cumsum(np.exp(log_post), axis=1)
    cdf /= cdf[:, -1:]
    u = rng.random((n_samples, grid.shape[0]))
    index = np.minimum((u[:, :, None] > cdf[None, :, :]).sum(axis=2), grid.shape[1] - 1)
    values = np.take_along_axis(grid[None, :, :].repeat(n_samples, 0), index[:, :, None], 2)
    return values[..., 0], index


@numba.njit(parallel=True, nogil=True, cache=True)
def _posterior_twins_kernel(
    counts,
    log_rate_mean,
    group,
    n_groups,
    level,
    library,
    shift,
    rank,
    starts,
    nodes,
    log_weights,
    count_factor,
    node_spread,
    u_pick,
    u_delta,
    twins,
    pending,
    position,
    n_parts,
):  # pragma: no cover - compiled
    """Every posterior draw of the twins of a block of cells (steps 2, 3 and the twin).

    ``level`` and ``library`` (n_draws, n_rows) give each draw's grid point of l
    and its value; rows of one ``group`` (0 … n_groups − 1) have the same
    log-rate row m_i· and library grid. ``shift`` is (1, n_rows, n_genes) when Δ
    is the same for every draw, else (n_draws, n_rows, n_genes); ``rank`` (same
    shape) numbers the changed entries of a row, and the changed entry j of (draw
    s, row r) takes the uniforms ``u_pick`` (ε) and ``u_delta`` (δ) at
    ``starts[s, r] + rank[s, r, j]``, so the result does not depend on how the
    work is spread over threads. Entries with Δ = 0 are copied.

    The ε quadrature of an entry depends only on (m_ij, l, x_ij), and F(x − 1),
    F(x) only on those and the picked node; l lies on a 41-point grid and cells
    of a group share m_i·, so both are computed once per (gene, group, grid
    point, count[, node]) and shared by the group's cells and draws. The node is
    first picked on a relaxed quadrature, w_h e^{x n_h} e^{−λ (e^{n_h} − e^{n_0})}
    with λ = e^{m + l} (16 products per count once its 16 factors per grid point
    are known), whose cumulated weights are within ~1e-13 of the exact ones; the
    pick stands when the uniform lies farther than ``_PICK_MARGIN`` of the total
    from both bounds of the node, and is otherwise (or at rates above
    ``_RELAXED_MAX_RATE``) made on the exact quadrature. Every value kept is
    computed with the arithmetic of one draw at a time, so the draws are
    unchanged bit for bit.

    An entry whose rate is above the sequential range (``pending`` 2) or whose δ
    lies within the certification tolerance of a step (``pending`` 1) is settled
    outside: ``u_pick`` then holds its twin's rate, ``u_delta`` its δ (pending
    1 only) and ``position`` row · n_genes + j.
    """
    n_draws, n_rows = level.shape
    n_genes = counts.shape[1]
    n_nodes = nodes.size
    width = max(n_nodes, 1)
    n_levels = _GRID_POINTS
    varies = shift.shape[0] > 1
    for part in numba.prange(n_parts):
        cumulated = np.empty((n_levels, _X_CACHED, width))
        cumulated_key = np.full((n_levels, _X_CACHED), -1, dtype=np.int64)
        rate_at = np.empty((n_levels, width))
        rate_key = np.full((n_levels, width), -1, dtype=np.int64)
        below_at = np.empty((n_levels, _X_CACHED, width))
        cdf_at = np.empty((n_levels, _X_CACHED, width))
        cdf_key = np.full((n_levels, _X_CACHED, width), -1, dtype=np.int64)
        scratch = np.empty((1, 1, width))  # the quadrature of a count too large to share
        relaxed_factor = np.empty((n_levels, width))
        relaxed_ok = np.zeros(n_levels, dtype=np.bool_)
        relaxed_key = np.full(n_levels, -1, dtype=np.int64)
        relaxed_cum = np.empty((n_levels, _X_CACHED, width))
        relaxed_cum_key = np.full((n_levels, _X_CACHED), -1, dtype=np.int64)
        for j in range(part * n_genes // n_parts, (part + 1) * n_genes // n_parts):
            for r in range(n_rows):
                x = counts[r, j]
                if not varies and shift[0, r, j] == 0.0:
                    for s in range(n_draws):
                        twins[s, r, j] = x
                    continue
                key = j * n_groups + group[r]  # one (gene, group) pair
                shared = x < _X_CACHED
                fixed_scale = 0.0 if varies else math.exp(shift[0, r, j])
                for s in range(n_draws):
                    step = shift[s, r, j] if varies else shift[0, r, j]
                    if step == 0.0:
                        twins[s, r, j] = x
                        continue
                    t = level[s, r]
                    value = log_rate_mean[r, j] + library[s, r]
                    i = starts[s, r] + (rank[s, r, j] if varies else rank[0, r, j])
                    pick = -1
                    if n_nodes > 0 and shared:  # the relaxed quadrature, when it certifies
                        if relaxed_key[t] != key:
                            rate = math.exp(value)
                            relaxed_ok[t] = rate <= _RELAXED_MAX_RATE
                            for h in range(n_nodes):
                                relaxed_factor[t, h] = math.exp(-rate * node_spread[h])
                            relaxed_key[t] = key
                        if relaxed_ok[t]:
                            if relaxed_cum_key[t, x] != key:
                                running = 0.0
                                for h in range(n_nodes):
                                    running += count_factor[x, h] * relaxed_factor[t, h]
                                    relaxed_cum[t, x, h] = running
                                relaxed_cum_key[t, x] = key
                            total = relaxed_cum[t, x, n_nodes - 1]
                            if 1e-250 < total < 1e250:
                                target = u_pick[i] * total
                                margin = _PICK_MARGIN * total
                                for h in range(n_nodes):
                                    if relaxed_cum[t, x, h] > target:
                                        if relaxed_cum[t, x, h] - target > margin and (
                                            h == 0 or target - relaxed_cum[t, x, h - 1] > margin
                                        ):
                                            pick = h
                                        break
                    if n_nodes > 0 and pick < 0:  # ε | x, l from its quadrature posterior
                        if shared:
                            weights, tw, xw = cumulated, t, x
                        else:
                            weights, tw, xw = scratch, 0, 0
                        if not shared or cumulated_key[t, x] != key:
                            top = -np.inf
                            for h in range(n_nodes):
                                weight = log_weights[h] + x * nodes[h] - math.exp(value + nodes[h])
                                weights[tw, xw, h] = weight
                                top = max(top, weight)
                            running = 0.0
                            for h in range(n_nodes):
                                running += math.exp(weights[tw, xw, h] - top)
                                weights[tw, xw, h] = running
                            if shared:
                                cumulated_key[t, x] = key
                        target, pick = u_pick[i] * weights[tw, xw, n_nodes - 1], n_nodes - 1
                        for h in range(n_nodes):
                            if weights[tw, xw, h] > target:
                                pick = h
                                break
                    if n_nodes > 0:
                        value += nodes[pick]
                    else:
                        pick = 0
                    if rate_key[t, pick] != key:
                        rate_at[t, pick] = math.exp(value)
                        rate_key[t, pick] = key
                    rate = rate_at[t, pick]
                    scaled = rate * (math.exp(step) if varies else fixed_scale)
                    if rate > _SEQUENTIAL_MAX_RATE:  # interval computed with pdtr outside
                        u_pick[i] = scaled
                        pending[i] = 2
                        position[i] = r * n_genes + j
                        twins[s, r, j] = _UNCERTAIN
                        continue
                    if shared and cdf_key[t, x, pick] == key:
                        below, cdf = below_at[t, x, pick], cdf_at[t, x, pick]
                    else:
                        pmf = math.exp(-rate)  # F(x − 1), F(x) by the pmf recursion
                        cdf, below = pmf, 0.0
                        for k in range(1, x + 1):
                            pmf *= rate / k
                            below = cdf
                            cdf += pmf
                        if shared:
                            below_at[t, x, pick], cdf_at[t, x, pick] = below, cdf
                            cdf_key[t, x, pick] = key
                    delta = min(below + u_delta[i] * (cdf - below), _BELOW_ONE)
                    draw = _ppf_scalar(delta, scaled)
                    if draw == _UNCERTAIN:
                        u_pick[i] = scaled
                        u_delta[i] = delta
                        pending[i] = 1
                        position[i] = r * n_genes + j
                    twins[s, r, j] = draw


@numba.njit(parallel=True, nogil=True, cache=True)
def _concept_shift_kernel(change, effects, shift, n_changed):  # pragma: no cover - compiled
    """Δ_sij = Σ_k (v'_sik − v_ik) c_kj (exactly 0 where no changed concept acts) of
    every draw s and the number of non-zero Δ of each (draw, row); ``shift`` of
    shape (n_draws, n_rows, 0) counts without storing."""
    n_draws, n_rows = n_changed.shape
    n_genes = effects.shape[1]
    store = shift.shape[2] > 0
    for item in numba.prange(n_draws * n_rows):
        s, row = item // n_rows, item % n_rows
        count = 0
        for j in range(n_genes):
            acc = 0.0
            for k in range(change.shape[2]):
                if change[s, row, k] != 0.0:
                    acc += change[s, row, k] * effects[k, j]
            if store:
                shift[s, row, j] = acc
            if acc != 0.0:
                count += 1
        n_changed[s, row] = count


class _Uniforms:
    """The uniforms of the twin draws, each read at its place in the stream.

    After the library sizes (and concept draws), the draws consume the stream
    chunk by chunk of ``chunk`` cells: for each draw s in turn, ``rng.random(n)``
    for the ε picks of the chunk's changed entries, then ``rng.random(n)`` for
    their δ, in row-major order. With a PCG64 generator any cell's uniforms are
    read where they lie (the generator is advanced), so cells can be computed in
    any order holding one block's uniforms; with any other generator a chunk's
    uniforms are drawn when its first cell is needed, so cells must come chunk
    by chunk (:attr:`random_access` is False). Either way ``rng`` is left where
    drawing them one draw at a time leaves it.

    Parameters
    ----------
    rng : numpy.random.Generator
    changed : ndarray of int64, shape (n_draws, n_cells)
        Changed entries of each (draw, cell).
    chunk : int
    """

    def __init__(self, rng: np.random.Generator, changed: np.ndarray, chunk: int) -> None:
        n_draws, n_cells = changed.shape
        self._chunk, self._changed = chunk, changed
        # stream position of the first pick of every (draw, cell), and of each
        # chunk's first uniform, relative to the generator's position now
        self._first = np.zeros((n_draws, n_cells), dtype=np.int64)
        self._sizes = np.zeros((n_draws, -(-n_cells // chunk)), dtype=np.int64)
        self._chunk_start = np.zeros(self._sizes.shape[1] + 1, dtype=np.int64)
        position = 0
        for c, start in enumerate(range(0, n_cells, chunk)):
            part = changed[:, start : start + chunk]
            within = np.cumsum(part, axis=1) - part
            for s in range(n_draws):
                self._first[s, start : start + chunk] = position + within[s]
                self._sizes[s, c] = part[s].sum()
                position += 2 * int(self._sizes[s, c])
            self._chunk_start[c + 1] = position
        generator = rng.bit_generator
        self.random_access = (
            isinstance(generator, np.random.PCG64) and not generator.state["has_uint32"]
        )
        self._rng, self._loaded, self._loaded_chunk, self._cursor = rng, None, -1, None
        if self.random_access:
            self._state = generator.state
            self._reader = np.random.PCG64(0)
            generator.advance(position)

    def _read(self, begin: int, count: int, chunk: int) -> np.ndarray:
        if self.random_access:
            if self._cursor is None or begin < self._cursor:
                self._reader.state = self._state
                self._cursor = 0
            self._reader.advance(begin - self._cursor)
            raw = self._reader.random_raw(count)
            self._cursor = begin + count
            return (raw >> np.uint64(11)) * (1.0 / 9007199254740992.0)  # as Generator.random
        if self._loaded_chunk != chunk:  # chunks come in order: draw the next one
            size = int(self._chunk_start[chunk + 1] - self._chunk_start[chunk])
            self._loaded, self._loaded_chunk = self._rng.random(size), chunk
        offset = begin - int(self._chunk_start[chunk])
        return self._loaded[offset : offset + count]

    def fill(
        self, rows: np.ndarray, bounds: np.ndarray, u_pick: np.ndarray, u_delta: np.ndarray
    ) -> None:
        """Write the uniforms of the cells ``rows`` (increasing, within one chunk
        unless random access), draw s's from ``bounds[s]`` on, row after row."""
        breaks = np.flatnonzero((np.diff(rows) != 1) | (rows[1:] % self._chunk == 0)) + 1
        heads = np.concatenate([[0], breaks])
        counts = np.add.reduceat(self._changed[:, rows], heads, axis=1)  # (S, runs)
        begins = self._first[:, rows[heads]]
        chunks = rows[heads] // self._chunk
        for s in range(self._first.shape[0]):
            for target, deltas in ((u_pick, 0), (u_delta, 1)):
                at = int(bounds[s])
                for run in range(heads.size):
                    count = int(counts[s, run])
                    if not count:
                        continue
                    chunk = int(chunks[run])
                    begin = int(begins[s, run]) + deltas * int(self._sizes[s, chunk])
                    target[at : at + count] = self._read(begin, count, chunk)
                    at += count


def _row_groups(log_rate_mean: np.ndarray, library_size_sd: np.ndarray) -> np.ndarray:
    """Group number of each row, shape (n_rows,): rows of one group have the same
    m_i· and l prior bit for bit, so they share the quadratures of
    :func:`_posterior_twins_kernel`."""
    groups = np.empty(log_rate_mean.shape[0], dtype=np.int64)
    by_digest: dict[bytes, list[int]] = {}
    representative: list[int] = []
    for row in range(log_rate_mean.shape[0]):
        data = log_rate_mean[row].tobytes() + library_size_sd[row].tobytes()
        candidates = by_digest.setdefault(hashlib.blake2b(data, digest_size=16).digest(), [])
        for group in candidates:  # compared, not trusted to the digest
            other = representative[group]
            if library_size_sd[row] == library_size_sd[other] and np.array_equal(
                log_rate_mean[row], log_rate_mean[other]
            ):
                groups[row] = group
                break
        else:
            groups[row] = len(representative)
            candidates.append(len(representative))
            representative.append(row)
    return groups


def _sample_twins(
    counts: np.ndarray,
    log_rate_mean: np.ndarray,
    group: np.ndarray,
    level: np.ndarray,
    library: np.ndarray,
    shift: np.ndarray,
    sigma: float,
    u_pick: np.ndarray,
    u_delta: np.ndarray,
    bounds: np.ndarray,
) -> np.ndarray:
    """Posterior draws of the twins of a block of cells, shape (n_draws, n_rows, n_genes), int64.

    Parameters
    ----------
    counts : ndarray of int64, shape (n_rows, n_genes)
    log_rate_mean : ndarray, shape (n_rows, n_genes)
    group : ndarray of int64, shape (n_rows,)
        Rows of one group share m_i· and the library grid (see :func:`_row_groups`).
    level, library : ndarray, shape (n_draws, n_rows)
        Grid point and value of each draw of l_i.
    shift : ndarray, shape (1, n_rows, n_genes) or (n_draws, n_rows, n_genes)
        Δ_ij, one for every draw or one per draw; entries with Δ = 0 are the
        factual counts.
    sigma : float
        σ_ε.
    u_pick, u_delta : ndarray, shape (bounds[-1],)
        The uniforms (ε node, δ) of the changed entries, draw by draw, row by
        row; overwritten.
    bounds : ndarray of int64, shape (n_draws + 1,)
        Draw s owns the changed entries ``bounds[s]:bounds[s + 1]``.
    """
    if sigma > 0:
        nodes = np.sqrt(2.0) * sigma * _HERMITE_NODES
        log_weights = np.log(_HERMITE_WEIGHTS)
    else:
        nodes = log_weights = np.zeros(0)
    # the relaxed quadrature's factors: w_h e^{x n_h} and e^{n_h} − e^{n_0}
    count_factor = np.exp(log_weights[None, :] + np.arange(_X_CACHED)[:, None] * nodes[None, :])
    node_spread = np.exp(nodes) - np.exp(nodes[:1])
    n_draws = level.shape[0]
    changed = shift != 0.0
    rank = np.cumsum(changed, axis=2, dtype=np.int64) - 1
    per_row = rank[:, :, -1] + 1 if shift.shape[2] else np.zeros(shift.shape[:2], np.int64)
    per_row = np.broadcast_to(per_row, level.shape)
    starts = bounds[:-1, None] + np.cumsum(per_row, axis=1) - per_row
    _, group = np.unique(group, return_inverse=True)
    n_changed = int(bounds[-1])
    pending = np.zeros(n_changed, dtype=np.uint8)
    position = np.empty(n_changed, dtype=np.int64)
    twins = np.empty((n_draws, *counts.shape), dtype=np.int64)
    _posterior_twins_kernel(
        counts,
        log_rate_mean,
        group.astype(np.int64),
        int(group.max(initial=0)) + 1,
        level,
        library,
        shift,
        rank,
        np.ascontiguousarray(starts),
        nodes,
        log_weights,
        count_factor,
        node_spread,
        u_pick,
        u_delta,
        twins,
        pending,
        position,
        min(counts.shape[1], 8 * numba.get_num_threads()),
    )
    settle = np.flatnonzero(pending)
    if settle.size:
        where = position[settle]
        draw = np.searchsorted(bounds, settle, side="right") - 1
        large = settle[pending[settle] == 2]
        if large.size:  # rates above the sequential range: the interval from pdtr
            at = where[pending[settle] == 2]
            steps = shift.reshape(shift.shape[0], -1)[
                draw[pending[settle] == 2] if shift.shape[0] > 1 else 0, at
            ]
            rate = u_pick[large] / np.exp(steps)
            x = counts.reshape(-1)[at]
            below = np.where(x > 0, special.pdtr(np.maximum(x - 1, 0), rate), 0.0)
            top = special.pdtr(x, rate)
            u_delta[large] = np.minimum(below + u_delta[large] * (top - below), _BELOW_ONE)
        out = np.full(settle.size, _UNCERTAIN, dtype=np.int64)
        settle_uncertain(u_delta[settle], u_pick[settle], out)
        twins.reshape(n_draws, -1)[draw, where] = out
    return twins


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
        self._row_group: np.ndarray | None = None
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
        self._row_group = None
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

    def _groups(self) -> np.ndarray:
        if self._row_group is None:
            self._row_group = _row_groups(self.cells.log_rate_mean, self.cells.library_size_sd)
        return self._row_group

    def _draws(
        self, n_samples: int, rng: np.random.Generator, chunk: int
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Posterior twins of blocks of cells: (rows, twins, shape (n_samples, rows.size, n_genes)).

        ``chunk`` fixes where each draw's uniforms lie in the stream (see
        :class:`_Uniforms`), so the draws do not depend on the order or the blocks
        in which cells are computed; cells of one group are computed together, and
        share their quadratures.
        """
        cells = self.cells
        n_cells, n_genes = cells.counts.shape
        library, level = _library_size_draws(cells, n_samples, rng)  # (S, n)
        concept_draws = (
            None if self._fixed_shift is not None else self.concept_draws(n_samples, rng)
        )
        effects = np.ascontiguousarray(cells.concept_effects, dtype=np.float64)

        def shifts(rows: np.ndarray, store: bool = True) -> tuple[np.ndarray, np.ndarray]:
            if concept_draws is None:
                shift = np.ascontiguousarray(self._fixed_shift[rows], dtype=np.float64)[None]
                return shift, np.count_nonzero(shift, axis=2)
            change = concept_draws[:, rows] - cells.concepts[rows]
            shift = np.empty((n_samples, rows.size, n_genes if store else 0))
            n_changed = np.empty((n_samples, rows.size), dtype=np.int64)
            _concept_shift_kernel(change, effects, shift, n_changed)
            return shift, n_changed

        if concept_draws is None:
            changed = np.count_nonzero(self._fixed_shift, axis=1)[None].repeat(n_samples, 0)
        else:
            changed = np.empty((n_samples, n_cells), dtype=np.int64)
            for start in range(0, n_cells, chunk):
                changed[:, start : start + chunk] = shifts(
                    np.arange(start, min(start + chunk, n_cells)), store=False
                )[1]
        uniforms = _Uniforms(rng, changed, chunk)
        cell = np.arange(n_cells)
        span = n_cells if uniforms.random_access else chunk  # blocks stay within a span
        order = np.lexsort((cell, self._groups(), cell // span))
        block = max(1, _BLOCK_ENTRIES // (n_samples * max(n_genes, 1)))
        for first in range(0, n_cells, span):
            for start in range(first, min(first + span, n_cells), block):
                rows = order[start : min(start + block, first + span, n_cells)]
                sizes = changed[:, rows].sum(axis=1)
                bounds = np.zeros(n_samples + 1, dtype=np.int64)
                np.cumsum(sizes, out=bounds[1:])
                u_pick, u_delta = np.empty(bounds[-1]), np.empty(bounds[-1])
                uniforms.fill(rows, bounds, u_pick, u_delta)
                twins = _sample_twins(
                    np.ascontiguousarray(cells.counts[rows], dtype=np.int64),
                    np.ascontiguousarray(cells.log_rate_mean[rows], dtype=np.float64),
                    self._groups()[rows],
                    np.ascontiguousarray(level[:, rows]),
                    np.ascontiguousarray(library[:, rows]),
                    shifts(rows)[0],
                    cells.noise_sd,
                    u_pick,
                    u_delta,
                    bounds,
                )
                yield rows, twins

    def sample(self, rng: np.random.Generator, *, chunk: int = DEFAULT_CHUNK) -> np.ndarray:
        """One exact posterior draw of every cell's counterfactual counts.

        The Bayes-optimal sampler (``oracle_sample``): the draw shares the
        factual cell's exogenous posterior, so a gene the intervention does not
        change is the factual count.

        Parameters
        ----------
        rng : numpy.random.Generator
        chunk : int
            Cells whose draws take consecutive uniforms of the stream (the draw
            depends on it; the memory does not).

        Returns
        -------
        ndarray of int64, shape (n_cells, n_genes)
        """
        out = np.empty(self.cells.counts.shape, dtype=np.int64)
        for rows, twins in self._draws(1, rng, _check_chunk(chunk)):
            out[rows] = twins[0]
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
            Cells whose draws take consecutive uniforms of the stream (the draws
            depend on it; the memory does not).

        Returns
        -------
        ndarray, shape (n_cells, n_out)
        """
        if n_samples < 1:
            raise SimcellError(f"n_samples must be >= 1, got {n_samples}")
        out = None
        for rows, twins in self._draws(n_samples, rng, _check_chunk(chunk)):
            total = transform(twins[0])
            for twin in twins[1:]:  # summed in draw order
                total = total + transform(twin)
            value = total / n_samples
            if out is None:
                out = np.empty((self.cells.n_cells, *value.shape[1:]), dtype=value.dtype)
            out[rows] = value
        if out is None:
            return transform(self.cells.counts[:0].astype(np.int64))
        return out

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
