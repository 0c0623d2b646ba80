"""``simulate``: a whole dataset in memory, with exact counterfactual twins."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

import simcell
from simcell import SimcellError
from simcell._atomic import raise_if_stopped
from simcell._device import resolve_device
from simcell.simulator import schema as S
from simcell.simulator._rng import CELL_BLOCK, stream
from simcell.simulator.cells import CellStates, draw_cells, intervene_concepts
from simcell.simulator.corrupt import CorruptionRecord
from simcell.simulator.counts import (
    RowBatch,
    chunk_bounds,
    chunk_noise,
    evaluate_counts,
    map_chunks,
    to_csr,
    world_arrays,
)
from simcell.simulator.params import (
    MAX_COUNT,
    InterventionMode,
    SimulationParams,
    check_memory,
)
from simcell.simulator.tasks import SPLIT_LABELS, Task, make_tasks
from simcell.simulator.world import World, draw_world

#: default number of cells evaluated together (rounded to whole blocks)
DEFAULT_CHUNK = 1024

Progress = Callable[[int], None]
Engine = Literal["threads", "dask"]


def concept_names(n_concepts: int) -> list[str]:
    return [f"concept_{k}" for k in range(n_concepts)]


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


class Dataset:
    """A simulated dataset: its world, every cell's exogenous state and counts.

    Attributes
    ----------
    params : SimulationParams
    seed : int
    scenario : str
    world : World
    cells : CellStates
    tasks : list of Task
    factual : AnnData
        Laid out as the bundle's ``factual.h5ad``.
    counterfactuals : AnnData
        The tasks' ground truth, laid out as ``counterfactual.h5ad``.
    corruption : CorruptionRecord or None
    """

    def __init__(
        self,
        *,
        params: SimulationParams,
        seed: int,
        scenario: str,
        world: World,
        cells: CellStates,
        tasks: list[Task],
        factual: ad.AnnData,
        counterfactuals: ad.AnnData,
        corruption: CorruptionRecord | None,
    ) -> None:
        self.params = params
        self.seed = seed
        self.scenario = scenario
        self.world = world
        self.cells = cells
        self.tasks = tasks
        self.factual = factual
        self.counterfactuals = counterfactuals
        self.corruption = corruption

    def __repr__(self) -> str:
        return (
            f"Dataset(scenario={self.scenario!r}, seed={self.seed}, "
            f"n_cells={self.params.n_cells}, n_genes={self.params.n_genes}, "
            f"tasks={len(self.tasks)})"
        )

    def _positions(self, cells: Sequence[int] | Sequence[str] | np.ndarray) -> np.ndarray:
        if isinstance(cells, (list, tuple)) and cells:
            kinds = {isinstance(c, str) for c in cells}
            if len(kinds) > 1:
                raise SimcellError("cells must be all obs names or all positions, not a mix")
        values = np.atleast_1d(np.asarray(cells))
        if values.dtype.kind in "OUS":
            index = self.factual.obs_names.get_indexer(values.astype(str))
            if (index < 0).any():
                missing = values[index < 0][:5].tolist()
                raise SimcellError(f"unknown cell name(s): {missing}")
            return index.astype(np.int64)
        if values.dtype.kind not in "iu":
            raise SimcellError("cells must be obs names or integer positions")
        n = self.params.n_cells
        if ((values < -n) | (values >= n)).any():
            raise SimcellError(f"cell position out of range for {n} cells")
        return np.where(values < 0, values + n, values).astype(np.int64)

    def _concept_index(self, key: int | str) -> int:
        names = concept_names(self.params.n_concepts)
        if isinstance(key, str):
            if key not in names:
                raise SimcellError(f"unknown concept {key!r}; concepts are {names}")
            return names.index(key)
        if not 0 <= int(key) < len(names):
            raise SimcellError(f"concept {key} out of range 0..{len(names) - 1}")
        return int(key)

    def counterfactual(
        self,
        cells: Sequence[int] | Sequence[str] | np.ndarray,
        do: Mapping[int | str, float | np.ndarray] | None = None,
        mode: InterventionMode = "causal",
        *,
        n_threads: int | None = None,
    ) -> ad.AnnData:
        """Exact counterfactual twins of ``cells`` under ``do(v_k := value)``.

        Every exogenous quantity (batch, tissue, cell type, library size, ε, δ, η)
        is kept; only the concepts the intervention changes (and, in ``causal``
        mode, their descendants in the concept DAG) change.

        Parameters
        ----------
        cells : sequence of str or int
            Obs names or positions.
        do : mapping of concept (name or index) to value(s), optional
            A value is a scalar or an array of shape (n_cells,). Empty: the
            factual cells, bit for bit.
        mode : {"causal", "direct"}
        n_threads : int, optional

        Returns
        -------
        AnnData
            Laid out as ``counterfactual.h5ad``: integer counts in ``X``, ``obs``
            with ``task`` (``"do"``), ``source_cell`` and ``mode``, and
            ``obsm["concepts_true"]``.
        """
        index = self._positions(cells)
        edits = {
            self._concept_index(k): np.asarray(v, dtype=np.float64) for k, v in (do or {}).items()
        }
        for k, value in edits.items():
            if value.ndim and value.shape != (index.size,):
                raise SimcellError(
                    f"do(): value of concept {k} has shape {value.shape}, expected ({index.size},)"
                )
        new_concepts = intervene_concepts(self.params, self.world, self.cells, index, edits, mode)
        request = CounterfactualRequest(source=index, concepts=new_concepts)
        counts = _evaluate_requests(
            self.params, self.world, self.cells, self.seed, request, n_threads=n_threads
        )
        return _counterfactual_anndata(
            self.factual.obs_names, counts, request, ["do"] * index.size, mode, self.params
        )


def _rows(cells: CellStates, source: np.ndarray, concepts: np.ndarray, start: int) -> RowBatch:
    return RowBatch(
        local=(source - start).astype(np.int64),
        batch=cells.batch[source],
        tissue=cells.tissue[source],
        cell_type=cells.cell_type[source],
        library_size=cells.library_size[source],
        concepts=concepts,
    )


def _evaluate_requests(
    params: SimulationParams,
    world: World,
    cells: CellStates,
    seed: int,
    request: CounterfactualRequest,
    *,
    n_threads: int | None = None,
) -> sp.csr_matrix:
    """Counts of arbitrary (cell, concepts) rows, regenerating only their blocks."""
    arrays = world_arrays(world, params.noise_sd)
    order = np.argsort(request.source, kind="stable")
    source = request.source[order]
    blocks = np.unique(source // CELL_BLOCK)
    results = []

    def work(block_start: int, block_stop: int) -> sp.csr_matrix:
        lo, hi = np.searchsorted(source, [block_start, block_stop])
        residual, uniform = chunk_noise(seed, block_start, block_stop, params.n_genes)
        rows = _rows(cells, source[lo:hi], request.concepts[order[lo:hi]], block_start)
        return to_csr(evaluate_counts(arrays, rows, residual, uniform))

    bounds = [(int(b) * CELL_BLOCK, min((int(b) + 1) * CELL_BLOCK, params.n_cells)) for b in blocks]
    results = list(map_chunks(work, bounds, _threads(n_threads)))
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


def _threads(n_threads: int | None) -> int:
    return max(1, int(n_threads)) if n_threads else max(1, os.cpu_count() or 1)


def _counterfactual_anndata(
    factual_names: pd.Index,
    counts: sp.csr_matrix | None,
    request: CounterfactualRequest,
    task: Sequence[str],
    mode: str,
    params: SimulationParams,
) -> ad.AnnData:
    source_names = np.asarray(factual_names)[request.source]
    names = [f"{t}:{s}" for t, s in zip(task, source_names, strict=True)]
    obs = pd.DataFrame(
        {
            S.TRUTH_TASK: pd.Categorical(list(task)),
            S.TRUTH_SOURCE_CELL: source_names.astype(str),
            S.TRUTH_MODE: pd.Categorical([mode] * len(names), categories=["causal", "direct"]),
        },
        index=pd.Index(names, dtype=str),
    )
    var = pd.DataFrame(index=pd.Index([f"gene_{j}" for j in range(params.n_genes)], dtype=str))
    concepts = pd.DataFrame(
        request.concepts, index=obs.index, columns=concept_names(params.n_concepts)
    )
    return ad.AnnData(X=counts, obs=obs, var=var, obsm={S.CONCEPTS_TRUE: concepts})


def simulate(
    params: SimulationParams,
    seed: int = 0,
    *,
    scenario: str = "custom",
    chunk_size: int = DEFAULT_CHUNK,
    n_threads: int | None = None,
    device: str = "cpu",
    engine: Engine = "threads",
    scheduler: str | None = None,
    progress: Progress | None = None,
) -> Dataset:
    """Simulate a dataset with its tasks and their exact counterfactuals.

    Parameters
    ----------
    params : SimulationParams
    seed : int
        Non-negative seed; every random quantity comes from a stream keyed by it.
    scenario : str
        Name recorded in the dataset's metadata.
    chunk_size : int
        Cells evaluated together (rounded up to whole blocks of 256); does not
        change the result.
    n_threads : int, optional
        Threads evaluating chunks (default: all cores); does not change the result.
    device : {"cpu", "cuda", "auto"}
        Where log-rates and the inverse CDF are evaluated; the counts are the
        same on every device.
    engine : {"threads", "dask"}
        Run chunks on a thread pool or on a Dask cluster (a local one with
        ``n_threads`` workers unless ``scheduler`` gives an address); the counts
        are the same on every engine.
    scheduler : str, optional
        Address of a running Dask scheduler.
    progress : callable, optional
        Called with the number of cells just finished.

    Returns
    -------
    Dataset
    """
    check_memory(
        params, chunk_size=chunk_size, n_threads=_threads(n_threads), counts_in_memory=True
    )
    dataset, request = prepare(params, seed, scenario)
    job = count_job(params, dataset.world, dataset.cells, seed, request, device)
    factual_counts = CSRBuilder(params.n_cells, params.n_genes)
    counterfactual_counts = CSRBuilder(request.source.size, params.n_genes)
    count_pass(
        job,
        chunk_bounds(params.n_cells, chunk_size),
        (factual_counts, counterfactual_counts),
        n_threads=n_threads,
        engine=engine,
        scheduler=scheduler,
        progress=progress,
    )
    dataset.factual.X = factual_counts.finish()
    dataset.counterfactuals.X = counterfactual_counts.finish()
    return dataset


def prepare(
    params: SimulationParams, seed: int, scenario: str
) -> tuple[Dataset, CounterfactualRequest]:
    """Everything but the counts: world, cells, tasks, annotations and metadata.

    Returns the dataset with ``X`` left empty (``None``) and the counterfactual
    rows to evaluate, in the bundle's row order.
    """
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise SimcellError(f"seed must be a non-negative integer, got {seed!r}")
    seed = int(seed)
    world = draw_world(params, seed)
    cells = draw_cells(params, world, seed)
    tasks = make_tasks(
        cells.cell_type,
        cells.concepts,
        n_tasks=params.n_tasks,
        min_cells=params.min_task_cells,
        rng=stream(seed, "tasks"),
        concept_kinds=params.kinds,
    )
    request, task_labels = _task_requests(params, world, cells, tasks)
    annotations, record = _annotations(params, cells, tasks, seed)
    factual = _factual_anndata(params, world, cells, tasks, None, annotations)
    counterfactuals = _counterfactual_anndata(
        factual.obs_names, None, request, task_labels, params.intervention_mode, params
    )
    dataset = Dataset(
        params=params,
        seed=seed,
        scenario=scenario,
        world=world,
        cells=cells,
        tasks=tasks,
        factual=factual,
        counterfactuals=counterfactuals,
        corruption=record,
    )
    factual.uns[S.UNS] = _metadata(dataset)
    return dataset, request


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


def run_chunks(
    job: CountJob,
    bounds: list[tuple[int, int]],
    n_threads: int | None,
    engine: Engine = "threads",
    scheduler: str | None = None,
):
    """Run ``job`` over chunks on an engine, yielding results in chunk order."""
    if engine == "threads":
        yield from map_chunks(job, bounds, _threads(n_threads))
    elif engine == "dask":
        from simcell.simulator._dask import map_chunks_dask

        yield from map_chunks_dask(job, bounds, n_workers=_threads(n_threads), scheduler=scheduler)
    else:
        raise SimcellError(f"engine must be 'threads' or 'dask', got {engine!r}")


def _task_requests(
    params: SimulationParams, world: World, cells: CellStates, tasks: list[Task]
) -> tuple[CounterfactualRequest, list[str]]:
    """Every task's twins, ordered by source cell (then task), the bundle's row order.

    Source-major order lets the counterfactual rows be produced and written in the
    same pass over cell blocks as the factual cells.
    """
    sources, concepts, numbers = [], [], []
    for number, task in enumerate(tasks):
        index = task.intervene
        sources.append(index)
        concepts.append(
            intervene_concepts(
                params, world, cells, index, {task.concept: 1.0}, params.intervention_mode
            )
        )
        numbers.append(np.full(index.size, number))
    if not sources:
        empty = np.zeros(0, dtype=np.int64)
        return CounterfactualRequest(source=empty, concepts=np.zeros((0, params.n_concepts))), []
    source, number = np.concatenate(sources), np.concatenate(numbers)
    order = np.lexsort((number, source))
    request = CounterfactualRequest(
        source=source[order].astype(np.int64), concepts=np.concatenate(concepts)[order]
    )
    return request, [tasks[n].name for n in number[order]]


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

    def _evaluate(self, rows, residual, uniform) -> np.ndarray:
        if self.device == "cpu":
            return evaluate_counts(self.arrays, rows, residual, uniform)
        import torch

        from simcell.simulator._torch_counts import evaluate_counts_torch

        return evaluate_counts_torch(
            self.arrays, rows, residual, uniform, torch.device(self.device)
        )

    def __call__(self, start: int, stop: int) -> tuple[sp.csr_matrix, sp.csr_matrix, int]:
        """Factual counts of cells [start, stop) and the twins whose source is in it."""
        residual, uniform = chunk_noise(self.seed, start, stop, self.n_genes)
        index = np.arange(start, stop)
        factual = self._evaluate(
            _rows(self.cells, index, self.cells.concepts[start:stop], start),
            residual,
            uniform,
        )
        lo, hi = np.searchsorted(self.request.source, [start, stop])
        twin = self._evaluate(
            _rows(self.cells, self.request.source[lo:hi], self.request.concepts[lo:hi], start),
            residual,
            uniform,
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
    """The :class:`CountJob` of a simulation."""
    return CountJob(
        arrays=world_arrays(world, params.noise_sd),
        cells=cells,
        request=request,
        seed=seed,
        n_genes=params.n_genes,
        device=resolve_device(device),
    )


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


def _annotations(
    params: SimulationParams, cells: CellStates, tasks: list[Task], seed: int
) -> tuple[pd.DataFrame, CorruptionRecord | None]:
    """The clean annotations. A scenario's corruption (``params.corruption``) is applied
    by the evaluation to the annotations a model sees for one task, protecting only
    that task's concept (:func:`simcell.simulator.corrupt.corrupt_for_task`)."""
    names = concept_names(params.n_concepts)
    return pd.DataFrame(cells.concepts.astype(np.float32), columns=names), None


def _categorical(codes: np.ndarray, prefix: str, n: int) -> pd.Categorical:
    return pd.Categorical.from_codes(codes, categories=[f"{prefix}_{i}" for i in range(n)])


def _factual_anndata(
    params: SimulationParams,
    world: World,
    cells: CellStates,
    tasks: list[Task],
    counts: sp.csr_matrix | None,
    annotations: pd.DataFrame,
) -> ad.AnnData:
    obs_names = pd.Index([f"cell_{i}" for i in range(params.n_cells)], dtype=str)
    obs = pd.DataFrame(
        {
            S.OBS_BATCH: _categorical(cells.batch, "batch", params.n_batches),
            S.OBS_TISSUE: _categorical(cells.tissue, "tissue", params.n_tissues),
            S.OBS_CELL_TYPE: _categorical(cells.cell_type, "cell_type", params.n_cell_types),
            S.OBS_LIBRARY_SIZE: cells.library_size,
        },
        index=obs_names,
    )
    for task in tasks:
        obs[S.split_column(task.name)] = pd.Categorical(
            task.split.astype(str), categories=SPLIT_LABELS
        )
    var = pd.DataFrame(
        {S.BASELINE: world.baseline},
        index=pd.Index([f"gene_{j}" for j in range(params.n_genes)], dtype=str),
    )
    annotations = annotations.copy()
    annotations.index = obs_names
    concepts_true = pd.DataFrame(
        cells.concepts, index=obs_names, columns=concept_names(params.n_concepts)
    )
    return ad.AnnData(
        X=counts,
        obs=obs,
        var=var,
        obsm={S.CONCEPTS: annotations, S.CONCEPTS_TRUE: concepts_true},
        varm={
            S.CONCEPT_EFFECTS: world.concept_effects.T.copy(),
            S.BATCH_EFFECTS: world.batch_effects.T.copy(),
            S.TISSUE_EFFECTS: world.tissue_effects.T.copy(),
            S.CELL_TYPE_EFFECTS: world.cell_type_effects.T.copy(),
        },
    )


def _metadata(dataset: Dataset) -> dict:
    params, world = dataset.params, dataset.world
    resolved = params.to_dict()
    resolved["concept_edges"] = np.asarray(params.concept_edges, dtype=np.float64).reshape(-1, 3)
    tasks = pd.DataFrame(
        {
            S.TASK_NAME: [t.name for t in dataset.tasks],
            S.TASK_CELL_TYPE: [f"cell_type_{t.cell_type}" for t in dataset.tasks],
            S.TASK_CONCEPT: [S.concept_name(t.concept) for t in dataset.tasks],
            S.TASK_N_INTERVENE: [int((t.split == S.INTERVENE).sum()) for t in dataset.tasks],
            S.TASK_N_HELDOUT: [int((t.split == S.HELDOUT).sum()) for t in dataset.tasks],
        }
    )
    meta = {
        S.UNS_VERSION: simcell.__version__,
        S.UNS_SCENARIO: dataset.scenario,
        S.UNS_SEED: dataset.seed,
        S.UNS_PARAMS: resolved,
        S.UNS_TASKS: tasks,
        S.UNS_CONCEPT_DAG: resolved["concept_edges"],
        S.UNS_CONCEPT_KINDS: np.asarray(params.kinds, dtype=str),
        S.UNS_WORLD: {
            S.WORLD_BATCH_PROPORTIONS: world.batch_proportions,
            S.WORLD_TISSUE_PROPORTIONS: world.tissue_proportions,
            S.WORLD_CELL_TYPE_PROPORTIONS: world.cell_type_proportions,
            S.WORLD_CONCEPT_PROBABILITY: world.concept_probability,
            S.WORLD_LIBRARY_SIZE_SD: world.library_size_sd,
            S.WORLD_UNAFFECTED_PROBABILITY: world.unaffected_probability,
        },
    }
    if dataset.corruption is not None:
        meta[S.UNS_CORRUPTION] = dataset.corruption.to_dict()
    return _storable(meta)


def _storable(value):
    """Lists become arrays so that h5ad can store the metadata."""
    if isinstance(value, dict):  # h5ad has no None: such keys are left out
        return {k: _storable(v) for k, v in value.items() if v is not None}
    if isinstance(value, (list, tuple)):
        array = np.asarray(value)
        return array.astype(str) if array.dtype.kind in "OU" or array.size == 0 else array
    return value
