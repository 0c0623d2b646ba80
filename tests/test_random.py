"""The named-stream seeding API."""

from __future__ import annotations

import numpy as np
import pytest

from simcell._random import int_seed, stream


def test_a_stream_depends_only_on_its_seed_and_names():
    a = stream(3, "task_0", "oracle").random(5)
    np.testing.assert_array_equal(a, stream(3, "task_0", "oracle").random(5))
    others = [
        stream(4, "task_0", "oracle"),
        stream(3, "task_1", "oracle"),
        stream(3, "oracle", "task_0"),  # order matters
        stream(3, "task_0"),  # a prefix is another stream
        stream(3, "task_0", "oracle", 0),
    ]
    for other in others:
        assert not np.array_equal(a, other.random(5))
    # a string and an integer with the same digits are different keys
    assert stream(0, "1").random() != stream(0, 1).random()


def test_streams_are_independent():
    x, y = stream(0, "a").random(20000), stream(0, "b").random(20000)
    assert abs(np.corrcoef(x, y)[0, 1]) < 4 / np.sqrt(20000)


def test_int_seed_and_bad_keys():
    assert int_seed(0, "pca") == int_seed(0, "pca")
    assert 0 <= int_seed(0, "pca") < 2**31
    assert int_seed(0, "pca") != int_seed(1, "pca")
    with pytest.raises(TypeError):
        stream(0, 1.5)
    with pytest.raises(TypeError):
        stream(-1, "a")
