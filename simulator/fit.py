"""Estimate a realistic scenario from a count matrix (in the spirit of Splatter's
``splatEstimate``), and the QC plots that compare real and simulated counts.

The estimates, for counts y (cells × genes) and the realistic process of
:mod:`simcell.simulator.nbinom` (``E y_ij = p̄ e^{w_j} E e^{l} E e^{ε}``):

* capture: its mean is not identifiable from counts alone (it trades off with
  the baseline); it is an input (default the ``realistic`` preset's 0.1) and its
  concentration is the preset's;
* library sizes: Var log L_i = s_l² + Var log p, with Var log p = ψ₁(mκ) − ψ₁(κ)
  for the Beta capture law, so s_l² = Var log L − Var log p;
* gene means: w_j = log(ȳ_j / (p̄ e^{s_l²/2 + σ²/2})) of the detected genes; the
  log-normal law of w takes their mean and sd;
* dispersions: with size factors s_i = L_i / mean L, a moment estimate
  α̂_j = (Σ_i (y_ij − s_i μ_j)² − Σ_i s_i μ_j) / Σ_i s_i² μ_j² per gene (a thinned NB
  keeps its α), then the trend α(μ) = α₀ + α₁ / e^{w_j} by non-negative least
  squares on the well-expressed genes, and the log-normal scatter around it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp
from scipy import optimize, special

from simcell import SimcellError
from simcell.simulator.params import SimulationParams

#: genes with at least this mean count enter the dispersion trend
_TREND_MIN_MEAN = 0.05


@dataclass(frozen=True)
class FitResult:
    """Estimated scenario parameters and the statistics they came from.

    Attributes
    ----------
    params : dict
        Scenario keys (extending ``realistic``) to write as TOML.
    gene_means : ndarray, shape (n_genes,)
        ȳ_j of the real counts.
    dispersion : ndarray, shape (n_genes,)
        α̂_j (NaN where not estimable).
    library_size : ndarray, shape (n_cells,)
        L_i of the real counts.
    """

    params: dict
    gene_means: np.ndarray
    dispersion: np.ndarray
    library_size: np.ndarray


def _moments(counts) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Library sizes, per-gene means and per-gene moment dispersions."""
    counts = sp.csr_matrix(counts, dtype=np.float64)
    library = np.asarray(counts.sum(axis=1)).ravel()
    if np.any(library <= 0):
        raise SimcellError("fit: every cell needs at least one count (remove empty cells)")
    size = library / library.mean()
    means = np.asarray(counts.mean(axis=0)).ravel()
    mu = np.asarray(counts.sum(axis=0)).ravel() / size.sum()
    # Σ (y − s μ)² = Σ y² − 2 μ Σ s y + μ² Σ s²
    squares = np.asarray(counts.multiply(counts).sum(axis=0)).ravel()
    cross = np.asarray(counts.T @ size).ravel()
    s1, s2 = size.sum(), (size**2).sum()
    residual = squares - 2 * mu * cross + mu**2 * s2
    with np.errstate(divide="ignore", invalid="ignore"):
        dispersion = (residual - mu * s1) / (mu**2 * s2)
    dispersion[means <= 0] = np.nan
    return library, means, dispersion


def fit_counts(
    counts,
    *,
    capture_mean: float = 0.1,
    capture_concentration: float = 60.0,
    noise_sd: float = 0.01,
) -> FitResult:
    """Estimate a ``realistic`` scenario from a raw count matrix.

    Parameters
    ----------
    counts : array-like or sparse, shape (n_cells, n_genes)
        Raw integer counts.
    capture_mean, capture_concentration : float
        The assumed capture law (not identifiable from counts alone).
    noise_sd : float
        σ_ε of the scenario (kept).

    Returns
    -------
    FitResult

    Raises
    ------
    SimcellError
        On negative or non-integer counts, empty cells, or fewer than 2 cells or
        2 detected genes.
    """
    matrix = sp.csr_matrix(counts)
    n_cells, n_genes = matrix.shape
    if n_cells < 2 or n_genes < 2:
        raise SimcellError(f"fit: need at least 2 cells and 2 genes, got {n_cells} x {n_genes}")
    data = matrix.data
    if data.size and (
        not np.all(np.isfinite(data)) or data.min() < 0 or np.any(data != np.round(data))
    ):
        raise SimcellError("fit: counts must be non-negative integers (raw counts, not lognorm)")
    library, means, dispersion = _moments(matrix)
    detected = means > 0
    if detected.sum() < 2:
        raise SimcellError("fit: fewer than 2 genes have any count")
    m, kappa = float(capture_mean), float(capture_concentration)
    var_log_capture = (
        float(special.polygamma(1, m * kappa) - special.polygamma(1, kappa)) if m < 1 else 0.0
    )
    library_sd = float(np.sqrt(max(np.var(np.log(library)) - var_log_capture, 0.0)))
    scale = m * np.exp(library_sd**2 / 2 + noise_sd**2 / 2)
    baseline = np.log(means[detected] / scale)
    trend_genes = detected & (means >= _TREND_MIN_MEAN) & np.isfinite(dispersion)
    pre_mean = np.exp(np.log(np.where(detected, means, 1.0) / scale))
    asymptote, extra, scatter = 0.0, 0.0, 0.0
    if trend_genes.sum() >= 2:
        design = np.column_stack([np.ones(trend_genes.sum()), 1.0 / pre_mean[trend_genes]])
        (asymptote, extra), _ = optimize.nnls(design, np.maximum(dispersion[trend_genes], 0.0))
        fitted = design @ np.array([asymptote, extra])
        ratio = dispersion[trend_genes] / fitted
        good = (ratio > 0) & np.isfinite(ratio)
        if good.sum() >= 2:
            scatter = float(np.std(np.log(ratio[good])))
    params = {
        "extends": "realistic",
        "description": f"fitted to a {n_cells} x {n_genes} count matrix by simcell fit",
        "n_cells": int(n_cells),
        "n_genes": int(n_genes),
        "baseline_law": "lognormal",
        "baseline_log_mean": float(np.mean(baseline)),
        "baseline_log_sd": float(np.std(baseline)),
        "dispersion_trend": [float(asymptote), float(extra)],
        "dispersion_sd": float(scatter),
        "capture_mean": m,
        "capture_concentration": kappa,
        "library_size_sd_range": [library_sd, library_sd],
        "noise_sd": float(noise_sd),
    }
    return FitResult(params=params, gene_means=means, dispersion=dispersion, library_size=library)


def params_of(result: FitResult, **overrides) -> SimulationParams:
    """The :class:`SimulationParams` of a fit (through the scenario loader)."""
    from simcell.scenarios import load

    keys = {k: v for k, v in result.params.items() if k not in ("extends", "description")}
    keys.update(overrides)
    return load("realistic", **keys)


def to_toml(params: dict) -> str:
    """TOML text of flat scenario keys (strings, numbers, lists of numbers)."""
    lines = []
    for key, value in params.items():
        if isinstance(value, str):
            text = '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
        elif isinstance(value, (list, tuple)):
            text = "[" + ", ".join(repr(float(v)) for v in value) + "]"
        elif isinstance(value, bool):
            text = "true" if value else "false"
        else:
            text = repr(value)
        lines.append(f"{key} = {text}")
    return "\n".join(lines) + "\n"


def qc_plots(real, simulated, path: str | Path) -> Path:
    """Write the QC figure comparing real and simulated counts (PNG).

    Three panels: mean–variance per gene, zero fraction vs mean per gene, and
    the library-size histograms.

    Parameters
    ----------
    real, simulated : array-like or sparse, shape (n_cells, n_genes)
    path : str or Path
        The PNG to write.

    Returns
    -------
    Path
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    for counts, label, color in ((real, "real", "k"), (simulated, "simulated", "tab:orange")):
        matrix = sp.csr_matrix(counts, dtype=np.float64)
        mean = np.asarray(matrix.mean(axis=0)).ravel()
        var = np.asarray(matrix.multiply(matrix).mean(axis=0)).ravel() - mean**2
        zeros = 1.0 - matrix.getnnz(axis=0) / matrix.shape[0]
        library = np.asarray(matrix.sum(axis=1)).ravel()
        keep = mean > 0
        axes[0].loglog(mean[keep], np.maximum(var[keep], 1e-6), ".", ms=2, c=color, label=label)
        axes[1].semilogx(mean[keep], zeros[keep], ".", ms=2, c=color, label=label)
        axes[2].hist(np.log10(library), bins=50, alpha=0.5, color=color, label=label)
    grid = np.logspace(-3, 3, 50)
    axes[0].loglog(grid, grid, "--", c="grey", lw=1, label="Poisson")
    axes[0].set(xlabel="gene mean", ylabel="gene variance", title="mean-variance")
    axes[1].semilogx(grid, np.exp(-grid), "--", c="grey", lw=1, label="Poisson")
    axes[1].set(xlabel="gene mean", ylabel="zero fraction", title="zeros vs mean")
    axes[2].set(xlabel="log10 library size", ylabel="cells", title="library sizes")
    for ax in axes:
        ax.legend(frameon=False)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


#: at most this many cells are simulated for the QC plots
_QC_CELLS = 2000


def fit_scenario_file(
    counts_path: str | Path,
    out: str | Path,
    *,
    capture_mean: float = 0.1,
    seed: int = 0,
    plots: bool = True,
) -> tuple[Path, Path | None]:
    """Fit a scenario to the counts of an ``.h5ad`` file and write it as TOML.

    With ``plots``, a simulation of the fitted scenario (at most 2,000 cells) is
    compared with the real counts in ``<out stem>.qc.png`` beside the TOML.

    Parameters
    ----------
    counts_path : str or Path
        An ``.h5ad`` file whose ``X`` holds raw counts.
    out : str or Path
        The TOML file to write.
    capture_mean : float
    seed : int
        Seed of the QC simulation.
    plots : bool

    Returns
    -------
    (Path, Path or None)
        The TOML written and the QC figure (``None`` without ``plots``).
    """
    import anndata as ad

    counts_path, out = Path(counts_path), Path(out)
    if out.suffix != ".toml":
        raise SimcellError(f"fit: the output must be a .toml file, got {out}")
    try:
        adata = ad.read_h5ad(counts_path)
    except (OSError, KeyError, ValueError) as error:
        raise SimcellError(f"fit: cannot read {counts_path} as h5ad ({error})") from None
    if adata.X is None:
        raise SimcellError(f"fit: {counts_path} has no X")
    result = fit_counts(adata.X, capture_mean=capture_mean)
    params_of(result)  # validate before writing anything
    _write_text(out, to_toml(result.params))
    if not plots:
        return out, None
    n_cells = min(adata.n_obs, _QC_CELLS)
    simulated = simulate_fit(result, n_cells=n_cells, seed=seed)
    rows = np.random.default_rng(seed).choice(adata.n_obs, n_cells, replace=False)
    plot = qc_plots(sp.csr_matrix(adata.X)[np.sort(rows)], simulated, out.with_suffix(".qc.png"))
    return out, plot


def simulate_fit(result: FitResult, *, n_cells: int, seed: int = 0) -> sp.csr_matrix:
    """Counts of ``n_cells`` cells simulated from a fit (no tasks)."""
    from simcell.simulator.process import simulate

    params = params_of(result, n_cells=int(n_cells), n_tasks=0)
    return simulate(params, seed=seed, n_threads=1).factual.X


def _write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` whole or not at all (a temporary file renamed)."""
    import os
    import tempfile

    if not path.parent.is_dir():
        raise SimcellError(f"fit: folder {path.parent} does not exist")
    handle, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w") as stream:
            stream.write(text)
        os.replace(name, path)
    except BaseException:
        Path(name).unlink(missing_ok=True)
        raise
