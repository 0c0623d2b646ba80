"""``simcell fit``: recovering a realistic bundle's parameters, the TOML and the QC plots."""

from __future__ import annotations

import tomllib

import anndata as ad
import numpy as np
import pytest
from click.testing import CliRunner

from simcell import SimcellError, scenarios
from simcell.cli.main import main
from simcell.simulator import simulate
from simcell.simulator.fit import fit_counts


@pytest.fixture(scope="module")
def realistic_counts():
    params = scenarios.load("realistic", n_cells=3000, n_genes=400, n_tasks=0)
    return params, simulate(params, seed=0, n_threads=1).factual.X


def test_fit_recovers_the_realistic_parameters(realistic_counts):
    truth, counts = realistic_counts
    fitted = fit_counts(counts, capture_mean=truth.capture_mean).params
    assert abs(fitted["baseline_log_mean"] - truth.baseline_log_mean) < 0.2
    assert abs(fitted["baseline_log_sd"] - truth.baseline_log_sd) < 0.2
    a0, a1 = fitted["dispersion_trend"]
    assert abs(a0 - truth.dispersion_trend[0]) < 0.3 * truth.dispersion_trend[0]
    assert abs(a1 - truth.dispersion_trend[1]) < 0.5 * truth.dispersion_trend[1]
    # the library sd absorbs the covariate and concept terms' spread as well
    low, high = truth.library_size_sd_range
    assert low - 0.05 < fitted["library_size_sd_range"][0] < high + 0.1


def test_fit_of_poisson_counts_finds_no_dispersion():
    """Negative control: Poisson counts give a trend near 0."""
    params = scenarios.load("synthetic1", n_cells=2000, n_genes=100, n_tasks=0)
    counts = simulate(params, seed=0, n_threads=1).factual.X
    a0, _ = fit_counts(counts, capture_mean=0.5).params["dispersion_trend"]
    assert a0 < 0.02


def test_fit_refuses_non_counts():
    with pytest.raises(SimcellError, match="non-negative integers"):
        fit_counts(np.array([[0.5, 1.0], [2.0, 1.0]]))
    with pytest.raises(SimcellError, match="empty cells"):
        fit_counts(np.array([[0, 0], [2, 1]]))


def test_fit_command_writes_a_loadable_scenario_and_plots(tmp_path, realistic_counts):
    _, counts = realistic_counts
    path = tmp_path / "real.h5ad"
    ad.AnnData(X=counts[:300]).write_h5ad(path)
    out = tmp_path / "my.toml"
    result = CliRunner().invoke(main, ["fit", str(path), "-o", str(out)])
    assert result.exit_code == 0, result.output
    data = tomllib.loads(out.read_text())
    assert data["extends"] == "realistic"
    params = scenarios.load(str(out))
    assert params.n_cells == 300 and params.overdispersed and params.captured
    assert (tmp_path / "my.qc.png").stat().st_size > 10_000
    bad = CliRunner().invoke(main, ["fit", str(out), "-o", str(tmp_path / "x.toml")])
    assert bad.exit_code == 1 and "cannot read" in bad.output
