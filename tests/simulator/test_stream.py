"""Out-of-core and Dask generation give the in-memory counts, bit for bit."""

from __future__ import annotations

import numpy as np
import pytest

from simcell import scenarios
from simcell.simulator import generate_bundle, read_bundle, simulate


@pytest.fixture(scope="module")
def params():
    return scenarios.load("causal", n_cells=1300, n_genes=40, n_tasks=3)


def test_streamed_bundle_equals_in_memory(params, tmp_path):
    memory = simulate(params, seed=12)
    generate_bundle(params, 12, tmp_path / "b", chunk_size=300, n_threads=2)
    bundle = read_bundle(tmp_path / "b", verify=True)
    assert (bundle.factual.X != memory.factual.X).nnz == 0
    assert (bundle.counterfactual.X != memory.counterfactuals.X).nnz == 0
    assert bundle.factual.X.dtype == np.int32
    assert bundle.factual.obs.equals(memory.factual.obs)
    assert list(bundle.counterfactual.obs_names) == list(memory.counterfactuals.obs_names)
    backed = read_bundle(tmp_path / "b", backed=True).factual
    assert (backed.X[100:200] != memory.factual.X[100:200]).nnz == 0


def test_dask_engine_is_bit_identical(params, tmp_path):
    pytest.importorskip("distributed")
    memory = simulate(params, seed=12)
    dask = simulate(params, seed=12, engine="dask", n_threads=2, chunk_size=256)
    assert (dask.factual.X != memory.factual.X).nnz == 0
    assert (dask.counterfactuals.X != memory.counterfactuals.X).nnz == 0
