"""The flow-matching objective and the ODE solvers, against closed forms."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from simcell import SimcellError
from simcell.models import flow


def _linear_field(x: torch.Tensor, t: torch.Tensor, condition: torch.Tensor | None) -> torch.Tensor:
    """dx/dt = cos(t) x: x(1) = x(0) exp(sin 1) (time-dependent, so t must be handled right)."""
    return torch.cos(t)[:, None] * x


X0 = torch.tensor([[1.0, -2.0, 0.5]], dtype=torch.float64)
EXACT_X1 = X0 * math.exp(math.sin(1.0))


def _error(method: str, n_steps: int) -> float:
    x1 = flow.integrate(_linear_field, X0, n_steps=n_steps, method=method)
    return float(torch.max(torch.abs(x1 - EXACT_X1)))


def test_solvers_error_ordering() -> None:
    errors = {method: _error(method, 8) for method in ("euler", "midpoint", "rk4")}
    assert errors["euler"] > errors["midpoint"] > errors["rk4"]
    assert errors["rk4"] < 1e-5


@pytest.mark.parametrize(("method", "order"), [("euler", 1), ("midpoint", 2), ("rk4", 4)])
def test_solvers_convergence_order(method: str, order: int) -> None:
    # halving the step divides the global error by about 2**order
    ratio = _error(method, 16) / _error(method, 32)
    assert 2**order * 0.8 < ratio < 2**order * 1.25


def test_backward_integration_recovers_the_start() -> None:
    back = flow.integrate(_linear_field, EXACT_X1, t_start=1.0, t_end=0.0, n_steps=64, method="rk4")
    torch.testing.assert_close(back, X0, atol=1e-9, rtol=0)
    assert torch.allclose(flow.invert(_linear_field, EXACT_X1, n_steps=64, method="rk4"), back)


def test_integrate_rejects_bad_options() -> None:
    with pytest.raises(SimcellError, match="unknown ODE solver 'heun'"):
        flow.integrate(_linear_field, X0, method="heun")  # type: ignore[arg-type]
    with pytest.raises(SimcellError, match="n_steps"):
        flow.integrate(_linear_field, X0, n_steps=0)


def _point_mass_field(mu: torch.Tensor):
    """The exact marginal velocity when the data is the single point ``mu``.

    x_t = (1 - t) x0 + t mu, so the target mu - x0 = (mu - x_t) / (1 - t).
    """

    def field(x: torch.Tensor, t: torch.Tensor, condition: torch.Tensor | None) -> torch.Tensor:
        return (mu - x) / (1.0 - t)[:, None]

    return field


def test_flow_matching_loss_is_zero_for_the_true_field() -> None:
    mu = torch.tensor([3.0, -1.0, 2.0], dtype=torch.float64)
    x1 = mu.repeat(256, 1)
    generator = torch.Generator().manual_seed(0)
    loss = flow.flow_matching_loss(_point_mass_field(mu), x1, generator=generator)
    assert float(loss) < 1e-18
    # and a wrong field (velocity 0) pays E||mu - x0||² / d = (|mu|² + d) / d
    generator = torch.Generator().manual_seed(0)
    zero = flow.flow_matching_loss(lambda x, t, c: torch.zeros_like(x), x1, generator=generator)
    expected = (float(mu @ mu) + 3) / 3
    assert abs(float(zero) - expected) < 0.15 * expected


def test_generation_with_the_true_field_reaches_the_data() -> None:
    mu = torch.tensor([[3.0, -1.0]], dtype=torch.float64)
    noise = torch.randn((5, 2), generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    out = flow.generate(_point_mass_field(mu), noise, n_steps=10, method="euler")
    torch.testing.assert_close(out, mu.expand(5, 2), atol=1e-12, rtol=0)


def test_probability_path_is_seeded_and_linear() -> None:
    x1 = torch.randn((64, 4), generator=torch.Generator().manual_seed(2))
    t_a, xt_a, target_a = flow.sample_probability_path(
        x1, generator=torch.Generator().manual_seed(3)
    )
    t_b, xt_b, target_b = flow.sample_probability_path(
        x1, generator=torch.Generator().manual_seed(3)
    )
    assert torch.equal(t_a, t_b) and torch.equal(xt_a, xt_b) and torch.equal(target_a, target_b)
    assert torch.all((t_a >= 0) & (t_a <= 1))
    x0 = x1 - target_a
    torch.testing.assert_close(xt_a, (1 - t_a[:, None]) * x0 + t_a[:, None] * x1)


def test_edit_roundtrip_of_an_exactly_invertible_field() -> None:
    # a conditional linear field: the round trip under the same condition is the identity
    def field(x: torch.Tensor, t: torch.Tensor, condition: torch.Tensor | None) -> torch.Tensor:
        return condition * x + t[:, None]

    x = torch.randn((10, 3), generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    condition = torch.full((10, 3), 0.7, dtype=torch.float64)
    error = flow.inversion_error(field, x, condition, n_steps=50, method="rk4")
    assert error < 1e-14
    assert flow.inversion_error(field, x, condition, n_steps=50, method="euler") > error


def test_trained_flow_edit_roundtrip_returns_the_cell(fitted_models, toy) -> None:
    model = fitted_models["vanilla_fm_edit"]
    x, concepts = toy.x_intervene, toy.concepts_intervene
    error = model.inversion_error(x, concepts)
    roundtrip = model.edit(x, concepts, concepts)
    assert error == pytest.approx(float(np.mean((roundtrip.astype(np.float64) - x) ** 2)))
    assert error < 1e-3 * float(np.var(x))
    # the same condition through the generic solver gives the same number
    condition = torch.as_tensor(model._condition(x, concepts))
    direct = flow.inversion_error(
        model.velocity_,
        torch.as_tensor(x),
        condition,
        n_steps=model.config.n_steps,
        method=model.config.solver,
    )
    assert direct == pytest.approx(error, rel=1e-4)
