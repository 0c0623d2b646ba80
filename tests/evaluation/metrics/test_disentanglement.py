"""Disentanglement, reconstruction and causal-consistency scores on data with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from simcell import SimcellError
from simcell.evaluation import metrics
from simcell.evaluation.metrics import (
    block_concept_scores,
    causal_consistency,
    concept_agreement,
    concept_f1_weighted,
    reconstruction_scores,
)


def _labelled_cells(rng, n=400, n_dims=6):
    """Cells whose dims 0 and 1 carry two binary concepts plainly; the rest is noise."""
    concepts = rng.integers(0, 2, size=(n, 2))
    cells = rng.normal(size=(n, n_dims))
    cells[:, :2] += 4.0 * concepts
    return cells, concepts


def test_reconstruction_of_the_truth_is_perfect_and_beats_the_shuffled_control(rng):
    truth = rng.normal(size=(50, 20))
    scores = reconstruction_scores(truth, truth, seed=1)
    assert scores.pearson == pytest.approx(1.0)
    assert scores.mse == 0.0
    # the control pairs each cell with another one: never with itself
    assert scores.pearson_shuffled < 0.5
    assert scores.mse_shuffled == pytest.approx(2.0, rel=0.2)  # two independent N(0, 1) rows


def test_reconstruction_closed_form_for_a_shifted_prediction(rng):
    truth = rng.normal(size=(30, 10))
    scores = reconstruction_scores(truth + 0.5, truth)
    assert scores.pearson == pytest.approx(1.0)
    assert scores.mse == pytest.approx(0.25)


def test_reconstruction_of_the_population_mean_matches_its_control(rng):
    """A prediction that ignores the cell scores the same against its twin as against another."""
    truth = rng.normal(size=(2000, 10)) + np.arange(10)
    pred = np.tile(truth.mean(axis=0), (2000, 1))
    scores = reconstruction_scores(pred, truth)
    assert scores.mse == pytest.approx(scores.mse_shuffled, rel=0.05)
    assert scores.pearson == pytest.approx(scores.pearson_shuffled, abs=0.01)


def test_concept_agreement_is_one_for_the_twins_and_drops_for_other_cells(rng):
    cells, concepts = _labelled_cells(rng)
    truth = cells[:100]
    assert concept_agreement(truth, truth, cells, concepts[:, 0]) == 1.0
    flipped = truth.copy()
    flipped[:, 0] = 4.0 * (1 - concepts[:100, 0]) + rng.normal(size=100)
    assert concept_agreement(flipped, truth, cells, concepts[:, 0]) < 0.1


def test_concept_f1_weighted_is_one_on_a_readable_embedding_and_chance_on_noise(rng):
    cells, concepts = _labelled_cells(rng)
    assert concept_f1_weighted(cells[:, :2], concepts) > 0.95
    noise = rng.normal(size=cells.shape)
    assert concept_f1_weighted(noise, concepts) < 0.65


def test_block_scores_read_each_concept_from_its_own_block_only(rng):
    cells, concepts = _labelled_cells(rng)
    blocks = {"concept_0": cells[:, [0]], "concept_1": cells[:, [1]], "unexplained": cells[:, 2:]}
    table = block_concept_scores(blocks, concepts).set_index(["block", "concept"])
    assert table.loc[("concept_0", "concept_0"), "accuracy"] > 0.95
    assert table.loc[("concept_1", "concept_1"), "f1_weighted"] > 0.95
    for block, concept in [("concept_0", "concept_1"), ("unexplained", "concept_0")]:
        row = table.loc[(block, concept)]
        assert row["accuracy"] < row["majority"] + 0.1


def _consistency_data(rng, n_ref=600, n=200):
    """Concept 1 follows concept 0 (a descendant); concept 2 does not; dims read them plainly."""

    def cells_of(concepts):
        out = rng.normal(size=(concepts.shape[0], 5))
        out[:, :3] += 4.0 * concepts
        return out

    c0 = rng.integers(0, 2, size=n_ref)
    ref_concepts = np.column_stack(
        [c0, np.where(rng.random(n_ref) < 0.8, c0, 1 - c0), rng.integers(0, 2, size=n_ref)]
    )
    source_concepts = np.column_stack([np.zeros(n), np.zeros(n), rng.integers(0, 2, size=n)])
    twin_concepts = source_concepts.copy()
    twin_concepts[:, 0] = 1
    twin_concepts[:, 1] = rng.random(n) < 0.8
    return cells_of(ref_concepts), ref_concepts, cells_of(source_concepts), cells_of(twin_concepts)


def test_causal_consistency_of_the_twins_is_exact_and_of_doing_nothing_is_the_true_shift(rng):
    reference, ref_concepts, source, truth = _consistency_data(rng)
    kwargs = dict(concept_names=["c0", "c1", "c2"], intervened=["c0"], descendants=["c1"], seed=0)
    perfect = causal_consistency(reference, ref_concepts, source, truth, truth, **kwargs)
    assert list(perfect.role) == ["intervened", "descendant", "non_descendant"]
    np.testing.assert_array_equal(perfect.shift_error, 0.0)
    np.testing.assert_array_equal(perfect.agreement, 1.0)
    still = causal_consistency(reference, ref_concepts, source, source, truth, **kwargs)
    np.testing.assert_array_equal(still.shift_pred, 0.0)
    np.testing.assert_allclose(still.shift_error, np.abs(still.shift_truth))
    assert still.set_index("concept").loc["c1", "shift_truth"] > 0.6
    assert abs(still.set_index("concept").loc["c2", "shift_truth"]) < 0.05


def test_causal_consistency_rejects_unknown_concepts(rng):
    reference, ref_concepts, source, truth = _consistency_data(rng)
    with pytest.raises(SimcellError, match="unknown concept"):
        causal_consistency(
            reference,
            ref_concepts,
            source,
            truth,
            truth,
            concept_names=["c0", "c1", "c2"],
            intervened=["c9"],
            descendants=[],
        )


def test_the_new_metrics_are_registered_with_their_direction():
    assert metrics.get_metric("concept_f1_weighted").level == "latent"
    agreement = metrics.get_metric("concept_agreement")
    assert (agreement.direction, agreement.level) == ("higher", "classification")
    assert agreement.inputs == ("pred", "truth", "reference", "reference_labels")
