"""scGen: the balanced latent delta (closed form) and the model around it."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from simcell import SimcellError
from simcell.models import create_model, get_preset, load_model
from simcell.models.baselines import concept_slopes
from simcell.models.scgen import balanced_deltas


def _confounded_latents(seed: int = 0):
    """Two cell types with different means; the concept is on in 90% of type A
    and 10% of type B; its true latent effect is ``effect`` in both types."""
    rng = np.random.default_rng(seed)
    n = 400
    types = np.repeat(np.array(["A", "B"]), n // 2)
    on = np.where(types == "A", rng.random(n) < 0.9, rng.random(n) < 0.1)
    type_mean = {"A": np.array([5.0, 0.0, 1.0]), "B": np.array([-5.0, 2.0, 0.0])}
    effect = np.array([1.0, -2.0, 0.5])
    latent = np.stack([type_mean[t] for t in types]) + on[:, None] * effect
    return latent, on.astype(np.float32)[:, None], types, effect


def test_balanced_delta_recovers_the_effect_that_pooling_confounds() -> None:
    latent, concepts, types, effect = _confounded_latents()
    deltas, defined = balanced_deltas(latent, concepts, types)
    # noise-free latents: every per-type mean difference is exactly the effect
    np.testing.assert_allclose(deltas[0], effect, rtol=0, atol=1e-12)
    assert defined.tolist() == [True]
    pooled, _ = concept_slopes(latent, concepts)
    assert np.abs(pooled[0] - effect).max() > 1.0  # the cell types leak into the pooled delta


def test_balanced_delta_closed_form_and_a_set_missing_a_type() -> None:
    latent = np.array([[0.0], [2.0], [10.0], [4.0], [6.0]])
    concepts = np.array([[1.0], [1.0], [1.0], [0.0], [np.nan]])
    types = np.array(["a", "a", "b", "a", "b"])
    deltas, defined = balanced_deltas(latent, concepts, types)
    # on: mean(type a: 1, type b: 10) = 5.5; off: only type a: 4; the NaN cell is left out
    assert deltas[0, 0] == pytest.approx(1.5, abs=1e-12) and defined[0]
    one_group = np.zeros(5, dtype=str)
    pooled, _ = balanced_deltas(latent, concepts, one_group)
    assert pooled[0, 0] == pytest.approx(4.0 - 4.0, abs=1e-12)  # mean(0, 2, 10) - 4
    empty, defined = balanced_deltas(latent, np.zeros((5, 1)), types)
    assert not defined[0] and np.all(empty == 0)


def test_paper_preset_is_the_published_one() -> None:
    paper = get_preset("scgen", "paper")
    assert (paper.hidden_dim, paper.n_layers, paper.latent_dim, paper.dropout) == (800, 2, 100, 0.2)
    assert (paper.kl_weight, paper.learning_rate, paper.batch_size, paper.max_epochs) == (
        5e-5,
        1e-3,
        32,
        100,
    )
    assert paper.residual_abduction is False


@pytest.fixture(scope="module")
def fitted(toy):
    model = create_model("scgen", seed=0, device="cpu", progress_bar=False, max_epochs=3)
    rng = np.random.default_rng(1)
    cell_types = rng.choice(np.array(["t0", "t1", "t2"]), size=len(toy.x_train))
    context = SimpleNamespace(cell_types=cell_types)  # what FitContext carries
    model.fit(toy.x_train, toy.concepts_train, concept_kinds=toy.concept_kinds, context=context)
    return model, cell_types


def test_scgen_delta_is_the_balanced_delta_of_its_latents(fitted, toy) -> None:
    model, cell_types = fitted
    latent = model.encode(toy.x_train, toy.concepts_train)
    deltas, _ = balanced_deltas(latent, toy.concepts_train, cell_types)
    np.testing.assert_allclose(model.deltas_[:2], deltas[:2], rtol=0, atol=1e-6)
    # the continuous concept takes the OLS slope of the latents
    slopes, _ = concept_slopes(latent, toy.concepts_train)
    np.testing.assert_allclose(model.deltas_[2], slopes[2], rtol=0, atol=1e-6)


def test_scgen_counterfactual_is_latent_arithmetic(fitted, toy) -> None:
    model, _ = fitted
    x = toy.x_intervene
    prediction = model.counterfactual(x, toy.concepts_intervene, toy.target_concepts)
    latent = model.encode(x, toy.concepts_intervene)
    expected = (
        x + model._decode(latent + model.deltas_[0].astype(np.float32)) - model._decode(latent)
    )  # fast preset: residual abduction
    np.testing.assert_allclose(prediction, expected, rtol=0, atol=1e-5)
    # no edit: the cell itself
    same = model.counterfactual(x, toy.concepts_intervene, toy.concepts_intervene)
    np.testing.assert_allclose(same, x, rtol=0, atol=1e-5)


def test_scgen_rejects_cell_types_of_the_wrong_length(toy) -> None:
    model = create_model("scgen", device="cpu", progress_bar=False, max_epochs=1)
    with pytest.raises(SimcellError, match="cell_types"):
        model.fit(
            toy.x_train,
            toy.concepts_train,
            concept_kinds=toy.concept_kinds,
            context=SimpleNamespace(cell_types=np.array(["a", "b"])),
        )


def _offset_cells(seed: int = 0):
    """Genes with large, different means (as in log-normalised counts) and a weak
    structure: two cell types along one direction, a binary concept along another,
    unit-scale noise. Returns x (600, 200), the concept, the cell types, the effect."""
    rng = np.random.default_rng(seed)
    n, p = 600, 200
    types = rng.integers(0, 2, n)
    on = rng.random(n) < 0.5
    offset = rng.uniform(1.0, 4.0, p)
    type_direction = rng.normal(0.0, 0.4, p)
    effect = rng.normal(0.0, 0.4, p)
    x = (
        offset
        + np.where(types[:, None] == 1, type_direction, -type_direction)
        + on[:, None] * effect
        + rng.normal(0.0, 0.5, (n, p))
    )
    return x.astype(np.float32), on.astype(np.float32)[:, None], types.astype(str), effect


def test_scgen_fast_preset_does_not_collapse_on_offset_genes() -> None:
    """Regression: with the genes' common offset fed to LayerNorm layers the encoder
    mapped every cell to one point (latent sd 0.015), so the prediction was the
    input (mean shift 0.0003 against an effect of 0.33, correlation 0.19)."""
    x, concept, types, effect = _offset_cells()
    model = create_model("scgen", preset="fast", seed=0, device="cpu", progress_bar=False)
    model.fit(x, concept, concept_kinds=("binary",), context=SimpleNamespace(cell_types=types))
    latent = model.encode(x, concept)
    assert latent.std(axis=0).mean() > 0.3  # not one point
    np.testing.assert_allclose(model.gene_means_, x.mean(axis=0), rtol=0, atol=1e-5)
    off = concept[:, 0] == 0
    prediction = model.counterfactual(x[off], concept[off], np.ones((off.sum(), 1), np.float32))
    shift = (prediction - x[off]).mean(axis=0)
    assert np.corrcoef(shift, effect)[0, 1] > 0.9
    assert 0.5 < np.abs(shift).mean() / np.abs(effect).mean() < 1.5


def test_scgen_checkpoint_keeps_the_gene_means(tmp_path) -> None:
    x, concept, types, _ = _offset_cells()
    model = create_model("scgen", seed=0, device="cpu", progress_bar=False, max_epochs=2)
    model.fit(x, concept, concept_kinds=("binary",), context=SimpleNamespace(cell_types=types))
    target = np.ones_like(concept)
    expected = model.counterfactual(x, concept, target)
    model.save(tmp_path / "scgen.pt")
    loaded = load_model(tmp_path / "scgen.pt")
    np.testing.assert_array_equal(loaded.gene_means_, model.gene_means_)
    np.testing.assert_allclose(loaded.counterfactual(x, concept, target), expected, atol=1e-6)
