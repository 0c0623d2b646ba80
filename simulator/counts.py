"""Exact inverse-CDF counts, cell block by cell block.

For a block of cells the residual noise ε and the uniforms δ come from the
streams ``"residual"`` and ``"uniform"`` of that block, and

    x_ij = Q(δ_ij; exp(w_j + γ_{b_i j} + τ_{t_i j} + ω_{u_i j} + Σ_k v_ik c_kj + l_i + ε_ij))

is evaluated in one compiled pass, summing the terms in exactly that order, so
a counterfactual (other ``v``) and the factual cell share every exogenous term
and ``do()`` of nothing reproduces the factual counts bit for bit.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numba
import numpy as np
import scipy.sparse as sp

from simcell import SimcellError
from simcell.simulator._rng import CELL_BLOCK, stream
from simcell.simulator.nbinom import _binom_scalar, _nb_scalar, settle_binom, settle_nb
from simcell.simulator.params import MAX_COUNT
from simcell.simulator.poisson import _SEQUENTIAL_MAX_RATE, _UNCERTAIN, _ppf_flat, _ppf_scalar
from simcell.simulator.world import World


@dataclass(frozen=True, eq=False)
class RowBatch:
    """Rows to evaluate within one chunk of cells.

    Attributes
    ----------
    local : ndarray of int64, shape (n_rows,)
        Row of each output in the chunk's noise arrays.
    batch, tissue, cell_type : ndarray of int64, shape (n_rows,)
    library_size : ndarray, shape (n_rows,)
    concepts : ndarray, shape (n_rows, n_concepts)
    capture : ndarray, shape (n_rows,), or None
        Capture efficiency p_i of each row (realistic counts only).
    """

    local: np.ndarray
    batch: np.ndarray
    tissue: np.ndarray
    cell_type: np.ndarray
    library_size: np.ndarray
    concepts: np.ndarray
    capture: np.ndarray | None = None


@numba.njit(inline="always")
def _log_rate(world_arrays, row, j, batch, tissue, cell_type, library_size, concepts, noise):
    baseline, batch_effects, tissue_effects, cell_type_effects, concept_effects, noise_sd = (
        world_arrays
    )
    acc = baseline[j] + batch_effects[batch[row], j]
    acc += tissue_effects[tissue[row], j]
    acc += cell_type_effects[cell_type[row], j]
    for k in range(concepts.shape[1]):
        acc += concepts[row, k] * concept_effects[k, j]
    acc += library_size[row]
    acc += noise_sd * np.float64(noise)
    return acc


@numba.njit(nogil=True, cache=True)
def _counts_kernel(
    world_arrays, local, batch, tissue, cell_type, library_size, concepts, residual, uniform, out
):  # pragma: no cover - compiled
    n_genes = out.shape[1]
    for row in range(out.shape[0]):
        i = local[row]
        for j in range(n_genes):
            log_rate = _log_rate(
                world_arrays,
                row,
                j,
                batch,
                tissue,
                cell_type,
                library_size,
                concepts,
                residual[i, j],
            )
            rate = math.exp(log_rate)
            if rate > _SEQUENTIAL_MAX_RATE:
                out[row, j] = _UNCERTAIN
            else:
                out[row, j] = _ppf_scalar(uniform[i, j], rate)


@numba.njit(nogil=True, cache=True)
def _rates_at(
    world_arrays, rows, genes, local, batch, tissue, cell_type, library_size, concepts, residual
):  # pragma: no cover - compiled
    rates = np.empty(rows.size)
    for n in range(rows.size):
        row, j = rows[n], genes[n]
        rates[n] = math.exp(
            _log_rate(
                world_arrays,
                row,
                j,
                batch,
                tissue,
                cell_type,
                library_size,
                concepts,
                residual[local[row], j],
            )
        )
    return rates


@numba.njit(nogil=True, cache=True)
def _dense_to_csr(dense):  # pragma: no cover - compiled
    n_rows, n_cols = dense.shape
    indptr = np.zeros(n_rows + 1, dtype=np.int32)  # a chunk holds < 2^31 entries
    for r in range(n_rows):
        count = 0
        for c in range(n_cols):
            if dense[r, c] != 0:
                count += 1
        indptr[r + 1] = indptr[r] + count
    indices = np.empty(indptr[-1], dtype=np.int32)
    data = np.empty(indptr[-1], dtype=np.int32)
    for r in range(n_rows):
        pos = indptr[r]
        for c in range(n_cols):
            if dense[r, c] != 0:
                indices[pos] = c
                data[pos] = dense[r, c]
                pos += 1
    return indptr, indices, data


def world_arrays(world: World, noise_sd: float) -> tuple:
    """The tuple of world arrays the compiled kernels take."""
    return (
        np.ascontiguousarray(world.baseline, dtype=np.float64),
        np.ascontiguousarray(world.batch_effects, dtype=np.float64),
        np.ascontiguousarray(world.tissue_effects, dtype=np.float64),
        np.ascontiguousarray(world.cell_type_effects, dtype=np.float64),
        np.ascontiguousarray(world.concept_effects, dtype=np.float64),
        float(noise_sd),
    )


def block_noise(seed: int, block: int, n_rows: int, n_genes: int) -> tuple[np.ndarray, np.ndarray]:
    """Standard-normal residual noise (float32) and uniforms δ (float64) of a cell block.

    Returns
    -------
    residual : ndarray of float32, shape (n_rows, n_genes)
        ε_ij / σ_ε.
    uniform : ndarray of float64, shape (n_rows, n_genes)
        δ_ij.
    """
    residual = stream(seed, "residual", block).standard_normal((n_rows, n_genes), dtype=np.float32)
    uniform = stream(seed, "uniform", block).random((n_rows, n_genes))
    return residual, uniform


def chunk_noise(seed: int, start: int, stop: int, n_genes: int) -> tuple[np.ndarray, np.ndarray]:
    """Residual noise and uniforms of cells [start, stop); ``start`` is block aligned."""
    assert start % CELL_BLOCK == 0
    residual = np.empty((stop - start, n_genes), dtype=np.float32)
    uniform = np.empty((stop - start, n_genes))
    for offset in range(0, stop - start, CELL_BLOCK):
        rows = min(CELL_BLOCK, stop - start - offset)
        block = (start + offset) // CELL_BLOCK
        residual[offset : offset + rows], uniform[offset : offset + rows] = block_noise(
            seed, block, rows, n_genes
        )
    return residual, uniform


@numba.njit(nogil=True, cache=True)
def _realistic_kernel(
    world_arrays,
    dispersion,
    local,
    batch,
    tissue,
    cell_type,
    library_size,
    concept_term,
    residual,
    uniform,
    rates,
    out,
):  # pragma: no cover - compiled
    """Pre-capture counts: Q_NB(δ; λ, α_j) (α_j > 0) or Q_Poisson(δ; λ) (α_j = 0)."""
    baseline, batch_effects, tissue_effects, cell_type_effects, _, noise_sd = world_arrays
    n_genes = out.shape[1]
    for row in range(out.shape[0]):
        i = local[row]
        for j in range(n_genes):
            acc = baseline[j] + batch_effects[batch[row], j]
            acc += tissue_effects[tissue[row], j]
            acc += cell_type_effects[cell_type[row], j]
            acc += concept_term[row, j]
            acc += library_size[row]
            acc += noise_sd * np.float64(residual[i, j])
            rate = math.exp(acc)
            rates[row, j] = rate
            if dispersion[j] > 0.0:
                out[row, j] = _nb_scalar(uniform[i, j], rate, dispersion[j])
            elif rate > _SEQUENTIAL_MAX_RATE:
                out[row, j] = _UNCERTAIN
            else:
                out[row, j] = _ppf_scalar(uniform[i, j], rate)


@numba.njit(nogil=True, cache=True)
def _concept_term_kernel(concepts, type_index, typed, pairs, out):  # pragma: no cover
    """Σ_k v_k c_{ukj} + Σ_{k<k'} v_k v_k' d_{kk'j}, summed in a fixed order per entry."""
    n_rows, n_concepts = concepts.shape
    with_pairs = pairs.shape[0] > 0
    for row in range(n_rows):
        u = type_index[row]
        for j in range(out.shape[1]):
            acc = 0.0
            for k in range(n_concepts):
                acc += concepts[row, k] * typed[u, k, j]
            if with_pairs:
                for k in range(n_concepts):
                    for k2 in range(k + 1, n_concepts):
                        acc += concepts[row, k] * concepts[row, k2] * pairs[k, k2, j]
            out[row, j] = acc


@dataclass(frozen=True, eq=False)
class ConceptTerms:
    """The concept part of the log-rate of realistic / graded-difficulty scenarios.

    Attributes
    ----------
    typed : ndarray, shape (n_types, n_concepts, n_genes)
        c_{ukj} per cell type (n_types = n_cell_types), or the shared c_kj (n_types = 1).
    pairs : ndarray, shape (n_concepts, n_concepts, n_genes) or (0, 0, n_genes)
        d_{kk'j}; empty when concept × concept interactions are off.
    saturate : ndarray of bool, shape (n_concepts,)
        Concepts entering as h·tanh(v / h) (continuous ones when h > 0).
    saturation : float
        h.
    """

    typed: np.ndarray
    pairs: np.ndarray
    saturate: np.ndarray
    saturation: float

    def __call__(self, concepts: np.ndarray, cell_type: np.ndarray) -> np.ndarray:
        """The concept term of rows, shape (n_rows, n_genes)."""
        v = np.array(concepts, dtype=np.float64, order="C")
        if self.saturate.any():
            h = self.saturation
            v[:, self.saturate] = h * np.tanh(v[:, self.saturate] / h)
        index = (
            np.asarray(cell_type, dtype=np.int64)
            if self.typed.shape[0] > 1
            else np.zeros(len(v), dtype=np.int64)
        )
        out = np.empty((v.shape[0], self.typed.shape[2]))
        _concept_term_kernel(v, index, self.typed, self.pairs, out)
        return out


def concept_terms(params, world: World) -> ConceptTerms:
    """The :class:`ConceptTerms` of a simulation's world."""
    typed = world.typed_concept_effects
    if typed is None:
        typed = world.concept_effects[None]
    pairs = world.concept_pair_effects
    if pairs is None:
        pairs = np.zeros((0, 0, world.concept_effects.shape[1]))
    saturate = np.array(
        [kind == "continuous" and params.concept_saturation > 0 for kind in params.kinds],
        dtype=bool,
    )
    return ConceptTerms(
        typed=np.ascontiguousarray(typed, dtype=np.float64),
        pairs=np.ascontiguousarray(pairs, dtype=np.float64),
        saturate=saturate,
        saturation=float(params.concept_saturation),
    )


@numba.njit(nogil=True, cache=True)
def _thinning_kernel(local, capture, thinning, counts):  # pragma: no cover - compiled
    """y = Q_Bin(ν; x, p_i) in place over the non-zero counts."""
    for row in range(counts.shape[0]):
        i = local[row]
        p = capture[row]
        for j in range(counts.shape[1]):
            x = counts[row, j]
            if x > 0:
                counts[row, j] = _binom_scalar(thinning[i, j], x, p)


def chunk_thinning(seed: int, start: int, stop: int, n_genes: int) -> np.ndarray:
    """Thinning uniforms ν of cells [start, stop) from the streams ``"thinning"`` of
    their blocks; ``start`` is block aligned. Shape (stop − start, n_genes), float64."""
    assert start % CELL_BLOCK == 0
    out = np.empty((stop - start, n_genes))
    for offset in range(0, stop - start, CELL_BLOCK):
        rows = min(CELL_BLOCK, stop - start - offset)
        block = (start + offset) // CELL_BLOCK
        out[offset : offset + rows] = stream(seed, "thinning", block).random((rows, n_genes))
    return out


def evaluate_counts_realistic(
    arrays: tuple,
    terms: ConceptTerms,
    dispersion: np.ndarray | None,
    rows: RowBatch,
    residual: np.ndarray,
    uniform: np.ndarray,
    thinning: np.ndarray | None,
) -> np.ndarray:
    """Realistic counts of ``rows``: negative binomial, then binomial thinning.

    x_ij = Q_NB(δ_ij; λ_ij, α_j) (Poisson where α_j is off), then
    y_ij = Q_Bin(ν_ij; x_ij, p_i) when ``thinning`` is given. Every exogenous
    draw (ε, δ, ν, p_i) is the factual cell's, so a twin differs only where λ does.

    Parameters
    ----------
    arrays : tuple
        :func:`world_arrays`.
    terms : ConceptTerms
        The concept part of the log-rate.
    dispersion : ndarray, shape (n_genes,), or None
        α_j; ``None`` for Poisson counts.
    rows : RowBatch
        With ``capture`` set when ``thinning`` is given.
    residual, uniform : ndarray, shape (n_chunk, n_genes)
        The chunk's ε / σ_ε and δ.
    thinning : ndarray, shape (n_chunk, n_genes), or None
        The chunk's ν.

    Returns
    -------
    ndarray of int32, shape (n_rows, n_genes)
    """
    n_rows, n_genes = rows.local.size, residual.shape[1]
    local = rows.local.astype(np.int64)
    alpha = (
        np.zeros(n_genes) if dispersion is None else np.ascontiguousarray(dispersion, np.float64)
    )
    rates = np.empty((n_rows, n_genes))
    out = np.empty((n_rows, n_genes), dtype=np.int64)
    _realistic_kernel(
        arrays,
        alpha,
        local,
        rows.batch.astype(np.int64),
        rows.tissue.astype(np.int64),
        rows.cell_type.astype(np.int64),
        np.ascontiguousarray(rows.library_size, dtype=np.float64),
        terms(rows.concepts, rows.cell_type),
        residual,
        uniform,
        rates,
        out,
    )
    bad_rows, bad_genes = np.nonzero(out == _UNCERTAIN)
    if bad_rows.size:
        lam = rates[bad_rows, bad_genes]
        if not np.all(np.isfinite(lam)) or lam.max() > MAX_COUNT:
            raise SimcellError(_overflow_message(float(np.max(lam))))
        q = np.ascontiguousarray(uniform[local[bad_rows], bad_genes])
        a = alpha[bad_genes]
        value = np.full(bad_rows.size, _UNCERTAIN, dtype=np.int64)
        nb = a > 0
        if nb.any():
            part = np.full(int(nb.sum()), _UNCERTAIN, dtype=np.int64)
            settle_nb(q[nb], lam[nb], a[nb], part)
            value[nb] = part
        if (~nb).any():
            value[~nb] = _ppf_flat(np.ascontiguousarray(q[~nb]), np.ascontiguousarray(lam[~nb]))
        out[bad_rows, bad_genes] = value
    if thinning is not None:
        capture = np.ascontiguousarray(rows.capture, dtype=np.float64)
        _thinning_kernel(local, capture, thinning, out)
        bad_rows, bad_genes = np.nonzero(out == _UNCERTAIN)
        if bad_rows.size:  # recompute x (deterministic) to settle the thinning by scipy
            full = evaluate_counts_realistic(
                arrays, terms, dispersion, rows, residual, uniform, None
            )
            n = full[bad_rows, bad_genes].astype(np.int64)
            value = np.full(bad_rows.size, _UNCERTAIN, dtype=np.int64)
            settle_binom(thinning[local[bad_rows], bad_genes], n, capture[bad_rows], value)
            out[bad_rows, bad_genes] = value
    if out.size and out.max() > MAX_COUNT:
        raise SimcellError(_overflow_message(float(rates.max())))
    return out.astype(np.int32)


def evaluate_counts(
    arrays: tuple, rows: RowBatch, residual: np.ndarray, uniform: np.ndarray
) -> np.ndarray:
    """Counts of ``rows`` given their chunk's noise, shape (n_rows, n_genes), int32."""
    out = np.empty((rows.local.size, residual.shape[1]), dtype=np.int32)
    args = (
        rows.local.astype(np.int64),
        rows.batch.astype(np.int64),
        rows.tissue.astype(np.int64),
        rows.cell_type.astype(np.int64),
        np.ascontiguousarray(rows.library_size, dtype=np.float64),
        np.ascontiguousarray(rows.concepts, dtype=np.float64),
    )
    _counts_kernel(arrays, *args, residual, uniform, out)
    uncertain_rows, uncertain_genes = np.nonzero(out == _UNCERTAIN)
    if uncertain_rows.size:
        rates = _rates_at(
            arrays,
            uncertain_rows.astype(np.int64),
            uncertain_genes.astype(np.int64),
            *args,
            residual,
        )
        q = uniform[rows.local[uncertain_rows], uncertain_genes]
        out[uncertain_rows, uncertain_genes] = settle_counts(np.ascontiguousarray(q), rates)
    return out


def settle_counts(q: np.ndarray, rates: np.ndarray) -> np.ndarray:
    """Q(q; λ) of the entries the sequential kernel leaves uncertain, checked to fit int32.

    Parameters
    ----------
    q : ndarray of float64, shape (n,)
    rates : ndarray of float64, shape (n,)

    Returns
    -------
    ndarray of int32, shape (n,)

    Raises
    ------
    SimcellError
        If a rate is not finite or above the largest int32, or a count does not
        fit int32: the bundle stores int32 counts, and a wrapped count would be
        silently wrong.
    """
    bad = ~np.isfinite(rates) | (rates > MAX_COUNT)
    if bad.any():
        raise SimcellError(_overflow_message(float(np.max(rates[bad]))))
    counts = _ppf_flat(q, rates)
    if counts.size and counts.max() > MAX_COUNT:
        raise SimcellError(_overflow_message(float(rates[np.argmax(counts)])))
    return counts.astype(np.int32)


def _overflow_message(rate: float) -> str:
    return (
        f"a count of rate {rate:.3g} does not fit the bundle's int32 counts "
        f"(largest {MAX_COUNT}); lower baseline_range, noise_sd or the effect sds"
    )


def to_csr(dense: np.ndarray) -> sp.csr_matrix:
    """CSR (int32 data and indices) of a dense int32 count matrix."""
    indptr, indices, data = _dense_to_csr(dense)
    return sp.csr_matrix((data, indices, indptr), shape=dense.shape)


def chunk_bounds(n_cells: int, chunk_size: int) -> list[tuple[int, int]]:
    """Block-aligned [start, stop) chunks; ``chunk_size`` is rounded up to a whole block."""
    size = max(CELL_BLOCK, -(-int(chunk_size) // CELL_BLOCK) * CELL_BLOCK)
    return [(start, min(start + size, n_cells)) for start in range(0, n_cells, size)]


def map_chunks(
    work: Callable[[int, int], object],
    bounds: Sequence[tuple[int, int]],
    n_threads: int,
) -> Iterator[object]:
    """Run ``work(start, stop)`` on every chunk, yielding results in chunk order.

    Results never depend on ``n_threads``: each chunk reads only its own streams.
    """
    if n_threads <= 1 or len(bounds) <= 1:
        for start, stop in bounds:
            yield work(start, stop)
        return
    with ThreadPoolExecutor(max_workers=n_threads) as pool:
        pending = []
        for start, stop in bounds:
            pending.append(pool.submit(work, start, stop))
            # keep at most two chunks per thread in flight to bound memory
            while len(pending) > 2 * n_threads:
                yield pending.pop(0).result()
        for future in pending:
            yield future.result()
