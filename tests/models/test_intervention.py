"""The Intervention value and CounterfactualModel.predict."""

from __future__ import annotations

import numpy as np
import pytest

from simcell import SimcellError
from simcell.models import CounterfactualModel, Intervention

DAG = (
    ("concept_0", "concept_1", 1.5),
    ("concept_1", "concept_2", -1.2),
    ("concept_0", "concept_3", 0.8),
)
NAMES = [f"concept_{k}" for k in range(5)]


def test_descendants_follow_the_dag_in_causal_mode_only():
    causal = Intervention(do={"concept_0": 1.0}, mode="causal", dag=DAG)
    assert causal.descendants() == ("concept_1", "concept_3", "concept_2")
    assert Intervention(do={"concept_1": 1.0}, mode="causal", dag=DAG).descendants() == (
        "concept_2",
    )
    assert Intervention(do={"concept_4": 1.0}, mode="causal", dag=DAG).descendants() == ()
    assert Intervention(do={"concept_0": 1.0}, mode="direct", dag=DAG).descendants() == ()
    # a concept that is set is not recomputed, but its own descendants are
    both = Intervention(do={"concept_0": 1.0, "concept_1": 0.0}, mode="causal", dag=DAG)
    assert both.descendants() == ("concept_3", "concept_2")


def test_direct_targets_change_only_do():
    concepts = np.array([[0, 0, 1, np.nan, 0], [1, 1, 0, 0, 1]], dtype=np.float32)
    iv = Intervention(do={"concept_2": 1.0}, mode="causal", dag=DAG)
    out = iv.direct_targets(concepts, NAMES)
    assert out.dtype == np.float32
    expected = concepts.copy()
    expected[:, 2] = 1.0
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_array_equal(concepts[:, 2], [1, 0])  # a copy
    nothing = Intervention(do={})
    np.testing.assert_array_equal(nothing.direct_targets(concepts, NAMES), concepts)


def test_is_a_frozen_hashable_value():
    a = Intervention(do={"concept_0": 1}, mode="causal", dag=DAG)
    b = Intervention(do={"concept_0": 1.0}, mode="causal", dag=[list(e) for e in DAG])
    assert a == b and hash(a) == hash(b)
    assert a != Intervention(do={"concept_0": 1.0}, mode="direct", dag=DAG)
    with pytest.raises(AttributeError):
        a.mode = "direct"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"do": {"concept_0": 1.0}, "mode": "both"}, "mode must be"),
        ({"do": {"concept_0": float("nan")}}, "not finite"),
        ({"do": {"concept_0": "on"}}, "not a number"),
        ({"do": {"a": 1.0}, "dag": (("a", "a", 1.0),)}, "self-loop"),
        ({"do": {"a": 1.0}, "dag": (("a", "b", 1.0), ("b", "a", 1.0))}, "cycle"),
        ({"do": {"a": 1.0}, "dag": (("a", "b"),)}, "edges must be"),
    ],
)
def test_bad_input_is_one_line_error(kwargs, message):
    with pytest.raises(SimcellError, match=message):
        Intervention(**kwargs)


def test_unknown_concept_in_targets_is_one_line_error():
    with pytest.raises(SimcellError, match="unknown concept"):
        Intervention(do={"concept_9": 1.0}).direct_targets(np.zeros((2, 5)), NAMES)
    with pytest.raises(SimcellError, match="do not match"):
        Intervention(do={"concept_0": 1.0}).direct_targets(np.zeros((2, 4)), NAMES)


class _Recorder(CounterfactualModel):
    name = "recorder"

    def fit(self, x, concepts, *, concept_kinds=None):
        return self

    def counterfactual(self, x, concepts, target_concepts):
        self.seen = target_concepts
        return x + target_concepts.sum(axis=1, keepdims=True)


def test_predict_hands_a_dag_blind_model_the_direct_targets():
    model = _Recorder()
    assert model.uses_dag is False
    x = np.zeros((2, 3), dtype=np.float32)
    concepts = np.zeros((2, 5), dtype=np.float32)
    iv = Intervention(do={"concept_0": 1.0}, mode="causal", dag=DAG)
    out = model.predict(x, concepts, iv, NAMES)
    expected = concepts.copy()
    expected[:, 0] = 1.0
    np.testing.assert_array_equal(model.seen, expected)  # descendants left as annotated
    np.testing.assert_array_equal(out, np.ones((2, 3)))
