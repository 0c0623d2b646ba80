"""Bring-your-own-model export: each task as the harness sees it, and a predictions template.

:func:`export_tasks` writes, for a bundle, what a model trained outside simcell
needs to answer the same questions as the harness's own models, in the space
the harness scores in (the same :func:`~simcell.evaluation.tasks.build_task`,
with the same seed and ``n_components``, so nothing is re-derived)::

    OUT/
      export.json                  bundle path and identity, space, seed,
                                   n_components, corruption, tasks, files
      predictions_template.h5ad    one row per counterfactual row (obs: task,
                                   source_cell); X = the identity prediction;
                                   uns: space, simcell_bundle (+ simcell_pca)
      <task>/
        train.h5ad                 the train cells: X in the space; obs batch,
                                   tissue, cell_type; obsm["concepts"] = the
                                   annotations a model may see (NaN = missing)
        intervene.h5ad             the cells to intervene on, in the template's
                                   row order: X, obs, obsm["concepts"] and
                                   obsm["target_concepts"] (do() applied);
                                   uns["intervention"] = do, mode, dag
        preprocessing.json         target_sum, the formula, seed, n_components
                                   (asked) and n_pcs (fitted), the PCA's digest
        preprocessing.npz          pca_mean (n_genes,), pca_components
                                   (n_pcs, n_genes), genes

Spaces: ``counts`` (raw counts), ``lognorm`` (``log1p(x / Σx · target_sum)``,
``target_sum`` = the median total count of the task's train cells; stored
sparse, since zeros stay zeros) and ``pca`` (``(lognorm − pca_mean) @
pca_componentsᵀ`` in float64; cast to float32 they are the PCs the harness's
models train on). The template, with X replaced by a model's predictions in
the same space, is what ``simcell evaluate --predictions`` reads.

Everything is written through the one atomic writer: a failed export leaves
nothing, and a folder holding files simcell did not write is refused (or,
with ``overwrite``, written beside them without deleting any).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

import simcell
from simcell import SimcellError
from simcell._atomic import STAGING_MARKER, atomic_output, listing_ownership
from simcell.evaluation.predictions import BUNDLE_KEY, PCA_KEY, pca_digest
from simcell.evaluation.tasks import Corruption, TaskData, build_task, lognorm_blocks
from simcell.simulator import Bundle, read_bundle, schema

ExportSpace = Literal["counts", "lognorm", "pca"]
EXPORT_SPACES: tuple[ExportSpace, ...] = ("counts", "lognorm", "pca")
#: the export's marker: what it is, and the files simcell wrote
EXPORT_MARKER = "export.json"
TEMPLATE = "predictions_template.h5ad"
_FORMAT = "simcell-export/1"
_COVARIATES = ("batch", "tissue", "cell_type")
LOGNORM_FORMULA = "log1p(x / sum(x) * target_sum)"
EXPORT_OWNERSHIP = listing_ownership("export", EXPORT_MARKER, _FORMAT)


def export_tasks(
    bundle: str | os.PathLike | Bundle,
    out: str | os.PathLike,
    *,
    space: ExportSpace = "counts",
    corruptions: Sequence[str | tuple | Corruption] = (),
    seed: int = 0,
    n_components: int = 128,
    tasks: Sequence[str] | None = None,
    overwrite: bool = False,
    verify: bool = True,
) -> Path:
    """Export a bundle's tasks for a model trained outside simcell.

    See the module docstring for the layout. The preprocessing is the harness's
    own (:func:`~simcell.evaluation.tasks.build_task` with ``seed`` and
    ``n_components``), so ``evaluate(bundle, predictions=..., seed=seed,
    n_components=n_components)`` scores the template in the exported space.

    Parameters
    ----------
    bundle : path or Bundle
    out : path
        The export folder.
    space : {"counts", "lognorm", "pca"}
        The space of X in every file (and of the predictions the template asks for).
    corruptions : sequence of "KIND:LEVEL" or (kind, level[, p]), optional
        At most one condition (a predictions file answers one): the annotations
        a model may see are corrupted per task as the harness does, protecting
        the task's concept. Default: the scenario's own corruption.
    seed : int
        Harness seed (PCA fit cells, PCA, corruption draws).
    n_components : int
        PCA components (fewer where a task has fewer cells or genes).
    tasks : sequence of str, optional
        A subset of the bundle's tasks (default: all).
    overwrite : bool
        Write into a folder holding files simcell did not write, keeping them.
    verify : bool
        Verify the bundle when given as a path (see :func:`simcell.simulator.read_bundle`).

    Returns
    -------
    Path
        The export folder.

    Raises
    ------
    SimcellError
        One line: an unknown space, corruption or task, more than one
        corruption condition, a level above the columns a task leaves
        unprotected, a missing or unverifiable bundle, a refused folder.
        Nothing is written.
    """
    from simcell.evaluation.harness import _check_corruptions

    if space not in EXPORT_SPACES:
        raise SimcellError(f"space must be one of {', '.join(EXPORT_SPACES)}, got {space!r}")
    if len(corruptions) > 1:
        raise SimcellError(
            f"export writes one corruption condition (a predictions file answers one), got "
            f"{len(corruptions)}; export once per condition"
        )
    if not isinstance(bundle, Bundle):
        path = Path(bundle)
        if not path.is_dir():
            raise SimcellError(f"bundle not found: {path}")
        bundle = read_bundle(path, verify=verify)
    factual = bundle.factual
    names = schema.check_tasks(factual, tasks)
    (condition,) = _check_corruptions(factual, [Corruption.parse(c) for c in corruptions])
    out = Path(out)
    with atomic_output(
        out, EXPORT_OWNERSHIP, overwrite=overwrite, protect=[bundle.path]
    ) as staging:
        templates, digests = [], {}
        for name in names:
            data = build_task(bundle, name, n_components=n_components, seed=seed)
            digests[name] = pca_digest(data.preprocessor.pca)
            templates.append(
                _write_task(staging / name, bundle, data, condition, space, seed, n_components)
            )
        template = _template(templates, factual, space)
        template.uns[BUNDLE_KEY] = bundle.identity
        if space == "pca":
            template.uns[PCA_KEY] = {
                "seed": int(seed),
                "n_components": int(n_components),
                "digests": digests,
            }
        template.write_h5ad(staging / TEMPLATE)
        written = sorted(
            p.relative_to(staging).as_posix()
            for p in staging.rglob("*")
            if p.is_file() and p.name != STAGING_MARKER
        )
        record = {
            "format": _FORMAT,
            "simcell_version": simcell.__version__,
            "bundle": str(bundle.path),
            "bundle_identity": bundle.identity,
            "space": space,
            "seed": int(seed),
            "n_components": int(n_components),
            "corruption": f"{condition.kind}:{condition.level}",
            "corruption_p": condition.p,
            "tasks": list(names),
            "files": written,
        }
        (staging / EXPORT_MARKER).write_text(json.dumps(record, indent=2))
    return out


# ----------------------------------------------------------------------------- per task


def _in_space(data: TaskData, counts, rows: np.ndarray, space: ExportSpace):
    """X of the cells at ``rows`` in ``space``, block by block as the harness projects.

    ``counts``: CSR as stored; ``lognorm``: CSR float64 (log1p keeps zeros);
    ``pca``: dense float64, whose float32 cast is the harness's PCs.
    """
    pre = data.preprocessor
    if space == "counts":
        return sp.csr_matrix(counts[rows])
    # the harness's own normalisation (and its ``lognorm`` model space), block by block
    blocks = [
        sp.csr_matrix(lognorm) if space == "lognorm" else pre.pca.transform(lognorm)
        for lognorm in lognorm_blocks(pre, counts, rows)
    ]
    if space == "lognorm":
        return sp.vstack(blocks, format="csr") if blocks else sp.csr_matrix((0, counts.shape[1]))
    return np.concatenate(blocks) if blocks else np.zeros((0, pre.pca.n_components_))


def _var(data: TaskData, factual: ad.AnnData, space: ExportSpace) -> pd.DataFrame:
    if space == "pca":
        return pd.DataFrame(index=pc_names(data.preprocessor.pca.n_components_))
    return pd.DataFrame(index=factual.var_names.copy())


def pc_names(n: int) -> list[str]:
    """``["PC1", ..., "PCn"]``: the var_names of ``pca`` space."""
    return [f"PC{i + 1}" for i in range(n)]


def _cells(
    factual: ad.AnnData,
    rows: np.ndarray,
    x,
    var: pd.DataFrame,
    concepts: np.ndarray,
    names: Sequence[str],
) -> ad.AnnData:
    obs = factual.obs.iloc[rows][[c for c in _COVARIATES if c in factual.obs]].copy()
    adata = ad.AnnData(X=x, obs=obs, var=var)
    adata.obsm["concepts"] = pd.DataFrame(
        np.asarray(concepts, dtype=np.float32), index=obs.index, columns=list(names)
    )
    return adata


def _write_task(
    folder: Path,
    bundle: Bundle,
    data: TaskData,
    condition: Corruption,
    space: ExportSpace,
    seed: int,
    n_components: int,
) -> ad.AnnData:
    """Write one task's files; return its rows of the predictions template."""
    factual = bundle.factual
    counts = factual.X
    pre = data.preprocessor
    annotations = data.annotations_for(condition)
    var = _var(data, factual, space)
    folder.mkdir()
    about = {
        "task": data.name,
        "cell_type": data.cell_type,
        "concept": data.concept,
        "space": space,
    }

    train = _cells(
        factual,
        data.train,
        _in_space(data, counts, data.train, space),
        var,
        annotations.train,
        annotations.names,
    )
    train.uns["task"] = about
    train.write_h5ad(folder / "train.h5ad")

    if space == "counts":
        x_intervene = sp.csr_matrix(counts[data.intervene])
        identity = x_intervene.toarray().astype(np.float64)
    elif space == "lognorm":
        identity = data.intervene_genes
        x_intervene = sp.csr_matrix(identity)
    else:  # exactly what the harness maps back to the factual cells
        identity = pre.pca.transform(data.intervene_genes)
        x_intervene = identity
    intervene = _cells(
        factual, data.intervene, x_intervene, var, annotations.intervene, annotations.names
    )
    targets = data.intervention.direct_targets(annotations.intervene, annotations.names)
    intervene.obsm["target_concepts"] = pd.DataFrame(
        targets.astype(np.float32), index=intervene.obs_names, columns=list(annotations.names)
    )
    intervention = data.intervention
    dag = intervention.dag
    intervene.uns["task"] = about
    intervene.uns["intervention"] = {
        "do": {k: float(v) for k, v in intervention.do.items()},
        "mode": intervention.mode,
        "dag": pd.DataFrame(
            {
                "parent": pd.Series([e[0] for e in dag], dtype=str),
                "child": pd.Series([e[1] for e in dag], dtype=str),
                "weight": pd.Series([e[2] for e in dag], dtype=np.float64),
            }
        ),
    }
    intervene.write_h5ad(folder / "intervene.h5ad")

    pca = pre.pca
    (folder / "preprocessing.json").write_text(
        json.dumps(
            {
                **about,
                "target_sum": pre.target_sum,
                "lognorm": LOGNORM_FORMULA,
                "pca": "(lognorm - pca_mean) @ pca_components.T (preprocessing.npz)",
                "seed": int(seed),
                "n_components": int(n_components),
                "n_pcs": int(pca.n_components_),
                "pca_fit_cells": int(data.pca_cells.size),
                "pca_digest": pca_digest(pca),
                "corruption": f"{condition.kind}:{condition.level}",
                "corruption_record": None
                if annotations.record is None
                else annotations.record.to_dict(),
                "intervention": {
                    "do": dict(intervention.do),
                    "mode": intervention.mode,
                    "dag": [list(edge) for edge in dag],
                },
            },
            indent=2,
        )
    )
    np.savez(
        folder / "preprocessing.npz",
        pca_mean=pca.mean_,
        pca_components=pca.components_,
        genes=np.asarray(factual.var_names, dtype=str),
    )

    sources = np.asarray(factual.obs_names[data.intervene], dtype=str)
    obs = pd.DataFrame(
        {"task": data.name, "source_cell": sources}, index=np.char.add(f"{data.name}:", sources)
    )
    return ad.AnnData(X=np.asarray(identity, dtype=np.float64), obs=obs)


def _template(parts: list[ad.AnnData], factual, space: ExportSpace) -> ad.AnnData:
    """One row per (task, intervene cell); ``pca`` tasks with fewer components are
    padded with zeros (the harness reads a task's own first columns)."""
    width = max(part.n_vars for part in parts)
    blocks = [np.pad(part.X, ((0, 0), (0, width - part.n_vars))) for part in parts]
    obs = pd.concat([part.obs for part in parts])
    names = pc_names(width) if space == "pca" else factual.var_names.copy()
    template = ad.AnnData(X=np.concatenate(blocks), obs=obs, var=pd.DataFrame(index=names))
    template.uns["space"] = space
    return template
