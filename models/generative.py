"""Generative objectives over one network interface: flow matching and DDPM.

A generative objective is a probability path with its training loss and its
sampler; the network is any callable ``network(x, t, condition) -> output`` with
shapes ``(n, d), (n,), (n, ...) -> (n, d)`` and times ``t`` in ``[0, 1]``; the
runner (the shared trainer, a model's ``fit``) owns the optimisation. So a new
generative model picks an objective object and a network and adds no copy of
either (torchcfm's split of path, network and runner).

* :class:`FlowMatching` — the straight conditional path of
  :mod:`simcell.models.flow` (its loss and ODE solvers, unchanged): the network
  predicts the velocity ``x_1 - x_0``.
* :class:`DDPM` — the denoising diffusion model of Ho et al. (2020) with an
  **x₀-predicting** network (CausCell eq. 6)::

      q(x_t | x_0) = N(√ᾱ_t x_0, (1 - ᾱ_t) I),   ᾱ_t = Π_{s ≤ t} (1 - β_s)
      L = E_{x_0, t, ξ} ||x_0 - g_θ(√ᾱ_t x_0 + √(1 - ᾱ_t) ξ, t; c)||²

  with the ``scaled_linear`` schedule ``β_t = (linspace(√β_1, √β_T, T)_t)²`` (what
  the CausCell code calls "linear") or a plain ``linear`` one. Samplers:
  ``ancestral`` (the Gaussian posterior ``q(x_{t-1} | x_t, x̂_0)`` at every one of
  the T steps) and ``ddim`` (the deterministic η = 0 update of Song et al. 2021
  on an evenly spaced subsequence of ``sample_steps`` steps).

The diffusion network sees step ``t ∈ {0, ..., T-1}`` as the time
``(t + 1) / T`` (:meth:`DiffusionSchedule.time`), so one network interface serves
both objectives. With the Bayes-optimal predictor ``E[x_0 | x_t]`` the loss and
the samplers have closed forms (tested on Gaussian and mixture data laws).

References
----------
Ho, Jain & Abbeel (2020), Denoising diffusion probabilistic models.
Song, Meng & Ermon (2021), Denoising diffusion implicit models.
CausCell paper, ``papers/CausCell.txt``, eq. 3-6.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import torch

from simcell import SimcellError

from . import flow
from .flow import SolverName, flow_matching_loss, sample_probability_path

__all__ = [
    "DDPM",
    "DiffusionSchedule",
    "FlowMatching",
    "GenerativeObjective",
    "Network",
    "ScheduleKind",
    "diffusion_schedule",
    "ddpm_loss",
    "ddpm_sample",
    "flow_matching_loss",
    "q_sample",
    "sample_probability_path",
]

Network = Callable[[torch.Tensor, torch.Tensor, Any], torch.Tensor]
"""``(x, t, condition) -> output``: shapes ``(n, d), (n,), (n, ...) -> (n, d)``."""

ScheduleKind = Literal["scaled_linear", "linear"]
SamplerName = Literal["ancestral", "ddim"]
Reduction = Literal["mean", "cell_sum", "sum"]


@dataclass(frozen=True)
class DiffusionSchedule:
    """A variance schedule ``β_1..β_T`` and the products the objective needs.

    Attributes
    ----------
    betas : Tensor, shape (T,), float64
    """

    betas: torch.Tensor

    @property
    def n_steps(self) -> int:
        """T."""
        return int(self.betas.shape[0])

    @property
    def alphas(self) -> torch.Tensor:
        """``α_t = 1 - β_t``, shape (T,)."""
        return 1.0 - self.betas

    @property
    def alpha_bars(self) -> torch.Tensor:
        """``ᾱ_t = Π_{s ≤ t} α_s``, shape (T,)."""
        return torch.cumprod(self.alphas, dim=0)

    def time(self, steps: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The network's time of integer steps: ``(t + 1) / T`` in ``(0, 1]``."""
        return (steps.to(dtype) + 1.0) / self.n_steps


def diffusion_schedule(
    n_steps: int,
    kind: ScheduleKind = "scaled_linear",
    *,
    beta_start: float = 1e-4,
    beta_end: float = 2e-2,
) -> DiffusionSchedule:
    """Build a β schedule.

    Parameters
    ----------
    n_steps : int
        T, the number of diffusion steps.
    kind : {"scaled_linear", "linear"}
        ``scaled_linear``: β linear in √β from ``√beta_start`` to ``√beta_end``
        (the CausCell code); ``linear``: β linear from ``beta_start`` to ``beta_end``.
    beta_start, beta_end : float
        In ``(0, 1)``, ``beta_start <= beta_end``.

    Returns
    -------
    DiffusionSchedule

    Raises
    ------
    simcell.SimcellError
        On ``n_steps < 1``, an unknown kind or betas outside ``(0, 1)``.
    """
    if int(n_steps) < 1:
        raise SimcellError(f"n_steps must be >= 1, got {n_steps}")
    if not 0 < beta_start <= beta_end < 1:
        raise SimcellError(
            f"betas must satisfy 0 < beta_start <= beta_end < 1, got {beta_start}, {beta_end}"
        )
    if kind == "scaled_linear":
        betas = torch.linspace(beta_start**0.5, beta_end**0.5, int(n_steps), dtype=torch.float64)
        betas = betas**2
    elif kind == "linear":
        betas = torch.linspace(beta_start, beta_end, int(n_steps), dtype=torch.float64)
    else:
        raise SimcellError(f"unknown schedule {kind!r}; valid schedules: scaled_linear, linear")
    return DiffusionSchedule(betas)


def q_sample(
    schedule: DiffusionSchedule, x0: torch.Tensor, steps: torch.Tensor, noise: torch.Tensor
) -> torch.Tensor:
    """Noise data to step ``t``: ``√ᾱ_t x_0 + √(1 - ᾱ_t) ξ``.

    Parameters
    ----------
    schedule : DiffusionSchedule
    x0 : Tensor, shape (n, d)
    steps : Tensor of int, shape (n,)
        Steps in ``{0, ..., T-1}``.
    noise : Tensor, shape (n, d)
        ξ.

    Returns
    -------
    Tensor, shape (n, d)
    """
    alpha_bar = schedule.alpha_bars.to(x0.device)[steps].to(x0.dtype)[:, None]
    return alpha_bar.sqrt() * x0 + (1.0 - alpha_bar).sqrt() * noise


def ddpm_loss(
    network: Network,
    x0: torch.Tensor,
    condition: Any = None,
    *,
    schedule: DiffusionSchedule,
    generator: torch.Generator,
    reduction: Reduction = "mean",
) -> torch.Tensor:
    """The x₀-prediction loss ``||x_0 - g(x_t, t; c)||²`` at a uniform random step.

    Parameters
    ----------
    network : callable
        ``(x_t, time, condition) -> x̂_0``.
    x0 : Tensor, shape (n, d)
    condition : optional
        Passed through to ``network``.
    schedule : DiffusionSchedule
    generator : torch.Generator
        Source of the steps and of ξ (on the device of ``x0``).
    reduction : {"mean", "cell_sum", "sum"}
        ``mean`` over cells and dimensions; ``cell_sum``: summed over
        dimensions, averaged over cells (eq. 6 as written); ``sum`` over both
        (the CausCell code).

    Returns
    -------
    Tensor
        Scalar.
    """
    steps = torch.randint(
        0, schedule.n_steps, (x0.shape[0],), generator=generator, device=x0.device
    )
    noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    x_t = q_sample(schedule, x0, steps, noise)
    error = (network(x_t, schedule.time(steps, x0.dtype), condition) - x0) ** 2
    if reduction == "mean":
        return error.mean()
    if reduction == "cell_sum":
        return error.sum(dim=-1).mean()
    if reduction == "sum":
        return error.sum()
    raise SimcellError(f"unknown reduction {reduction!r}; valid: mean, cell_sum, sum")


def _sampling_steps(n_steps: int, sample_steps: int | None) -> list[int]:
    """``sample_steps`` evenly spaced steps from T-1 down to 0 (both included)."""
    if sample_steps is None or sample_steps >= n_steps:
        return list(range(n_steps - 1, -1, -1))
    if sample_steps < 1:
        raise SimcellError(f"sample_steps must be >= 1, got {sample_steps}")
    grid = torch.linspace(0, n_steps - 1, sample_steps, dtype=torch.float64).round().long()
    return sorted(set(grid.tolist()), reverse=True)


@torch.no_grad()
def ddpm_sample(
    network: Network,
    noise: torch.Tensor,
    condition: Any = None,
    *,
    schedule: DiffusionSchedule,
    generator: torch.Generator | None = None,
    sampler: SamplerName = "ancestral",
    sample_steps: int | None = None,
) -> torch.Tensor:
    """Map ``x_T ~ N(0, I)`` to data with an x₀-predicting network.

    ``ancestral``: for t = T-1, ..., 1 draw
    ``x_{t-1} ~ N(c_0 x̂_0 + c_t x_t, β̃_t I)`` with ``c_0 = √ᾱ_{t-1} β_t / (1 - ᾱ_t)``,
    ``c_t = √α_t (1 - ᾱ_{t-1}) / (1 - ᾱ_t)``, ``β̃_t = β_t (1 - ᾱ_{t-1}) / (1 - ᾱ_t)``,
    and return ``x̂_0`` at t = 0. ``ddim`` (η = 0): on steps τ_i, the implied noise
    ``ε̂ = (x - √ᾱ_τ x̂_0) / √(1 - ᾱ_τ)`` and ``x ← √ᾱ_{τ'} x̂_0 + √(1 - ᾱ_{τ'}) ε̂``;
    deterministic given ``noise``.

    Parameters
    ----------
    network : callable
        ``(x_t, time, condition) -> x̂_0``.
    noise : Tensor, shape (n, d)
        x_T.
    condition : optional
    schedule : DiffusionSchedule
    generator : torch.Generator, optional
        Needed by ``ancestral`` (on the device of ``noise``).
    sampler : {"ancestral", "ddim"}
    sample_steps : int, optional
        ``ddim`` only: number of network calls (all T steps when omitted).

    Returns
    -------
    Tensor, shape (n, d)
    """
    if sampler not in ("ancestral", "ddim"):
        raise SimcellError(f"unknown sampler {sampler!r}; valid samplers: ancestral, ddim")
    n, dtype, device = noise.shape[0], noise.dtype, noise.device
    betas = schedule.betas.to(device)
    alpha_bars = schedule.alpha_bars.to(device)
    x = noise

    def predict(state: torch.Tensor, step: int) -> torch.Tensor:
        steps = torch.full((n,), step, dtype=torch.long, device=device)
        return network(state, schedule.time(steps, dtype), condition)

    if sampler == "ancestral":
        if generator is None:
            raise SimcellError("the ancestral sampler needs a generator")
        for step in range(schedule.n_steps - 1, -1, -1):
            x0_hat = predict(x, step)
            if step == 0:
                return x0_hat
            beta, alpha_bar, alpha_bar_prev = betas[step], alpha_bars[step], alpha_bars[step - 1]
            coef_x0 = (alpha_bar_prev.sqrt() * beta / (1.0 - alpha_bar)).to(dtype)
            coef_xt = ((1.0 - beta).sqrt() * (1.0 - alpha_bar_prev) / (1.0 - alpha_bar)).to(dtype)
            variance = (beta * (1.0 - alpha_bar_prev) / (1.0 - alpha_bar)).to(dtype)
            xi = torch.randn(x.shape, generator=generator, device=device, dtype=dtype)
            x = coef_x0 * x0_hat + coef_xt * x + variance.sqrt() * xi
        return x
    steps = _sampling_steps(schedule.n_steps, sample_steps)
    x0_hat = x
    for i, step in enumerate(steps):
        x0_hat = predict(x, step)
        if i == len(steps) - 1:
            break
        alpha_bar, alpha_bar_next = alpha_bars[step].to(dtype), alpha_bars[steps[i + 1]].to(dtype)
        eps_hat = (x - alpha_bar.sqrt() * x0_hat) / (1.0 - alpha_bar).sqrt()
        x = alpha_bar_next.sqrt() * x0_hat + (1.0 - alpha_bar_next).sqrt() * eps_hat
    return x0_hat


class GenerativeObjective(Protocol):
    """What a generative model needs from its objective: a loss and a sampler."""

    def loss(
        self,
        network: Network,
        x: torch.Tensor,
        condition: Any = None,
        *,
        generator: torch.Generator,
    ) -> torch.Tensor:
        """Scalar training loss of data ``x`` (n, d)."""
        ...

    def sample(
        self,
        network: Network,
        noise: torch.Tensor,
        condition: Any = None,
        *,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Map noise (n, d) to data (n, d)."""
        ...


@dataclass(frozen=True)
class FlowMatching:
    """Conditional flow matching (:mod:`simcell.models.flow`) as an objective object.

    Parameters
    ----------
    n_steps : int
        ODE steps of the sampler.
    method : {"euler", "midpoint", "rk4"}
    """

    n_steps: int = 100
    method: SolverName = "euler"

    def loss(
        self,
        network: Network,
        x: torch.Tensor,
        condition: Any = None,
        *,
        generator: torch.Generator,
    ) -> torch.Tensor:
        """:func:`simcell.models.flow.flow_matching_loss`."""
        return flow_matching_loss(network, x, condition, generator=generator)

    def sample(
        self,
        network: Network,
        noise: torch.Tensor,
        condition: Any = None,
        *,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Integrate the learned field from t = 0 (noise) to 1 (data); deterministic."""
        return flow.generate(network, noise, condition, n_steps=self.n_steps, method=self.method)


@dataclass(frozen=True)
class DDPM:
    """DDPM with an x₀-predicting network as an objective object.

    Parameters
    ----------
    n_steps : int
        T.
    schedule : {"scaled_linear", "linear"}
    beta_start, beta_end : float
    sampler : {"ancestral", "ddim"}
    sample_steps : int, optional
        Network calls of the ``ddim`` sampler (T when omitted).
    reduction : {"mean", "cell_sum", "sum"}
        See :func:`ddpm_loss`.
    """

    n_steps: int = 1000
    schedule: ScheduleKind = "scaled_linear"
    beta_start: float = 1e-4
    beta_end: float = 2e-2
    sampler: SamplerName = "ancestral"
    sample_steps: int | None = None
    reduction: Reduction = "mean"

    def __post_init__(self) -> None:
        self.variance_schedule()  # validates
        if self.sampler not in ("ancestral", "ddim"):
            raise SimcellError(f"unknown sampler {self.sampler!r}; valid samplers: ancestral, ddim")

    def variance_schedule(self) -> DiffusionSchedule:
        """The β schedule (built on demand, float64)."""
        return diffusion_schedule(
            self.n_steps, self.schedule, beta_start=self.beta_start, beta_end=self.beta_end
        )

    def loss(
        self,
        network: Network,
        x: torch.Tensor,
        condition: Any = None,
        *,
        generator: torch.Generator,
    ) -> torch.Tensor:
        """:func:`ddpm_loss` with this schedule and reduction."""
        return ddpm_loss(
            network,
            x,
            condition,
            schedule=self.variance_schedule(),
            generator=generator,
            reduction=self.reduction,
        )

    def sample(
        self,
        network: Network,
        noise: torch.Tensor,
        condition: Any = None,
        *,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """:func:`ddpm_sample` with this schedule and sampler."""
        return ddpm_sample(
            network,
            noise,
            condition,
            schedule=self.variance_schedule(),
            generator=generator,
            sampler=self.sampler,
            sample_steps=self.sample_steps,
        )
