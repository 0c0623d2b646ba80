"""Registry, presets and configuration validation."""

from __future__ import annotations

import dataclasses

import pytest

from simcell import SimcellError
from simcell.models import (
    DEFAULT_MODELS,
    PRESET_NAMES,
    CounterfactualModel,
    create_model,
    get_model_class,
    get_preset,
    list_models,
)

EXPECTED_MODELS = {
    "identity",
    "mean_shift",
    "additive",
    "latent_shift",
    "cvae",
    "sccbgm",
    "cbgm",
    "vanilla_fm_edit",
    "vanilla_fm_decode",
    "sccbgm_fm_edit",
    "sccbgm_fm_decode",
    "cvae_fm_edit",
    "cvae_fm_decode",
    "lcd",
    "scgen",
    "causcell",
    "causcell_ind",
    "causcell_hard",
    "perturbed_vae",
    "perturbed_vae_noalign",
    "perturbed_vae_meanalign",
}
EXTERNAL_MODELS = {"biolord", "cinemaot"}  # need simcell[baselines]: test_external*.py


def test_registered_names() -> None:
    assert set(list_models()) == EXPECTED_MODELS | EXTERNAL_MODELS
    assert DEFAULT_MODELS == (
        "identity",
        "mean_shift",
        "cvae",
        "cbgm",
        "sccbgm",
        "vanilla_fm_edit",
        "sccbgm_fm_edit",
    )
    assert set(DEFAULT_MODELS) <= set(list_models())


@pytest.mark.parametrize("name", sorted(EXPECTED_MODELS))
def test_create_every_model_with_every_preset(name: str) -> None:
    for preset in PRESET_NAMES:
        model = create_model(name, preset=preset, progress_bar=False)
        assert isinstance(model, CounterfactualModel)
        assert model.name == name
        assert model.config == get_preset(name, preset)
        assert not model.is_fitted


def test_unknown_model_names_valid_options() -> None:
    with pytest.raises(SimcellError) as error:
        create_model("scbgm")
    message = str(error.value)
    assert "\n" not in message
    assert "'scbgm'" in message
    for name in EXPECTED_MODELS:
        assert name in message


def test_unknown_preset_names_valid_options() -> None:
    with pytest.raises(SimcellError, match=r"unknown preset 'huge'.*fast, synthetic, paper"):
        create_model("sccbgm", preset="huge")


def test_unknown_override_names_valid_options() -> None:
    with pytest.raises(SimcellError) as error:
        create_model("sccbgm", hidden_size=10)
    message = str(error.value)
    assert "\n" not in message
    assert "'hidden_size'" in message
    assert "hidden_dim" in message and "orthogonality_weight" in message


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        ({"decoder": "residual"}, "'skip' | 'direct'"),
        ({"orthogonality": "cos"}, "'cross_covariance' | 'cosine' | 'none'"),
        ({"hidden_dim": 12.5}, "hidden_dim"),
        ({"max_epochs": 0}, "max_epochs"),
        ({"max_steps": 0}, "max_steps"),
        ({"dropout": 1.0}, "dropout"),
        ({"early_stopping_patience": 3}, "validation_fraction"),
    ],
)
def test_invalid_override_values(overrides: dict, fragment: str) -> None:
    with pytest.raises(SimcellError, match=fragment.replace("|", r"\|")):
        create_model("sccbgm", **overrides)


def test_nested_backbone_override() -> None:
    model = create_model("sccbgm_fm_edit", backbone={"max_epochs": 3}, n_steps=5)
    assert model.config.backbone.max_epochs == 3
    assert model.config.n_steps == 5
    assert model.config.backbone.hidden_dim == get_preset("sccbgm", "fast").hidden_dim
    with pytest.raises(SimcellError, match="'width'"):
        create_model("sccbgm_fm_edit", backbone={"width": 3})


def test_unknown_solver() -> None:
    with pytest.raises(SimcellError, match="'euler' | 'midpoint' | 'rk4'"):
        create_model("vanilla_fm_edit", solver="heun")


def test_presets_are_frozen_and_round_trip() -> None:
    for name in list_models():
        model_class = get_model_class(name)
        for preset in PRESET_NAMES:
            config = get_preset(name, preset)
            with pytest.raises(dataclasses.FrozenInstanceError):
                config.max_epochs = 1  # type: ignore[misc]
            assert type(config).from_dict(config.to_dict()) == config
            assert isinstance(config, model_class.config_class)


def test_paper_and_synthetic_presets_match_the_paper() -> None:
    paper = get_preset("sccbgm", "paper")
    assert (paper.n_layers, paper.hidden_dim, paper.latent_dim, paper.n_unknown) == (
        4,
        1024,
        128,
        128,
    )
    assert (paper.beta, paper.concept_weight, paper.orthogonality_weight) == (1e-5, 0.1, 0.5)
    assert (paper.learning_rate, paper.max_epochs, paper.batch_size, paper.lr_decay) == (
        5e-4,
        200,
        128,
        0.997,
    )
    assert (paper.concept_layer, paper.decoder, paper.orthogonality) == (
        "bottleneck",
        "skip",
        "cross_covariance",
    )
    synthetic = get_preset("sccbgm", "synthetic")
    assert (synthetic.n_layers, synthetic.hidden_dim, synthetic.latent_dim) == (2, 128, 64)
    assert synthetic.n_unknown == 128
    assert (synthetic.beta, synthetic.concept_weight, synthetic.orthogonality_weight) == (
        1e-4,
        0.005,
        0.05,
    )
    # the published counterfactual: decode under the edited concepts, decoder
    # trained on the annotations (independent training, appendix B)
    assert (paper.residual_abduction, paper.decoder_concepts) == (False, "annotated")
    cbgm = get_preset("cbgm", "paper")
    assert (cbgm.concept_layer, cbgm.decoder, cbgm.orthogonality) == ("cem", "direct", "cosine")
    flow = get_preset("sccbgm_fm_edit", "paper")
    assert (flow.n_layers, flow.hidden_dim, flow.learning_rate, flow.max_epochs) == (
        4,
        1024,
        3e-4,
        200,
    )
    assert flow.backbone == paper


def test_representation_flags() -> None:
    with_representation = {
        name for name in list_models() if get_model_class(name).has_representation
    }
    assert with_representation == {
        "latent_shift",
        "cvae",
        "sccbgm",
        "cbgm",
        "sccbgm_fm_edit",
        "sccbgm_fm_decode",
        "cvae_fm_edit",
        "cvae_fm_decode",
        "scgen",
        "causcell",
        "causcell_ind",
        "causcell_hard",
        "perturbed_vae",
        "perturbed_vae_noalign",
        "perturbed_vae_meanalign",
    }


def test_seed_must_be_an_integer() -> None:
    with pytest.raises(SimcellError, match="seed"):
        create_model("sccbgm", seed=1.5)  # type: ignore[arg-type]
