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
  integer draws or real-valued expected counts, any library size) or
  ``"lognorm"`` (``log1p`` of library-size-normalised profiles,
  ``log1p(x / Σx · T)``, with any one target sum ``T``).

The space is checked on evidence a label cannot fake. Undoing ``log1p`` of a
log-normalised row gives back the normalised profile, so ``expm1(row).sum()``
is the same ``T`` for every cell; for counts it is dominated by each cell's
largest count and differs from cell to cell by orders of magnitude. Rows that
are all zero (an empty cell) and matrices whose rows all have the same plain
sum (e.g. one profile repeated) carry no evidence and pass as labelled.
``lognorm`` predictions are re-normalised to the harness's target sum, so their
own ``T`` does not matter.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Literal

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from simcell import SimcellError, SimcellWarning
from simcell.simulator import Bundle

Space = Literal["counts", "lognorm"]
SPACES: tuple[Space, ...] = ("counts", "lognorm")
#: the ``uns`` key holding the identity of the bundle predictions were made on
BUNDLE_KEY = "simcell_bundle"
#: relative spread under which row totals count as one constant
_CONSTANT_RTOL = 1e-3


def read_predictions(source: str | os.PathLike | ad.AnnData, bundle: Bundle) -> ad.AnnData:
    """Read and validate predictions brought as an h5ad file.

    See the module docstring for the layout, the bundle identity and the rule
    that decides the space.

    Parameters
    ----------
    source : path or AnnData
    bundle : Bundle
        The bundle the predictions are scored on.

    Returns
    -------
    AnnData
        The predictions with dense float values, genes in the bundle's order.

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
            f"predictions: uns['space'] must be 'counts' or 'lognorm', got {space!r}"
        )
    _check_bundle(adata, bundle)
    _check_rows(adata, bundle)
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
    check_space(values, space)
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


def _check_rows(adata: ad.AnnData, bundle: Bundle) -> None:
    for column in ("task", "source_cell"):
        if column not in adata.obs:
            raise SimcellError(f"predictions: obs has no {column!r} column")
    truth = bundle.counterfactual.obs
    expected = set(zip(truth["task"].astype(str), truth["source_cell"].astype(str), strict=True))
    keys = list(
        zip(adata.obs["task"].astype(str), adata.obs["source_cell"].astype(str), strict=True)
    )
    if len(set(keys)) != len(keys):
        raise SimcellError("predictions: duplicated (task, source_cell) rows")
    missing, extra = expected - set(keys), set(keys) - expected
    if missing:
        raise SimcellError(f"predictions: {len(missing)} cells missing, e.g. {sorted(missing)[:3]}")
    if extra:
        raise SimcellError(f"predictions: {len(extra)} unknown cells, e.g. {sorted(extra)[:3]}")


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


def _brought_genes(brought: ad.AnnData, data, factual: ad.AnnData, pre) -> np.ndarray:
    """A task's predictions, log-normalised to the harness's target sum.

    Counts are normalised as the harness normalises cells; ``lognorm`` rows are
    taken back to their profiles (``expm1``) and normalised the same way, which
    leaves rows already at the harness's target sum unchanged.
    """
    names = factual.obs_names[data.intervene]
    rows = brought.obs.reset_index(drop=True)
    mask = (rows["task"].astype(str) == data.name).to_numpy()
    index = pd.Index(rows.loc[mask, "source_cell"].astype(str)).get_indexer(names)
    values = np.asarray(brought.X, dtype=np.float64)[np.flatnonzero(mask)[index]]
    if brought.uns["space"] == "lognorm":
        values = np.expm1(values)
    return pre.lognorm(values)
