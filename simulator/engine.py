"""The count engine: count jobs over cell chunks, their executors and their sinks.

A :class:`CountJob` computes the exact counts (:mod:`simcell.simulator.counts`) of
any chunk of cells and of the counterfactual rows whose source cell lies in it;
:func:`count_pass` runs it over every chunk on threads or on Dask and appends the
results, in chunk order, to two sinks (:class:`CSRBuilder` in memory, or the
on-disk appender of :mod:`simcell.simulator.stream`). Every random quantity is
keyed by cell block, so the counts do not depend on the chunk size, the number
of threads, the engine or the device.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Literal

import numpy as np
import scipy.sparse as sp

from simcell import SimcellError
from simcell._atomic import raise_if_stopped
from simcell._device import resolve_device
from simcell.simulator._rng import CELL_BLOCK
from simcell.simulator.cells import CellStates
from simcell.simulator.counts import (
    ConceptTerms,
    RowBatch,
    chunk_noise,
    chunk_thinning,
    concept_terms,
    evaluate_counts,
    evaluate_counts_realistic,
    map_chunks,
    to_csr,
    world_arrays,
)
from simcell.simulator.params import MAX_COUNT, SimulationParams
from simcell.simulator.world import World

#: default number of cells evaluated together (rounded to whole blocks)
DEFAULT_CHUNK = 1024

Progress = Callable[[int], None]
Engine = Literal["threads", "dask"]


@dataclass(frozen=True, eq=False)
class CounterfactualRequest:
    """Rows to evaluate under edited concepts.

    Attributes
    ----------
    source : ndarray of int64, shape (n_rows,)
        Position of each row's factual cell.
    concepts : ndarray, shape (n_rows, n_concepts)
        The counterfactual concepts of each row.
    """

    source: np.ndarray
    concepts: np.ndarray


def n_workers(n_threads: int | None) -> int:
    """The number of workers to run: ``n_threads``, or every core when not given."""
    return max(1, int(n_threads)) if n_threads else max(1, os.cpu_count() or 1)


def _rows(cells: CellStates, source: np.ndarray, concepts: np.ndarray, start: int) -> RowBatch:
    return RowBatch(
        local=(source - start).astype(np.int64),
        batch=cells.batch[source],
        tissue=cells.tissue[source],
        cell_type=cells.cell_type[source],
        library_size=cells.library_size[source],
        concepts=concepts,
        capture=None if cells.capture is None else cells.capture[source],
    )


@dataclass(frozen=True, eq=False)
class CountJob:
    """Everything needed to compute the counts of any chunk of cells.

    A plain, picklable object: the same job runs in a thread, or on a Dask
    worker after being scattered once.
    """

    arrays: tuple
    cells: CellStates
    request: CounterfactualRequest
    seed: int
    n_genes: int
    device: str = "cpu"
    #: α_j of negative-binomial counts (None: Poisson)
    dispersion: np.ndarray | None = None
    #: counts are binomially thinned by the cells' capture efficiencies
    thinned: bool = False
    #: the concept part of the log-rate of realistic scenarios (None: the paper's)
    terms: ConceptTerms | None = None

    @property
    def realistic(self) -> bool:
        return self.terms is not None

    def noise(self, start: int, stop: int) -> tuple:
        """The exogenous draws of cells [start, stop): ε, δ and (when thinned) ν."""
        residual, uniform = chunk_noise(self.seed, start, stop, self.n_genes)
        thinning = chunk_thinning(self.seed, start, stop, self.n_genes) if self.thinned else None
        return residual, uniform, thinning

    def _evaluate(self, rows, residual, uniform, thinning=None) -> np.ndarray:
        if self.realistic:  # the realistic layers run on the CPU kernels (same counts)
            return evaluate_counts_realistic(
                self.arrays, self.terms, self.dispersion, rows, residual, uniform, thinning
            )
        if self.device == "cpu":
            return evaluate_counts(self.arrays, rows, residual, uniform)
        import torch

        from simcell.simulator._torch_counts import evaluate_counts_torch

        return evaluate_counts_torch(
            self.arrays, rows, residual, uniform, torch.device(self.device)
        )

    def __call__(self, start: int, stop: int) -> tuple[sp.csr_matrix, sp.csr_matrix, int]:
        """Factual counts of cells [start, stop) and the twins whose source is in it."""
        residual, uniform, thinning = self.noise(start, stop)
        index = np.arange(start, stop)
        factual = self._evaluate(
            _rows(self.cells, index, self.cells.concepts[start:stop], start),
            residual,
            uniform,
            thinning,
        )
        lo, hi = np.searchsorted(self.request.source, [start, stop])
        twin = self._evaluate(
            _rows(self.cells, self.request.source[lo:hi], self.request.concepts[lo:hi], start),
            residual,
            uniform,
            thinning,
        )
        return to_csr(factual), to_csr(twin), stop - start


def count_job(
    params: SimulationParams,
    world: World,
    cells: CellStates,
    seed: int,
    request: CounterfactualRequest,
    device: str = "cpu",
) -> CountJob:
    """The :class:`CountJob` of a simulation (``device`` resolved: ``"auto"`` picks CUDA
    when present)."""
    return CountJob(
        arrays=world_arrays(world, params.noise_sd),
        cells=cells,
        request=request,
        seed=seed,
        n_genes=params.n_genes,
        device=resolve_device(device),
        dispersion=world.dispersion,
        thinned=cells.capture is not None,
        terms=concept_terms(params, world) if params.realistic else None,
    )


def run_chunks(
    job: CountJob,
    bounds: list[tuple[int, int]],
    n_threads: int | None,
    engine: Engine = "threads",
    scheduler: str | None = None,
) -> Iterator[tuple[sp.csr_matrix, sp.csr_matrix, int]]:
    """Run ``job`` over chunks on an engine, yielding results in chunk order."""
    if engine == "threads":
        yield from map_chunks(job, bounds, n_workers(n_threads))
    elif engine == "dask":
        from simcell.simulator._dask import map_chunks_dask

        yield from map_chunks_dask(job, bounds, n_workers=n_workers(n_threads), scheduler=scheduler)
    else:
        raise SimcellError(f"engine must be 'threads' or 'dask', got {engine!r}")


def count_pass(
    job: CountJob,
    bounds: list[tuple[int, int]],
    sinks: tuple,
    *,
    n_threads: int | None,
    engine: Engine,
    scheduler: str | None,
    progress: Progress | None,
) -> None:
    """Run the count job over every chunk, in order, appending factual rows to
    ``sinks[0]`` and twins to ``sinks[1]`` (in memory or on disk)."""
    factual_sink, twin_sink = sinks
    chunks = run_chunks(job, bounds, n_threads, engine, scheduler)
    try:
        for factual_part, twin_part, n_done in chunks:
            # a Ctrl-C / SIGTERM whose KeyboardInterrupt a library callback swallowed
            # ("Exception ignored in ...") still stops the run here
            raise_if_stopped()
            factual_sink.append(factual_part)
            twin_sink.append(twin_part)
            if progress is not None:
                progress(n_done)
        raise_if_stopped()
    finally:
        chunks.close()  # stop the workers now, not whenever the generator is collected


def evaluate_requests(
    params: SimulationParams,
    world: World,
    cells: CellStates,
    seed: int,
    request: CounterfactualRequest,
    *,
    n_threads: int | None = None,
) -> sp.csr_matrix:
    """Counts of arbitrary (cell, concepts) rows, regenerating only their blocks.

    Returns
    -------
    scipy.sparse.csr_matrix of int32, shape (n_rows, n_genes)
        In the order of ``request``.
    """
    job = count_job(params, world, cells, seed, request)
    order = np.argsort(request.source, kind="stable")
    source = request.source[order]
    blocks = np.unique(source // CELL_BLOCK)

    def work(block_start: int, block_stop: int) -> sp.csr_matrix:
        lo, hi = np.searchsorted(source, [block_start, block_stop])
        noise = job.noise(block_start, block_stop)
        rows = _rows(cells, source[lo:hi], request.concepts[order[lo:hi]], block_start)
        return to_csr(job._evaluate(rows, *noise))

    bounds = [(int(b) * CELL_BLOCK, min((int(b) + 1) * CELL_BLOCK, params.n_cells)) for b in blocks]
    results = list(map_chunks(work, bounds, n_workers(n_threads)))
    if not results:
        return sp.csr_matrix((0, params.n_genes), dtype=np.int32)
    counts = sp.vstack(results, format="csr")
    inverse = np.empty_like(order)
    inverse[order] = np.arange(order.size)
    return _csr_int32(counts[inverse])


def _csr_int32(matrix: sp.csr_matrix) -> sp.csr_matrix:
    matrix = sp.csr_matrix(matrix)
    if matrix.data.dtype != np.int32 and matrix.nnz and matrix.data.max() > MAX_COUNT:
        raise SimcellError(f"a count ({matrix.data.max()}) does not fit int32; refusing to wrap it")
    matrix.data = matrix.data.astype(np.int32, copy=False)
    matrix.indices = matrix.indices.astype(np.int32, copy=False)
    return matrix


class CSRBuilder:
    """Appends CSR row blocks into buffers sized for the dense worst case.

    The buffers come from ``np.empty``: pages never written are never resident,
    so the reserve costs address space, not memory, and no block is kept or
    copied twice (peak = the matrix itself plus the block being appended).
    """

    def __init__(self, n_rows: int, n_cols: int) -> None:
        capacity = n_rows * n_cols
        self.index_type = np.int32 if capacity < np.iinfo(np.int32).max else np.int64
        self.n_cols = n_cols
        self.data = np.empty(capacity, dtype=np.int32)
        self.indices = np.empty(capacity, dtype=np.int32)
        self.indptr = np.zeros(n_rows + 1, dtype=self.index_type)
        self.row = self.nnz = 0

    def append(self, part: sp.csr_matrix) -> None:
        end = self.nnz + part.nnz
        self.data[self.nnz : end] = part.data
        self.indices[self.nnz : end] = part.indices
        self.indptr[self.row + 1 : self.row + part.shape[0] + 1] = part.indptr[1:] + self.nnz
        self.row += part.shape[0]
        self.nnz = end

    def finish(self) -> sp.csr_matrix:
        """The matrix built so far (views of the buffers, no copy)."""
        return sp.csr_matrix(
            (self.data[: self.nnz], self.indices[: self.nnz], self.indptr[: self.row + 1]),
            shape=(self.row, self.n_cols),
        )
