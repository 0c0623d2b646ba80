"""Conditional flow matching: the objective and the ODE solvers, for every flow model.

The probability path is the straight line between noise and data
(rectified flow / conditional OT path; Lipman et al. 2023, Liu et al. 2023)::

    x_t = (1 - t) x_0 + t x_1,   x_0 ~ N(0, I),   x_1 ~ data,   t ~ U(0, 1)
    v*(x_t, t | x_0, x_1) = x_1 - x_0

and the loss is ``E ||v_θ(x_t, t; c) - (x_1 - x_0)||²`` (scCBGM paper §2.5).
The learned field defines the flow ``dφ_t/dt = v_θ(φ_t, t; c)``; integrating
from t = 0 to 1 maps noise to data (*generation*, ``decode``), from 1 to 0 maps a
cell to its noise (*inversion*, the abduction step of ``edit``).

Nothing here knows about networks: a velocity field is any callable
``(x, t, condition) -> velocity`` with shapes ``(n, d), (n,), (n, c) -> (n, d)``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch

from simcell import SimcellError

__all__ = [
    "SOLVERS",
    "SolverName",
    "VelocityField",
    "edit",
    "flow_matching_loss",
    "generate",
    "integrate",
    "inversion_error",
    "invert",
    "sample_probability_path",
]

VelocityField = Callable[[torch.Tensor, torch.Tensor, "torch.Tensor | None"], torch.Tensor]
SolverName = Literal["euler", "midpoint", "rk4"]
_Field = Callable[[torch.Tensor, float], torch.Tensor]


def sample_probability_path(
    x1: torch.Tensor, *, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Draw ``t``, ``x_t`` and the target velocity for data ``x1``.

    Parameters
    ----------
    x1 : Tensor, shape (n, d)
        Data points.
    generator : torch.Generator
        Source of ``x_0 ~ N(0, I)`` and ``t ~ U(0, 1)`` (on the device of ``x1``).

    Returns
    -------
    t : Tensor, shape (n,)
    x_t : Tensor, shape (n, d)
        ``(1 - t) x_0 + t x_1``.
    target : Tensor, shape (n, d)
        ``x_1 - x_0``.
    """
    x0 = torch.randn(x1.shape, generator=generator, device=x1.device, dtype=x1.dtype)
    t = torch.rand((x1.shape[0],), generator=generator, device=x1.device, dtype=x1.dtype)
    x_t = (1.0 - t[:, None]) * x0 + t[:, None] * x1
    return t, x_t, x1 - x0


def flow_matching_loss(
    velocity_field: VelocityField,
    x1: torch.Tensor,
    condition: torch.Tensor | None = None,
    *,
    generator: torch.Generator,
) -> torch.Tensor:
    """Conditional flow-matching loss ``mean ||v(x_t, t; c) - (x_1 - x_0)||² / d``.

    Parameters
    ----------
    velocity_field : callable
        ``(x, t, condition) -> velocity``.
    x1 : Tensor, shape (n, d)
    condition : Tensor, shape (n, c), optional
    generator : torch.Generator

    Returns
    -------
    Tensor
        Scalar: squared error averaged over cells and dimensions.
    """
    t, x_t, target = sample_probability_path(x1, generator=generator)
    return torch.mean((velocity_field(x_t, t, condition) - target) ** 2)


def _euler_step(f: _Field, x: torch.Tensor, t: float, dt: float) -> torch.Tensor:
    return x + dt * f(x, t)


def _midpoint_step(f: _Field, x: torch.Tensor, t: float, dt: float) -> torch.Tensor:
    return x + dt * f(x + 0.5 * dt * f(x, t), t + 0.5 * dt)


def _rk4_step(f: _Field, x: torch.Tensor, t: float, dt: float) -> torch.Tensor:
    k1 = f(x, t)
    k2 = f(x + 0.5 * dt * k1, t + 0.5 * dt)
    k3 = f(x + 0.5 * dt * k2, t + 0.5 * dt)
    k4 = f(x + dt * k3, t + dt)
    return x + dt / 6.0 * (k1 + 2.0 * k2 + 2.0 * k3 + k4)


SOLVERS: dict[str, Callable[[_Field, torch.Tensor, float, float], torch.Tensor]] = {
    "euler": _euler_step,
    "midpoint": _midpoint_step,
    "rk4": _rk4_step,
}
"""Fixed-step solvers by name: one step ``(f, x, t, dt) -> x(t + dt)``.

Local errors O(dt²), O(dt³) and O(dt⁵); global errors O(dt), O(dt²), O(dt⁴).
"""


@torch.no_grad()
def integrate(
    velocity_field: VelocityField,
    x: torch.Tensor,
    condition: torch.Tensor | None = None,
    *,
    t_start: float = 0.0,
    t_end: float = 1.0,
    n_steps: int = 100,
    method: SolverName = "euler",
) -> torch.Tensor:
    """Integrate ``dx/dt = v(x, t; condition)`` from ``t_start`` to ``t_end``.

    ``t_end < t_start`` integrates backwards in time (data -> noise).

    Parameters
    ----------
    velocity_field : callable
        ``(x, t, condition) -> velocity``.
    x : Tensor, shape (n, d)
        State at ``t_start``.
    condition : Tensor, shape (n, c), optional
        Held fixed along the path.
    t_start, t_end : float
    n_steps : int
        Number of equal steps.
    method : {"euler", "midpoint", "rk4"}

    Returns
    -------
    Tensor, shape (n, d)
        State at ``t_end``.
    """
    if method not in SOLVERS:
        raise SimcellError(f"unknown ODE solver {method!r}; valid solvers: {', '.join(SOLVERS)}")
    if n_steps < 1:
        raise SimcellError(f"n_steps must be >= 1, got {n_steps}")
    step = SOLVERS[method]
    n = x.shape[0]

    def field(state: torch.Tensor, t: float) -> torch.Tensor:
        times = torch.full((n,), t, device=state.device, dtype=state.dtype)
        return velocity_field(state, times, condition)

    dt = (t_end - t_start) / n_steps
    for i in range(n_steps):
        x = step(field, x, t_start + i * dt, dt)
    return x


def generate(
    velocity_field: VelocityField,
    noise: torch.Tensor,
    condition: torch.Tensor | None = None,
    *,
    n_steps: int = 100,
    method: SolverName = "euler",
) -> torch.Tensor:
    """Map noise (t = 0) to data (t = 1): ``φ_1(x_0; c)``."""
    return integrate(
        velocity_field, noise, condition, t_start=0.0, t_end=1.0, n_steps=n_steps, method=method
    )


def invert(
    velocity_field: VelocityField,
    x: torch.Tensor,
    condition: torch.Tensor | None = None,
    *,
    n_steps: int = 100,
    method: SolverName = "euler",
) -> torch.Tensor:
    """Map data (t = 1) back to noise (t = 0): ``φ_1^{-1}(x; c)``."""
    return integrate(
        velocity_field, x, condition, t_start=1.0, t_end=0.0, n_steps=n_steps, method=method
    )


def edit(
    velocity_field: VelocityField,
    x: torch.Tensor,
    condition: torch.Tensor | None,
    target_condition: torch.Tensor | None,
    *,
    n_steps: int = 100,
    method: SolverName = "euler",
) -> torch.Tensor:
    """Encode-decode edit (§2.5): ``φ_1(φ_1^{-1}(x; c); c')``.

    Inverting under the original condition abducts the cell's noise; generating
    from it under the edited condition performs action and prediction.
    """
    noise = invert(velocity_field, x, condition, n_steps=n_steps, method=method)
    return generate(velocity_field, noise, target_condition, n_steps=n_steps, method=method)


def inversion_error(
    velocity_field: VelocityField,
    x: torch.Tensor,
    condition: torch.Tensor | None = None,
    *,
    n_steps: int = 100,
    method: SolverName = "euler",
) -> float:
    """Mean squared error between ``x`` and its edit round trip with an unchanged condition.

    An exact ODE solution would return ``x``; the error measures the solver's
    discretisation error along the learned flow, a floor for the ``edit`` mode.

    Returns
    -------
    float
        ``mean((x - φ_1(φ_1^{-1}(x; c); c))²)`` over cells and dimensions.
    """
    roundtrip = edit(velocity_field, x, condition, condition, n_steps=n_steps, method=method)
    return float(torch.mean((roundtrip - x) ** 2))
