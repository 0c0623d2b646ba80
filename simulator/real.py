"""Bundles of real cells: public perturbation datasets as users download them.

:func:`real_bundle` turns one h5ad file into a simcell bundle without
``counterfactual.h5ad`` (no twin exists for a real cell), so the harness scores
any model on it with the distributional metrics alone. The proxy tasks follow
the scCBGM paper (Section 5 and Appendix D.1): the observable concepts are the
broad cell types and the condition (stimulation, cytokine, dose or genetic
perturbation); the unit held out is a granular (sub)type ``s``. For a pair
(s, condition c) every cell of ``s`` under ``c`` is ``heldout`` (the proxy for the
true counterfactual distribution p̂_{s,c}), the control cells of ``s`` are split
at random half ``train`` / half ``intervene`` (the cells a model edits with
``do(c := 1)``), and every other cell is ``train``.

Known layouts (``LAYOUTS``; any column can be overridden):

* ``kang2017``: pertpy's ``kang_2018`` (``kang_counts_25k.h5ad``), obs ``label``
  (ctrl / stim), ``cell_type``, ``replicate``; or scGen's ``kang_count.h5ad``,
  obs ``condition`` (control / stimulated), ``cell_type``;
* ``norman2019``: scPerturb's ``NormanWeissman2019_filtered.h5ad``, obs
  ``perturbation`` (control, A, A_B), ``cell_line``, ``gemgroup``;
* ``nault2023``: scVIDR's ``nault2021_multiDose.h5ad``, obs ``Dose`` (0 ... 30),
  ``celltype``, ``batch``;
* ``cui2024``: the Immune Dictionary h5ad, obs ``sample`` (PBS, cytokines),
  ``celltype``;
* ``perturbation``: any file, its columns given by the user.

Granular subtypes (the paper's Kang tasks) are found within each broad cell type
by :func:`discover_subtypes`: ``plain`` (PCA of log-normalised counts, the
condition's mean shift removed per broad type, seeded k-means), or ``scanpy``
(Harmony integration + Leiden, as in the paper; needs ``simcell[real]``).
"""

from __future__ import annotations

import json
import os
import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Literal

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

import simcell
from simcell import SimcellError, SimcellWarning
from simcell._atomic import atomic_output
from simcell._random import int_seed, stream
from simcell.simulator import schema as S
from simcell.simulator.bundle import BUNDLE_OWNERSHIP, bundle_identity, file_checksum

RealScenario = Literal["kang2017", "norman2019", "nault2023", "cui2024", "perturbation"]
SubtypeMode = Literal["none", "plain", "scanpy"]
#: the scenario names that read a real file instead of simulating
REAL_SCENARIOS: tuple[str, ...] = ("kang2017", "norman2019", "nault2023", "cui2024", "perturbation")

#: layers that hold raw counts in the common distributions, tried in order when X does not
COUNT_LAYERS = ("counts", "raw_counts", "count")
#: the obs column of the bundle that holds every cell's condition and broad cell type
OBS_CONDITION, OBS_BROAD_CELL_TYPE = "condition", "broad_cell_type"
#: default: genes kept (the most highly expressed, paper D.1), and cells per task population
DEFAULT_TOP_GENES = 3000
DEFAULT_MIN_CELLS = 20


@dataclass(frozen=True, kw_only=True)
class RealLayout:
    """Where a distribution keeps the columns a real-data bundle needs.

    Attributes
    ----------
    condition_key : str
        obs column of the condition (stimulation, cytokine, dose, perturbation).
    control : str
        Its control value (compared as text; ``0`` matches a numeric 0.0).
    cell_type_key : str
        obs column of the (broad) cell type: a concept.
    batch_key : str
        obs column of the batch / donor ("" when none).
    subtype_key : str
        obs column of given granular subtypes ("" to use the cell type itself or
        to discover subtypes).
    separators : str
        Characters that join the perturbations of a combination (``"_+"`` in
        Perturb-seq files: ``A_B``); "" when a condition is one value.
    exclude : tuple of str
        Cell types dropped (the paper drops Kang's 210 megakaryocytes).
    source : str
        The file this layout describes (for messages and docs).
    """

    condition_key: str
    control: str
    cell_type_key: str
    batch_key: str = ""
    subtype_key: str = ""
    separators: str = ""
    exclude: tuple[str, ...] = ()
    source: str = ""


LAYOUTS: dict[str, tuple[RealLayout, ...]] = {
    "kang2017": (
        RealLayout(
            condition_key="label",
            control="ctrl",
            cell_type_key="cell_type",
            batch_key="replicate",
            exclude=("Megakaryocytes",),
            source="pertpy kang_2018 (kang_counts_25k.h5ad, figshare 34464122)",
        ),
        RealLayout(
            condition_key="condition",
            control="control",
            cell_type_key="cell_type",
            exclude=("Megakaryocytes", "Mk"),
            source="scGen kang_count.h5ad",
        ),
    ),
    "norman2019": (
        RealLayout(
            condition_key="perturbation",
            control="control",
            cell_type_key="cell_line",
            batch_key="gemgroup",
            separators="_+",
            source="scPerturb NormanWeissman2019_filtered.h5ad (zenodo 13350497)",
        ),
    ),
    "nault2023": (
        RealLayout(
            condition_key="Dose",
            control="0",
            cell_type_key="celltype",
            batch_key="batch",
            source="scVIDR nault2021_multiDose.h5ad",
        ),
    ),
    "cui2024": (
        RealLayout(
            condition_key="sample",
            control="PBS",
            cell_type_key="celltype",
            source="Immune Dictionary (Cui et al. 2024) h5ad",
        ),
    ),
}
#: subtype discovery each scenario uses unless told otherwise (the paper discovers Kang's)
DEFAULT_SUBTYPES: dict[str, SubtypeMode] = {"kang2017": "plain"}


@dataclass(frozen=True, eq=False)
class RealData:
    """Real cells laid out as a bundle's factual cells, with their tasks.

    Attributes
    ----------
    factual : AnnData
        ``factual.h5ad`` (counts CSR int32, obs, concepts, splits, ``uns["simcell"]``).
    params : dict
        The resolved settings (layout, file name and SHA-256, seed, ...).
    tasks : list of dict
        ``name``, ``cell_type``, ``concept``, ``n_intervene``, ``n_heldout``.
    """

    factual: ad.AnnData
    params: dict
    tasks: list[dict]


# ----------------------------------------------------------------------------- validation


def _read(path: Path) -> ad.AnnData:
    if not path.is_file():
        raise SimcellError(f"{path}: no such file")
    try:
        with warnings.catch_warnings():  # duplicated names get their own error below
            warnings.filterwarnings("ignore", message="Observation names are not unique")
            return ad.read_h5ad(path)
    except Exception as error:  # h5py / anndata raise many types on a bad file
        reason = " ".join(str(error).split())[:200]
        raise SimcellError(
            f"cannot read {path} as h5ad: {type(error).__name__}: {reason}"
        ) from None


def _is_counts(matrix) -> str | None:
    """None when ``matrix`` holds raw counts, else why not (one phrase)."""
    values = matrix.data if sp.issparse(matrix) else np.asarray(matrix)
    if values.size == 0:
        return None
    if values.dtype.kind not in "iuf":
        return f"values of dtype {values.dtype}"
    if values.dtype.kind == "f":
        if not np.isfinite(values).all():
            return "NaN or infinite values"
        if not np.array_equal(values, np.round(values)):
            return "non-integer values (log-normalised?)"
    if values.min() < 0:
        return "negative values"
    return None


def find_counts(adata: ad.AnnData, layer: str | None = None) -> tuple[sp.csr_matrix, str]:
    """The raw counts of a file and where they were found.

    Parameters
    ----------
    adata : AnnData
    layer : str, optional
        Read this layer; default: X if it holds counts, else the first of
        :data:`COUNT_LAYERS` that does.

    Returns
    -------
    counts : scipy.sparse.csr_matrix of int32, shape (n_cells, n_genes)
    where : str
        ``"X"`` or ``"layers['<name>']"``.

    Raises
    ------
    SimcellError
        No raw counts: the named layer is missing or holds non-integer,
        negative or non-finite values; or X and every count layer do.
    """
    if layer is not None:
        if layer not in adata.layers:
            raise SimcellError(
                f"the file has no layer {layer!r}; its layers: {sorted(adata.layers) or 'none'}"
            )
        candidates = [(f"layers[{layer!r}]", adata.layers[layer])]
    else:
        present = [name for name in COUNT_LAYERS if name in adata.layers]
        candidates = [("X", adata.X)] + [(f"layers[{n!r}]", adata.layers[n]) for n in present]
    problems = []
    for where, matrix in candidates:
        if matrix is None:
            problems.append(f"{where} is empty")
            continue
        problem = _is_counts(matrix)
        if problem is None:
            counts = sp.csr_matrix(matrix)
            if counts.nnz and counts.data.max() > np.iinfo(np.int32).max:
                raise SimcellError(f"{where} has counts above the int32 range")
            return counts.astype(np.int32), where
        problems.append(f"{where} holds {problem}")
    raise SimcellError(
        f"no raw counts in the file: {'; '.join(problems)}; simcell needs raw integer counts "
        "(in X or a layer named with --layer)"
    )


def _column(obs: pd.DataFrame, key: str, what: str) -> pd.Series:
    if key not in obs.columns:
        shown = ", ".join(map(str, list(obs.columns)[:20])) or "none"
        raise SimcellError(f"the file has no obs column {key!r} ({what}); its obs columns: {shown}")
    column = obs[key]
    if column.isna().any():
        missing = int(column.isna().sum())
        raise SimcellError(f"obs column {key!r} ({what}) has {missing} missing values")
    return column


def _as_text(column: pd.Series) -> np.ndarray:
    """Values as text; whole numbers without a trailing ``.0`` (a dose of 0.0 is ``0``)."""
    values = column.to_numpy()
    if column.dtype.kind in "iuf" or (
        isinstance(column.dtype, pd.CategoricalDtype) and column.cat.categories.dtype.kind in "iuf"
    ):
        numbers = np.asarray(values, dtype=np.float64)
        whole = numbers == np.round(numbers)
        return np.where(
            whole, np.round(numbers).astype(np.int64).astype(str), numbers.astype(str)
        ).astype(object)
    return np.asarray(values).astype(str).astype(object)


def resolve_layout(
    obs: pd.DataFrame,
    scenario: RealScenario,
    *,
    condition_key: str | None = None,
    control: str | None = None,
    cell_type_key: str | None = None,
    batch_key: str | None = None,
    subtype_key: str | None = None,
) -> RealLayout:
    """The layout of a file: the scenario's known layout whose columns it has, with
    the given keys overriding it (``perturbation`` needs the three main keys)."""
    given = {
        "condition_key": condition_key,
        "control": control,
        "cell_type_key": cell_type_key,
        "batch_key": batch_key,
        "subtype_key": subtype_key,
    }
    given = {k: str(v) for k, v in given.items() if v is not None}
    if scenario == "perturbation":
        missing = [k for k in ("condition_key", "control", "cell_type_key") if k not in given]
        if missing:
            flags = ", ".join("--" + k.replace("_", "-") for k in missing)
            raise SimcellError(f"the 'perturbation' scenario needs {flags}")
        return RealLayout(**given, source="user-declared columns")
    if scenario not in LAYOUTS:
        known = ", ".join([*LAYOUTS, "perturbation"])
        raise SimcellError(f"unknown real-data scenario {scenario!r}; choose from {known}")
    layouts = LAYOUTS[scenario]
    for layout in layouts:
        key = given.get("condition_key", layout.condition_key)
        if key in obs.columns and given.get("cell_type_key", layout.cell_type_key) in obs.columns:
            chosen = layout
            break
    else:
        chosen = layouts[0]
    batch = given.get("batch_key", chosen.batch_key)
    if batch and batch not in obs.columns and "batch_key" not in given:
        given["batch_key"] = ""  # a layout's optional batch column may be absent
    if (
        "condition_key" in given
        and "control" not in given
        and given["condition_key"] != (chosen.condition_key)
    ):
        raise SimcellError("a different --condition-key needs its --control value too")
    return replace(chosen, **given)


# ----------------------------------------------------------------------------- concepts


def _parts(condition: str, layout: RealLayout) -> list[str]:
    """The single perturbations a condition combines (``A_B`` -> A, B; ``ctrl`` tokens out)."""
    if not layout.separators:
        return [condition]
    text = condition
    for separator in layout.separators[1:]:
        text = text.replace(separator, layout.separators[0])
    parts = [p for p in text.split(layout.separators[0]) if p and p != layout.control]
    return [p for p in parts if p.lower() != "ctrl"] or [condition]


def concept_table(
    conditions: np.ndarray, broad_types: np.ndarray, layout: RealLayout
) -> pd.DataFrame:
    """Binary concepts: one per non-control perturbation, then one per broad cell type.

    A combination (``A_B``) switches on each of its perturbations; a control cell
    has every perturbation off. Names are ``<condition_key>=<value>`` and
    ``<cell_type_key>=<type>``.

    Returns
    -------
    DataFrame, float32, shape (n_cells, n_perturbations + n_broad_types)
    """
    values = sorted(set(conditions.tolist()) - {layout.control})
    parts = {value: _parts(value, layout) for value in values}
    singles = sorted({p for value in values for p in parts[value]})
    columns = {}
    for single in singles:
        on = [value for value in values if single in parts[value]]
        columns[_name(f"{layout.condition_key}={single}")] = np.isin(conditions, on)
    for broad in sorted(set(broad_types.tolist())):
        columns[_name(f"{layout.cell_type_key}={broad}")] = broad_types == broad
    return pd.DataFrame(columns).astype(np.float32)


# ----------------------------------------------------------------------------- subtypes


#: genes (highest variance of log-normalised counts) the plain subtype PCA uses
SUBTYPE_GENES = 1000


def _lognorm_pcs(counts: sp.csr_matrix, n_components: int, seed: int) -> np.ndarray:
    """PCs of median-normalised log1p counts over the most variable genes, shape
    (n_cells, n_components)."""
    from sklearn.decomposition import PCA
    from threadpoolctl import threadpool_limits

    totals = np.asarray(counts.sum(axis=1), dtype=np.float64).ravel()
    scale = np.median(totals) / np.maximum(totals, 1.0)
    lognorm = (sp.diags(scale) @ counts.astype(np.float64)).tocsr().log1p()
    mean = np.asarray(lognorm.mean(axis=0)).ravel()
    variance = np.asarray(lognorm.multiply(lognorm).mean(axis=0)).ravel() - mean**2
    keep = np.sort(np.argsort(-variance, kind="stable")[:SUBTYPE_GENES])
    genes = lognorm[:, keep].toarray().astype(np.float32)
    n = max(1, min(n_components, genes.shape[0] - 1, genes.shape[1]))
    # one BLAS thread: the randomized SVD gains nothing from more on a busy machine
    with threadpool_limits(limits=1, user_api="blas"):
        pca = PCA(n_components=n, svd_solver="randomized", random_state=seed)
        return pca.fit_transform(genes).astype(np.float64)


def _plain_subtypes(
    counts: sp.csr_matrix,
    conditions: np.ndarray,
    control: str,
    *,
    max_subtypes: int,
    min_cells: int,
    seed: int,
) -> np.ndarray:
    """Cluster labels of one broad type's cells: PCA, every condition centred on the
    control cells' mean (a linear stand-in for Harmony: the condition's mean shift
    is removed so clusters are shared across conditions), seeded k-means with k
    chosen by silhouette (k = 1 when no k gives clusters of ``min_cells`` cells)."""
    from sklearn.cluster import KMeans
    from sklearn.metrics import silhouette_score

    pcs = _lognorm_pcs(counts, 20, seed)
    reference = pcs[conditions == control].mean(axis=0)
    for value in set(conditions.tolist()):
        members = conditions == value
        pcs[members] += reference - pcs[members].mean(axis=0)
    best, best_score = np.zeros(pcs.shape[0], dtype=np.int64), -np.inf
    rng = stream(seed, "subtype silhouette")
    sample = rng.choice(pcs.shape[0], min(pcs.shape[0], 2000), replace=False)
    for k in range(2, max_subtypes + 1):
        labels = KMeans(k, n_init=4, random_state=int_seed(seed, "kmeans", k)).fit_predict(pcs)
        if np.bincount(labels, minlength=k).min() < min_cells:
            continue
        score = silhouette_score(pcs[sample], labels[sample])
        if score > best_score:
            best, best_score = labels, score
    return best


def _scanpy_subtypes(
    counts: sp.csr_matrix, conditions: np.ndarray, *, resolution: float, seed: int
) -> np.ndarray:
    """Harmony-integrated PCs, then Leiden clustering (paper D.1.1)."""
    try:
        import harmonypy
        import scanpy as sc
    except ImportError as error:
        raise SimcellError(
            f"subtype discovery 'scanpy' needs the optional extra: pip install 'simcell[real]' "
            f"({error.name} is missing); or use subtypes='plain'"
        ) from None
    obs = pd.DataFrame({"condition": conditions}, index=np.arange(counts.shape[0]).astype(str))
    cells = ad.AnnData(counts.astype(np.float32), obs=obs)
    sc.pp.normalize_total(cells)
    sc.pp.log1p(cells)
    sc.pp.pca(cells, n_comps=min(30, cells.n_obs - 1, cells.n_vars - 1), random_state=seed)
    # harmonypy directly: its corrected PCs are dims x cells in 0.0.x and cells x
    # dims in 2.x, which scanpy's wrapper does not follow
    harmony = harmonypy.run_harmony(
        cells.obsm["X_pca"], cells.obs, ["condition"], random_state=seed, verbose=False
    )
    corrected = np.asarray(harmony.Z_corr)
    if corrected.shape[0] != cells.n_obs:
        corrected = corrected.T
    cells.obsm["X_pca_harmony"] = corrected
    sc.pp.neighbors(cells, use_rep="X_pca_harmony", random_state=seed)
    sc.tl.leiden(cells, resolution=resolution, random_state=seed, flavor="igraph", n_iterations=2)
    return cells.obs["leiden"].astype(int).to_numpy()


def discover_subtypes(
    counts: sp.csr_matrix,
    broad_types: np.ndarray,
    conditions: np.ndarray,
    control: str,
    *,
    mode: SubtypeMode = "plain",
    max_subtypes: int = 3,
    min_cells: int = DEFAULT_MIN_CELLS,
    resolution: float = 0.3,
    seed: int = 0,
) -> np.ndarray:
    """Granular subtypes found within each broad cell type (paper D.1.1).

    Parameters
    ----------
    counts : scipy.sparse matrix, shape (n_cells, n_genes)
    broad_types, conditions : ndarray of str, shape (n_cells,)
    control : str
    mode : {"none", "plain", "scanpy"}
        ``none``: each broad type is its own subtype. ``plain``: see
        :func:`_plain_subtypes` (numpy / sklearn only). ``scanpy``: Harmony +
        Leiden as in the paper (``pip install 'simcell[real]'``).
    max_subtypes : int
        Largest k tried by ``plain``.
    min_cells : int
        ``plain``: the smallest cluster allowed.
    resolution : float
        ``scanpy``: Leiden resolution.
    seed : int

    Returns
    -------
    ndarray of str, shape (n_cells,)
        ``"<broad type> <i>"``, i = 0 for the largest subtype of its type.
    """
    if mode not in ("none", "plain", "scanpy"):
        raise SimcellError(f"subtype mode must be none, plain or scanpy, got {mode!r}")
    out = np.asarray(broad_types, dtype=object).copy()
    if mode == "none":
        return out.astype(str)
    for broad in sorted(set(broad_types.tolist())):
        members = np.flatnonzero(broad_types == broad)
        if members.size < 2 * min_cells or not (conditions[members] == control).any():
            labels = np.zeros(members.size, dtype=np.int64)
        elif mode == "plain":
            labels = _plain_subtypes(
                counts[members],
                conditions[members],
                control,
                max_subtypes=max_subtypes,
                min_cells=min_cells,
                seed=int_seed(seed, "subtypes", broad),
            )
        else:
            labels = _scanpy_subtypes(
                counts[members],
                conditions[members],
                resolution=resolution,
                seed=int_seed(seed, "subtypes", broad),
            )
        order = np.argsort(-np.bincount(labels), kind="stable")  # largest first
        rank = np.empty_like(order)
        rank[order] = np.arange(order.size)
        out[members] = [f"{broad} {i}" for i in rank[labels]]
    return out.astype(str)


# ----------------------------------------------------------------------------- tasks


def proxy_tasks(
    subtypes: np.ndarray,
    conditions: np.ndarray,
    concepts: pd.DataFrame,
    layout: RealLayout,
    *,
    min_cells: int,
    seed: int,
    pairs: Sequence[tuple[str, str]] | None = None,
) -> tuple[list[dict], dict[str, np.ndarray]]:
    """The paper's proxy tasks: hold out a subtype under a condition, edit its controls.

    For a pair (s, c): the cells of subtype s under condition c are ``heldout``;
    the control cells of s are split at random, half ``train`` and half
    ``intervene``; every other cell is ``train``. A pair is eligible when s has
    at least ``min_cells`` cells under c and ``2 * min_cells`` control cells,
    c switches on exactly one concept, and other cells show that concept on at
    least ``min_cells`` times (so training sees it).

    Parameters
    ----------
    subtypes, conditions : ndarray of str, shape (n_cells,)
    concepts : DataFrame, shape (n_cells, n_concepts)
        From :func:`concept_table`.
    layout : RealLayout
    min_cells, seed : int
    pairs : sequence of (subtype, condition), optional
        The tasks wanted (an error when one is not eligible); default: every
        eligible pair, in subtype then condition order (the ineligible ones are
        skipped with a warning).

    Returns
    -------
    tasks : list of dict
        ``name`` (the subtype, and the condition when there are several, e.g.
        ``CD4_T_cells_0`` or ``NK_cell__IL15``), ``cell_type`` (the subtype),
        ``concept``, ``n_intervene``, ``n_heldout``.
    splits : dict of str -> ndarray of str
        ``split:<task>`` column -> train / intervene / heldout of every cell.
    """
    control = conditions == layout.control
    wanted = list(pairs) if pairs else None
    # by default one task per (subtype, single perturbation): a task asks do() of one
    # concept, so combinations (A_B) are never the default held-out condition
    candidates = wanted or [
        (s, c)
        for s in sorted(set(subtypes.tolist()))
        for c in sorted(set(conditions.tolist()) - {layout.control})
        if len(_parts(c, layout)) == 1
    ]
    several = len(set(conditions.tolist()) - {layout.control}) > 1
    tasks, splits, skipped = [], {}, []
    for subtype, condition in candidates:
        if condition == layout.control or condition not in set(conditions.tolist()):
            raise SimcellError(f"condition {condition!r} does not occur (or is the control)")
        if subtype not in set(subtypes.tolist()):
            known = sorted(set(subtypes.tolist()))
            raise SimcellError(f"subtype {subtype!r} does not occur; subtypes: {known}")
        parts = _parts(condition, layout)
        in_type = subtypes == subtype
        held = in_type & (conditions == condition)
        controls = np.flatnonzero(in_type & control)
        reason = None
        if len(parts) != 1:
            reason = "a combination of perturbations (one concept per task)"
        else:
            concept = _name(f"{layout.condition_key}={parts[0]}")
            seen = int(((concepts[concept].to_numpy() == 1) & ~held).sum())
            if held.sum() < min_cells:
                reason = f"{int(held.sum())} cells under {condition!r} (< {min_cells})"
            elif controls.size < 2 * min_cells:
                reason = f"{controls.size} control cells (< {2 * min_cells})"
            elif seen < min_cells:
                reason = f"{concept} is on in {seen} other cells (< {min_cells})"
        if reason is not None:
            if wanted:
                raise SimcellError(f"too few cells for task ({subtype!r}, {condition!r}): {reason}")
            skipped.append(f"({subtype}, {condition}): {reason}")
            continue
        name = _task_name(subtype, condition, several, {t[S.TASK_NAME] for t in tasks})
        split = np.full(subtypes.size, S.TRAIN, dtype=object)
        split[held] = S.HELDOUT
        shuffled = stream(seed, "real tasks", subtype, condition).permutation(controls)
        split[shuffled[controls.size // 2 :]] = S.INTERVENE
        splits[S.split_column(name)] = split.astype(str)
        tasks.append(
            {
                S.TASK_NAME: name,
                S.TASK_CELL_TYPE: subtype,
                S.TASK_CONCEPT: concept,
                S.TASK_N_INTERVENE: int(controls.size - controls.size // 2),
                S.TASK_N_HELDOUT: int(held.sum()),
            }
        )
    if not tasks:
        raise SimcellError(
            f"too few cells for any task (min_cells={min_cells}): {'; '.join(skipped[:5])}"
        )
    if skipped:
        warnings.warn(
            f"{len(skipped)} (subtype, condition) pair(s) skipped for too few cells, e.g. "
            f"{skipped[0]}",
            SimcellWarning,
            stacklevel=3,
        )
    return tasks, splits


# ----------------------------------------------------------------------------- the bundle


def load_real(
    path: str | os.PathLike,
    scenario: RealScenario,
    *,
    condition_key: str | None = None,
    control: str | None = None,
    cell_type_key: str | None = None,
    batch_key: str | None = None,
    subtype_key: str | None = None,
    layer: str | None = None,
    subtypes: SubtypeMode | None = None,
    tasks: Sequence[tuple[str, str]] | None = None,
    top_genes: int | None = DEFAULT_TOP_GENES,
    min_cells: int = DEFAULT_MIN_CELLS,
    seed: int = 0,
) -> RealData:
    """Read a real h5ad file and lay it out as a bundle (see :func:`real_bundle`)."""
    path = Path(path)
    if scenario not in REAL_SCENARIOS:
        raise SimcellError(
            f"unknown real-data scenario {scenario!r}; choose from {', '.join(REAL_SCENARIOS)}"
        )
    if min_cells < 2:
        raise SimcellError(f"min_cells must be at least 2, got {min_cells}")
    adata = _read(path)
    if adata.obs_names.has_duplicates:
        duplicated = adata.obs_names[adata.obs_names.duplicated()]
        raise SimcellError(
            f"{int(duplicated.size)} duplicated cell names in the file (e.g. {duplicated[0]!r}); "
            "make them unique (AnnData.obs_names_make_unique)"
        )
    layout = resolve_layout(
        adata.obs,
        scenario,
        condition_key=condition_key,
        control=control,
        cell_type_key=cell_type_key,
        batch_key=batch_key,
        subtype_key=subtype_key,
    )
    conditions = _as_text(_column(adata.obs, layout.condition_key, "condition"))
    broad = _as_text(_column(adata.obs, layout.cell_type_key, "cell type"))
    keep = ~np.isin(broad, list(layout.exclude))
    if layout.control not in set(conditions[keep].tolist()):
        shown = ", ".join(sorted(set(conditions.tolist()))[:10])
        raise SimcellError(
            f"the control value {layout.control!r} does not occur in obs column "
            f"{layout.condition_key!r} (values: {shown})"
        )
    counts, where = find_counts(adata, layer)
    batch = (
        _as_text(_column(adata.obs, layout.batch_key, "batch"))
        if layout.batch_key
        else np.full(adata.n_obs, "0", dtype=object)
    )
    given = None
    if layout.subtype_key:
        given = _as_text(_column(adata.obs, layout.subtype_key, "subtype"))
    positions = np.flatnonzero(keep)
    if positions.size < 4 * min_cells:
        raise SimcellError(f"too few cells: {positions.size} (need at least {4 * min_cells})")
    counts, conditions, broad, batch = (
        counts[positions],
        conditions[positions],
        broad[positions],
        batch[positions],
    )
    names = adata.obs_names[positions]
    gene_names = adata.var_names
    if top_genes is not None and top_genes < counts.shape[1]:
        totals = np.asarray(counts.sum(axis=0)).ravel()
        genes = np.sort(np.argsort(-totals, kind="stable")[:top_genes])
        counts, gene_names = counts[:, genes], gene_names[genes]
    del adata
    mode = subtypes or ("none" if given is not None else DEFAULT_SUBTYPES.get(scenario, "none"))
    if given is not None:
        granular = given[positions]
    else:
        granular = discover_subtypes(
            counts, broad, conditions, layout.control, mode=mode, min_cells=min_cells, seed=seed
        )
    concepts = concept_table(conditions, broad, layout)
    concepts.index = names
    task_list, splits = proxy_tasks(
        granular, conditions, concepts, layout, min_cells=min_cells, seed=seed, pairs=tasks
    )
    params = {
        **{k: ",".join(v) if isinstance(v, tuple) else v for k, v in asdict(layout).items()},
        "input_file": path.name,
        "input_sha256": file_checksum(path),
        "counts_from": where,
        "subtypes": "given" if given is not None else mode,
        "top_genes": -1 if top_genes is None else int(top_genes),
        "min_cells": int(min_cells),
        S.PARAM_INTERVENTION_MODE: "direct",
        S.PARAM_CORRUPTION: "none",
        S.PARAM_CORRUPTION_LEVEL: 0,
    }
    obs = pd.DataFrame(
        {
            S.OBS_BATCH: pd.Categorical(batch.astype(str)),
            S.OBS_TISSUE: pd.Categorical(np.full(names.size, "0")),
            S.OBS_CELL_TYPE: pd.Categorical(granular.astype(str)),
            OBS_BROAD_CELL_TYPE: pd.Categorical(broad.astype(str)),
            OBS_CONDITION: pd.Categorical(conditions.astype(str)),
            S.OBS_LIBRARY_SIZE: np.asarray(counts.sum(axis=1), dtype=np.float64).ravel(),
            **{column: pd.Categorical(split) for column, split in splits.items()},
        },
        index=pd.Index(names.astype(str)),
    )
    factual = ad.AnnData(X=counts, obs=obs, var=pd.DataFrame(index=gene_names.astype(str)))
    factual.obsm[S.CONCEPTS] = concepts.copy()
    factual.obsm[S.CONCEPTS_TRUE] = concepts.copy()
    factual.uns[S.UNS] = {
        S.UNS_VERSION: simcell.__version__,
        S.UNS_SCENARIO: scenario,
        S.UNS_SEED: int(seed),
        S.UNS_PARAMS: params,
        S.UNS_TASKS: pd.DataFrame(task_list).to_dict(orient="list"),
        S.UNS_CONCEPT_KINDS: np.asarray(["binary"] * concepts.shape[1]),
    }
    return RealData(factual=factual, params=params, tasks=task_list)


def real_bundle(
    path: str | os.PathLike,
    scenario: RealScenario,
    out_dir: str | os.PathLike,
    *,
    condition_key: str | None = None,
    control: str | None = None,
    cell_type_key: str | None = None,
    batch_key: str | None = None,
    subtype_key: str | None = None,
    layer: str | None = None,
    subtypes: SubtypeMode | None = None,
    tasks: Sequence[tuple[str, str]] | None = None,
    top_genes: int | None = DEFAULT_TOP_GENES,
    min_cells: int = DEFAULT_MIN_CELLS,
    seed: int = 0,
    overwrite: bool = False,
) -> RealData:
    """Write a bundle of real cells (no ``counterfactual.h5ad``) from an h5ad file.

    Parameters
    ----------
    path : path
        The h5ad file as downloaded (see :data:`LAYOUTS`).
    scenario : {"kang2017", "norman2019", "nault2023", "cui2024", "perturbation"}
        A known layout, or ``perturbation`` with the columns declared.
    out_dir : path
        The bundle folder (written atomically).
    condition_key, control, cell_type_key, batch_key, subtype_key : str, optional
        obs columns (and the control value) overriding the scenario's layout.
    layer : str, optional
        Layer with the raw counts (default: X, else a ``counts`` layer).
    subtypes : {"none", "plain", "scanpy"}, optional
        Subtype discovery (default: ``plain`` for kang2017, else ``none``; a
        given ``subtype_key`` is used as is).
    tasks : sequence of (subtype, condition), optional
        The proxy tasks (default: every eligible pair).
    top_genes : int or None
        Keep the most highly expressed genes (total counts), 3000 as in the
        paper; None keeps all.
    min_cells : int
        Smallest heldout population (and half the control cells) of a task.
    seed : int
        Seeds subtype discovery and the train / intervene split.
    overwrite : bool
        See :func:`simcell.simulator.write_bundle`.

    Returns
    -------
    RealData

    Raises
    ------
    SimcellError
        One line: unreadable file, missing obs column, a control value that
        does not occur, no raw counts (non-integer, negative or non-finite
        values), duplicated cell names, too few cells for a task.
    """
    out_dir = Path(out_dir)
    with atomic_output(out_dir, BUNDLE_OWNERSHIP, overwrite=overwrite) as staging:
        data = load_real(
            path,
            scenario,
            condition_key=condition_key,
            control=control,
            cell_type_key=cell_type_key,
            batch_key=batch_key,
            subtype_key=subtype_key,
            layer=layer,
            subtypes=subtypes,
            tasks=tasks,
            top_genes=top_genes,
            min_cells=min_cells,
            seed=seed,
        )
        data.factual.write_h5ad(staging / S.FACTUAL)
        manifest = manifest_for_real(data, staging)
        (staging / S.MANIFEST).write_text(json.dumps(manifest, indent=2))
    return data


def generate_real(
    scenario: str,
    input_file: str | os.PathLike | None,
    out_dir: str | os.PathLike | None,
    *,
    seed: int = 0,
    overwrite: bool = False,
    **options,
) -> tuple[RealData, Path]:
    """What ``simcell generate --scenario NAME --input FILE`` does: check that the
    scenario is a real-data one and the file is given, then :func:`real_bundle`
    into ``out_dir`` (default ``simcell-data/<scenario>``).

    Returns
    -------
    (RealData, Path)
        The data and the bundle folder.
    """
    from simcell.simulator.bundle import DATA_ROOT

    if scenario not in REAL_SCENARIOS:
        raise SimcellError(
            f"--input takes a real-data scenario ({', '.join(REAL_SCENARIOS)}), not {scenario!r}"
        )
    if input_file is None:
        raise SimcellError(f"scenario {scenario!r} reads real cells: give --input FILE.h5ad")
    out = Path(out_dir) if out_dir is not None else DATA_ROOT / scenario
    data = real_bundle(input_file, scenario, out, seed=seed, overwrite=overwrite, **options)  # type: ignore[arg-type]
    return data, out


def manifest_for_real(data: RealData, directory: Path) -> dict:
    """The manifest of a real-data bundle: the simulated bundles' keys, the input
    file's name and SHA-256 in ``params``, and only ``factual.h5ad`` checksummed."""
    meta = data.factual.uns[S.UNS]
    manifest = {
        S.MANIFEST_FORMAT: S.FORMAT,
        S.MANIFEST_VERSION: simcell.__version__,
        S.MANIFEST_SCENARIO: meta[S.UNS_SCENARIO],
        S.MANIFEST_SEED: meta[S.UNS_SEED],
        S.MANIFEST_PARAMS: _plain(data.params),
        S.MANIFEST_N_CELLS: int(data.factual.n_obs),
        S.MANIFEST_N_GENES: int(data.factual.n_vars),
        S.MANIFEST_TASKS: [
            {k: task[k] for k in (S.TASK_NAME, S.TASK_CELL_TYPE, S.TASK_CONCEPT)}
            for task in data.tasks
        ],
        S.MANIFEST_CHECKSUMS: {S.FACTUAL: file_checksum(directory / S.FACTUAL)},
    }
    manifest[S.MANIFEST_IDENTITY] = bundle_identity(manifest)
    return manifest


def _plain(params: Mapping) -> dict:
    return {k: ",".join(v) if isinstance(v, tuple) else v for k, v in params.items()}


def _task_name(subtype: str, condition: str, with_condition: bool, taken: set[str]) -> str:
    """A task's name from its subtype (and condition when there are several), safe in
    file names and obs columns: ``CD4_T_cells_0``, ``NK_cell__IL15``."""
    name = re.sub(r"[^A-Za-z0-9.]+", "_", subtype).strip("_") or "task"
    if with_condition:
        name += "__" + (re.sub(r"[^A-Za-z0-9.]+", "_", condition).strip("_") or "condition")
    unique, number = name, 1
    while unique in taken:
        unique, number = f"{name}_{number}", number + 1
    return unique


def _name(text: str) -> str:
    """A concept name h5ad can store (no ``/``, which would nest its group)."""
    return text.replace("/", "-")
