"""Out-of-core generation: cell blocks are streamed into the bundle's h5ad files.

The bundle is the same as :func:`~simcell.simulator.write_bundle` writes for the
in-memory :func:`~simcell.simulator.simulate` (the same counts, bit for bit, and
the same metadata), but ``X`` of both files grows chunk by chunk on disk, so
memory holds only the per-cell state (a few numbers per cell) and the chunks in
flight: a million cells × 5,000 genes fits in well under 4 GiB.

``X`` is written as a standard anndata CSR group (int32 ``data`` and ``indices``,
int64 ``indptr``), readable with ``anndata.read_h5ad(path, backed="r")``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import h5py
import numpy as np
import scipy.sparse as sp

from simcell._atomic import atomic_output, check_output
from simcell.simulator.bundle import (
    BUNDLE_OWNERSHIP,
    COUNTERFACTUAL,
    FACTUAL,
    MANIFEST,
    manifest_for,
)
from simcell.simulator.counts import chunk_bounds
from simcell.simulator.engine import (
    DEFAULT_CHUNK,
    Engine,
    Progress,
    count_job,
    count_pass,
    n_workers,
)
from simcell.simulator.params import SimulationParams, check_memory
from simcell.simulator.process import Dataset, prepare
from simcell.simulator.schema import PROCESS_PERTURB

_H5_CHUNK = 1 << 20


class _CSRAppender:
    """An anndata CSR ``X`` group in an open h5 file, grown row block by row block."""

    def __init__(self, handle: h5py.File, n_rows: int, n_cols: int) -> None:
        group = handle.create_group("X")
        group.attrs["encoding-type"] = "csr_matrix"
        group.attrs["encoding-version"] = "0.1.0"
        group.attrs["shape"] = (n_rows, n_cols)
        self.data = group.create_dataset(
            "data", shape=(0,), maxshape=(None,), dtype=np.int32, chunks=(_H5_CHUNK,)
        )
        self.indices = group.create_dataset(
            "indices", shape=(0,), maxshape=(None,), dtype=np.int32, chunks=(_H5_CHUNK,)
        )
        self.indptr = group.create_dataset("indptr", shape=(n_rows + 1,), dtype=np.int64)
        self.indptr[0] = 0
        self.row = self.nnz = 0

    def append(self, part: sp.csr_matrix) -> None:
        end = self.nnz + part.nnz
        if part.nnz:
            self.data.resize((end,))
            self.indices.resize((end,))
            self.data[self.nnz : end] = part.data
            self.indices[self.nnz : end] = part.indices
        n = part.shape[0]
        if n:
            self.indptr[self.row + 1 : self.row + n + 1] = (
                part.indptr[1:].astype(np.int64) + self.nnz
            )
        self.row += n
        self.nnz = end


def generate_bundle(
    params: SimulationParams,
    seed: int,
    out_dir: str | os.PathLike,
    *,
    scenario: str = "custom",
    chunk_size: int = DEFAULT_CHUNK,
    n_threads: int | None = None,
    device: str = "cpu",
    engine: Engine = "threads",
    scheduler: str | None = None,
    progress: Progress | None = None,
    overwrite: bool = False,
) -> Dataset:
    """Simulate straight into a bundle on disk, in bounded memory.

    Parameters are those of :func:`~simcell.simulator.simulate`, plus the
    bundle directory ``out_dir``; the bundle is written to a temporary
    directory beside it and renamed into place when complete; an interrupt
    removes it and publishes nothing. ``overwrite`` is that of
    :func:`~simcell.simulator.write_bundle`: without it, a folder holding any
    file simcell did not write is refused before anything is simulated.

    Returns
    -------
    Dataset
        The dataset's metadata (world, cells, tasks) with ``X`` left empty; the
        counts are in the bundle, and ``Dataset.counterfactual`` still works.
    """
    if getattr(params, "process", None) == PROCESS_PERTURB:  # the second process: in memory
        from simcell.simulator import perturb

        return perturb.generate_bundle(  # type: ignore[return-value]
            params, seed, out_dir, scenario=scenario, progress=progress, overwrite=overwrite
        )
    check_memory(params, chunk_size=chunk_size, n_threads=n_workers(n_threads))
    out_dir = Path(out_dir)
    check_output(out_dir, BUNDLE_OWNERSHIP, overwrite=overwrite)  # refuse before simulating
    dataset, request = prepare(params, seed, scenario)
    with atomic_output(out_dir, BUNDLE_OWNERSHIP, overwrite=overwrite) as staging:
        factual_path, twin_path = staging / FACTUAL, staging / COUNTERFACTUAL
        dataset.factual.write_h5ad(factual_path)
        dataset.counterfactuals.write_h5ad(twin_path)
        job = count_job(params, dataset.world, dataset.cells, dataset.seed, request, device)
        with h5py.File(factual_path, "r+") as factual, h5py.File(twin_path, "r+") as twins:
            sinks = (
                _CSRAppender(factual, params.n_cells, params.n_genes),
                _CSRAppender(twins, request.source.size, params.n_genes),
            )
            count_pass(
                job,
                chunk_bounds(params.n_cells, chunk_size),
                sinks,
                n_threads=n_threads,
                engine=engine,
                scheduler=scheduler,
                progress=progress,
            )
        manifest = manifest_for(dataset, staging)
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return dataset
