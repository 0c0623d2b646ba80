"""Predictions brought as a file: read, tie to their bundle, check their space.

A predictions file is an h5ad with one row per counterfactual row of the
bundle (``obs``: ``task``, ``source_cell``), the bundle's genes as
``var_names`` (any order), ``uns["space"]`` and ``uns["simcell_bundle"]``:

* ``uns["simcell_bundle"]`` is the identity of the bundle the predictions were
  made on (:func:`simcell.simulator.bundle_identity` of its manifest, also
  ``Bundle.identity``). Cell names repeat across bundles (``cell_0`` ...), so
  only the identity says which bundle a row belongs to: a different identity is
  an error, a missing one a :class:`~simcell.SimcellWarning`.
* ``uns["space"]`` is ``"counts"`` (non-negative expression on the count scale:
  integer draws or real-valued expected counts, any library size),
  ``"lognorm"`` (``log1p`` of library-size-normalised profiles,
  ``log1p(x / Σx · T)``, with one target sum ``T`` per task) or ``"pca"``.
* ``"pca"`` predictions are each task's principal components as the harness
  computes them (``simcell export --space pca`` writes them): ``var_names``
  ``PC1`` ... ``PCn`` (a task with fewer components uses the first columns and
  ignores the rest) and ``uns["simcell_pca"]`` = ``{"seed", "n_components",
  "digests": {task: digest}}``. The PCA depends on the harness seed and
  ``n_components``, so an evaluation with other settings is refused up front,
  and each task's PCA must have the digest (:func:`pca_digest`) recorded by the
  export. The harness maps the PCs to genes as it does its own models'
  (:meth:`~simcell.evaluation.preprocess.Preprocessor.to_genes_keeping`).

The space is checked on evidence a label cannot fake. Undoing ``log1p`` of a
log-normalised row gives back the normalised profile, so ``expm1(row).sum()``
is the same ``T`` for every cell of a task (the check runs per task); for
counts it is dominated by each cell's largest count and differs from cell to
cell by orders of magnitude. Rows that
are all zero (an empty cell) and matrices whose rows all have the same plain
sum (e.g. one profile repeated) carry no evidence and pass as labelled.
``lognorm`` predictions are re-normalised to the harness's target sum, so their
own ``T`` does not matter.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from simcell import SimcellError, SimcellWarning
from simcell.simulator import Bundle

Space = Literal["counts", "lognorm", "pca"]
SPACES: tuple[Space, ...] = ("counts", "lognorm", "pca")
#: the ``uns`` key holding the identity of the bundle predictions were made on
BUNDLE_KEY = "simcell_bundle"
#: the ``uns`` key of ``pca`` predictions: harness seed, n_components, per-task digests
PCA_KEY = "simcell_pca"
#: relative spread under which row totals count as one constant
_CONSTANT_RTOL = 1e-3


def read_predictions(
    source: str | os.PathLike | ad.AnnData, bundle: Bundle, tasks: Sequence[str] | None = None
) -> ad.AnnData:
    """Read and validate predictions brought as an h5ad file.

    See the module docstring for the layout, the bundle identity and the rule
    that decides the space.

    Parameters
    ----------
    source : path or AnnData
    bundle : Bundle
        The bundle the predictions are scored on.
    tasks : sequence of str, optional
        The tasks scored (default: all): every counterfactual row of these must
        be predicted; rows of the bundle's other tasks are allowed (and unused).

    Returns
    -------
    AnnData
        The predictions with dense float values, genes in the bundle's order
        (for ``pca``: the components as given).

    Raises
    ------
    SimcellError
        Naming an unreadable file, another bundle's identity, missing or extra
        cells or genes, non-finite or negative values, or values that
        contradict ``uns["space"]``.

    Warns
    -----
    SimcellWarning
        When ``uns["simcell_bundle"]`` is absent (the bundle cannot be checked).
    """
    if isinstance(source, ad.AnnData):
        adata = source
    else:
        path = Path(source)
        if not path.is_file():
            raise SimcellError(f"predictions file not found: {path}")
        try:
            adata = ad.read_h5ad(path)
        except Exception as error:  # h5py / anndata raise many types on a bad file
            reason = str(error).strip().splitlines()[0] if str(error).strip() else ""
            raise SimcellError(
                f"cannot read predictions {path}: {type(error).__name__}: {reason}"
            ) from None
    space = adata.uns.get("space")
    if space not in SPACES:
        raise SimcellError(
            f"predictions: uns['space'] must be 'counts', 'lognorm' or 'pca', got {space!r}"
        )
    _check_bundle(adata, bundle)
    _check_rows(adata, bundle, tasks)
    if space == "pca":
        return _read_pcs(adata, bundle)
    genes = set(bundle.factual.var_names)
    given = set(adata.var_names)
    if genes - given:
        raise SimcellError(
            f"predictions: {len(genes - given)} genes missing, e.g. {sorted(genes - given)[:3]}"
        )
    if given - genes:
        raise SimcellError(
            f"predictions: {len(given - genes)} unknown genes, e.g. {sorted(given - genes)[:3]}"
        )
    values = adata.X.toarray() if sp.issparse(adata.X) else np.asarray(adata.X)
    values = values.astype(np.float64, copy=False)
    if not np.isfinite(values).all():
        bad = int((~np.isfinite(values)).sum())
        raise SimcellError(f"predictions: {bad} NaN or infinite values")
    if (values < 0).any():
        raise SimcellError("predictions: negative values (neither counts nor lognorm)")
    tasks_of_rows = adata.obs["task"].astype(str).to_numpy()
    for task in np.unique(tasks_of_rows):  # each task has its own target sum
        check_space(values[tasks_of_rows == task], space)
    if BUNDLE_KEY not in adata.uns:  # said last: only about predictions otherwise accepted
        warnings.warn(
            f"predictions: uns[{BUNDLE_KEY!r}] is absent, so nothing shows they were made on "
            f"this bundle; set it to the bundle's identity ({bundle.identity})",
            SimcellWarning,
            stacklevel=2,
        )
    out = adata[:, bundle.factual.var_names].copy()
    out.X = values[:, adata.var_names.get_indexer(bundle.factual.var_names)]
    return out


def _check_bundle(adata: ad.AnnData, bundle: Bundle) -> None:
    made_on = adata.uns.get(BUNDLE_KEY)
    if made_on is not None and str(made_on) != bundle.identity:
        raise SimcellError(
            f"predictions were made on another bundle: uns[{BUNDLE_KEY!r}] is "
            f"{str(made_on)[:16]}..., this bundle ({bundle.path}) is {bundle.identity[:16]}..."
        )


def _check_rows(adata: ad.AnnData, bundle: Bundle, tasks: Sequence[str] | None = None) -> None:
    for column in ("task", "source_cell"):
        if column not in adata.obs:
            raise SimcellError(f"predictions: obs has no {column!r} column")
    truth = bundle.counterfactual.obs
    known = set(zip(truth["task"].astype(str), truth["source_cell"].astype(str), strict=True))
    scored = None if not tasks else set(map(str, tasks))
    expected = known if scored is None else {key for key in known if key[0] in scored}
    keys = list(
        zip(adata.obs["task"].astype(str), adata.obs["source_cell"].astype(str), strict=True)
    )
    if len(set(keys)) != len(keys):
        raise SimcellError("predictions: duplicated (task, source_cell) rows")
    missing, extra = expected - set(keys), set(keys) - known
    if missing:
        raise SimcellError(f"predictions: {len(missing)} cells missing, e.g. {sorted(missing)[:3]}")
    if extra:
        raise SimcellError(f"predictions: {len(extra)} unknown cells, e.g. {sorted(extra)[:3]}")


def _read_pcs(adata: ad.AnnData, bundle: Bundle) -> ad.AnnData:
    """``pca`` predictions: PC1..PCn columns, finite values, the export's PCA record."""
    n = adata.n_vars
    if n == 0 or list(adata.var_names) != [f"PC{i + 1}" for i in range(n)]:
        raise SimcellError(
            "predictions: uns['space'] is 'pca' but var_names are not PC1 ... PCn "
            f"(got {list(adata.var_names[:3])}...)"
        )
    record = adata.uns.get(PCA_KEY)
    if not isinstance(record, Mapping) or not {"seed", "n_components", "digests"} <= set(record):
        raise SimcellError(
            f"predictions: pca space needs uns[{PCA_KEY!r}] (seed, n_components, digests), "
            "as 'simcell export --space pca' writes it"
        )
    values = adata.X.toarray() if sp.issparse(adata.X) else np.asarray(adata.X)
    values = values.astype(np.float64, copy=False)
    if not np.isfinite(values).all():
        bad = int((~np.isfinite(values)).sum())
        raise SimcellError(f"predictions: {bad} NaN or infinite values")
    if BUNDLE_KEY not in adata.uns:
        warnings.warn(
            f"predictions: uns[{BUNDLE_KEY!r}] is absent, so nothing shows they were made on "
            f"this bundle; set it to the bundle's identity ({bundle.identity})",
            SimcellWarning,
            stacklevel=3,
        )
    out = adata.copy()
    out.X = values
    return out


def pca_digest(pca) -> str:
    """SHA-256 of a fitted PCA's mean and components (float64, with their shapes).

    Two PCAs with the same digest project every cell identically; it ties
    ``pca`` predictions to the harness seed and ``n_components`` they were
    made with (fitting is deterministic given both, on one machine).
    """
    digest = hashlib.sha256()
    for array in (pca.mean_, pca.components_):
        array = np.ascontiguousarray(array, dtype=np.float64)
        digest.update(repr(array.shape).encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def check_pca_settings(
    brought: ad.AnnData, *, seed: int, n_components: int, tasks: Sequence[str]
) -> None:
    """Refuse ``pca`` predictions made under another harness seed or ``n_components``
    (or without a digest for a scored task), before any work. Other spaces pass."""
    if brought.uns.get("space") != "pca":
        return
    record = brought.uns[PCA_KEY]
    made = (int(record["seed"]), int(record["n_components"]))
    if made != (int(seed), int(n_components)):
        raise SimcellError(
            f"predictions: pca space exported with seed {made[0]} and n_components {made[1]}, "
            f"but this evaluation uses seed {seed} and n_components {n_components}: the PCs "
            "are another PCA's (evaluate with the export's seed, or export again)"
        )
    digests = record["digests"]
    absent = [task for task in tasks if task not in digests]
    if absent:
        raise SimcellError(f"predictions: pca space without a PCA digest for task(s) {absent}")


def _constant(values: np.ndarray) -> bool:
    return bool(values.max() - values.min() <= _CONSTANT_RTOL * abs(values.max()))


def check_space(values: np.ndarray, space: Space) -> None:
    """Refuse values whose rows contradict ``space`` (see the module docstring).

    Parameters
    ----------
    values : ndarray, shape (n_cells, n_genes)
        Finite, non-negative predictions.
    space : {"counts", "lognorm"}

    Raises
    ------
    SimcellError
        ``lognorm`` rows whose ``expm1`` totals differ between cells, or
        ``counts`` rows whose ``expm1`` totals are one constant.
    """
    rows = values[values.sum(axis=1) > 0]
    if rows.shape[0] < 2 or _constant(rows.sum(axis=1)):
        return  # no evidence either way
    with np.errstate(over="ignore"):
        totals = np.expm1(rows).sum(axis=1)
    normalised = bool(np.isfinite(totals).all()) and _constant(totals)
    if space == "lognorm" and not normalised:
        raise SimcellError(
            "predictions: uns['space'] is 'lognorm' but the values look like counts: "
            f"expm1(row).sum() runs from {totals.min():.4g} to {totals.max():.4g} across "
            "cells, where log1p of library-size-normalised profiles gives one target sum "
            "(if they are counts, set uns['space'] = 'counts')"
        )
    if space == "counts" and normalised:
        raise SimcellError(
            "predictions: uns['space'] is 'counts' but the values look log-normalised: "
            f"expm1(row).sum() is {np.median(totals):.4g} for every cell (set uns['space'] "
            "= 'lognorm')"
        )


def brought_for_task(
    brought: ad.AnnData, data, factual: ad.AnnData
) -> tuple[np.ndarray, np.ndarray]:
    """A task's predictions in the harness's two spaces.

    Counts are normalised as the harness normalises cells; ``lognorm`` rows are
    taken back to their profiles (``expm1``) and normalised the same way, which
    leaves rows already at the harness's target sum unchanged; both are then
    projected on the task's PCA. ``pca`` rows must come from this task's PCA
    (its digest) and are mapped to genes keeping each factual cell's part
    outside the PCA subspace, as the harness does for its own models.

    Returns
    -------
    genes : ndarray, shape (n_intervene, n_genes)
        Log-normalised, rows in the task's intervene order.
    pcs : ndarray of float32, shape (n_intervene, n_components)
    """
    pre = data.preprocessor
    names = factual.obs_names[data.intervene]
    rows = brought.obs.reset_index(drop=True)
    mask = (rows["task"].astype(str) == data.name).to_numpy()
    index = pd.Index(rows.loc[mask, "source_cell"].astype(str)).get_indexer(names)
    values = np.asarray(brought.X, dtype=np.float64)[np.flatnonzero(mask)[index]]
    if brought.uns["space"] == "pca":
        if str(brought.uns[PCA_KEY]["digests"].get(data.name)) != pca_digest(pre.pca):
            raise SimcellError(
                f"predictions: the PCA of {data.name} is not the one they were exported with "
                "(another seed, n_components, bundle or simcell version)"
            )
        n = pre.pca.n_components_
        if values.shape[1] < n:
            raise SimcellError(
                f"predictions: {data.name} has {n} components, the predictions {values.shape[1]}"
            )
        pcs = values[:, :n]
        return pre.to_genes_keeping(pcs, data.intervene_genes), pcs.astype(np.float32)
    if brought.uns["space"] == "lognorm":
        values = np.expm1(values)
    genes = pre.lognorm(values)
    return genes, pre.to_pca(genes)
