"""Every registered model on the toy data: shapes, exactness, seeding, checkpoints."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from simcell import SimcellError
from simcell.models import Representation, create_model, get_model_class, list_models, load_model

# models that need no optional package (the external adapters: test_external.py) and
# train on the toy data's PCA-like x (count-space models have their own tests)
BUILT_IN = tuple(
    n
    for n in list_models()
    if not getattr(get_model_class(n), "requires", ())
    and get_model_class(n).input_space != "counts"
)


def mse(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean((a.astype(np.float64) - b) ** 2))


@pytest.mark.parametrize("name", BUILT_IN)
def test_fits_and_predicts_finite_rows(name: str, fitted_models, toy) -> None:
    model = fitted_models[name]
    prediction = model.counterfactual(toy.x_intervene, toy.concepts_intervene, toy.target_concepts)
    assert prediction.shape == toy.x_intervene.shape
    assert prediction.dtype == np.float32
    assert np.all(np.isfinite(prediction))
    history = getattr(model, "history_", None)
    if history is not None:
        assert all(np.isfinite(history.train_loss))


@pytest.mark.parametrize("name", BUILT_IN)
def test_nan_annotations_never_produce_nan(name: str, fitted_models, toy) -> None:
    concepts = toy.concepts_intervene.copy()
    concepts[::2, 1] = np.nan  # missing annotations in the cells to edit
    target = toy.target_concepts.copy()
    target[:, 1] = np.nan  # "leave concept 1 as it is"
    target[1::2, 2] = np.nan
    prediction = fitted_models[name].counterfactual(toy.x_intervene, concepts, target)
    assert np.all(np.isfinite(prediction))
    if get_model_class(name).has_representation:
        encoded = Representation.of(fitted_models[name].encode(toy.x_intervene, concepts))
        assert all(np.all(np.isfinite(block)) for block in encoded.blocks.values())


@pytest.mark.parametrize("name", BUILT_IN)
def test_encode(name: str, fitted_models, toy) -> None:
    model = fitted_models[name]
    if model.has_representation:
        encoded = Representation.of(model.encode(toy.x_intervene, toy.concepts_intervene))
        for block in encoded.blocks.values():
            assert block.ndim == 2 and block.shape[0] == len(toy.x_intervene)
    else:
        with pytest.raises(NotImplementedError):
            model.encode(toy.x_intervene, toy.concepts_intervene)


def test_identity_returns_x_exactly(fitted_models, toy) -> None:
    x = toy.x_intervene
    prediction = fitted_models["identity"].counterfactual(
        x, toy.concepts_intervene, toy.target_concepts
    )
    assert np.array_equal(prediction, x)
    assert not np.shares_memory(prediction, x)


def test_mean_shift_adds_the_difference_of_means(fitted_models, toy) -> None:
    x, c = toy.x_train.astype(np.float64), toy.concepts_train
    on, off = c[:, 0] == 1, c[:, 0] == 0
    shift = x[on].mean(axis=0) - x[off].mean(axis=0)
    prediction = fitted_models["mean_shift"].counterfactual(
        toy.x_intervene, toy.concepts_intervene, toy.target_concepts
    )
    np.testing.assert_allclose(prediction, toy.x_intervene + shift, rtol=0, atol=1e-5)
    # switching the concept off subtracts the same vector
    back = fitted_models["mean_shift"].counterfactual(
        prediction, toy.target_concepts, toy.concepts_intervene
    )
    np.testing.assert_allclose(back, toy.x_intervene, rtol=0, atol=1e-5)


def test_mean_shift_uses_the_regression_slope_for_continuous_concepts(fitted_models, toy) -> None:
    x, dose = toy.x_train.astype(np.float64), toy.concepts_train[:, 2].astype(np.float64)
    slope = np.polyfit(dose, x, deg=1)[0]
    target = toy.concepts_intervene.copy()
    target[:, 2] += 0.5
    prediction = fitted_models["mean_shift"].counterfactual(
        toy.x_intervene, toy.concepts_intervene, target
    )
    np.testing.assert_allclose(
        prediction - toy.x_intervene, np.tile(0.5 * slope, (len(target), 1)), atol=1e-5
    )


def test_mean_shift_with_missing_source_annotation_uses_the_training_mean(toy) -> None:
    model = create_model("mean_shift").fit(
        toy.x_train, toy.concepts_train, concept_kinds=toy.concept_kinds
    )
    concepts = toy.concepts_intervene.copy()
    concepts[:, 0] = np.nan
    prediction = model.counterfactual(toy.x_intervene, concepts, toy.target_concepts)
    prevalence = np.mean(toy.concepts_train[:, 0])
    expected = toy.x_intervene + (1 - prevalence) * model.slopes_[0]
    np.testing.assert_allclose(prediction, expected, atol=1e-5)


def test_mean_shift_on_a_constant_concept_warns(toy) -> None:
    from simcell import SimcellWarning

    concepts = toy.concepts_train.copy()
    concepts[:, 1] = 1.0
    with pytest.warns(SimcellWarning, match=r"concept\(s\) \[1\]"):
        create_model("mean_shift").fit(toy.x_train, concepts, concept_kinds=toy.concept_kinds)


def test_additive_is_the_joint_regression_and_on_perturbations_the_sum_of_singles() -> None:
    rng = np.random.default_rng(0)
    # controls, two singles: each effect is its single's mean minus the controls'
    u = np.repeat(np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]]), [50, 30, 20], axis=0)
    x = rng.standard_normal((100, 5)) + u @ np.array([[1.0] * 5, [-2.0] * 5])
    model = create_model("additive").fit(x, u)
    controls, first, second = x[:50].mean(0), x[50:80].mean(0), x[80:].mean(0)
    np.testing.assert_allclose(
        model.slopes_, np.stack([first - controls, second - controls]), atol=1e-6
    )
    # a single-0 cell asked do(u_1 := 1): the cell plus the single-1 effect
    prediction = model.counterfactual(x[50:52], u[50:52], np.ones((2, 2)))
    np.testing.assert_allclose(prediction, x[50:52] + second - controls, atol=1e-5)
    # mean_shift measures the same effect against every other cell: it differs
    other = create_model("mean_shift").fit(x, u).slopes_[1]
    assert np.abs(other - (second - controls)).max() > 0.1
    # a general design: the OLS coefficients (numpy's lstsq on [1, u])
    u = rng.integers(0, 2, (200, 3)).astype(float)
    x = rng.standard_normal((200, 4))
    expected = np.linalg.lstsq(np.column_stack([np.ones(200), u]), x, rcond=None)[0][1:]
    np.testing.assert_allclose(create_model("additive").fit(x, u).slopes_, expected, atol=1e-6)


def test_additive_on_a_constant_concept_warns_and_ignores_it(toy) -> None:
    from simcell import SimcellWarning

    concepts = toy.concepts_train.copy()
    concepts[:, 1] = 1.0
    with pytest.warns(SimcellWarning, match=r"concept\(s\) \[1\]"):
        model = create_model("additive").fit(toy.x_train, concepts, concept_kinds=toy.concept_kinds)
    assert np.all(model.slopes_[1] == 0)


def test_sccbgm_beats_identity(fitted_models, toy) -> None:
    prediction = fitted_models["sccbgm"].counterfactual(
        toy.x_intervene, toy.concepts_intervene, toy.target_concepts
    )
    assert mse(prediction, toy.x_truth) < 0.75 * mse(toy.x_intervene, toy.x_truth)


def test_sccbgm_joint_training_keeps_its_own_predictions_for_unedited_concepts(toy) -> None:
    model = create_model(
        "sccbgm", device="cpu", seed=0, progress_bar=False, decoder_concepts="predicted"
    ).fit(toy.x_train, toy.concepts_train, concept_kinds=toy.concept_kinds)
    x, concepts, target = toy.x_intervene, toy.concepts_intervene, toy.target_concepts
    reference = model.counterfactual(x, concepts, target)
    # the annotation of an unedited concept does not enter the prediction
    flipped_concepts, flipped_target = concepts.copy(), target.copy()
    flipped_concepts[:, 1] = 1 - concepts[:, 1]
    flipped_target[:, 1] = flipped_concepts[:, 1]
    assert np.array_equal(model.counterfactual(x, flipped_concepts, flipped_target), reference)
    # no edit at all: the same prediction, whatever the annotations say
    unchanged = model.counterfactual(x, concepts, concepts)
    assert np.array_equal(unchanged, model.counterfactual(x, flipped_concepts, flipped_concepts))
    assert np.array_equal(
        unchanged, model.counterfactual(x, concepts, np.full_like(concepts, np.nan))
    )


def test_sccbgm_decoder_sees_the_annotations_and_fills_missing_ones_with_its_predictions(
    fitted_models, toy
) -> None:
    model = fitted_models["sccbgm"]
    assert model.config.decoder_concepts == "annotated"
    x, concepts = toy.x_intervene, toy.concepts_intervene.copy()
    concepts[::2, 1] = np.nan
    unknowns, seen = model.decoder_parts(x, concepts)
    same_unknowns, predicted = model.encode_parts(x)
    assert np.array_equal(unknowns, same_unknowns)
    observed = ~np.isnan(concepts)
    assert np.array_equal(seen[observed], concepts[observed])
    assert np.array_equal(seen[~observed], predicted[~observed])
    # an unedited concept enters as its annotation: flipping it moves the prediction
    target = toy.target_concepts
    flipped, flipped_target = toy.concepts_intervene.copy(), target.copy()
    flipped[:, 1] = flipped_target[:, 1] = 1 - flipped[:, 1]
    assert not np.array_equal(
        model.counterfactual(x, flipped, flipped_target),
        model.counterfactual(x, toy.concepts_intervene, target),
    )


def test_sccbgm_edit_moves_cells_by_the_true_effect(fitted_models, toy) -> None:
    """Trained on hard annotations, an edit 0 -> 1 shifts cells by about s_0.

    (Trained on its own soft ĉ, ``decoder_concepts="predicted"``, the same model
    moves them by only 0.56 s_0 here.)
    """
    shift = (
        fitted_models["sccbgm"].counterfactual(
            toy.x_intervene, toy.concepts_intervene, toy.target_concepts
        )
        - toy.x_intervene
    ).mean(axis=0)
    effect = toy.concept_effects[0]
    cosine = shift @ effect / (np.linalg.norm(shift) * np.linalg.norm(effect))
    assert cosine > 0.75
    assert 0.75 < np.linalg.norm(shift) / np.linalg.norm(effect) < 1.25


def test_sccbgm_with_half_the_annotations_missing_still_edits(toy) -> None:
    concepts = toy.concepts_train.copy()
    rng = np.random.default_rng(5)
    concepts[rng.random(len(concepts)) < 0.5, 0] = np.nan
    model = create_model("sccbgm", device="cpu", seed=0, progress_bar=False).fit(
        toy.x_train, concepts, concept_kinds=toy.concept_kinds
    )
    assert all(np.isfinite(model.history_.train_loss))
    for parameter in model.module_.parameters():
        assert torch.all(torch.isfinite(parameter))
    prediction = model.counterfactual(toy.x_intervene, toy.concepts_intervene, toy.target_concepts)
    assert np.all(np.isfinite(prediction))
    assert mse(prediction, toy.x_truth) < 0.75 * mse(toy.x_intervene, toy.x_truth)


def test_same_seed_gives_identical_predictions(fitted_models, toy) -> None:
    refit = create_model("sccbgm", device="cpu", seed=0, progress_bar=False).fit(
        toy.x_train, toy.concepts_train, concept_kinds=toy.concept_kinds
    )
    args = (toy.x_intervene, toy.concepts_intervene, toy.target_concepts)
    assert np.array_equal(
        refit.counterfactual(*args), fitted_models["sccbgm"].counterfactual(*args)
    )
    other = create_model("sccbgm", device="cpu", seed=1, progress_bar=False).fit(
        toy.x_train, toy.concepts_train, concept_kinds=toy.concept_kinds
    )
    assert not np.array_equal(other.counterfactual(*args), refit.counterfactual(*args))


def test_flow_decode_is_repeatable_and_modes_share_weights(fitted_models, toy) -> None:
    args = (toy.x_intervene, toy.concepts_intervene, toy.target_concepts)
    decode = fitted_models["sccbgm_fm_decode"]
    assert np.array_equal(decode.counterfactual(*args), decode.counterfactual(*args))
    # the edit and decode models train identically (same preset and seed)
    twin = fitted_models["sccbgm_fm_edit"].with_mode("decode")
    assert twin.name == "sccbgm_fm_decode"
    assert np.array_equal(twin.counterfactual(*args), decode.counterfactual(*args))
    assert np.array_equal(twin.edit(*args), fitted_models["sccbgm_fm_edit"].counterfactual(*args))


@pytest.mark.parametrize("name", BUILT_IN)
def test_checkpoint_round_trip(name: str, fitted_models, toy, tmp_path) -> None:
    model = fitted_models[name]
    path = tmp_path / f"{name}.pt"
    model.save(path)
    loaded = load_model(path, device="cpu")
    assert type(loaded) is type(model)
    assert loaded.config == model.config and loaded.seed == model.seed
    args = (toy.x_intervene, toy.concepts_intervene, toy.target_concepts)
    assert np.array_equal(loaded.counterfactual(*args), model.counterfactual(*args))


def test_save_needs_a_fitted_model(tmp_path) -> None:
    with pytest.raises(SimcellError, match="not fitted"):
        create_model("sccbgm").save(tmp_path / "model.pt")


def test_load_rejects_foreign_files(tmp_path) -> None:
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(SimcellError, match="not a simcell model checkpoint"):
        load_model(tmp_path / "other.pt")


def test_counterfactual_input_checks(fitted_models, toy) -> None:
    model = fitted_models["sccbgm"]
    with pytest.raises(SimcellError, match="dimensions"):
        model.counterfactual(toy.x_intervene[:, :5], toy.concepts_intervene, toy.target_concepts)
    with pytest.raises(SimcellError, match="columns"):
        model.counterfactual(toy.x_intervene, toy.concepts_intervene[:, :2], toy.target_concepts)
    with pytest.raises(SimcellError, match="not fitted"):
        create_model("cvae").counterfactual(
            toy.x_intervene, toy.concepts_intervene, toy.target_concepts
        )


def test_empty_input_gives_empty_output(fitted_models, toy) -> None:
    empty = np.zeros((0, toy.x_intervene.shape[1]), np.float32)
    no_concepts = np.zeros((0, toy.concepts_intervene.shape[1]), np.float32)
    for name in ("sccbgm", "cvae", "vanilla_fm_edit"):
        out = fitted_models[name].counterfactual(empty, no_concepts, no_concepts)
        assert out.shape == empty.shape


def test_sccbgm_concept_head_predicts_the_annotations(fitted_models, toy) -> None:
    unknowns, concepts_hat = fitted_models["sccbgm"].encode_parts(toy.x_train)
    assert concepts_hat.shape == toy.concepts_train.shape
    for k in (0, 1):  # binary concepts: probabilities
        assert np.all((concepts_hat[:, k] >= 0) & (concepts_hat[:, k] <= 1))
        accuracy = np.mean((concepts_hat[:, k] > 0.5) == (toy.concepts_train[:, k] == 1))
        assert accuracy > 0.9
    assert np.corrcoef(concepts_hat[:, 2], toy.concepts_train[:, 2])[0, 1] > 0.9
    assert np.all(unknowns >= 0)  # ReLU head


def test_latent_shift_adds_the_difference_of_mean_latents(fitted_models, toy) -> None:
    model = fitted_models["latent_shift"]
    latent = model.encode(toy.x_train, toy.concepts_train).astype(np.float64)
    on, off = toy.concepts_train[:, 0] == 1, toy.concepts_train[:, 0] == 0
    np.testing.assert_allclose(
        model.latent_slopes_[0], latent[on].mean(axis=0) - latent[off].mean(axis=0), atol=1e-5
    )


@pytest.mark.parametrize("name", ["sccbgm", "cvae", "latent_shift"])
def test_residual_abduction_keeps_the_cell_and_moves_by_the_decoder_change(toy, name) -> None:
    plain = create_model(
        name, device="cpu", seed=0, progress_bar=False, max_epochs=3, residual_abduction=False
    )
    residual = create_model(
        name, device="cpu", seed=0, progress_bar=False, max_epochs=3, residual_abduction=True
    )
    for model in (plain, residual):
        model.fit(toy.x_train, toy.concepts_train, concept_kinds=toy.concept_kinds)
    x, concepts = toy.x_intervene, toy.concepts_intervene
    # no edit: the cell itself comes back (up to float32 rounding)
    np.testing.assert_allclose(residual.counterfactual(x, concepts, concepts), x, atol=1e-5)
    # an edit moves the cell by exactly the decoder's change
    edited = residual.counterfactual(x, concepts, toy.target_concepts)
    moved = plain.counterfactual(x, concepts, toy.target_concepts) - plain.counterfactual(
        x, concepts, concepts
    )
    np.testing.assert_allclose(edited - x, moved, atol=1e-4)
