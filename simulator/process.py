"""The scCBGM process: a whole dataset in memory, with exact counterfactual twins.

:func:`prepare` draws everything but the counts (world, cells, tasks, the bundle's
AnnData layout and the twins to evaluate); :func:`simulate` runs the count engine
(:mod:`.engine`) over it; :meth:`Dataset.counterfactual` answers any ``do()`` for
any cells by regenerating only their cell blocks.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import anndata as ad
import numpy as np

from simcell import SimcellError
from simcell.simulator import schema as S
from simcell.simulator._rng import stream
from simcell.simulator.cells import CellStates, draw_cells, intervene_concepts
from simcell.simulator.corrupt import CorruptionRecord
from simcell.simulator.counts import chunk_bounds
from simcell.simulator.engine import (
    DEFAULT_CHUNK,
    CounterfactualRequest,
    CSRBuilder,
    Engine,
    Progress,
    count_job,
    count_pass,
    evaluate_requests,
    n_workers,
)
from simcell.simulator.layout import (
    clean_annotations,
    concept_columns,
    counterfactual_anndata,
    factual_anndata,
    metadata,
)
from simcell.simulator.params import InterventionMode, SimulationParams, check_memory
from simcell.simulator.tasks import Task, make_tasks
from simcell.simulator.world import World, draw_world

#: ``var`` column of the genes' negative-binomial dispersion α_j (realistic bundles)
DISPERSION = "dispersion"
#: ``obs`` column of the cells' capture efficiency p_i (realistic bundles)
CAPTURE_EFFICIENCY = "capture_efficiency"
#: ``varm`` of c_{ukj} (genes x cell types * concepts) and d_{kk'j} (genes x concepts²)
TYPED_CONCEPT_EFFECTS = "concept_effects_by_cell_type"
CONCEPT_PAIR_EFFECTS = "concept_pair_effects"


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
        names = concept_columns(self.params.n_concepts)
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
        counts = evaluate_requests(
            self.params, self.world, self.cells, self.seed, request, n_threads=n_threads
        )
        return counterfactual_anndata(
            self.factual.obs_names, counts, request, ["do"] * index.size, mode, self.params
        )


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
        params, chunk_size=chunk_size, n_threads=n_workers(n_threads), counts_in_memory=True
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
    tasks = draw_tasks(params, cells, seed)
    request, task_labels = _task_requests(params, world, cells, tasks)
    annotations, record = clean_annotations(params, cells, tasks, seed)
    factual = factual_anndata(params, world, cells, tasks, None, annotations)
    # the realistic layers' world pieces, written only when on (paper bundles unchanged)
    if world.dispersion is not None:
        factual.var[DISPERSION] = world.dispersion
    if cells.capture is not None:
        factual.obs[CAPTURE_EFFICIENCY] = cells.capture
    for key, effects in (
        (TYPED_CONCEPT_EFFECTS, world.typed_concept_effects),
        (CONCEPT_PAIR_EFFECTS, world.concept_pair_effects),
    ):
        if effects is not None:  # genes x (n_cell_types or n_concepts) * n_concepts
            factual.varm[key] = np.moveaxis(effects, 2, 0).reshape(params.n_genes, -1)
    counterfactuals = counterfactual_anndata(
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
    factual.uns[S.UNS] = metadata(dataset)
    return dataset, request


def draw_tasks(params: SimulationParams, cells: CellStates, seed: int) -> list[Task]:
    """The intervention tasks of a simulation (paper C.6), from the stream ``"tasks"``."""
    return make_tasks(
        cells.cell_type,
        cells.concepts,
        n_tasks=params.n_tasks,
        min_cells=params.min_task_cells,
        rng=stream(seed, "tasks"),
        concept_kinds=params.kinds,
    )


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
