"""kNN accuracy of predictions, concept probes, clusterings and the concept-leakage test."""

from __future__ import annotations

import numpy as np
import pytest

from simcell import SimcellError
from simcell.evaluation import metrics


def separated_clusters(rng, n_per_cluster=40, n_clusters=3, n_dims=5):
    centres = 20.0 * np.eye(n_clusters, n_dims)
    labels = np.repeat(np.arange(n_clusters), n_per_cluster)
    cells = centres[labels] + rng.normal(size=(labels.size, n_dims))
    return cells, labels


def test_knn_accuracy_is_the_fraction_classified_as_the_target(rng):
    reference, reference_labels = separated_clusters(rng)
    pred, pred_labels = separated_clusters(rng, n_per_cluster=10)
    assert metrics.knn_accuracy(pred[pred_labels == 1], reference, reference_labels, 1) == 1.0
    assert metrics.knn_accuracy(pred, reference, reference_labels, 1) == pytest.approx(1 / 3)
    assert metrics.knn_accuracy(pred, reference, reference_labels, 1, k=1) == pytest.approx(1 / 3)
    with pytest.raises(SimcellError, match="k must be an integer in"):
        metrics.knn_accuracy(pred, reference[:5], reference_labels[:5], 0, k=15)
    with pytest.raises(SimcellError, match="does not occur"):
        metrics.knn_accuracy(pred, reference, reference_labels, 7)
    with pytest.raises(SimcellError, match="missing"):
        metrics.knn_accuracy(
            np.zeros((2, 1)), np.zeros((3, 1)), np.array([1.0, np.nan, 0.0]), 1.0, k=1
        )


def test_knn_tied_votes_count_as_a_fair_coin(rng):
    """A cell with as many target as other neighbours counts 1/2, whatever the label order."""
    reference = np.array([[-1.0], [1.0]])
    pred = np.zeros((1, 1))
    for labels in (["a", "b"], ["b", "a"]):
        assert metrics.knn_accuracy(pred, reference, np.array(labels), "a", k=2) == 0.5


def test_knn_accuracy_scores_identity_far_below_the_truth_when_twins_are_not_reference():
    """Paper D.11: classify against observed cells only, never the true twins.

    Source population A and target population B = A shifted by +Δ. The reference
    holds observed cells: source cells labelled A and held-out cells of the
    target law labelled B. A prediction of the true law is classified B (score
    near 1, the ceiling); identity (the source cells themselves) is classified A
    (score near 0).
    """
    rng = np.random.default_rng(4)
    n_dims, shift = 5, np.full(5, 1.5)
    observed_source = rng.normal(size=(200, n_dims))
    heldout_target = rng.normal(size=(200, n_dims)) + shift
    intervene = rng.normal(size=(80, n_dims))
    twins = intervene + shift  # the true counterfactuals of the intervened cells
    reference = np.vstack([observed_source, heldout_target])
    labels = np.array(["A"] * 200 + ["B"] * 200)

    truth_score = metrics.knn_accuracy(twins, reference, labels, "B")
    identity_score = metrics.knn_accuracy(intervene, reference, labels, "B")
    assert truth_score > 0.9
    assert identity_score < 0.1
    # a prediction halfway between the populations scores in between
    halfway = metrics.knn_accuracy(intervene + shift / 2, reference, labels, "B")
    assert identity_score < halfway < truth_score


def test_nmi_and_ari_are_one_on_separated_clusters(rng):
    cells, labels = separated_clusters(rng)
    names = np.array(["B", "T", "NK"])[labels]
    assert metrics.nmi(cells, names, seed=0) == pytest.approx(1.0)
    assert metrics.ari(cells, names, seed=0) == pytest.approx(1.0)
    noise = rng.normal(size=cells.shape)
    assert metrics.ari(noise, labels, seed=0) < 0.2
    with pytest.raises(SimcellError, match="distinct values"):
        metrics.nmi(cells, np.zeros(len(cells)))


def test_concept_accuracy_and_f1(rng):
    n_cells = 400
    concepts = rng.integers(0, 2, size=(n_cells, 2))
    embedding = np.column_stack(
        [4.0 * concepts + rng.normal(scale=0.3, size=concepts.shape), rng.normal(size=n_cells)]
    )
    assert metrics.concept_accuracy(embedding, concepts, seed=1) > 0.97
    assert metrics.concept_f1(embedding, concepts, seed=1) > 0.97
    noise = rng.normal(size=(n_cells, 3))
    assert metrics.concept_accuracy(noise, concepts[:, 0], seed=1) < 0.7
    assert metrics.concept_accuracy(embedding, concepts, seed=1) == metrics.concept_accuracy(
        embedding, concepts, seed=1
    )
    with pytest.raises(SimcellError, match="discrete"):
        metrics.concept_accuracy(embedding, concepts + 0.5)


def test_concept_leakage_separates_clean_and_leaky_edits(rng):
    n_train = 400
    cell_type = rng.integers(0, 2, size=n_train)
    stimulated = rng.integers(0, 2, size=n_train)
    train = np.column_stack([6.0 * cell_type, 6.0 * stimulated]) + rng.normal(size=(n_train, 2))
    test_types = rng.integers(0, 2, size=100)
    before = np.column_stack([6.0 * test_types, np.zeros(100)]) + rng.normal(size=(100, 2))
    clean_edit = before + np.array([0.0, 6.0])
    leaky_edit = clean_edit.copy()
    leaky_edit[:, 0] = 3.0 + 6.0 * (1 - test_types)  # the edit also changes cell identity

    clean = metrics.concept_leakage(train, cell_type, stimulated, before, clean_edit, test_types)
    assert clean.concept_rate_before < 0.05 and clean.concept_rate_after > 0.95
    assert clean.cell_type_accuracy_before > 0.95 and clean.cell_type_accuracy_after > 0.95
    assert list(clean.by_cell_type.index) == [0, 1]
    assert clean.by_cell_type["n_cells"].sum() == 100

    leaky = metrics.concept_leakage(train, cell_type, stimulated, before, leaky_edit, test_types)
    assert leaky.concept_rate_after > 0.95
    assert leaky.cell_type_accuracy_after < 0.1
