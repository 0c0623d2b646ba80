"""Block identifiability scores (block R², kernel R², MCC, leakage): sanity controls."""

from __future__ import annotations

import numpy as np
import pytest

from simcell import SimcellError
from simcell.evaluation import metrics
from simcell.evaluation.metrics.identifiability import (
    random_split_r2_reference,
    rotation_mcc_reference,
    wrong_block_r2,
)


def _mixed(rng, n=600, d=4):
    true = rng.normal(size=(n, d))
    mixing = rng.normal(size=(d, d)) + 2 * np.eye(d)
    return true, true @ mixing + 0.5


def test_block_r2_is_one_for_true_latents_under_linear_mixing(rng):
    true, learned = _mixed(rng)
    assert metrics.block_r2(learned, true, kind="linear") == pytest.approx(1.0, abs=1e-3)
    assert metrics.block_r2(learned, true, kind="kernel") > 0.97


def test_kernel_r2_sees_a_smooth_nonlinear_map_that_linear_r2_misses(rng):
    true = rng.uniform(-2, 2, size=(600, 2))
    learned = np.column_stack([np.tanh(1.5 * true[:, 0]), np.exp(1.5 * true[:, 1])])
    linear = metrics.block_r2(learned, true, kind="linear")
    kernel = metrics.block_r2(learned, true, kind="kernel")
    assert kernel > 0.9 and kernel > linear + 0.1


def test_block_r2_and_mcc_are_near_zero_for_random_latents(rng):
    true = rng.normal(size=(600, 4))
    random = rng.normal(size=(600, 4))
    assert abs(metrics.block_r2(random, true, kind="linear")) < 0.05
    assert abs(metrics.block_r2(random, true, kind="kernel")) < 0.05
    # the matched |ρ| of independent dims: about sqrt(2 / (π n)) per pair, plus the matching
    assert metrics.latent_mcc(random, true) < 0.12


def test_latent_mcc_is_one_for_permuted_rescaled_dims_and_not_for_a_rotation(rng):
    true = rng.normal(size=(600, 4))
    permuted = true[:, [3, 1, 0, 2]] * np.array([2.0, -1.0, 0.5, -3.0]) + 1.0
    assert metrics.latent_mcc(permuted, true) == pytest.approx(1.0)
    rotation, _ = np.linalg.qr(rng.normal(size=(4, 4)))
    assert metrics.latent_mcc(true @ rotation, true) < 0.9  # linear but not a matching
    assert metrics.block_r2(true @ rotation, true) == pytest.approx(1.0, abs=1e-3)


def test_the_table_scores_recovery_and_leakage_of_every_block(rng):
    z_a, z_b = rng.normal(size=(2, 500, 3))
    blocks = {"invariant": z_a @ rng.normal(size=(3, 3)), "responsive": z_b[:, [2, 0, 1]]}
    targets = {"invariant": "z_invariant", "responsive": "z_responsive"}
    table = metrics.identifiability_table(
        blocks, targets, {"z_invariant": z_a, "z_responsive": z_b}
    ).set_index(["block", "latent"])
    assert table.loc[("invariant", "z_invariant"), "block_r2"] > 0.99
    assert table.loc[("responsive", "z_responsive"), "latent_mcc"] == pytest.approx(1.0)
    assert table.loc[("invariant", "z_responsive"), "role"] == "leakage"
    assert abs(table.loc[("invariant", "z_responsive"), "block_r2"]) < 0.05
    assert np.isnan(table.loc[("responsive", "z_invariant"), "latent_mcc"])
    reference = rotation_mcc_reference(z_b, seed=0)
    assert table.loc[("responsive", "z_responsive"), "mcc_rotation95"] == pytest.approx(
        np.quantile(reference, 0.95)
    )
    assert np.isnan(table.loc[("invariant", "z_responsive"), "mcc_rotation95"])


def test_block_metrics_are_registered_latent_metrics_on_latent_true():
    for name in ("block_r2", "block_r2_kernel", "latent_mcc"):
        metric = metrics.get_metric(name)
        assert metric.level == "latent" and metric.direction == "higher"
        assert metric.inputs == ("embedding", "latent_true")


def test_bad_block_input_is_a_one_line_error(rng):
    with pytest.raises(SimcellError, match="same cells"):
        metrics.block_r2(rng.normal(size=(50, 2)), rng.normal(size=(40, 2)))
    with pytest.raises(SimcellError, match="constant"):
        metrics.block_r2(rng.normal(size=(50, 2)), np.ones((50, 2)))
    with pytest.raises(SimcellError, match="kind"):
        metrics.block_r2(rng.normal(size=(50, 2)), rng.normal(size=(50, 2)), kind="cubic")
    with pytest.raises(SimcellError, match="not among the true latents"):
        metrics.identifiability_table({"a": np.ones((5, 1))}, {"a": "z"}, {"y": np.ones((5, 1))})


def test_a_rotation_scores_inside_the_rotation_reference_and_a_matching_above_it(rng):
    """The reference of a non-identifiable answer: a rotated latent's MCC is a draw
    from it (well above 0 for 4 dims); a permuted, rescaled latent clears its top."""
    true = rng.normal(size=(800, 4)) @ np.array(
        [[1.0, 0.0, 0.0, 0.0], [0.6, 1.0, 0.0, 0.0], [0.0, -0.5, 1.0, 0.0], [0.3, 0.0, 0.7, 1.0]]
    )
    reference = rotation_mcc_reference(true, n_rotations=200, seed=1)
    assert reference.shape == (200,)
    assert 0.5 < np.median(reference) < 0.95 and reference.max() <= 1.0
    np.testing.assert_array_equal(reference, rotation_mcc_reference(true, n_rotations=200, seed=1))
    rotation, _ = np.linalg.qr(np.random.default_rng(7).normal(size=(4, 4)))
    rotated = metrics.latent_mcc(true @ rotation, true)
    assert np.quantile(reference, 0.01) <= rotated <= np.quantile(reference, 0.99)
    assert metrics.latent_mcc(true[:, [2, 0, 3, 1]] * 3.0, true) > np.quantile(reference, 0.95)
    with pytest.raises(SimcellError, match="at least 2 dims"):
        rotation_mcc_reference(true[:, :1])
    with pytest.raises(SimcellError, match="n_rotations"):
        rotation_mcc_reference(true, n_rotations=0)


def test_wrong_block_r2_scores_each_targeted_block_against_the_other_latents(rng):
    z_a, z_b = rng.normal(size=(2, 500, 3))
    blocks = {"invariant": z_a, "responsive": np.column_stack([z_b, z_a[:, :1]]), "free": z_b}
    targets = {"invariant": "z_invariant", "responsive": "z_responsive"}
    leaks = wrong_block_r2(blocks, targets, {"z_invariant": z_a, "z_responsive": z_b})
    assert set(leaks) == {("invariant", "z_responsive"), ("responsive", "z_invariant")}
    assert abs(leaks[("invariant", "z_responsive")]) < 0.05
    # one of the three z_a dims leaked into the responsive block: R² about 1/3
    assert leaks[("responsive", "z_invariant")] == pytest.approx(1 / 3, abs=0.05)


def test_the_harness_emits_wrong_block_and_rotation_rows_per_block(rng):
    from simcell.evaluation.harness import _Labels, _representation_rows
    from simcell.models import Representation

    z_a, z_b = rng.normal(size=(2, 400, 3))

    class Encoder:
        has_representation = True

        def encode(self, x, concepts):
            return Representation(
                {"invariant": z_a, "responsive": z_b[:, ::-1]},
                {"invariant": "z_invariant", "responsive": "z_responsive"},
            )

    rows = _representation_rows(
        "task_0",
        "encoder",
        0,
        Encoder(),
        np.zeros((400, 5)),
        rng.integers(0, 2, size=(400, 2)).astype(float),
        rng.integers(0, 2, size=(400, 2)).astype(float),
        np.zeros(400, dtype=int),
        _Labels(seed=0, scenario="test", data_seed=0),
        {"z_invariant": z_a, "z_responsive": z_b},
    )
    values = {row.metric: row.value for row in rows}
    assert values["block_r2:invariant"] > 0.99 and values["latent_mcc:responsive"] > 0.99
    assert abs(values["wrong_block_r2:invariant:z_responsive"]) < 0.05
    assert abs(values["wrong_block_r2:responsive:z_invariant"]) < 0.05
    reference = rotation_mcc_reference(z_b, seed=0)
    assert values["latent_mcc_rotation95:responsive"] == pytest.approx(np.quantile(reference, 0.95))
    assert values["latent_mcc:responsive"] > values["latent_mcc_rotation95:responsive"]
    split = random_split_r2_reference(z_b, z_a, 3, seed=0)
    assert values["block_r2_random_split95:responsive"] == pytest.approx(np.quantile(split, 0.95))
    assert values["block_r2:responsive"] > values["block_r2_random_split95:responsive"]


def test_a_random_split_of_the_latents_scores_about_its_share_of_them(rng):
    """The block R² of a non-identified block: a random k-dim subspace of d_a + d_b
    independent standard latents recovers about k / (d_a + d_b) of z_a; an identified
    block (z_a itself) clears the distribution's top; a full-width block recovers all."""
    z_a, z_b = rng.normal(size=(600, 3)), rng.normal(size=(600, 3))
    references = {
        width: random_split_r2_reference(z_a, z_b, width, n_rotations=40, seed=2)
        for width in (2, 3, 4)
    }
    for width, reference in references.items():
        assert np.mean(reference) == pytest.approx(width / 6, abs=0.08)
    assert metrics.block_r2(z_a, z_a) > np.quantile(references[3], 0.95) + 0.2
    assert random_split_r2_reference(z_a, z_b, 6, n_rotations=3).min() > 0.99
    with pytest.raises(SimcellError, match="block_dim"):
        random_split_r2_reference(z_a, z_b, 7)
    with pytest.raises(SimcellError, match="same cells"):
        random_split_r2_reference(z_a, z_b[:50], 2)
