"""The DDPM objective and samplers against closed forms (Gaussian and mixture data laws)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

from simcell import SimcellError
from simcell.models import flow, generative
from simcell.models.generative import DDPM, FlowMatching, ddpm_loss, ddpm_sample

T = 1000  # ᾱ_T ≈ 5e-4: x_T is pure noise, as the sampler assumes
SCHEDULE = generative.diffusion_schedule(T)


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _step(t: torch.Tensor, schedule: generative.DiffusionSchedule) -> torch.Tensor:
    """Recover the integer step from the network's time (t + 1) / T."""
    return torch.round(t * schedule.n_steps).long() - 1


def _mixture_denoiser(weights, means, sds, schedule):
    """The Bayes-optimal x₀ predictor E[x_0 | x_t] of a 1-D Gaussian mixture.

    Given component k, x_t = a x_0 + b ξ is Gaussian with mean a m_k and variance
    a² s_k² + b², and E[x_0 | x_t, k] = m_k + a s_k² (x_t - a m_k) / (a² s_k² + b²).
    """
    w = torch.tensor(weights, dtype=torch.float64)
    m = torch.tensor(means, dtype=torch.float64)
    s2 = torch.tensor(sds, dtype=torch.float64) ** 2

    def denoiser(x_t, t, condition):
        alpha_bar = schedule.alpha_bars[_step(t, schedule)][:, None]
        a, b2 = alpha_bar.sqrt(), 1.0 - alpha_bar
        var = a**2 * s2 + b2
        log_r = torch.log(w) - 0.5 * torch.log(var) - 0.5 * (x_t - a * m) ** 2 / var
        r = torch.softmax(log_r, dim=-1)
        return torch.sum(r * (m + a * s2 * (x_t - a * m) / var), dim=-1, keepdim=True)

    return denoiser


def _mixture_cdf(weights, means, sds):
    return lambda x: sum(
        w * stats.norm.cdf(x, m, s) for w, m, s in zip(weights, means, sds, strict=True)
    )


def test_scaled_linear_schedule_is_linear_in_sqrt_beta():
    schedule = generative.diffusion_schedule(5, beta_start=1e-4, beta_end=2e-2)
    root = schedule.betas.sqrt()
    torch.testing.assert_close(root, torch.linspace(1e-2, 2e-2**0.5, 5, dtype=torch.float64))
    torch.testing.assert_close(schedule.alpha_bars, torch.cumprod(1 - schedule.betas, 0))
    linear = generative.diffusion_schedule(5, "linear")
    torch.testing.assert_close(linear.betas, torch.linspace(1e-4, 2e-2, 5, dtype=torch.float64))


def test_schedule_rejects_bad_options():
    with pytest.raises(SimcellError, match="n_steps"):
        generative.diffusion_schedule(0)
    with pytest.raises(SimcellError, match="beta"):
        generative.diffusion_schedule(10, beta_start=0.5, beta_end=0.1)
    with pytest.raises(SimcellError, match="unknown schedule"):
        generative.diffusion_schedule(10, "cosine")  # type: ignore[arg-type]
    with pytest.raises(SimcellError, match="unknown sampler"):
        DDPM(sampler="euler")  # type: ignore[arg-type]


def test_gaussian_loss_at_the_optimal_predictor_is_the_posterior_variance():
    """x_0 ~ N(μ, σ²): E[x_0|x_t] is linear and the expected loss at step t is
    σ²(1 - ᾱ_t) / (ᾱ_t σ² + 1 - ᾱ_t); averaged over the uniform step it is the loss's minimum."""
    mu, sigma = 1.5, 0.7
    optimal = _mixture_denoiser([1.0], [mu], [sigma], SCHEDULE)
    alpha_bars = SCHEDULE.alpha_bars
    expected = torch.mean(sigma**2 * (1 - alpha_bars) / (alpha_bars * sigma**2 + 1 - alpha_bars))
    x0 = mu + sigma * torch.randn((200_000, 1), generator=_generator(0), dtype=torch.float64)
    loss = ddpm_loss(optimal, x0, schedule=SCHEDULE, generator=_generator(1))
    assert abs(float(loss) - float(expected)) < 0.01 * float(expected) + 2e-3

    # any other predictor does worse: shrink or stretch the optimal one
    for factor in (0.9, 1.1):

        def worse(x_t, t, c, factor=factor):
            return mu + factor * (optimal(x_t, t, c) - mu)

        other = ddpm_loss(worse, x0, schedule=SCHEDULE, generator=_generator(1))
        assert float(other) > float(loss)


def test_loss_reductions_differ_by_the_dimension_and_batch_sizes():
    x0 = torch.randn((8, 3), generator=_generator(0), dtype=torch.float64)

    def zero(x_t, t, c):
        return torch.zeros_like(x_t)

    losses = {
        r: float(ddpm_loss(zero, x0, schedule=SCHEDULE, generator=_generator(2), reduction=r))
        for r in ("mean", "cell_sum", "sum")
    }
    assert losses["mean"] == pytest.approx(float((x0**2).mean()))
    assert losses["cell_sum"] == pytest.approx(3 * losses["mean"])
    assert losses["sum"] == pytest.approx(24 * losses["mean"])


MIXTURE = ([0.3, 0.7], [-2.0, 1.5], [0.4, 0.6])


@pytest.mark.parametrize(("sampler", "sample_steps"), [("ancestral", None), ("ddim", 50)])
def test_samplers_with_the_exact_denoiser_draw_the_mixture(sampler, sample_steps):
    denoiser = _mixture_denoiser(*MIXTURE, SCHEDULE)
    noise = torch.randn((3000, 1), generator=_generator(3), dtype=torch.float64)
    samples = ddpm_sample(
        denoiser,
        noise,
        schedule=SCHEDULE,
        generator=_generator(4),
        sampler=sampler,
        sample_steps=sample_steps,
    )
    result = stats.kstest(samples[:, 0].numpy(), _mixture_cdf(*MIXTURE))
    assert result.pvalue > 0.01


def test_sampler_negative_control_a_moment_matched_gaussian_fails():
    """The same sampler with the denoiser of the mixture's moment-matched Gaussian
    must not pass the KS test: the test can fail for the right reason."""
    w, m, s = (np.asarray(v) for v in MIXTURE)
    mean = float(w @ m)
    sd = float(np.sqrt(w @ (s**2 + m**2) - mean**2))
    wrong = _mixture_denoiser([1.0], [mean], [sd], SCHEDULE)
    noise = torch.randn((3000, 1), generator=_generator(3), dtype=torch.float64)
    samples = ddpm_sample(wrong, noise, schedule=SCHEDULE, generator=_generator(4))
    assert stats.kstest(samples[:, 0].numpy(), _mixture_cdf(*MIXTURE)).pvalue < 1e-6


def test_ddim_is_deterministic_and_ancestral_needs_a_generator():
    denoiser = _mixture_denoiser(*MIXTURE, SCHEDULE)
    noise = torch.randn((10, 1), generator=_generator(0), dtype=torch.float64)
    objective = DDPM(n_steps=T, sampler="ddim", sample_steps=20)
    first = objective.sample(denoiser, noise)
    assert torch.equal(first, objective.sample(denoiser, noise))
    with pytest.raises(SimcellError, match="generator"):
        ddpm_sample(denoiser, noise, schedule=SCHEDULE)


def test_flow_matching_objective_is_the_flow_module():
    """The objective object calls flow.py unchanged (bit for bit)."""

    def field(x, t, c):
        return torch.cos(t)[:, None] * x

    x = torch.randn((16, 3), generator=_generator(0))
    objective = FlowMatching(n_steps=8, method="rk4")
    assert torch.equal(
        objective.loss(field, x, generator=_generator(5)),
        flow.flow_matching_loss(field, x, generator=_generator(5)),
    )
    assert torch.equal(objective.sample(field, x), flow.generate(field, x, n_steps=8, method="rk4"))
