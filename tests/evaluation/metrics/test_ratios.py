"""Ratios rMMD, rFID, rSD: a distance over the distance of the closest reference population."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.distance import pdist

from simcell import SimcellError
from simcell.evaluation import metrics


@pytest.fixture
def ratio_populations(rng):
    truth = rng.normal(size=(60, 4))
    pred = rng.normal(size=(40, 4)) + 0.3
    references = [rng.normal(size=(50, 4)) + shift for shift in (1.0, 1.5, 3.0)]
    return pred, truth, references


def test_rmmd_is_the_ratio_to_the_closest_reference(ratio_populations, brute_force_mmd):
    pred, truth, references = ratio_populations
    bandwidths = np.median(pdist(truth)) * np.array([0.5, 1.0, 2.0])
    numerator = brute_force_mmd(pred, truth, bandwidths)
    denominator = min(brute_force_mmd(ref, truth, bandwidths) for ref in references)
    assert metrics.rmmd(
        pred, truth, references, device="cpu", precision="float64"
    ) == pytest.approx(numerator / denominator, rel=1e-9)
    assert metrics.rmmd(pred, truth, references) < 1


def test_paired_applies_to_the_numerator_only(rng, brute_force_mmd):
    truth = rng.normal(size=(50, 4))
    pred = truth + 0.2 * rng.normal(size=truth.shape)
    references = [rng.normal(size=(50, 4)) + 1.0, rng.normal(size=(30, 4)) + 2.0]
    bandwidths = (0.5, 1.0, 2.0)
    numerator = brute_force_mmd(pred, truth, bandwidths, paired=True)
    denominator = min(brute_force_mmd(ref, truth, bandwidths) for ref in references)
    value = metrics.rmmd(
        pred, truth, references, paired=True, bandwidths=bandwidths, precision="float64"
    )
    assert value == pytest.approx(numerator / denominator, rel=1e-9)
    fid_ratio = metrics.rfid(pred, truth, references, paired=True, seed=2)
    fid_expected = metrics.frechet_distance(pred, truth, paired=True, seed=2) / min(
        metrics.frechet_distance(ref, truth, seed=2) for ref in references
    )
    assert fid_ratio == pytest.approx(fid_expected, rel=1e-12)


def test_rfid_of_translated_populations_is_a_ratio_of_squared_shifts(rng):
    truth = rng.normal(size=(80, 3)) @ rng.normal(size=(3, 3))
    pred = truth + np.array([0.5, 0.0, 0.0])
    references = [truth + np.array([0.0, 2.0, 0.0]), truth + np.array([1.0, 0.0, 1.0])]
    assert metrics.rfid(pred, truth, references, estimator="plugin") == pytest.approx(
        0.25 / 2.0, rel=1e-7
    )


def test_rsd_uses_one_epsilon_from_the_truth(ratio_populations):
    pred, truth, references = ratio_populations
    epsilon = 0.5 * np.median(pdist(truth, "sqeuclidean"))
    numerator = metrics.sinkhorn_divergence(pred, truth, epsilon=epsilon)
    denominator = min(
        metrics.sinkhorn_divergence(ref, truth, epsilon=epsilon) for ref in references
    )
    rsd = metrics.rsd(pred, truth, references, epsilon_scale=0.5, device="cpu")
    assert rsd == pytest.approx(numerator / denominator, rel=1e-9)


def test_ratio_is_undefined_when_a_reference_matches_the_truth(ratio_populations):
    pred, truth, references = ratio_populations
    with pytest.raises(SimcellError, match="rmmd is undefined"):
        metrics.rmmd(pred, truth, [*references, truth.copy()])
    with pytest.raises(SimcellError, match="rfid is undefined"):
        metrics.rfid(pred, truth, [truth.copy()], estimator="plugin")
    with pytest.raises(SimcellError, match="at least one population"):
        metrics.rfid(pred, truth, [])
    with pytest.raises(SimcellError, match="sequence of populations"):
        metrics.rmmd(pred, truth, truth)
    with pytest.raises(SimcellError, match="paired=True needs as many"):
        metrics.rsd(pred, truth, references, paired=True)


@pytest.mark.parametrize(
    ("name", "options"),
    [
        ("rmmd", {"bandwidths": (0.5, 1.0, 2.0)}),
        ("rfid", {}),
        ("rsd", {"epsilon": 0.5, "max_iter": 2000, "tol": 1e-9, "device": "cpu"}),
    ],
)
@pytest.mark.parametrize("paired", [False, True])
def test_a_precomputed_denominator_gives_exactly_the_plain_ratio(rng, name, options, paired):
    truth = rng.normal(size=(60, 4))
    pred = truth + 0.3 + 0.2 * rng.normal(size=truth.shape)
    references = [rng.normal(size=(50, 4)) + shift for shift in (1.0, 1.5, 3.0)]
    ratio = metrics.get_metric(name).fn
    plain = ratio(pred, truth, references, paired=paired, **options)
    # the denominator: the ratio with a unit denominator of each reference is its distance
    distances = [ratio(ref, truth, [ref], denominator=1.0, **options) for ref in references]
    assert min(distances) > 0
    given = ratio(pred, truth, references, paired=paired, denominator=min(distances), **options)
    assert given == plain
    # a wrong denominator is really used (the references are not compared again)
    doubled = ratio(
        pred, truth, references, paired=paired, denominator=2 * min(distances), **options
    )
    assert doubled == pytest.approx(plain / 2, rel=1e-15)


@pytest.mark.parametrize("bad", [0.0, -1.0, np.nan])
def test_a_precomputed_denominator_must_be_positive(ratio_populations, bad):
    pred, truth, references = ratio_populations
    with pytest.raises(SimcellError, match="rfid"):
        metrics.rfid(pred, truth, references, denominator=bad)
