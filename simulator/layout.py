"""The AnnData layout of a bundle's files, written with the names of :mod:`.schema`.

:func:`factual_anndata` lays out ``factual.h5ad`` (covariates, splits, annotations,
true concepts and the world's effects), :func:`counterfactual_anndata` the ground
truth ``counterfactual.h5ad``, and :func:`metadata` the simulator's
``uns["simcell"]``. The process (:mod:`.process`) fills ``X`` with the counts of
the engine (:mod:`.engine`); :mod:`.bundle` and :mod:`.stream` write the files.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

import simcell
from simcell.simulator import schema as S
from simcell.simulator.cells import CellStates
from simcell.simulator.corrupt import CorruptionRecord
from simcell.simulator.engine import CounterfactualRequest
from simcell.simulator.params import SimulationParams
from simcell.simulator.tasks import SPLIT_LABELS, Task
from simcell.simulator.world import World

if TYPE_CHECKING:  # pragma: no cover
    from simcell.simulator.process import Dataset


def concept_columns(n_concepts: int) -> list[str]:
    """The concepts' column names, in order (``concept_0``, ``concept_1``, ...)."""
    return [S.concept_name(k) for k in range(n_concepts)]


def _gene_names(n_genes: int) -> pd.Index:
    return pd.Index([f"gene_{j}" for j in range(n_genes)], dtype=str)


def _categorical(codes: np.ndarray, prefix: str, n: int) -> pd.Categorical:
    return pd.Categorical.from_codes(codes, categories=[f"{prefix}_{i}" for i in range(n)])


def clean_annotations(
    params: SimulationParams, cells: CellStates, tasks: list[Task], seed: int
) -> tuple[pd.DataFrame, CorruptionRecord | None]:
    """The clean annotations. A scenario's corruption (``params.corruption``) is applied
    by the evaluation to the annotations a model sees for one task, protecting only
    that task's concept (:func:`simcell.simulator.corrupt.corrupt_for_task`)."""
    names = concept_columns(params.n_concepts)
    return pd.DataFrame(cells.concepts.astype(np.float32), columns=names), None


def factual_anndata(
    params: SimulationParams,
    world: World,
    cells: CellStates,
    tasks: list[Task],
    counts: sp.csr_matrix | None,
    annotations: pd.DataFrame,
) -> ad.AnnData:
    """``factual.h5ad`` without its ``uns`` metadata (see :func:`metadata`)."""
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
    var = pd.DataFrame({S.BASELINE: world.baseline}, index=_gene_names(params.n_genes))
    annotations = annotations.copy()
    annotations.index = obs_names
    concepts_true = pd.DataFrame(
        cells.concepts, index=obs_names, columns=concept_columns(params.n_concepts)
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


def counterfactual_anndata(
    factual_names: pd.Index,
    counts: sp.csr_matrix | None,
    request: CounterfactualRequest,
    task: Sequence[str],
    mode: str,
    params: SimulationParams,
) -> ad.AnnData:
    """``counterfactual.h5ad``: one row per requested twin, named ``<task>:<source cell>``."""
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
    concepts = pd.DataFrame(
        request.concepts, index=obs.index, columns=concept_columns(params.n_concepts)
    )
    return ad.AnnData(
        X=counts,
        obs=obs,
        var=pd.DataFrame(index=_gene_names(params.n_genes)),
        obsm={S.CONCEPTS_TRUE: concepts},
    )


def metadata(dataset: Dataset) -> dict:
    """The simulator's ``uns["simcell"]``: version, scenario, seed, resolved parameters,
    the task table, the concept DAG and kinds, and the world's proportions."""
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
