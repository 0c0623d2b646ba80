"""The dataset bundle on disk: ``factual.h5ad``, ``counterfactual.h5ad``, ``manifest.json``."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import anndata as ad

import simcell
from simcell import SimcellError
from simcell.simulator import schema as S
from simcell.simulator.dataset import Dataset
from simcell.simulator.schema import COUNTERFACTUAL, FACTUAL, MANIFEST


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
        S.MANIFEST_FORMAT: S.FORMAT,
        S.MANIFEST_VERSION: simcell.__version__,
        S.MANIFEST_SCENARIO: dataset.scenario,
        S.MANIFEST_SEED: dataset.seed,
        S.MANIFEST_PARAMS: dataset.params.to_dict(),
        S.MANIFEST_N_CELLS: dataset.params.n_cells,
        S.MANIFEST_N_GENES: dataset.params.n_genes,
        S.MANIFEST_TASKS: [
            {
                S.TASK_NAME: t.name,
                S.TASK_CELL_TYPE: f"cell_type_{t.cell_type}",
                S.TASK_CONCEPT: S.concept_name(t.concept),
            }
            for t in dataset.tasks
        ],
        S.MANIFEST_CHECKSUMS: {
            name: file_checksum(directory / name) for name in (FACTUAL, COUNTERFACTUAL)
        },
    }


def publish(staging: Path, out_dir: Path) -> None:
    """Move a finished staging directory to ``out_dir``, replacing any old bundle."""
    if out_dir.exists():
        if not (out_dir / MANIFEST).exists() and any(out_dir.iterdir()):
            raise SimcellError(f"{out_dir} exists and is not a simcell bundle; not overwriting it")
        retired = out_dir.with_name(out_dir.name + ".old-" + staging.name[-8:])
        os.replace(out_dir, retired)
        os.replace(staging, out_dir)
        shutil.rmtree(retired, ignore_errors=True)
    else:
        os.replace(staging, out_dir)


def staging_dir(out_dir: Path) -> Path:
    """A fresh temporary directory beside ``out_dir`` (same file system, so rename is atomic)."""
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    except OSError as error:
        raise SimcellError(f"cannot write to {out_dir.parent}: {error.strerror}") from None


def write_bundle(dataset: Dataset, out_dir: str | os.PathLike) -> Path:
    """Write ``dataset`` as a bundle, atomically.

    The files are written to a temporary directory beside ``out_dir`` and renamed
    into place when complete, so an interrupted write leaves no partial bundle.

    Parameters
    ----------
    dataset : Dataset
    out_dir : path

    Returns
    -------
    Path
        The bundle directory.
    """
    out_dir = Path(out_dir)
    staging = staging_dir(out_dir)
    try:
        dataset.factual.write_h5ad(staging / FACTUAL)
        dataset.counterfactuals.write_h5ad(staging / COUNTERFACTUAL)
        manifest = manifest_for(dataset, staging)
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2))
        publish(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
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
