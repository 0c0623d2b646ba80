"""Concept losses and edit semantics (eq. 7-8)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from simcell import SimcellError
from simcell.models._concepts import (
    check_fit_inputs,
    concept_condition,
    concept_loss,
    cosine_penalty,
    cross_covariance_penalty,
    edited_mask,
)

BINARY = torch.tensor([True, True, False])


def _annotations(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    predictions = torch.randn((40, 3), generator=generator, dtype=torch.float64)
    concepts = torch.cat(
        [
            (torch.rand((40, 2), generator=generator) < 0.5).double(),
            torch.randn((40, 1), generator=generator, dtype=torch.float64),
        ],
        dim=1,
    )
    missing = torch.rand((40, 3), generator=generator) < 0.4
    return predictions, concepts, missing


def test_concept_loss_equals_the_loss_on_the_observed_subset() -> None:
    predictions, concepts, missing = _annotations()
    with_nan = concepts.masked_fill(missing, float("nan"))
    loss = concept_loss(predictions, with_nan, BINARY)

    observed = ~missing
    per_entry = []
    for k in range(3):
        rows = observed[:, k]
        if BINARY[k]:
            per_entry.append(
                F.binary_cross_entropy_with_logits(
                    predictions[rows, k], concepts[rows, k], reduction="none"
                )
            )
        else:
            per_entry.append((predictions[rows, k] - concepts[rows, k]) ** 2)
    expected = torch.cat(per_entry).mean()
    torch.testing.assert_close(loss, expected, rtol=1e-12, atol=0)


def test_concept_loss_ignores_missing_entries_exactly() -> None:
    predictions, concepts, missing = _annotations(1)
    with_nan = concepts.masked_fill(missing, float("nan"))
    # whatever the value hidden under a missing annotation, the loss is the same
    other = torch.where(missing, 1.0 - concepts, concepts)
    other = other.masked_fill(missing, float("nan"))
    assert torch.equal(
        concept_loss(predictions, with_nan, BINARY), concept_loss(predictions, other, BINARY)
    )


def test_concept_loss_gradient_is_finite_and_zero_where_missing() -> None:
    predictions, concepts, missing = _annotations(2)
    predictions.requires_grad_(True)
    concept_loss(predictions, concepts.masked_fill(missing, float("nan")), BINARY).backward()
    assert torch.all(torch.isfinite(predictions.grad))
    assert torch.all(predictions.grad[missing] == 0)
    assert torch.any(predictions.grad[~missing] != 0)


def test_concept_loss_with_nothing_observed_is_zero() -> None:
    predictions = torch.randn((5, 3), requires_grad=True)
    loss = concept_loss(predictions, torch.full((5, 3), float("nan")), BINARY)
    loss.backward()
    assert float(loss.detach()) == 0.0
    assert torch.all(predictions.grad == 0)


def test_cross_covariance_penalty_matches_numpy() -> None:
    rng = np.random.default_rng(0)
    concepts_hat = rng.normal(size=(50, 3))
    unknowns = rng.normal(size=(50, 5)) + concepts_hat[:, :1]
    full = np.cov(np.hstack([concepts_hat, unknowns]), rowvar=False)
    expected = np.sum(full[:3, 3:] ** 2)
    value = cross_covariance_penalty(torch.as_tensor(concepts_hat), torch.as_tensor(unknowns))
    assert float(value) == pytest.approx(expected, rel=1e-10)
    # independent of shifts, zero for a constant factor
    shifted = cross_covariance_penalty(
        torch.as_tensor(concepts_hat + 3.0), torch.as_tensor(unknowns)
    )
    assert float(shifted) == pytest.approx(expected, rel=1e-10)
    constant = cross_covariance_penalty(
        torch.ones((50, 2), dtype=torch.float64), torch.as_tensor(unknowns)
    )
    assert float(constant) == 0.0


def test_cosine_penalty() -> None:
    a = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    assert float(cosine_penalty(a, a)) == pytest.approx(1.0)
    assert float(cosine_penalty(a, -a)) == pytest.approx(1.0)
    assert float(cosine_penalty(a, a.flip(1))) == pytest.approx(0.0)


def test_edited_mask_semantics() -> None:
    nan = np.nan
    concepts = np.array([[0.0, 1.0, nan, 0.5]])
    target = np.array([[1.0, 1.0, 1.0, nan]])
    # changed -> edited; same -> kept; missing annotation -> edited; NaN target -> kept
    assert edited_mask(concepts, target).tolist() == [[True, False, True, False]]


def test_concept_condition_marks_missing_annotations() -> None:
    condition = concept_condition(torch.tensor([[1.0, float("nan")], [0.0, 0.0]]))
    assert condition.tolist() == [[1.0, 0.0, 1.0, 0.0], [0.0, 0.0, 1.0, 1.0]]


def test_check_fit_inputs_rejects_bad_inputs() -> None:
    x = np.zeros((4, 3), np.float32)
    concepts = np.zeros((4, 2), np.float32)
    with pytest.raises(SimcellError, match="concept_kinds has 1 entries"):
        check_fit_inputs(x, concepts, ("binary",))
    with pytest.raises(SimcellError, match="unknown concept kind"):
        check_fit_inputs(x, concepts, ("binary", "ordinal"))  # type: ignore[arg-type]
    with pytest.raises(SimcellError, match="outside"):
        check_fit_inputs(x, concepts + 2.0, None)
    with pytest.raises(SimcellError, match="rows"):
        check_fit_inputs(x, concepts[:3], None)
    bad = x.copy()
    bad[0, 0] = np.nan
    with pytest.raises(SimcellError, match="NaN"):
        check_fit_inputs(bad, concepts, None)
    _, _, kinds = check_fit_inputs(x, concepts + 2.0, ("continuous", "continuous"))
    assert kinds == ("continuous", "continuous")
