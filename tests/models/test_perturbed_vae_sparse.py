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
from simcell.models.perturbed_vae import PerturbedVAEModule, shift_axes
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
    """The shift axes Σ⁻¹ δ_p of the controls' principal components of log-normalised counts."""
    features = np.log1p(x / x.sum(axis=1, keepdims=True) * 1e4)
    controls = u.sum(axis=1) == 0
    features = features - features[controls].mean(axis=0)
    _, _, vt = np.linalg.svd(features[controls], full_matrices=False)
    y = features @ vt[:n_components].T
    return shift_axes(y, u).transform(y)


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


# The model on the same data (60 genes, 650 train cells, perturbed_vae_meanalign's
# fast preset). Its encoder's responsive block is not identified: the dense
# embedding leaves z_ν's rotation free, and a diagonal one does not select it within
# the budget (the within-environment spread, sd 1.5-1.7 against the prior's 1, is
# encoded rotated). Its shift axes, read from the whole code after training, are:
#
#   seed                                 0     1     2     3     4
#   shift axes (responsive_readout)      0.955 0.968 0.961 0.962 0.966
#   the encoder's own block, same fit    0.565 0.560 0.532 0.584 0.671
#   shift axes, dense-shift data         0.686 0.710 0.749 0.749 0.694
#   rotated z_ν: 95th percentile         0.896 0.899 0.895 0.893 0.896
#
# (default scenario size: 0.985 0.985 0.986 against the data's 0.985, dense 0.70-0.74)

MODEL_REGIME = dict(n_genes=60, n_controls=300, n_per_single=100, n_per_double=40)


def _fit_shift_axes(seed: int, shift_targets: int = 1):
    from simcell import scenarios
    from simcell.evaluation import metrics
    from simcell.evaluation.metrics.identifiability import rotation_mcc_reference

    params = scenarios.load("perturb-identifiability-sparse").replace(
        **MODEL_REGIME, shift_targets=shift_targets
    )
    dataset = simulate(params, seed=seed)
    train = dataset.tasks[0].split == "train"
    x = dataset.factual.X.toarray().astype(np.float32)[train]
    u = dataset.cells.perturbations.astype(np.float32)[train]
    z = dataset.z_responsive[train]
    model = create_model("perturbed_vae_meanalign", device="cpu", seed=seed, progress_bar=False)
    model.fit(x, u)
    encoder_block = model._code(x, u)[:, model.config.invariant_dim :]
    rotation = rotation_mcc_reference(z, seed=0)
    return (
        metrics.latent_mcc(model.encode(x, u).blocks["responsive"], z),
        metrics.latent_mcc(encoder_block, z),
        rotation.mean(),
        np.quantile(rotation, 0.95),
    )


def _assert_shift_axes_identify(seed: int) -> None:
    mcc, encoder_mcc, _, threshold = _fit_shift_axes(seed)
    assert mcc > threshold + 0.03
    assert encoder_mcc < threshold  # the paper's readout of the same fit is not identified
    # negative control: with dense shifts nothing singles the axes out
    mcc, _, rotation_mean, threshold = _fit_shift_axes(seed, shift_targets=4)
    assert mcc < rotation_mean and mcc < threshold - 0.1


def test_the_models_shift_axes_recover_the_responsive_latents_and_fail_on_dense_shifts():
    _assert_shift_axes_identify(0)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2])
def test_the_models_shift_axes_recover_the_responsive_latents_on_more_seeds(seed):
    _assert_shift_axes_identify(seed)
