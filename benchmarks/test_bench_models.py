"""Speed of the ``fast`` model presets (pytest-benchmark).

Run with ``pytest benchmarks/test_bench_models.py --benchmark-enable``. Each
group holds a model and a reference workload measured in the same run (plain
torch: the same number of Adam steps on an MLP of the same width), so the
ratio between them is what to read, not the wall-clock numbers.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from simcell.models import Trainer, create_model

N_CELLS, N_DIMS, N_CONCEPTS = 2000, 128, 4


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    concepts = (rng.random((N_CELLS, N_CONCEPTS)) < 0.5).astype(np.float32)
    effects = rng.normal(size=(N_CONCEPTS, N_DIMS))
    x = concepts @ effects + rng.normal(size=(N_CELLS, N_DIMS))
    return x.astype(np.float32), concepts


def _reference_training(n_steps: int, width: int = 64) -> None:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn((N_CELLS, N_DIMS), generator=generator)
    network = nn.Sequential(nn.Linear(N_DIMS, width), nn.ReLU(), nn.Linear(width, N_DIMS))
    optimizer = torch.optim.Adam(network.parameters(), lr=1e-3)
    for step in range(n_steps):
        batch = x[(step * 128) % N_CELLS :][:128]
        loss = torch.mean((network(batch) - batch) ** 2)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def _steps(model_name: str) -> int:
    """Optimiser steps of the model's fast preset on ``N_CELLS`` cells (``max_steps`` too)."""
    config = create_model(model_name).config
    epochs = Trainer.from_config(config, device="cpu").n_epochs(N_CELLS)
    return epochs * -(-N_CELLS // config.batch_size)


@pytest.mark.parametrize("name", ["sccbgm", "cvae", "vanilla_fm_edit", "lcd"])
def test_bench_fit_fast(benchmark, data, name: str) -> None:
    x, concepts = data
    benchmark.group = f"fit-{name}"
    benchmark.pedantic(
        lambda: create_model(name, device="cpu", progress_bar=False).fit(x, concepts),
        rounds=3,
        iterations=1,
    )


@pytest.mark.parametrize("name", ["sccbgm", "cvae", "vanilla_fm_edit", "lcd"])
def test_bench_reference(benchmark, name: str) -> None:
    benchmark.group = f"fit-{name}"
    n_steps = _steps(name)
    benchmark.pedantic(lambda: _reference_training(n_steps), rounds=3, iterations=1)


def test_bench_flow_edit(benchmark, data) -> None:
    x, concepts = data
    model = create_model("vanilla_fm_edit", device="cpu", progress_bar=False, max_epochs=1)
    model.fit(x, concepts)
    benchmark.group = "flow-edit"
    benchmark(lambda: model.edit(x[:500], concepts[:500], 1 - concepts[:500]))
