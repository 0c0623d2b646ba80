"""The dataset bundle on disk: ``factual.h5ad``, ``counterfactual.h5ad``, ``manifest.json``."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import anndata as ad

import simcell
from simcell import SimcellError
from simcell._atomic import Ownership, atomic_output, read_marker, safe_relative
from simcell.simulator.dataset import Dataset

FACTUAL = "factual.h5ad"
COUNTERFACTUAL = "counterfactual.h5ad"
MANIFEST = "manifest.json"


@dataclass(frozen=True, eq=False)
class Bundle:
    """A bundle read from disk.

    Attributes
    ----------
    path : Path
    factual : AnnData
    counterfactual : AnnData
    manifest : dict
    """

    path: Path
    factual: ad.AnnData
    counterfactual: ad.AnnData
    manifest: dict


def file_checksum(path: Path) -> str:
    """SHA-256 of a file, hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for piece in iter(lambda: handle.read(1 << 22), b""):
            digest.update(piece)
    return digest.hexdigest()


def manifest_for(dataset: Dataset, directory: Path) -> dict:
    """The manifest of a bundle whose files are in ``directory``."""
    return {
        "format": "simcell-bundle/1",
        "simcell_version": simcell.__version__,
        "scenario": dataset.scenario,
        "seed": dataset.seed,
        "params": dataset.params.to_dict(),
        "n_cells": dataset.params.n_cells,
        "n_genes": dataset.params.n_genes,
        "tasks": [
            {
                "name": t.name,
                "cell_type": f"cell_type_{t.cell_type}",
                "concept": f"concept_{t.concept}",
            }
            for t in dataset.tasks
        ],
        "checksums": {name: file_checksum(directory / name) for name in (FACTUAL, COUNTERFACTUAL)},
    }


def _bundle_files(path: Path) -> frozenset[str] | None:
    """The files simcell wrote into bundle folder ``path``: those its manifest
    (``format: simcell-bundle/1``) lists in its checksums, and the manifest;
    None when ``path`` holds no such manifest."""
    manifest = read_marker(path / MANIFEST, "simcell-bundle/1")
    checksums = manifest.get("checksums") if manifest is not None else None
    if not isinstance(checksums, dict):
        return None
    names = [safe_relative(name) for name in checksums]
    if None in names:
        return None
    return frozenset(names) | {MANIFEST}


BUNDLE_OWNERSHIP = Ownership(what="bundle", marker=MANIFEST, claim=_bundle_files)


def write_bundle(dataset: Dataset, out_dir: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Write ``dataset`` as a bundle, atomically.

    The files are written to a staging folder beside ``out_dir`` and renamed
    into place when complete, so an interrupted write leaves no partial bundle.
    An existing bundle is replaced only if it holds nothing but the files its
    manifest names (see :func:`simcell._atomic.atomic_output`).

    Parameters
    ----------
    dataset : Dataset
    out_dir : path
    overwrite : bool
        Write into a folder that holds files simcell did not write, replacing
        only simcell's own files and keeping every other one.

    Returns
    -------
    Path
        The bundle directory.

    Raises
    ------
    SimcellError
        ``out_dir`` holds files simcell did not write (and not ``overwrite``),
        or is a folder that must never be an output (``.``, ``..``, home).
    """
    out_dir = Path(out_dir)
    with atomic_output(out_dir, BUNDLE_OWNERSHIP, overwrite=overwrite) as staging:
        dataset.factual.write_h5ad(staging / FACTUAL)
        dataset.counterfactuals.write_h5ad(staging / COUNTERFACTUAL)
        manifest = manifest_for(dataset, staging)
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return out_dir


def read_bundle(
    out_dir: str | os.PathLike, *, backed: bool = False, verify: bool = False
) -> Bundle:
    """Read a bundle written by :func:`write_bundle`.

    Parameters
    ----------
    out_dir : path
    backed : bool
        Open ``factual.h5ad`` backed (read-only) instead of loading it.
    verify : bool
        Check the files against the manifest's checksums.

    Returns
    -------
    Bundle
    """
    path = Path(out_dir)
    for name in (FACTUAL, COUNTERFACTUAL, MANIFEST):
        if not (path / name).is_file():
            raise SimcellError(f"{path} is not a simcell bundle: {name} is missing")
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except json.JSONDecodeError as error:
        raise SimcellError(f"{path / MANIFEST} is not valid JSON: {error.msg}") from None
    if verify:
        for name, expected in manifest.get("checksums", {}).items():
            if file_checksum(path / name) != expected:
                raise SimcellError(f"{path / name} does not match its checksum in the manifest")
    factual = ad.read_h5ad(path / FACTUAL, backed="r" if backed else None)
    counterfactual = ad.read_h5ad(path / COUNTERFACTUAL)
    return Bundle(path=path, factual=factual, counterfactual=counterfactual, manifest=manifest)
