"""The dataset bundle on disk: ``factual.h5ad``, ``counterfactual.h5ad``, ``manifest.json``."""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np

import simcell
from simcell import SimcellError, SimcellWarning
from simcell._atomic import Ownership, atomic_output, read_marker, safe_relative
from simcell.simulator import schema as S
from simcell.simulator.process import Dataset
from simcell.simulator.schema import COUNTERFACTUAL, FACTUAL, MANIFEST

#: where ``simcell generate`` writes bundles (and ``simcell evaluate`` looks) by default
DATA_ROOT = Path("simcell-data")


@dataclass(frozen=True, eq=False)
class Bundle:
    """A bundle read from disk.

    Attributes
    ----------
    path : Path
    factual : AnnData
    counterfactual : AnnData or None
        The true counterfactuals; None for a bundle without them (real cells:
        its manifest lists no ``counterfactual.h5ad``), see :func:`schema.has_truth`.
    manifest : dict
    """

    path: Path
    factual: ad.AnnData
    counterfactual: ad.AnnData | None
    manifest: dict

    @property
    def identity(self) -> str:
        """:func:`bundle_identity` of the manifest (what predictions store as
        ``uns["simcell_bundle"]``)."""
        return bundle_identity(self.manifest)


#: the manifest keys its ``identity`` covers: everything that says what the bundle is
IDENTITY_KEYS = (
    S.MANIFEST_FORMAT,
    S.MANIFEST_VERSION,
    S.MANIFEST_SCENARIO,
    S.MANIFEST_SEED,
    S.MANIFEST_PARAMS,
    S.MANIFEST_N_CELLS,
    S.MANIFEST_N_GENES,
    S.MANIFEST_TASKS,
    S.MANIFEST_CHECKSUMS,
)


def file_checksum(path: Path) -> str:
    """SHA-256 of a file, hex, streamed (constant memory whatever the file's size)."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def bundle_identity(manifest: Mapping[str, Any]) -> str:
    """The identity of a bundle: SHA-256 of its manifest's content, hex.

    The hash of the canonical JSON of the manifest's :data:`IDENTITY_KEYS`
    (format, version, scenario, seed, parameters, sizes, tasks and the files'
    checksums). Two bundles share an identity only if their files are the same
    bytes and they were made from the same scenario, parameters and seed.
    ``write_bundle`` stores it as ``manifest["identity"]``, which protects the
    manifest itself (an edited checksum or parameter no longer matches it), and
    predictions carry it as ``uns["simcell_bundle"]`` to name the bundle they
    were made on.

    Parameters
    ----------
    manifest : mapping
        A bundle's manifest (``Bundle.manifest`` or the parsed ``manifest.json``).

    Returns
    -------
    str
        64 hex digits.
    """
    content = {key: manifest[key] for key in IDENTITY_KEYS if key in manifest}
    text = json.dumps(content, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode()).hexdigest()


def manifest_for(dataset: Dataset, directory: Path, *, truth: bool = True) -> dict:
    """The manifest of a bundle whose files are in ``directory`` (``truth``: it holds
    ``counterfactual.h5ad``, whose checksum is then listed)."""
    manifest = {
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
            name: file_checksum(directory / name) for name in _FILES[: 2 if truth else 1]
        },
    }
    manifest[S.MANIFEST_IDENTITY] = bundle_identity(manifest)
    return manifest


def _bundle_files(path: Path) -> frozenset[str] | None:
    """The files simcell wrote into bundle folder ``path``: those its manifest
    (``format: simcell-bundle/1``) lists in its checksums, and the manifest;
    None when ``path`` holds no such manifest."""
    manifest = read_marker(path / MANIFEST, S.FORMAT)
    checksums = manifest.get(S.MANIFEST_CHECKSUMS) if manifest is not None else None
    if not isinstance(checksums, dict):
        return None
    names = [safe_relative(name) for name in checksums]
    if None in names:
        return None
    return frozenset(names) | {MANIFEST}


BUNDLE_OWNERSHIP = Ownership(what="bundle", marker=MANIFEST, claim=_bundle_files)


def write_bundle(
    dataset: Dataset, out_dir: str | os.PathLike, *, overwrite: bool = False, truth: bool = True
) -> Path:
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
    truth : bool
        Write the true counterfactuals (``counterfactual.h5ad``). False writes a
        bundle without them, as a bundle of real cells is: :func:`read_bundle`
        then gives ``counterfactual=None`` and the evaluation scores the
        distributional metrics alone.

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
        if truth:
            dataset.counterfactuals.write_h5ad(staging / COUNTERFACTUAL)
        manifest = manifest_for(dataset, staging, truth=truth)
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return out_dir


def read_bundle(
    out_dir: str | os.PathLike,
    *,
    backed: bool = False,
    verify: bool = True,
    truth_backed: bool = False,
) -> Bundle:
    """Read a bundle written by :func:`write_bundle`, verifying it by default.

    ``counterfactual.h5ad`` (the true counterfactuals) is optional: a bundle whose
    manifest lists only ``factual.h5ad`` in its checksums is read with
    ``counterfactual=None`` (a bundle of real cells). One whose manifest lists it
    must have it.

    Verification refuses a bundle that is not exactly what simcell wrote:

    * the manifest must match its own ``identity`` (:func:`bundle_identity`), so
      an edited checksum, parameter or seed in ``manifest.json`` is caught;
    * each h5ad file must match its SHA-256 in the manifest (streamed: it costs
      one sequential read of the files, a fraction of loading them), so edited
      counts, annotations or ``uns`` are caught;
    * the factual file's ``uns["simcell"]`` (scenario, seed, every parameter) and
      its shape must equal the manifest's.

    Parameters
    ----------
    out_dir : path
    backed : bool
        Open ``factual.h5ad`` backed (read-only) instead of loading it.
    truth_backed : bool
        Open ``counterfactual.h5ad`` backed (read-only): its rows are read when
        a task asks for them (the evaluation does, to keep its peak memory down).
    verify : bool
        Run the checks above (``False``: read whatever is there, unverified).

    Returns
    -------
    Bundle

    Raises
    ------
    SimcellError
        Naming the file that is missing, unreadable or fails a check.
    """
    path = Path(out_dir)
    for name in (FACTUAL, MANIFEST):
        if not (path / name).is_file():
            raise SimcellError(f"{path} is not a simcell bundle: {name} is missing")
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except json.JSONDecodeError as error:
        raise SimcellError(f"{path / MANIFEST} is not valid JSON: {error.msg}") from None
    except (OSError, UnicodeDecodeError) as error:
        raise SimcellError(f"cannot read {path / MANIFEST}: {error}") from None
    if not isinstance(manifest, dict):
        raise SimcellError(f"{path / MANIFEST} is not a simcell manifest (not a JSON object)")
    truth = _lists_truth(manifest)
    if truth and not (path / COUNTERFACTUAL).is_file():
        raise SimcellError(
            f"{path} is not a complete simcell bundle: {COUNTERFACTUAL} is missing "
            "(its manifest lists it)"
        )

    def read_truth() -> ad.AnnData:
        return _read_h5ad(path / COUNTERFACTUAL, backed="r" if truth_backed else None)

    if not verify:
        factual = _read_h5ad(path / FACTUAL, backed="r" if backed else None)
        counterfactual = read_truth() if truth else None
        return Bundle(path, factual, counterfactual, manifest)
    _verify_manifest(path, manifest)
    files = _FILES if truth else (FACTUAL,)
    # hashing releases the GIL: the checksums stream on their own threads while
    # h5py loads the files, and nothing read is returned unless they match
    with ThreadPoolExecutor(max_workers=2) as pool:
        digests = {name: pool.submit(file_checksum, path / name) for name in files}
        try:
            factual = _read_h5ad(path / FACTUAL, backed="r" if backed else None)
            counterfactual = read_truth() if truth else None
            unreadable = None
        except SimcellError as error:
            unreadable = error
        for name in files:  # a damaged file is reported as failing its checksum first
            if digests[name].result() != manifest[S.MANIFEST_CHECKSUMS][name]:
                raise SimcellError(
                    f"{path / name} does not match its checksum in the manifest "
                    f"(edited or damaged); {_SKIP}"
                )
    if unreadable is not None:
        raise unreadable
    _verify_metadata(path, manifest, factual)
    return Bundle(path=path, factual=factual, counterfactual=counterfactual, manifest=manifest)


_SKIP = "pass verify=False (simcell evaluate --no-verify) to read it anyway"
_FILES = (FACTUAL, COUNTERFACTUAL)


def _read_h5ad(path: Path, backed: str | None = None) -> ad.AnnData:
    try:
        return ad.read_h5ad(path, backed=backed)
    except Exception as error:  # h5py / anndata raise many types on a damaged file
        reason = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise SimcellError(
            f"cannot read {path} (truncated or not an h5ad file): {type(error).__name__}: {reason}"
        ) from None


def _lists_truth(manifest: dict) -> bool:
    """Whether the manifest says the bundle holds the true counterfactuals: its
    checksums list ``counterfactual.h5ad`` (a manifest without checksums is taken
    to, as every bundle before truth became optional did)."""
    checksums = manifest.get(S.MANIFEST_CHECKSUMS)
    return not isinstance(checksums, dict) or COUNTERFACTUAL in checksums


def _verify_manifest(path: Path, manifest: dict) -> None:
    """The manifest has the checksum of every file it lists (the factual cells, and
    the truth when present) and matches its own identity."""
    checksums = manifest.get(S.MANIFEST_CHECKSUMS)
    if (
        not isinstance(checksums, dict)
        or FACTUAL not in checksums
        or not set(checksums) <= set(_FILES)
    ):
        raise SimcellError(
            f"{path / MANIFEST} has no checksums of {FACTUAL} (and {COUNTERFACTUAL} "
            "when the bundle has the true counterfactuals)"
        )
    if S.MANIFEST_IDENTITY not in manifest:
        warnings.warn(
            f"{path / MANIFEST} has no identity (written by an older simcell): "
            "its own content cannot be verified, only the files' checksums",
            SimcellWarning,
            stacklevel=3,
        )
    elif manifest[S.MANIFEST_IDENTITY] != bundle_identity(manifest):
        raise SimcellError(
            f"{path / MANIFEST} was edited: its content no longer matches its identity; {_SKIP}"
        )


def _verify_metadata(path: Path, manifest: dict, factual: ad.AnnData) -> None:
    """The factual file's own metadata and shape against the manifest."""
    meta = factual.uns.get(S.UNS)
    if not isinstance(meta, Mapping) or not isinstance(meta.get(S.UNS_PARAMS), Mapping):
        raise SimcellError(f"{path / FACTUAL} has no uns[{S.UNS!r}] parameters")
    recorded = {
        S.MANIFEST_SCENARIO: meta.get(S.UNS_SCENARIO),
        S.MANIFEST_SEED: meta.get(S.UNS_SEED),
    }
    for key, value in recorded.items():
        if not _same(value, manifest.get(key)):
            raise SimcellError(
                f"{path / FACTUAL}: uns[{S.UNS!r}][{key!r}] = {value!r} but the manifest "
                f"says {manifest.get(key)!r}; {_SKIP}"
            )
    params = manifest.get(S.MANIFEST_PARAMS)
    if not isinstance(params, dict):
        raise SimcellError(f"{path / MANIFEST} has no parameters")
    expected = {k: v for k, v in params.items() if v is not None}  # h5ad stores no None
    stored = dict(meta[S.UNS_PARAMS])
    for key in sorted(set(expected) | set(stored)):
        if key not in stored or key not in expected or not _same(stored[key], expected[key]):
            raise SimcellError(
                f"{path / FACTUAL}: uns[{S.UNS!r}][{S.UNS_PARAMS!r}][{key!r}] = "
                f"{stored.get(key)!r} but the manifest says {expected.get(key)!r}; {_SKIP}"
            )
    shape = (manifest.get(S.MANIFEST_N_CELLS), manifest.get(S.MANIFEST_N_GENES))
    if tuple(factual.shape) != shape:
        raise SimcellError(
            f"{path / FACTUAL} has {factual.shape[0]} cells x {factual.shape[1]} genes, "
            f"the manifest says {shape[0]} x {shape[1]}; {_SKIP}"
        )


def _same(stored: Any, expected: Any) -> bool:
    """Equality of a value read back from h5ad (numpy) and one from JSON (lists)."""
    a, b = np.asarray(stored), np.asarray(expected)
    if a.dtype.kind in "iuf" and b.dtype.kind in "iuf":
        return a.size == b.size and np.array_equal(
            a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
        )
    if a.dtype.kind in "OUS" and b.dtype.kind in "OUS":
        return a.ravel().astype(str).tolist() == b.ravel().astype(str).tolist()
    return False
