"""Block identifiability scores (block R², kernel R², MCC, leakage): sanity controls."""

from __future__ import annotations

import numpy as np
import pytest

from simcell import SimcellError
from simcell.evaluation import metrics


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
