"""The harness's nearest-population search lets compete only the populations the
ratio metric itself would: rFID leaves out those too small for its bias correction."""

from __future__ import annotations

import numpy as np

from simcell.evaluation import harness
from simcell.evaluation import metrics as m
from simcell.evaluation.metrics.ratios import competing_references

N_DIMS = 8  # rFID's bias correction needs 2 x 8 = 16 cells per population


def _populations():
    rng = np.random.default_rng(0)
    goal = rng.standard_normal((400, N_DIMS))
    tiny = rng.standard_normal((12, N_DIMS))  # the goal's own law, but below 16 cells
    far = rng.standard_normal((400, N_DIMS)) + 1.0  # FID about 8
    near = rng.standard_normal((300, N_DIMS)) + 0.5  # FID about 2
    return goal, [tiny, far, near]


def test_competing_references_follows_the_fid_cell_rule():
    assert competing_references("rfid", [12, 400, 300], N_DIMS) == [1, 2]
    assert competing_references("rfid", [12, 15], N_DIMS) == [0, 1]  # none large: all compete
    assert competing_references("rfid", [12, 400], N_DIMS, estimator="plugin") == [0, 1]
    for name in ("rmmd", "rsd"):
        assert competing_references(name, [12, 400, 300], N_DIMS) == [0, 1, 2]


def test_nearest_skips_a_population_too_small_for_the_fid_correction():
    """The tiny population is drawn from the goal's own law, so every distance
    puts it closest; rFID must not choose it (its corrected FID is unreliable and
    can be negative, which left the ratio undefined at mid size)."""
    goal, refs = _populations()
    rfid = m.get_metric("rfid")
    assert harness._nearest(rfid, refs, goal, {"seed": 0}, "task") == 2
    rmmd = m.get_metric("rmmd")
    bandwidths = tuple(m.median_heuristic_bandwidths(goal, seed=0))
    assert harness._nearest(rmmd, refs, goal, {"seed": 0, "bandwidths": bandwidths}, "task") == 0


def test_harness_denominator_is_the_metrics_own():
    """The ratio scored with the harness's denominator equals rFID called on all
    the populations (which applies the rule itself)."""
    goal, refs = _populations()
    pred = goal + 0.2
    rfid = m.get_metric("rfid")
    index = harness._nearest(rfid, refs, goal, {"seed": 0}, "task")
    denominator = m.rfid(refs[index], goal, [refs[index]], denominator=1.0)
    via_harness = m.rfid(pred, goal, [refs[index]], paired=True, denominator=denominator)
    assert via_harness == m.rfid(pred, goal, refs, paired=True)
    assert 0 < via_harness < 1
