"""Shared fixtures: tiny seeded datasets built in well under a second."""

from __future__ import annotations

import pytest

from simcell import scenarios
from simcell.simulator import simulate


@pytest.fixture(scope="session")
def small_params():
    return scenarios.load("synthetic2", n_cells=1500, n_genes=120)


@pytest.fixture(scope="session")
def small_dataset(small_params):
    return simulate(small_params, seed=7, scenario="synthetic2")


@pytest.fixture(scope="session")
def causal_dataset():
    params = scenarios.load("causal", n_cells=1500, n_genes=120)
    return simulate(params, seed=3, scenario="causal")


@pytest.fixture(scope="session")
def perturb_tiny_params():
    """A tiny ``perturb-identifiability`` process: 3 perturbations, one held-out double."""
    from simcell.simulator.perturb import PerturbParams

    return PerturbParams(
        n_genes=30,
        n_perturbations=3,
        d_invariant=3,
        d_responsive=3,
        n_controls=200,
        n_per_single=60,
        n_per_double=30,
        n_doubles=2,
        n_double_tasks=1,
    )


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread():
    """Small tensors: one thread avoids oversubscribing a busy 2-core machine."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
