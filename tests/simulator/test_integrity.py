"""Refusing what cannot be right: overflowing counts, runs that cannot fit, tampered bundles."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys

import anndata as ad
import h5py
import numpy as np
import pytest
from scipy import stats

from simcell import SimcellError, SimcellWarning, scenarios
from simcell.simulator import SimulationParams, generate_bundle, read_bundle, simulate
from simcell.simulator.bundle import bundle_identity, file_checksum
from simcell.simulator.counts import RowBatch, evaluate_counts, settle_counts
from simcell.simulator.params import MAX_COUNT, memory_estimate

SMALL = {"n_cells": 300, "n_genes": 50}


# ---------------------------------------------------------------- counts and int32
@pytest.mark.parametrize(
    "changes",
    [{"noise_sd": 6.0}, {"baseline_range": [1e9, 1e10]}, {"concept_effect_sd": 6.0}],
)
def test_parameters_whose_counts_overflow_are_refused_up_front(changes):
    with pytest.raises(SimcellError, match="overflow int32"):
        scenarios.load("synthetic2", **SMALL, **changes)


def test_the_screen_is_the_gaussian_tail_of_the_log_rate():
    params = SimulationParams(
        **SMALL,
        baseline_range=(2.0, 3.0),
        batch_effect_sd=0.3,
        tissue_effect_sd=0.0,
        cell_type_effect_sd=0.4,
        concept_effect_sd=0.0,
        library_size_sd_range=(0.0, 0.0),
        noise_sd=1.2,
    )
    z = stats.norm.isf(1 / (300 * 50 + 1))
    assert params.log_rate_tail() == pytest.approx(math.log(3.0) + z * 1.3, rel=1e-12)


def test_a_count_that_passes_the_screen_but_overflows_is_refused_during_generation(tmp_path):
    # noise_sd = 4.8 passes the screen; seed 0 still draws a rate of 2.9e9 (> 2^31)
    params = scenarios.load("synthetic2", **SMALL, noise_sd=4.8, n_tasks=1)
    with pytest.raises(SimcellError, match="does not fit the bundle's int32"):
        simulate(params, seed=0)
    with pytest.raises(SimcellError, match="does not fit the bundle's int32"):
        generate_bundle(params, 0, tmp_path / "b", n_threads=1)
    assert list(tmp_path.iterdir()) == []
    # a neighbouring seed fits: its counts are stored exactly, none wrapped
    data = simulate(params, seed=1)
    assert 0 <= data.factual.X.min() and data.factual.X.max() <= MAX_COUNT


def test_settle_counts_checks_rates_and_counts():
    q = np.array([0.5, 0.5])
    exact = settle_counts(q, np.array([3.0, 1e9]))
    assert exact.dtype == np.int32
    assert exact.tolist() == stats.poisson.ppf(q, [3.0, 1e9]).astype(int).tolist()
    for rate in (np.inf, 2.5e9):
        with pytest.raises(SimcellError, match="does not fit"):
            settle_counts(q, np.array([3.0, rate]))
    # just below 2^31 the rate fits but an upper quantile of its count does not
    with pytest.raises(SimcellError, match="does not fit"):
        settle_counts(np.array([0.999999]), np.array([MAX_COUNT - 10.0]))


def test_the_kernel_never_wraps_a_count():
    # one gene whose log-rate is 23 (λ ≈ 1e10): every count overflows int32
    arrays = (np.array([23.0]), *(np.zeros((1, 1)) for _ in range(4)), 0.0)
    rows = RowBatch(
        local=np.array([0]),
        batch=np.array([0]),
        tissue=np.array([0]),
        cell_type=np.array([0]),
        library_size=np.zeros(1),
        concepts=np.zeros((1, 1)),
    )
    noise = (np.zeros((1, 1), np.float32), np.full((1, 1), 0.5))
    with pytest.raises(SimcellError, match="does not fit"):
        evaluate_counts(arrays, rows, *noise)
    # the torch twin (here on the CPU) settles large rates the same way
    import torch

    from simcell.simulator._torch_counts import evaluate_counts_torch

    with pytest.raises(SimcellError, match="does not fit"):
        evaluate_counts_torch(arrays, rows, *noise, torch.device("cpu"))


# ---------------------------------------------------------------- sizes and memory
def test_one_gene_is_refused_with_the_minimum():
    with pytest.raises(SimcellError, match="n_genes must be >= 2"):
        scenarios.load("synthetic2", n_cells=300, n_genes=1)


def test_concept_kinds_messages_say_what_is_expected():
    with pytest.raises(SimcellError, match=r"one kind .* per concept.*got the string 'binary'"):
        SimulationParams(concept_kinds="binary")
    with pytest.raises(SimcellError, match="5 entries for n_concepts=5, got 2"):
        SimulationParams(concept_kinds=["binary", "continuous"])


def test_a_run_that_cannot_fit_in_memory_is_refused_with_the_estimate(tmp_path):
    params = scenarios.load("synthetic2", n_cells=10**12, n_genes=50)
    with pytest.raises(SimcellError, match=r"need about [\d,.]+ GiB of memory, more than"):
        generate_bundle(params, 0, tmp_path / "b")
    with pytest.raises(SimcellError, match="GiB of memory"):
        simulate(params)
    assert list(tmp_path.iterdir()) == []
    wide = scenarios.load("synthetic2", n_cells=300, n_genes=10**9)
    with pytest.raises(SimcellError, match="GiB of memory"):
        simulate(wide)


_PEAK = """
import json, sys, tempfile
from simcell import scenarios
from simcell.simulator import generate_bundle

def high_water():  # peak resident set (VmHWM), in bytes
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith("VmHWM:"))
    return int(line.split()[1]) * 1024

params = scenarios.load("synthetic2", **json.loads(sys.argv[1]))
with open("/proc/self/clear_refs", "w") as refs:  # forget the peak inherited from the fork
    refs.write("5")
before = high_water()
with tempfile.TemporaryDirectory() as folder:
    generate_bundle(params, 0, folder + "/b", n_threads=1)
print(high_water() - before)
"""


@pytest.mark.slow
def test_the_memory_estimate_bounds_the_measured_peak():
    sizes = {"n_cells": 100_000, "n_genes": 400}
    out = subprocess.run(
        [sys.executable, "-c", _PEAK, json.dumps(sizes)], capture_output=True, text=True, check=True
    )
    peak = int(out.stdout.split()[-1])
    estimate = memory_estimate(scenarios.load("synthetic2", **sizes), n_threads=1)
    assert peak <= estimate <= 4 * peak, (peak, estimate)


# ---------------------------------------------------------------- tampered bundles
@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    """A small bundle as ``simcell generate`` writes it (streamed)."""
    path = tmp_path_factory.mktemp("pristine") / "bundle"
    generate_bundle(scenarios.load("synthetic2", **SMALL, n_tasks=1), 5, path, n_threads=1)
    return path


@pytest.fixture()
def bundle(pristine, tmp_path):
    copy = tmp_path / "bundle"
    shutil.copytree(pristine, copy)
    return copy


def _manifest(path):
    return json.loads((path / "manifest.json").read_text())


def _rewrite_manifest(path, manifest, *, checksums=False, identity=False):
    """Write ``manifest``, optionally re-sealing it the way simcell would."""
    if checksums:
        manifest["checksums"] = {
            name: file_checksum(path / name) for name in ("factual.h5ad", "counterfactual.h5ad")
        }
    if identity:
        manifest["identity"] = bundle_identity(manifest)
    (path / "manifest.json").write_text(json.dumps(manifest))


def _edit_uns(path, key, value):
    factual = ad.read_h5ad(path / "factual.h5ad")
    meta = factual.uns["simcell"]
    (meta["params"] if key == "noise_sd" else meta)[key] = value
    factual.write_h5ad(path / "factual.h5ad")


def test_an_untouched_bundle_verifies_and_has_an_identity(pristine):
    read = read_bundle(pristine)
    manifest = _manifest(pristine)
    assert read.identity == manifest["identity"] == bundle_identity(manifest)
    assert len(read.identity) == 64
    # the identity covers what the bundle is: another seed is another bundle
    assert bundle_identity({**manifest, "seed": 6}) != read.identity


def test_a_wrong_checksum_in_the_manifest_is_refused(bundle):
    manifest = _manifest(bundle)
    manifest["checksums"]["factual.h5ad"] = "0" * 64
    _rewrite_manifest(bundle, manifest)
    with pytest.raises(SimcellError, match="manifest.json was edited"):
        read_bundle(bundle)
    _rewrite_manifest(bundle, manifest, identity=True)  # re-sealed: the file check catches it
    with pytest.raises(SimcellError, match="factual.h5ad does not match its checksum"):
        read_bundle(bundle)
    read_bundle(bundle, verify=False)  # unverified on request


def test_edited_counts_are_refused(bundle):
    with h5py.File(bundle / "factual.h5ad", "r+") as handle:
        handle["X/data"][0] += 1
    with pytest.raises(SimcellError, match="factual.h5ad does not match its checksum"):
        read_bundle(bundle)
    with h5py.File(bundle / "counterfactual.h5ad", "r+") as handle:
        handle["X/data"][0] += 1
    _rewrite_manifest(bundle, _manifest(bundle) | {"checksums": {}}, checksums=False)
    with pytest.raises(SimcellError, match="no checksums"):
        read_bundle(bundle)


@pytest.mark.parametrize(("key", "value"), [("scenario", "synthetic3"), ("noise_sd", 0.5)])
def test_an_edited_uns_is_refused(bundle, key, value):
    _edit_uns(bundle, key, value)
    with pytest.raises(SimcellError, match="factual.h5ad does not match its checksum"):
        read_bundle(bundle)
    # even with the checksums and the identity re-sealed, uns disagrees with the manifest
    _rewrite_manifest(bundle, _manifest(bundle), checksums=True, identity=True)
    with pytest.raises(SimcellError, match=rf"uns\['simcell'\].*{key}.*manifest says"):
        read_bundle(bundle)
    assert read_bundle(bundle, verify=False).factual.uns["simcell"]
    params = read_bundle(bundle, verify=False).factual.uns["simcell"]["params"]
    assert key == "scenario" or params["noise_sd"] == value


def test_a_truncated_file_is_named(bundle):
    data = (bundle / "factual.h5ad").read_bytes()
    (bundle / "factual.h5ad").write_bytes(data[: len(data) // 3])
    with pytest.raises(SimcellError, match="factual.h5ad does not match its checksum"):
        read_bundle(bundle)
    with pytest.raises(SimcellError, match=r"cannot read .*factual.h5ad \(truncated"):
        read_bundle(bundle, verify=False)


def test_a_manifest_without_identity_is_read_with_a_warning(bundle):
    manifest = _manifest(bundle)
    del manifest["identity"]
    _rewrite_manifest(bundle, manifest)
    with pytest.warns(SimcellWarning, match="no identity"):
        read_bundle(bundle)
