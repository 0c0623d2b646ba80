"""The bundle schema: every key of ``factual.h5ad``, ``counterfactual.h5ad`` and
``manifest.json`` named once, and typed readers over them.

The simulator writes a bundle with these names and the evaluation reads it only
through the readers below, so a key lives in one place. A bundle of real cells
has no ``counterfactual.h5ad``: :func:`has_truth` is then False and
:func:`read_truth` raises a one-line error.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np
import pandas as pd
import scipy.sparse as sp

from simcell import SimcellError

if TYPE_CHECKING:  # pragma: no cover
    import anndata as ad

# ----------------------------------------------------------------------------- files
FACTUAL = "factual.h5ad"
COUNTERFACTUAL = "counterfactual.h5ad"
MANIFEST = "manifest.json"

# ----------------------------------------------------------------------------- factual.h5ad
#: obs columns: the cell's covariates and true library size
OBS_BATCH, OBS_TISSUE, OBS_CELL_TYPE = "batch", "tissue", "cell_type"
OBS_LIBRARY_SIZE = "library_size"
#: obs column ``split:<task>`` with values train / intervene / heldout
SPLIT_PREFIX = "split:"
TRAIN, INTERVENE, HELDOUT = "train", "intervene", "heldout"
#: obsm: the annotations a model may see (NaN = not annotated) and the true concepts
CONCEPTS, CONCEPTS_TRUE = "concepts", "concepts_true"
#: obsm ``simcell_latent_<name>``: a true latent the generating process stores,
#: shape (n_cells, d) (read with :func:`true_latents`)
LATENT_PREFIX = "simcell_latent_"
#: var: the gene baseline w_j
BASELINE = "baseline"
#: varm (genes x levels): concept, batch, tissue and cell-type effects
CONCEPT_EFFECTS = "concept_effects"
BATCH_EFFECTS = "batch_effects"
TISSUE_EFFECTS = "tissue_effects"
CELL_TYPE_EFFECTS = "cell_type_effects"
#: uns[UNS] holds the simulator's metadata under these keys
UNS = "simcell"
UNS_VERSION, UNS_SCENARIO, UNS_SEED, UNS_PARAMS = "version", "scenario", "seed", "params"
UNS_TASKS, UNS_CONCEPT_DAG, UNS_CONCEPT_KINDS = "tasks", "concept_dag", "concept_kinds"
UNS_WORLD, UNS_CORRUPTION = "world", "corruption"
#: uns[UNS][UNS_PROCESS]: the generative process (absent: the concept-latent one)
UNS_PROCESS, CONCEPT_LATENT = "process", "concept-latent"
#: columns of the task table uns[UNS][UNS_TASKS]
TASK_NAME, TASK_CELL_TYPE, TASK_CONCEPT = "name", "cell_type", "concept"
TASK_N_INTERVENE, TASK_N_HELDOUT = "n_intervene", "n_heldout"
#: keys of uns[UNS][UNS_WORLD]
WORLD_BATCH_PROPORTIONS = "batch_proportions"
WORLD_TISSUE_PROPORTIONS = "tissue_proportions"
WORLD_CELL_TYPE_PROPORTIONS = "cell_type_proportions"
WORLD_CONCEPT_PROBABILITY = "concept_probability"
WORLD_LIBRARY_SIZE_SD = "library_size_sd"
WORLD_UNAFFECTED_PROBABILITY = "unaffected_probability"
#: keys of uns[UNS][UNS_PARAMS] that the evaluation reads
PARAM_NOISE_SD, PARAM_INTERVENTION_MODE = "noise_sd", "intervention_mode"
PARAM_CORRUPTION, PARAM_CORRUPTION_LEVEL = "corruption", "corruption_level"
PARAM_CORRUPTION_P = "corruption_p"

#: the processes that write bundles (uns[UNS][UNS_PROCESS])
PROCESS_CONCEPT_LATENT, PROCESS_PERTURB = CONCEPT_LATENT, "perturb-identifiability"
#: split label of cells in no population of a task (perturb-identifiability: other doubles)
EXCLUDED = "excluded"
#: uns[UNS][UNS_PERTURB]: the perturb-identifiability world (B, Γ, shifts, mixing, ...)
UNS_PERTURB = "perturb"
PERTURB_SCM_WEIGHTS, PERTURB_COUPLING, PERTURB_SHIFTS = "scm_weights", "coupling", "shifts"
PERTURB_DOUBLES, PERTURB_CELL_TYPE_MEANS = "doubles", "cell_type_means"
PERTURB_INVARIANT_GENES, PERTURB_RESPONSIVE_GENES = "invariant_genes", "responsive_genes"
PERTURB_MIXING_INVARIANT, PERTURB_MIXING_RESPONSIVE = "mixing_invariant", "mixing_responsive"

# ----------------------------------------------------------------------------- counterfactual.h5ad
#: obs columns of the ground truth: its task, its factual cell and the intervention mode
TRUTH_TASK, TRUTH_SOURCE_CELL, TRUTH_MODE = "task", "source_cell", "mode"

# ----------------------------------------------------------------------------- manifest.json
MANIFEST_FORMAT = "format"
MANIFEST_VERSION = "simcell_version"
MANIFEST_SCENARIO, MANIFEST_SEED, MANIFEST_PARAMS = "scenario", "seed", "params"
MANIFEST_N_CELLS, MANIFEST_N_GENES = "n_cells", "n_genes"
MANIFEST_TASKS, MANIFEST_CHECKSUMS = "tasks", "checksums"
MANIFEST_IDENTITY = "identity"
FORMAT = "simcell-bundle/1"

ConceptKind = Literal["binary", "continuous"]
InterventionMode = Literal["causal", "direct"]


def concept_name(index: int) -> str:
    """The name of concept ``index`` (``concept_<index>``)."""
    return f"concept_{int(index)}"


def latent_key(name: str) -> str:
    """The obsm key of true latent ``name`` (``simcell_latent_<name>``)."""
    return f"{LATENT_PREFIX}{name}"


def split_column(task: str) -> str:
    """The obs column holding task ``task``'s split."""
    return f"{SPLIT_PREFIX}{task}"


# ----------------------------------------------------------------------------- readers
@dataclass(frozen=True)
class TaskInfo:
    """One intervention task as the bundle records it.

    Attributes
    ----------
    name : str
    cell_type : str
        The held-out cell type u (an obs ``cell_type`` category).
    concept : str
        The concept k switched on: the question is ``do(k := 1)``.
    """

    name: str
    cell_type: str
    concept: str


def _meta(factual: ad.AnnData) -> dict:
    try:
        return factual.uns[UNS]
    except KeyError:
        raise SimcellError(f"factual cells have no uns[{UNS!r}]: not a simcell bundle") from None


def read_tasks(factual: ad.AnnData) -> tuple[TaskInfo, ...]:
    """The bundle's tasks, in their recorded order."""
    table = _meta(factual).get(UNS_TASKS)
    if table is None or len(table) == 0:
        return ()
    table = pd.DataFrame(table)
    return tuple(
        TaskInfo(name=str(name), cell_type=str(cell_type), concept=str(concept))
        for name, cell_type, concept in zip(
            table[TASK_NAME], table[TASK_CELL_TYPE], table[TASK_CONCEPT], strict=True
        )
    )


def read_split(factual: ad.AnnData, task: str) -> np.ndarray:
    """The split labels of every cell for ``task``, ndarray of str, shape (n_cells,)."""
    column = split_column(task)
    if column not in factual.obs:
        raise SimcellError(f"the bundle has no split for task {task!r}")
    return factual.obs[column].to_numpy().astype(str)


def concept_names(factual: ad.AnnData) -> tuple[str, ...]:
    """The true concepts' names, in column order."""
    return tuple(map(str, factual.obsm[CONCEPTS_TRUE].columns))


def concept_kinds(factual: ad.AnnData) -> dict[str, ConceptKind]:
    """The kind of every true concept, by name (all binary in a bundle that records no
    kinds: it predates continuous concepts)."""
    names = concept_names(factual)
    recorded = _meta(factual).get(UNS_CONCEPT_KINDS)
    if recorded is None:
        return dict.fromkeys(names, "binary")
    kinds = np.asarray(recorded).astype(str)
    if kinds.size != len(names):
        raise SimcellError(
            f"the bundle records {kinds.size} concept kinds for {len(names)} concepts"
        )
    return dict(zip(names, kinds.tolist(), strict=True))


def annotations(factual: ad.AnnData) -> pd.DataFrame:
    """The annotations a model may see, float32, NaN where not annotated."""
    return factual.obsm[CONCEPTS].astype(np.float32)


def true_concepts(factual: ad.AnnData) -> pd.DataFrame:
    """The true concept values of every cell."""
    return factual.obsm[CONCEPTS_TRUE]


def true_latents(factual: ad.AnnData) -> dict[str, np.ndarray]:
    """The true latents the bundle stores, by name (``obsm["simcell_latent_<name>"]``).

    Returns
    -------
    dict of str to ndarray, each shape (n_cells, d), float64
        Empty when the bundle stores none.
    """
    latents = {}
    for key in factual.obsm.keys():
        if key.startswith(LATENT_PREFIX) and len(key) > len(LATENT_PREFIX):
            value = np.asarray(factual.obsm[key], dtype=np.float64)
            latents[key[len(LATENT_PREFIX) :]] = value.reshape(value.shape[0], -1)
    return latents


def concept_dag(factual: ad.AnnData) -> tuple[tuple[str, str, float], ...]:
    """The concept DAG as (parent, child, weight) named edges (empty: no edges)."""
    edges = np.asarray(_meta(factual).get(UNS_CONCEPT_DAG, np.zeros((0, 3))), dtype=np.float64)
    names = concept_names(factual)
    return tuple(
        (names[int(parent)], names[int(child)], float(weight))
        for parent, child, weight in edges.reshape(-1, 3)
    )


def intervention_mode(factual: ad.AnnData) -> InterventionMode:
    """How the bundle's twins answer ``do()``: ``causal`` (descendants recomputed) or
    ``direct``."""
    return str(_meta(factual)[UNS_PARAMS].get(PARAM_INTERVENTION_MODE, "causal"))  # type: ignore[return-value]


def scenario_corruption(factual: ad.AnnData) -> tuple[str, int, float | None]:
    """The corruption the scenario asks for: (kind, level, p), ``("none", 0, None)`` if none.

    It is applied per task by the evaluation, not stored in the annotations.
    """
    params = _meta(factual).get(UNS_PARAMS, {})
    kind = str(params.get(PARAM_CORRUPTION, "none"))
    level = int(params.get(PARAM_CORRUPTION_LEVEL, 0))
    p = params.get(PARAM_CORRUPTION_P)
    if kind == "none" or level == 0:
        return "none", 0, None
    return kind, level, None if p is None else float(p)


def scenario_name(factual: ad.AnnData) -> str:
    return str(_meta(factual).get(UNS_SCENARIO, "unknown"))


def process_name(factual: ad.AnnData) -> str:
    """The process that generated the bundle (``concept-latent`` when none is recorded)."""
    return str(_meta(factual).get(UNS_PROCESS, CONCEPT_LATENT))


def data_seed(factual: ad.AnnData) -> int | None:
    seed = _meta(factual).get(UNS_SEED)
    return None if seed is None else int(seed)


def cell_types(factual: ad.AnnData) -> np.ndarray:
    """Every cell's type name, ndarray of str, shape (n_cells,)."""
    return factual.obs[OBS_CELL_TYPE].to_numpy().astype(str)


@dataclass(frozen=True, eq=False)
class WorldArrays:
    """The parameters of the generative process a bundle stores (genes x levels as in
    the simulator's World, i.e. levels first).

    Attributes
    ----------
    baseline : ndarray, shape (n_genes,)
    concept_effects : ndarray, shape (n_concepts, n_genes)
    batch_effects, tissue_effects, cell_type_effects : ndarray, shape (n_levels, n_genes)
    library_size_sd : ndarray, shape (n_batches,)
    concept_probability : ndarray, shape (n_cell_types, n_concepts)
    noise_sd : float
        σ_ε.
    """

    baseline: np.ndarray
    concept_effects: np.ndarray
    batch_effects: np.ndarray
    tissue_effects: np.ndarray
    cell_type_effects: np.ndarray
    library_size_sd: np.ndarray
    concept_probability: np.ndarray
    noise_sd: float


def world_arrays(factual: ad.AnnData) -> WorldArrays:
    """The world pieces stored in a simulated bundle."""
    meta = _meta(factual)
    world = meta[UNS_WORLD]
    return WorldArrays(
        baseline=factual.var[BASELINE].to_numpy(dtype=np.float64),
        concept_effects=np.asarray(factual.varm[CONCEPT_EFFECTS], dtype=np.float64).T,
        batch_effects=np.asarray(factual.varm[BATCH_EFFECTS], dtype=np.float64).T,
        tissue_effects=np.asarray(factual.varm[TISSUE_EFFECTS], dtype=np.float64).T,
        cell_type_effects=np.asarray(factual.varm[CELL_TYPE_EFFECTS], dtype=np.float64).T,
        library_size_sd=np.asarray(world[WORLD_LIBRARY_SIZE_SD], dtype=np.float64),
        concept_probability=np.asarray(world[WORLD_CONCEPT_PROBABILITY], dtype=np.float64),
        noise_sd=float(meta[UNS_PARAMS][PARAM_NOISE_SD]),
    )


def covariate_codes(factual: ad.AnnData, positions: np.ndarray) -> dict[str, np.ndarray]:
    """Integer codes of the batch, tissue and cell type of cells at ``positions``."""
    obs = factual.obs.iloc[np.asarray(positions)]
    return {
        key: obs[key].cat.codes.to_numpy().astype(np.int64)
        for key in (OBS_BATCH, OBS_TISSUE, OBS_CELL_TYPE)
    }


def has_truth(bundle) -> bool:
    """Whether a bundle carries the true counterfactuals (simulated, not real cells)."""
    return getattr(bundle, "counterfactual", None) is not None


@dataclass(frozen=True, eq=False)
class TaskTruth:
    """The ground truth of one task: one twin per ``intervene`` cell.

    Attributes
    ----------
    sources : ndarray of int64, shape (n_intervene,)
        Factual position of each twin's source cell, in counterfactual-row order.
    counts : scipy.sparse.csr_matrix, shape (n_intervene, n_genes)
    concepts : ndarray, shape (n_intervene, n_concepts)
        The twins' true concepts.
    """

    sources: np.ndarray
    counts: sp.csr_matrix
    concepts: np.ndarray


def read_truth(bundle, task: str) -> TaskTruth:
    """The true counterfactuals of ``task``.

    Raises
    ------
    SimcellError
        When the bundle has no ``counterfactual.h5ad`` (real cells).
    """
    if not has_truth(bundle):
        raise SimcellError(
            f"the bundle has no {COUNTERFACTUAL} (no true counterfactuals): "
            "cell-level scores need them; only distributional metrics can run"
        )
    truth = bundle.counterfactual
    rows = np.flatnonzero(truth.obs[TRUTH_TASK].to_numpy().astype(str) == task)
    names = truth.obs[TRUTH_SOURCE_CELL].to_numpy()[rows].astype(str)
    sources = bundle.factual.obs_names.get_indexer(names)
    if (sources < 0).any():
        raise SimcellError(f"counterfactual rows of {task} name unknown source cells")
    return TaskTruth(
        sources=sources.astype(np.int64),
        counts=sp.csr_matrix(truth.X[rows]),
        concepts=truth.obsm[CONCEPTS_TRUE].to_numpy()[rows],
    )


def check_tasks(factual: ad.AnnData, tasks: Sequence[str] | None) -> list[str]:
    """The requested tasks (all when None), checked against the bundle's."""
    names = [task.name for task in read_tasks(factual)]
    chosen = list(tasks) if tasks else names
    unknown = [name for name in chosen if name not in names]
    if unknown:
        raise SimcellError(f"unknown task(s) {unknown}; the bundle has {names}")
    if not chosen:
        raise SimcellError("the bundle has no intervention tasks to evaluate")
    return chosen
