"""Identifiability scores of an embedding against the true latents."""

from __future__ import annotations

import numpy as np
import pytest

from simcell import SimcellError
from simcell.evaluation import metrics


def test_mcc_is_one_for_a_permuted_sign_flipped_copy(rng):
    true = rng.normal(size=(200, 5))
    learned = -3.0 * true[:, [2, 0, 4, 1, 3]] * np.array([1, -1, 1, -1, 1]) + 7.0
    assert metrics.mcc(learned, true) == pytest.approx(1.0)
    assert metrics.mcc(rng.normal(size=(200, 5)), true) < 0.3


def test_linear_r2_is_one_for_an_invertible_linear_map(rng):
    true = rng.normal(size=(300, 4))
    mixing = rng.normal(size=(4, 4)) + 3 * np.eye(4)
    learned = true @ mixing + 1.5
    assert metrics.linear_r2(learned, true, seed=0) == pytest.approx(1.0, abs=1e-10)
    assert metrics.linear_r2(rng.normal(size=(300, 4)), true, seed=0) < 0.1


def test_bad_input_raises_one_line_error(rng):
    x, y = rng.normal(size=(2, 20, 4))
    with pytest.raises(SimcellError, match="same cells") as error:
        metrics.mcc(x, y[:-1])
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("name", ["linear_r2", "mcc"])
def test_non_finite_values_raise(rng, name, bad):
    x, y = rng.normal(size=(2, 20, 4))
    y[3, 1] = bad
    with pytest.raises(SimcellError, match="NaN or infinite"):
        metrics.get_metric(name).fn(embedding=x, concepts_true=y)
