"""The shift axes: each perturbation's discriminant axis Σ⁻¹ δ_p in a code.

Closed forms on Gaussian latents seen through an arbitrary invertible linear map:
single-target shifts give back each shifted coordinate, a DAG gives back the
exogenous terms (not z itself), dense shifts give mixtures.
"""

from __future__ import annotations

import numpy as np
import pytest

from simcell import SimcellError
from simcell.evaluation import metrics
from simcell.models import create_model, get_preset, load_model
from simcell.models.perturbed_vae import shift_axes


def _environments(rng, n_per: int, n_perturbations: int) -> np.ndarray:
    """Controls, then each single perturbation: u of shape (n_per (P + 1), P)."""
    blocks = [np.zeros((n_per, n_perturbations))]
    for p in range(n_perturbations):
        block = np.zeros((n_per, n_perturbations))
        block[:, p] = 1.0
        blocks.append(block)
    return np.concatenate(blocks)


def _code(z: np.ndarray, rng, extra: int = 3) -> np.ndarray:
    """z together with nuisance latents, through a random invertible map plus an offset."""
    nuisance = rng.standard_normal((len(z), extra))
    full = np.hstack([nuisance, z])
    mixing = rng.standard_normal((full.shape[1], full.shape[1]))
    return full @ mixing + rng.standard_normal(full.shape[1])


def test_single_target_shifts_give_back_each_latent_whatever_the_linear_map():
    rng = np.random.default_rng(0)
    u = _environments(rng, 4000, 4)
    eta = rng.standard_normal((len(u), 4))
    shifts = np.diag([2.0, -1.5, 1.0, 2.5])
    z = eta + u @ shifts
    y = _code(z, rng)
    axes = shift_axes(y, u)
    readout = axes.transform(y)
    assert readout.shape == (len(u), 4)
    assert np.array_equal(axes.perturbations, np.arange(4))
    assert metrics.latent_mcc(readout, z) > 0.995
    # column p is z_p itself (scale and sign of its shift), not just a match
    for p in range(4):
        assert abs(np.corrcoef(readout[:, p], z[:, p])[0, 1]) > 0.995
    # unit within-environment variance and the controls at 0, exactly by construction
    controls = u.sum(axis=1) == 0
    np.testing.assert_allclose(readout[controls].mean(axis=0), 0.0, atol=1e-9)
    within = np.concatenate(
        [readout[u[:, p] == 1] - readout[u[:, p] == 1].mean(0) for p in range(4)]
    )
    within = np.concatenate([within, readout[controls] - readout[controls].mean(0)])
    np.testing.assert_allclose(within.var(axis=0) * len(within) / (len(within) - 5), 1.0, rtol=1e-6)


def test_the_axes_do_not_depend_on_the_codes_linear_parametrisation():
    rng = np.random.default_rng(1)
    u = _environments(rng, 300, 3)
    y = rng.standard_normal((len(u), 6)) + u @ rng.standard_normal((3, 6))
    mixing = rng.standard_normal((6, 6))
    a = shift_axes(y, u).transform(y)
    b = shift_axes(y @ mixing + 5.0, u).transform(y @ mixing + 5.0)
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_with_a_dag_the_axes_are_the_exogenous_terms_and_with_dense_shifts_mixtures():
    rng = np.random.default_rng(2)
    u = _environments(rng, 4000, 3)
    eta = rng.standard_normal((len(u), 3))
    b = np.array([[0.0, 0.0, 0.0], [0.9, 0.0, 0.0], [-0.7, 0.8, 0.0]])
    shifts = np.diag([2.0, 2.0, -2.0])
    exogenous = eta + u @ shifts
    z = np.linalg.solve(np.eye(3) - b, exogenous.T).T  # z = B z + S u + η
    readout = shift_axes(y := _code(z, rng), u).transform(y)
    assert metrics.latent_mcc(readout, exogenous) > 0.995
    assert metrics.latent_mcc(readout, z) < 0.95  # z itself is a free reparametrisation
    # dense shifts: every axis is a mixture of the exogenous terms
    dense = rng.standard_normal((3, 3)) * 2.0
    z = eta + u @ dense
    readout = shift_axes(y := _code(z, rng), u).transform(y)
    assert metrics.latent_mcc(readout, z) < 0.9


def test_no_perturbed_cell_has_no_axes_and_an_unseen_perturbation_no_column():
    rng = np.random.default_rng(3)
    y = rng.standard_normal((50, 4))
    assert shift_axes(y, np.zeros((50, 3))) is None
    u = np.zeros((50, 3))
    u[:20, 0] = 1.0
    u[20:30, 2] = np.nan  # a missing annotation counts as 0
    axes = shift_axes(y, u)
    assert np.array_equal(axes.perturbations, [0])
    assert axes.transform(y).shape == (50, 1)


def test_meanalign_reads_shift_axes_and_the_paper_variants_their_encoder(perturb_tiny):
    _, x, u, train = perturb_tiny
    for name, readout in (
        ("perturbed_vae", "encoder"),
        ("perturbed_vae_noalign", "encoder"),
        ("perturbed_vae_meanalign", "shift_axes"),
    ):
        assert get_preset(name, "fast").responsive_readout == readout
    with pytest.raises(SimcellError, match="responsive_readout"):
        get_preset("perturbed_vae", "fast").replace(responsive_readout="lda")
    model = create_model(
        "perturbed_vae", device="cpu", seed=0, progress_bar=False, max_epochs=2
    ).fit(x[train], u[train])
    assert model.axes_ is None
    d_i = model.config.invariant_dim
    np.testing.assert_array_equal(
        model.encode(x, u).blocks["responsive"], model._code(x, u)[:, d_i:]
    )


def test_the_shift_axes_survive_a_checkpoint(perturb_tiny, tmp_path):
    _, x, u, train = perturb_tiny
    model = create_model(
        "perturbed_vae_meanalign", device="cpu", seed=0, progress_bar=False, max_epochs=2
    ).fit(x[train], u[train])
    assert model.axes_ is not None
    path = tmp_path / "model.pt"
    model.save(path)
    loaded = load_model(path)
    np.testing.assert_array_equal(
        loaded.encode(x, u).blocks["responsive"], model.encode(x, u).blocks["responsive"]
    )
