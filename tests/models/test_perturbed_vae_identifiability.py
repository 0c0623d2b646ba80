"""PerturbedVAE identifies its invariant block where theory says it can, and fails where it cannot.

Regime (``perturb-identifiability-linear`` at test size): linear mixing, every
gene reads both latents, d_ι = 6, d_ν = 4, P = 4 singles whose shifts span every
z_ν direction; 100 genes, 400 controls, 150 cells per single; the train cells of
task_0. Model: ``perturbed_vae`` with the environment-mean alignment
(``alignment_kind="mean"``, α = 100), ``invariant_dim = 6``, the encoders reading
log1p of the raw counts (``encoder_input="log1p"``: normalising to the total adds
a nonlinear function of every latent to each gene), 160 epochs of the fast preset
(about 1,300 steps, under its 2,000-step cap).

Measured (seeds 0, 1, 2; linear block R² of the true z_ι on held-out cells):

                          seed 0   seed 1   seed 2
    aligned (mean, α=100)     0.941    0.947    0.900  (80 epochs: 0.920 0.927 0.809)
    no alignment              0.627    0.586    0.616
    single environment        0.669    0.541    0.608
    random 6-dim split, 95th  0.719    0.768    0.769
    leakage R²(z_ν | block): aligned 0.17 0.30 0.29, no alignment 0.71 0.71 0.76,
    single environment 0.67 0.81 0.82; ideal (what z_ι explains) 0.19 0.38 0.38

The paper reports 0.97 aligned vs 0.66 not aligned. The margins asserted
(0.1, and 0.3 in leakage) sit well inside the measured gaps (0.20-0.37).
The default test (seed 0, 0.04 above the 0.9 bar) fits three models: about
20 s on an idle 2-core machine.

The negative control is the same model and metric on a single environment (the
controls alone): nothing to align, the split is not identified.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from simcell import SimcellError, scenarios
from simcell.evaluation import metrics
from simcell.evaluation.metrics.identifiability import random_split_r2_reference
from simcell.models import create_model, get_preset
from simcell.models.perturbed_vae import _features
from simcell.simulator.perturb import simulate

#: the ``perturb-identifiability-linear`` scenario at test size
REGIME = scenarios.load(
    "perturb-identifiability-linear", n_genes=100, n_controls=400, n_per_single=150, n_per_double=60
)
IDENTIFIED = dict(invariant_dim=6, encoder_input="log1p", max_epochs=160)
NOALIGN_MARGIN, SINGLE_MARGIN = 0.1, 0.1
SETTINGS = {
    "align": ("perturbed_vae_meanalign", False),
    "noalign": ("perturbed_vae_noalign", False),
    "single_environment": ("perturbed_vae_meanalign", True),
}


def test_encoder_input_is_log1p_of_the_raw_or_the_normalised_counts():
    counts = torch.tensor([[0.0, 3.0, 7.0], [1.0, 1.0, 8.0]])
    torch.testing.assert_close(_features(counts, "log1p"), torch.log1p(counts))
    normalised = torch.log1p(counts / counts.sum(dim=-1, keepdim=True) * 1e4)
    torch.testing.assert_close(_features(counts), normalised)
    # the default (and every preset) keeps the normalised input
    assert get_preset("perturbed_vae", "paper").encoder_input == "normalized"
    with pytest.raises(SimcellError, match="encoder_input"):
        get_preset("perturbed_vae", "fast").replace(encoder_input="raw")


def _scores(seed: int) -> dict[str, float]:
    dataset = simulate(REGIME, seed=seed)
    train = np.flatnonzero(dataset.tasks[0].split == "train")
    x = dataset.factual.X.toarray().astype(np.float32)
    u = dataset.cells.perturbations.astype(np.float32)
    z_invariant, z_responsive = dataset.cells.z_invariant[train], dataset.z_responsive[train]
    out = {}
    for setting, (name, controls_only) in SETTINGS.items():
        cells = train[u[train].sum(axis=1) == 0] if controls_only else train
        model = create_model(name, device="cpu", seed=seed, progress_bar=False, **IDENTIFIED)
        block = model.fit(x[cells], u[cells]).encode(x[train], u[train]).blocks["invariant"]
        out[setting] = metrics.block_r2(block, z_invariant)
        out[f"{setting}_leak"] = metrics.block_r2(block, z_responsive)
    split = random_split_r2_reference(z_invariant, z_responsive, 6, seed=0)
    out["split95"] = float(np.quantile(split, 0.95))
    out["ideal_leak"] = metrics.block_r2(z_invariant, z_responsive)
    return out


def _check(row: dict[str, float], floor: float = 0.9) -> None:
    # identified: the paper's bar, and no more of z_ν than z_ι itself explains (via Γ)
    assert row["align"] >= floor
    assert row["align_leak"] < row["ideal_leak"] + 0.1
    # the alignment is what identifies it
    assert row["align"] > row["noalign"] + NOALIGN_MARGIN
    assert row["noalign_leak"] > row["align_leak"] + 0.3
    # negative control: one environment, same model and metric, clearly below
    assert row["single_environment"] < row["align"] - SINGLE_MARGIN
    assert row["single_environment"] < row["split95"]
    assert row["single_environment_leak"] > row["ideal_leak"] + 0.3


def test_aligned_invariant_block_reaches_the_paper_bar_and_the_controls_fail():
    _check(_scores(0))


@pytest.mark.slow
def test_the_other_two_seeds_as_measured():
    """Seeds 1 and 2 (seed 0 is the default test). Seed 2 converges more slowly
    (0.900 at this budget, 0.809 at half of it), so its floor is 0.85."""
    for seed, floor in ((1, 0.9), (2, 0.85)):
        _check(_scores(seed), floor)
