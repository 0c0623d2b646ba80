"""Identifiability on the perturb-identifiability process: where it holds and where it must fail.

The reference estimator is the alignment at its optimum for a linear mixing:
the invariant block is the part of the (log-normalised) expression whose mean
is the same in every environment. With the controls and the P single
perturbations (P >= d_ν, every responsive latent shifted) the environments'
mean differences span the image of z_ν, and their orthogonal complement holds
z_ι alone. With a single environment (the controls) there is nothing to align:
the block is a d_ι-dim subspace of the joint latent the data cannot single out.

Every gene reads both latents here (``responsive_gene_fraction = 1``): with
genes that read z_ι alone, z_ι dominates the expression variance and even the
controls' leading components find it, so the negative control would not fail.

Measured (seeds 0, 1, 2; train cells of task_0, 1,000 cells, 100 genes):

                              z_ι R² of the block      wrong-block R² (z_ν)
  many environments           0.879 0.858 0.797        0.179 0.325 0.293
  single environment          0.680 0.643 0.629        0.795 0.882 0.863
  random split, 95th pct      0.719 0.768 0.769        (mean 0.67-0.75)
  ideal leakage R²(z_ν | z_ι)                          0.187 0.382 0.381

The margins below sit inside these gaps.

What caps the many-environment estimator at ~0.85 is the size-factor
normalisation, not count noise: dividing by the total subtracts
log Σ_j exp(log-rate_j), a nonlinear function of (z_ι, z_ν), from every gene,
and no linear projection removes it. Same estimator, seeds 0 / 1 / 2:
noiseless log-rates 0.977 0.986 0.981; the same normalised 0.898 0.886 0.832;
log1p of the raw counts (library sd 0) 0.959 0.960 0.953, with 20x the counts
0.976 0.984 0.979. 3x the cells (0.864 mean), shift_scale 4 (0.873) or 20x the
counts after normalising (0.869) barely move it.
"""

from __future__ import annotations

import numpy as np
import pytest

from simcell import scenarios
from simcell.evaluation import metrics
from simcell.evaluation.metrics.identifiability import random_split_r2_reference
from simcell.simulator.perturb import simulate

#: the ``perturb-identifiability-linear`` scenario at test size
LINEAR = scenarios.load(
    "perturb-identifiability-linear", n_genes=100, n_controls=400, n_per_single=150, n_per_double=60
)


def _aligned_invariant_block(x: np.ndarray, u: np.ndarray, d_invariant: int, d_all: int):
    """The d_invariant leading components of the expression's principal subspace
    (d_all components) after projecting out every environment's mean shift from
    the controls (none with controls only)."""
    features = np.log1p(x / x.sum(axis=1, keepdims=True) * 1e4)
    features -= features.mean(axis=0)
    _, _, vt = np.linalg.svd(features, full_matrices=False)
    components = features @ vt[:d_all].T
    controls = u.sum(axis=1) == 0
    shifts = [
        components[(u == row).all(axis=1)].mean(axis=0) - components[controls].mean(axis=0)
        for row in np.unique(u[~controls], axis=0)
    ]
    if shifts:
        _, singular, directions = np.linalg.svd(np.array(shifts))
        rank = int((singular > 1e-8 * singular[0]).sum())
        keep = np.linalg.svd(np.eye(d_all) - directions[:rank].T @ directions[:rank])[0]
        components = components @ keep[:, : d_all - rank]
    return components[:, :d_invariant]


@pytest.fixture(scope="module")
def scores():
    out = []
    for seed in range(3):
        params = LINEAR
        dataset = simulate(params, seed=seed)
        train = np.flatnonzero(dataset.tasks[0].split == "train")
        x = dataset.factual.X.toarray().astype(np.float64)
        u = dataset.cells.perturbations
        d_all = params.d_invariant + params.d_responsive
        controls = train[u[train].sum(axis=1) == 0]
        row = {}
        for setting, cells in (("many", train), ("single", controls)):
            block = _aligned_invariant_block(x[cells], u[cells], params.d_invariant, d_all)
            z_inv, z_resp = dataset.cells.z_invariant[cells], dataset.z_responsive[cells]
            row[setting] = metrics.block_r2(block, z_inv)
            row[f"{setting}_leak"] = metrics.block_r2(block, z_resp)
            reference = random_split_r2_reference(z_inv, z_resp, params.d_invariant, seed=0)
            row[f"{setting}_split95"] = float(np.quantile(reference, 0.95))
        z_inv, z_resp = dataset.cells.z_invariant[train], dataset.z_responsive[train]
        row["ideal_leak"] = metrics.block_r2(z_inv, z_resp)
        out.append(row)
    return out


def test_many_environments_identify_the_invariant_block(scores):
    for row in scores:
        # above what any non-identified block of that width scores
        assert row["many"] > row["many_split95"]
        # and it holds no more of z_ν than z_ι itself explains (through Γ)
        assert row["many_leak"] < row["ideal_leak"] + 0.1
    assert np.mean([r["many"] - r["many_split95"] for r in scores]) > 0.05


def test_a_single_environment_fails_measurably(scores):
    """The negative control: the same estimator on the controls alone recovers z_ι
    no better than a random split, and its block is full of z_ν."""
    for row in scores:
        assert row["single"] < row["single_split95"]
        assert row["single"] < row["many"] - 0.1
        assert row["single_leak"] > row["many_leak"] + 0.4
        assert row["single_leak"] > row["ideal_leak"] + 0.3


def test_the_harness_scores_a_responsive_block_against_the_exogenous_term_too(tmp_path):
    """With a DAG the shift axes recover S u + η, not z_ν; the encoder's block neither.

    Measured here (perturb-identifiability-linear, 60 genes, 300 controls, 100 cells
    per single; seeds 0 / 1 / 2 / 3), latent MCC of the responsive block:

                                          z_ν                      S u + η
      perturbed_vae_meanalign (axes)      0.870 0.678 0.627 0.763  0.948 0.874 0.860 0.929
      perturbed_vae (encoder)             -                        0.501 0.441 0.437 0.374
      rotation bar (95th pct)             0.90                     0.896 0.897 0.895 0.895

    At the scenario's own size (2,450 cells, 200 genes) the axes clear the bar on
    all three seeds (0.982 / 0.974 / 0.979, ``simcell evaluate``, fast preset).
    """
    from simcell.evaluation import evaluate
    from simcell.simulator.stream import generate_bundle

    params = scenarios.load(
        "perturb-identifiability-linear",
        n_genes=60,
        n_controls=300,
        n_per_single=100,
        n_per_double=40,
        n_doubles=1,
        n_double_tasks=1,
    )
    generate_bundle(params, 0, tmp_path / "b", scenario="test")
    table = evaluate(
        tmp_path / "b",
        models=["perturbed_vae", "perturbed_vae_meanalign"],
        n_components=10,
        n_boot=20,
        device="cpu",
        cell_level=False,
    )
    latent = table[table["space"] == "latent"].set_index(["model", "metric"])["value"]
    axes = latent["perturbed_vae_meanalign", "latent_mcc:responsive:z_exogenous"]
    assert axes > latent["perturbed_vae_meanalign", "latent_mcc:responsive"] + 0.05
    assert axes > latent["perturbed_vae", "latent_mcc:responsive:z_exogenous"] + 0.3
    assert ("perturbed_vae", "latent_mcc_rotation95:responsive:z_exogenous") in latent.index
    # the identity has no representation; the rows are the representation's only
    assert not table["metric"].str.endswith("z_exogenous")[table["model"] == "identity"].any()
