"""PerturbedVAE's responsive block: sparse / single-target shift embeddings.

With dense learnable shift embeddings E the model is invariant to any rotation
of z_ν (rotate z_ν, E and the decoder's input together), so nothing selects the
responsive axes. Under single-target shifts (each perturbation moves one latent,
one perturbation per latent) a diagonal E, or an L1 penalty that prefers it,
identifies z_ν up to permutation and scaling; with dense true shifts it cannot.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from simcell import SimcellError
from simcell.models import create_model, get_preset
from simcell.models._trainer import build_module
from simcell.models.perturbed_vae import PerturbedVAEModule
from simcell.simulator.perturb import simulate


@pytest.fixture(scope="module")
def tiny(perturb_tiny):
    _, x, u, train = perturb_tiny
    return x, u, train


def _module(x, u, **changes):
    config = get_preset("perturbed_vae", "fast").replace(**changes)
    return build_module(lambda: PerturbedVAEModule(x.shape[1], u.shape[1], config), seed=0)


def test_the_options_default_to_the_papers_dense_embedding():
    for preset in ("paper", "synthetic", "fast"):
        config = get_preset("perturbed_vae", preset)
        assert (config.shift_sparsity, config.shift_embedding) == (0.0, "dense")
    with pytest.raises(SimcellError, match="shift_embedding"):
        get_preset("perturbed_vae", "fast").replace(shift_embedding="sparse")
    with pytest.raises(SimcellError, match="shift_sparsity"):
        get_preset("perturbed_vae", "fast").replace(shift_sparsity=-1.0)


def test_a_diagonal_embedding_needs_one_latent_per_perturbation(tiny):
    x, u, train = tiny
    model = create_model(
        "perturbed_vae",
        device="cpu",
        progress_bar=False,
        shift_embedding="diagonal",
        responsive_dim=2,
    )
    with pytest.raises(SimcellError, match="one responsive latent per perturbation"):
        model.fit(x[train], u[train])


def test_the_l1_penalty_adds_lambda_times_the_absolute_shifts(tiny):
    x, u, _ = tiny
    batch = {"x": torch.as_tensor(x[:64]), "concepts": torch.as_tensor(u[:64])}
    plain, penalised = _module(x, u), _module(x, u, shift_sparsity=0.5)
    penalised.load_state_dict(plain.state_dict())
    with torch.no_grad():
        a = plain.loss(batch, generator=torch.Generator().manual_seed(2))
        b = penalised.loss(batch, generator=torch.Generator().manual_seed(2))
        l1 = plain.embedding.weight.abs().sum()
    assert float(b - a) == pytest.approx(0.5 * float(l1), rel=1e-5)


def test_a_diagonal_embedding_shifts_each_perturbations_own_latent_only(tiny):
    x, u, train = tiny
    model = create_model(
        "perturbed_vae",
        device="cpu",
        seed=0,
        progress_bar=False,
        max_epochs=2,
        shift_embedding="diagonal",
    ).fit(x[train], u[train])
    module = model.module_
    eye = torch.eye(u.shape[1])
    with torch.no_grad():
        effect = module.shift(eye) - module.shift(torch.zeros_like(eye))
    # row p: the exogenous shift of perturbation p, non-zero at latent p only
    assert torch.all(effect[~eye.bool()] == 0)
    assert torch.all(effect.diagonal() != 0)
    # a dense embedding is the paper's nn.Linear, bit for bit
    dense = _module(x, u)
    with torch.no_grad():
        torch.testing.assert_close(dense.shift(eye), dense.embedding(eye), rtol=0, atol=0)


def test_the_sparse_scenario_is_single_target_without_a_dag_or_coupling():
    from simcell import scenarios

    params = scenarios.load("perturb-identifiability-sparse")
    assert (params.shift_targets, params.edge_probability, params.invariant_coupling) == (
        1,
        0.0,
        0.0,
    )
    assert params.n_perturbations == params.d_responsive
    dataset = simulate(params.replace(n_genes=20, n_controls=20, n_per_single=5, n_per_double=5), 0)
    shifts = dataset.world.shifts
    assert np.all((shifts != 0).sum(axis=1) == 1)
    assert np.array_equal(np.flatnonzero(shifts), np.arange(4) * 5)  # p shifts latent p


# ----------------------------------------------------------------------------- identifiability
#
# What the data identify. With single-target shifts (perturbation p moves latent p
# only), no DAG and no coupling, z_ν,p is recovered up to scale by the direction
# Σ⁻¹ δ_p: δ_p = W e_p s_p is the mean shift of the single-p cells from the
# controls in the (PCA) space y = W z of the latents, Σ = W Wᵀ the controls'
# covariance, so (Σ⁻¹ δ_p)ᵀ y = s_p z_ν,p. With dense shifts the same estimator
# returns s_pᵀ z_ν, a mixture: nothing in the data singles the axes out. Measured
# (perturb-identifiability-sparse, 200 genes, train cells of task 0, seeds 0 / 1 / 2):
#
#                                        responsive MCC        rotated z_ν: mean (95th pct)
#   single-target shifts                 0.985 0.984 0.985     0.773 0.773 0.772 (0.896-0.898)
#   dense shifts (shift_targets = 4)     0.690 0.710 0.726     0.792-0.796 (0.913-0.921)
#   single-target, DAG + Γ (default)     0.813 0.688 0.630     0.775-0.815 (0.897-0.923)
#   (60 genes, 650 cells: 0.937 0.959 0.910 / 0.684 0.697 0.650)
#
# The threshold is the 95th percentile of the rotation reference: an MCC above it
# is not what an answer identified only up to a rotation scores. Single-target
# shifts clear it by >= 0.08; dense shifts fall below even its mean.


def _single_target_axes(x: np.ndarray, u: np.ndarray, n_components: int) -> np.ndarray:
    """Σ⁻¹ δ_p projections of log-normalised counts, one column per perturbation."""
    features = np.log1p(x / x.sum(axis=1, keepdims=True) * 1e4)
    controls = u.sum(axis=1) == 0
    features = features - features[controls].mean(axis=0)
    _, _, vt = np.linalg.svd(features[controls], full_matrices=False)
    y = features @ vt[:n_components].T
    singles = [(u[:, p] == 1) & (u.sum(axis=1) == 1) for p in range(u.shape[1])]
    delta = np.stack([y[rows].mean(axis=0) for rows in singles], axis=1)
    return y @ np.linalg.solve(np.cov(y[controls].T), delta)


@pytest.mark.parametrize("seed", [0, 1])
def test_single_target_shifts_identify_the_responsive_axes_and_dense_shifts_do_not(seed):
    from simcell import scenarios
    from simcell.evaluation import metrics
    from simcell.evaluation.metrics.identifiability import rotation_mcc_reference

    params = scenarios.load("perturb-identifiability-sparse")
    scores = {}
    for name, shift_targets in (("sparse", 1), ("dense", params.d_responsive)):
        dataset = simulate(params.replace(shift_targets=shift_targets), seed=seed)
        train = dataset.tasks[0].split == "train"
        x = dataset.factual.X.toarray()[train]
        u = dataset.cells.perturbations[train]
        z = dataset.z_responsive[train]
        axes = _single_target_axes(x, u, params.d_invariant + params.d_responsive)
        rotation = rotation_mcc_reference(z, seed=0)
        scores[name] = (metrics.latent_mcc(axes, z), rotation.mean(), np.quantile(rotation, 0.95))
    mcc, _, threshold = scores["sparse"]
    assert mcc > threshold + 0.05
    mcc, rotation_mean, threshold = scores["dense"]
    assert mcc < rotation_mean < threshold


# The model on the same data (60 genes, 650 train cells; fast preset with
# alignment_kind="mean", α = 100, invariant_dim 6, learning rate 1e-2), seeds 0 / 1 / 2:
#
#                                        responsive MCC     responsive R²
#   shift_embedding="diagonal"           0.568 0.627 0.488  0.76 0.84 0.61
#   dense embedding                      0.573 0.627 0.483  0.76 0.82 0.58
#   diagonal, dense-shift data           0.623 0.697 0.768
#   rotated z_ν: mean (95th percentile)  0.772 0.773 0.772 (0.896 0.899 0.895)
#
# The mean shifts sit on the right axes, but the within-environment spread of the
# block (sd 1.5-1.7 against the prior's 1) is encoded rotated: the identification
# needs the aggregate posterior to match the prior, which the fast budget does not
# reach (seed 0, 100 genes: 0.72 at 40 epochs, 0.78 at 120). Pinned below.

MODEL_REGIME = dict(n_genes=60, n_controls=300, n_per_single=100, n_per_double=40)


@pytest.mark.slow
def test_the_diagonal_embedding_does_not_yet_reach_the_identified_axes():
    from simcell import scenarios
    from simcell.evaluation import metrics
    from simcell.evaluation.metrics.identifiability import rotation_mcc_reference

    params = scenarios.load("perturb-identifiability-sparse").replace(**MODEL_REGIME)
    dataset = simulate(params, seed=0)
    train = dataset.tasks[0].split == "train"
    x = dataset.factual.X.toarray().astype(np.float32)[train]
    u = dataset.cells.perturbations.astype(np.float32)[train]
    z = dataset.z_responsive[train]
    model = create_model(
        "perturbed_vae",
        device="cpu",
        seed=0,
        progress_bar=False,
        alignment_kind="mean",
        alignment=100.0,
        invariant_dim=params.d_invariant,
        learning_rate=1e-2,
        shift_embedding="diagonal",
    ).fit(x, u)
    learned = metrics.latent_mcc(model.encode(x, u).blocks["responsive"], z)
    threshold = np.quantile(rotation_mcc_reference(z, seed=0), 0.95)
    identified = metrics.latent_mcc(_single_target_axes(x, u, 10), z)
    assert identified > threshold > learned > 0.4
