"""PerturbedVAE on counts: the interface, the latent SCM, checkpoints, identifiability."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from simcell import SimcellError
from simcell.models import create_model, get_preset, load_model
from simcell.simulator.perturb import PerturbParams, simulate


@pytest.fixture(scope="module")
def tiny(perturb_tiny):
    return perturb_tiny


@pytest.fixture(scope="module")
def fitted(tiny):
    _, x, u, train = tiny
    return create_model(
        "perturbed_vae",
        device="cpu",
        seed=0,
        progress_bar=False,
        max_epochs=3,
        residual_abduction=False,
    ).fit(x[train], u[train])


def test_counterfactual_gives_finite_expected_counts(fitted, tiny):
    dataset, x, u, _ = tiny
    task = dataset.tasks[0]
    cells = task.intervene
    target = u[cells].copy()
    target[:, task.concept] = 1
    prediction = fitted.counterfactual(x[cells], u[cells], target)
    assert prediction.shape == x[cells].shape and prediction.dtype == np.float32
    assert np.all(np.isfinite(prediction)) and np.all(prediction >= 0)
    # expected counts keep each cell's library size (softmax rates x total counts)
    np.testing.assert_allclose(prediction.sum(axis=1), x[cells].sum(axis=1), rtol=1e-4)
    missing = u[cells].copy()
    missing[::2, 0] = np.nan
    assert np.all(np.isfinite(fitted.counterfactual(x[cells], missing, target)))


def test_encode_returns_the_two_blocks_and_their_targets(fitted, tiny):
    _, x, u, _ = tiny
    representation = fitted.encode(x[:50], u[:50])
    assert set(representation.blocks) == {"invariant", "responsive"}
    assert representation.blocks["invariant"].shape == (50, fitted.config.invariant_dim)
    assert representation.blocks["responsive"].shape == (50, u.shape[1])
    assert dict(representation.targets) == {
        "invariant": "z_invariant",
        "responsive": "z_responsive",
    }


def test_the_learned_scm_is_a_dag_and_doubles_compose(fitted):
    module = fitted.module_
    b = module.weights().detach()
    assert torch.all(torch.triu(b) == 0)
    with torch.no_grad():
        none, e0, e1 = torch.zeros(1, 3), torch.eye(3)[:1], torch.eye(3)[1:2]

        def effect(u):
            return module.solve(module.embedding(u) - module.embedding(none))

        torch.testing.assert_close(effect(e0 + e1), effect(e0) + effect(e1))


def test_do_nothing_decodes_the_abducted_cell(fitted, tiny):
    _, x, u, _ = tiny
    module = fitted.module_
    with torch.no_grad():
        xt, ut = torch.as_tensor(x[:20]), torch.as_tensor(u[:20])
        z_i, z_r = module.encode(xt, ut)
        library = xt.sum(-1, keepdim=True)
        expected = torch.exp(module.log_rates(z_i, z_r, library)).numpy()
    np.testing.assert_array_equal(fitted.counterfactual(x[:20], u[:20], u[:20]), expected)


def test_residual_abduction_keeps_the_cell_and_scales_it_by_the_rate_ratio(fitted, tiny):
    _, x, u, _ = tiny
    residual = create_model("perturbed_vae", device="cpu", residual_abduction=True)
    residual._set_state(fitted._get_state())
    np.testing.assert_allclose(residual.counterfactual(x[:20], u[:20], u[:20]), x[:20], rtol=1e-6)
    target = np.ones_like(u[:20])
    ratio = fitted.counterfactual(x[:20], u[:20], target) / fitted.counterfactual(
        x[:20], u[:20], u[:20]
    )
    np.testing.assert_allclose(
        residual.counterfactual(x[:20], u[:20], target), x[:20] * ratio, rtol=1e-4, atol=1e-5
    )


def test_checkpoint_round_trip(fitted, tiny, tmp_path):
    _, x, u, _ = tiny
    fitted.save(tmp_path / "pvae.pt")
    loaded = load_model(tmp_path / "pvae.pt", device="cpu")
    assert loaded.name == "perturbed_vae" and loaded.config == fitted.config
    np.testing.assert_array_equal(
        loaded.counterfactual(x[:10], u[:10], u[:10] * 0 + 1),
        fitted.counterfactual(x[:10], u[:10], u[:10] * 0 + 1),
    )


def test_the_presets():
    paper = get_preset("perturbed_vae", "paper")
    assert (paper.learning_rate, paper.batch_size, paper.max_epochs, paper.hidden_dim) == (
        1e-4,
        64,
        100,
        256,
    )
    assert paper.alignment == 0.05
    for preset in ("fast", "synthetic", "paper"):
        assert get_preset("perturbed_vae_noalign", preset).alignment == 0.0
        assert get_preset("perturbed_vae_noalign", preset) == get_preset(
            "perturbed_vae", preset
        ).replace(alignment=0.0)


def test_pca_input_is_refused_with_one_line(tiny):
    _, x, u, _ = tiny
    model = create_model("perturbed_vae", device="cpu", progress_bar=False, max_epochs=1)
    with pytest.raises(SimcellError, match="counts"):
        model.fit(x - x.mean(axis=0), u)


def test_nb_likelihood_trains(tiny):
    _, x, u, train = tiny
    model = create_model(
        "perturbed_vae", device="cpu", progress_bar=False, max_epochs=2, likelihood="nb"
    ).fit(x[train], u[train])
    assert np.all(np.isfinite(model.history_.train_loss))


@pytest.mark.gpu
def test_runs_on_cuda(cuda_device, tiny):
    _, x, u, train = tiny
    model = create_model(
        "perturbed_vae", device=cuda_device, seed=0, progress_bar=False, max_epochs=3
    ).fit(x[train], u[train])
    assert next(model.module_.parameters()).is_cuda
    prediction = model.counterfactual(x[:50], u[:50], np.ones_like(u[:50]))
    assert np.all(np.isfinite(prediction))


# ----------------------------------------------------------------------------- identifiability
#
# Measured on the data below (seeds 0, 1, 2; fast preset, CPU; ~1,850 train cells):
#
#                          invariant R² (z_ι)   responsive MCC (z_ν)   leakage R² (z_ν | inv.)
#   perturbed_vae          0.729 0.775 0.684    0.459 0.439 0.667      0.621 0.839 0.789
#   perturbed_vae_noalign  0.745 0.762 0.675    0.497 0.488 0.597      0.587 0.852 0.789
#   single environment     0.714 0.767 0.728    0.526 0.344 0.627      0.607 0.795 0.808
#     (perturbed_vae trained on the ~400 controls alone)
#   references (from the true latents alone):
#   random 8-dim split     0.893 0.935 0.934 (95th percentile of random_split_r2_reference)
#   rotated z_ν                                 0.77-0.82 (mean of rotation_mcc_reference)
#   z_ι itself                                                         0.187 0.382 0.381
#
# Random latents score R² ≈ 0 and MCC ≈ 0.03, so the blocks hold both latents far
# above chance; but they do not identify them. A random 8-dim subspace of the
# joint latent (z_ι, z_ν) recovers z_ι better than the learned 8-dim invariant
# block, the responsive MCC is below that of a mere rotation of the true z_ν, and
# the invariant block holds about twice the z_ν that z_ι itself explains (through
# Γ). The whole representation holds z_ι with R² ≈ 0.89 (a supervised regressor
# from the counts reaches 0.95): what fails is the split between the blocks, and
# the alignment does not change it (gap 0.002 ± 0.015). The test below pins this.

IDENTIFIABILITY = dict(n_genes=100, n_controls=400, n_per_single=150, n_per_double=60)
#: below the smallest of the 9 measured invariant R² (0.675) and responsive MCC (0.344)
INVARIANT_R2_FLOOR, RESPONSIVE_MCC_FLOOR = 0.6, 0.3


def _recovery(name: str, seed: int, *, controls_only: bool = False, **overrides):
    from simcell.evaluation import metrics

    dataset = simulate(PerturbParams(**IDENTIFIABILITY), seed=seed)
    train = np.flatnonzero(dataset.tasks[0].split == "train")
    x = dataset.factual.X.toarray().astype(np.float32)
    u = dataset.cells.perturbations.astype(np.float32)
    fit_cells = train[u[train].sum(axis=1) == 0] if controls_only else train
    model = create_model(name, device="cpu", seed=seed, progress_bar=False, **overrides)
    model.fit(x[fit_cells], u[fit_cells])
    blocks = model.encode(x[train], u[train]).blocks
    z_invariant, z_responsive = dataset.cells.z_invariant[train], dataset.z_responsive[train]
    return {
        "invariant_r2": metrics.block_r2(blocks["invariant"], z_invariant),
        "responsive_mcc": metrics.latent_mcc(blocks["responsive"], z_responsive),
    }


def test_the_blocks_recover_both_latents_far_above_chance():
    scores = _recovery("perturbed_vae", 0, max_epochs=20)
    assert scores["invariant_r2"] >= INVARIANT_R2_FLOOR
    assert scores["responsive_mcc"] >= RESPONSIVE_MCC_FLOOR


def test_without_controls_the_alignment_has_nothing_to_align(tiny):
    """The negative control of the alignment: with no control cells (u = 0) in the
    training data, perturbed_vae is perturbed_vae_noalign, weight for weight."""
    _, x, u, train = tiny
    perturbed = train & (u.sum(axis=1) > 0)
    models = [
        create_model(name, device="cpu", seed=3, progress_bar=False, max_epochs=2).fit(
            x[perturbed], u[perturbed]
        )
        for name in ("perturbed_vae", "perturbed_vae_noalign")
    ]
    for a, b in zip(
        models[0].module_.state_dict().values(),
        models[1].module_.state_dict().values(),
        strict=True,
    ):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    # ... while with controls the alignment changes the fit
    aligned = create_model(
        "perturbed_vae", device="cpu", seed=3, progress_bar=False, max_epochs=2
    ).fit(x[train], u[train])
    unaligned = create_model(
        "perturbed_vae_noalign", device="cpu", seed=3, progress_bar=False, max_epochs=2
    ).fit(x[train], u[train])
    assert not np.array_equal(
        aligned.encode(x[:20], u[:20]).blocks["invariant"],
        unaligned.encode(x[:20], u[:20]).blocks["invariant"],
    )


@pytest.mark.slow
def test_alignment_over_three_seeds_as_measured():
    """The paper's 0.97 vs 0.66 is not reproduced (see the table above): both
    variants recover z_ι alike and below a random split of the latents; this pins
    the measured relation, so a change that makes the alignment matter (or the
    split identified) shows up here."""
    from simcell.evaluation.metrics.identifiability import random_split_r2_reference

    align = [_recovery("perturbed_vae", seed) for seed in range(3)]
    noalign = [_recovery("perturbed_vae_noalign", seed) for seed in range(3)]
    for seed, scores in enumerate(align + noalign):
        assert scores["invariant_r2"] >= INVARIANT_R2_FLOOR
        assert scores["responsive_mcc"] >= RESPONSIVE_MCC_FLOOR
        dataset = simulate(PerturbParams(**IDENTIFIABILITY), seed=seed % 3)
        train = dataset.tasks[0].split == "train"
        split = random_split_r2_reference(
            dataset.cells.z_invariant[train],
            dataset.z_responsive[train],
            get_preset("perturbed_vae", "fast").invariant_dim,
            seed=0,
        )
        assert scores["invariant_r2"] < np.quantile(split, 0.95)
    gap = np.mean(
        [a["invariant_r2"] - b["invariant_r2"] for a, b in zip(align, noalign, strict=True)]
    )
    assert abs(gap) < 0.05


def test_mean_alignment_penalises_each_perturbations_mean_shift_only(tiny):
    """``alignment_kind="mean"``: Σ_u (n_u / n) ‖mean_u μ_ι − mean of random controls' μ_ι‖²
    over the batch's perturbed u, in closed form against the same random controls."""
    from simcell.models._trainer import build_module
    from simcell.models.perturbed_vae import PerturbedVAEModule

    _, x, u, _ = tiny
    config = get_preset("perturbed_vae", "fast").replace(alignment_kind="mean", alignment=1.0)
    module = build_module(lambda: PerturbedVAEModule(x.shape[1], u.shape[1], config), seed=0)
    controls = u.sum(axis=1) == 0
    module.controls = torch.as_tensor(x[controls])
    batch = np.r_[np.flatnonzero(controls)[:10], np.flatnonzero(~controls)[:40]]
    xb, ub = torch.as_tensor(x[batch]), torch.as_tensor(u[batch])
    with torch.no_grad():
        mean_i, _ = module.encoder_invariant(torch.log1p(xb / xb.sum(-1, keepdim=True) * 1e4))
        gap = module._mean_gap(mean_i, ub, torch.Generator().manual_seed(4))
        pick = torch.randint(
            len(module.controls), (len(batch),), generator=torch.Generator().manual_seed(4)
        )
        partner = module.controls[pick]
        reference, _ = module.encoder_invariant(
            torch.log1p(partner / partner.sum(-1, keepdim=True) * 1e4)
        )
    mean_i, reference = mean_i.numpy(), reference.numpy().mean(axis=0)
    expected = 0.0
    for label in np.unique(u[batch], axis=0):
        rows = (u[batch] == label).all(axis=1)
        if label.sum() > 0:
            expected += rows.mean() * np.sum((mean_i[rows].mean(axis=0) - reference) ** 2)
    assert float(gap) == pytest.approx(expected, rel=1e-5)
    with pytest.raises(SimcellError, match="alignment_kind"):
        config.replace(alignment_kind="pairs")


def test_mean_alignment_trains_and_differs_from_the_pair(tiny):
    _, x, u, train = tiny
    fits = [
        create_model(
            "perturbed_vae", device="cpu", seed=3, progress_bar=False, max_epochs=2, **extra
        ).fit(x[train], u[train])
        for extra in ({}, {"alignment_kind": "mean", "alignment": 100.0})
    ]
    blocks = [fit.encode(x[:20], u[:20]).blocks["invariant"] for fit in fits]
    assert np.all(np.isfinite(blocks[1])) and not np.array_equal(*blocks)


# Where the alignment matters: perturb-identifiability-linear (every gene reads both
# latents), invariant_dim = d_ι = 6, fast preset, seeds 0, 1, 2, ~1,000 train cells:
#
#                                 invariant R² (z_ι)    leakage R² (z_ν | inv.)
#   alignment_kind="mean", α=100  0.804 0.832 0.777     0.286 0.248 0.219
#   pair, α=0.05 (the paper)      0.671 0.584 0.606     0.749 0.730 0.832
#   no alignment                  0.642 0.591 0.607     0.780 0.736 0.813
#   random 6-dim split: mean      0.630 0.680 0.686     (95th pct 0.719 0.768 0.769)
#   z_ι itself                                          0.187 0.382 0.381
#
# The environment-mean alignment identifies the split (above every random split's
# mean, leakage down to what Γ z_ι explains); the paper's pair alignment does not.

LINEAR_REGIME = dict(IDENTIFIABILITY, mixing="linear", responsive_gene_fraction=1.0)


@pytest.mark.slow
def test_environment_mean_alignment_identifies_the_invariant_block():
    from simcell.evaluation import metrics
    from simcell.evaluation.metrics.identifiability import random_split_r2_reference

    gaps = []
    for seed in range(3):
        dataset = simulate(PerturbParams(**LINEAR_REGIME), seed=seed)
        train = np.flatnonzero(dataset.tasks[0].split == "train")
        x = dataset.factual.X.toarray().astype(np.float32)
        u = dataset.cells.perturbations.astype(np.float32)
        z_invariant, z_responsive = dataset.cells.z_invariant[train], dataset.z_responsive[train]
        scores = {}
        for kind, extra in (
            ("mean", {"alignment_kind": "mean", "alignment": 100.0}),
            ("none", {"alignment": 0.0}),
        ):
            model = create_model(
                "perturbed_vae",
                device="cpu",
                seed=seed,
                progress_bar=False,
                invariant_dim=6,
                **extra,
            ).fit(x[train], u[train])
            block = model.encode(x[train], u[train]).blocks["invariant"]
            scores[kind] = (
                metrics.block_r2(block, z_invariant),
                metrics.block_r2(block, z_responsive),
            )
        split = random_split_r2_reference(z_invariant, z_responsive, 6, seed=0)
        ideal_leak = metrics.block_r2(z_invariant, z_responsive)
        (r2_mean, leak_mean), (r2_none, leak_none) = scores["mean"], scores["none"]
        assert r2_mean > r2_none + 0.08
        assert r2_mean > np.mean(split) + 0.05
        assert r2_none < np.quantile(split, 0.95)
        assert leak_mean < leak_none - 0.3 and leak_mean < ideal_leak + 0.15
        gaps.append(r2_mean - np.quantile(split, 0.95))
    assert np.mean(gaps) > 0.02
