"""Training time of ``lcd``'s ``fast`` preset on the linear-sde process (pytest-benchmark).

Run with ``pytest benchmarks/test_bench_lcd.py --benchmark-enable``. Group
``lcd-fit``: the fit at d = 20 and d = 50 (gaussian observation, 200 cells per
condition: 3,800 and 9,800 train cells) next to a reference workload measured in
the same run (plain torch: the same number of Adam steps, batch and width, on an
MLP of the same input size), so the ratio is what to read. Group ``lcd-clipr``:
reading the causal matrix (Newton fixed points of every trained single, then
CLIPR) from the fitted model.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from simcell.models import Trainer, create_model
from simcell.simulator import linear_sde as L


def _train_cells(d: int) -> tuple[np.ndarray, np.ndarray]:
    torch.set_num_threads(1)  # tiny networks: one thread (as the test suite)
    params = L.LinearSDEParams(
        n_genes=d, cells_per_condition=200, n_doubles=4, n_heldout_singles=2, observation="gaussian"
    )
    data = L.simulate_linear_sde(params, seed=0)
    train = np.isin(data.condition, np.r_[0, 1 + data.train_singles])
    return data.programs[train].astype(np.float32), data.indicators[train].astype(np.float32)


def _reference_training(n_cells: int, d: int, n_steps: int) -> None:
    """Adam steps on a 2-layer MLP of the fast preset's width and input size."""
    config = create_model("lcd").config
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn((n_cells, d + config.embedding_dim + 1), generator=generator)
    width = config.hidden_dim
    network = nn.Sequential(
        nn.Linear(inputs.shape[1], width),
        nn.SiLU(),
        nn.Linear(width, width),
        nn.SiLU(),
        nn.Linear(width, d),
    )
    optimizer = torch.optim.Adam(network.parameters(), lr=1e-3)
    for step in range(n_steps):
        batch = inputs[(step * config.batch_size) % n_cells :][: config.batch_size]
        loss = torch.mean((network(batch)[:, :d] - batch[:, :d]) ** 2)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


@pytest.mark.parametrize("d", [20, 50])
def test_bench_lcd_fit_fast(benchmark, d: int) -> None:
    x, u = _train_cells(d)
    benchmark.group = f"lcd-fit-d{d}"
    benchmark.pedantic(
        lambda: create_model("lcd", device="cpu", seed=0, progress_bar=False).fit(x, u),
        rounds=2,
        iterations=1,
    )


@pytest.mark.parametrize("d", [20, 50])
def test_bench_lcd_reference(benchmark, d: int) -> None:
    x, _ = _train_cells(d)
    config = create_model("lcd").config
    epochs = Trainer.from_config(config, device="cpu").n_epochs(x.shape[0])
    n_steps = min(epochs * -(-x.shape[0] // config.batch_size), config.max_steps or 10**9)
    benchmark.group = f"lcd-fit-d{d}"
    benchmark.extra_info["steps"] = n_steps
    benchmark.pedantic(lambda: _reference_training(x.shape[0], d, n_steps), rounds=2, iterations=1)


def test_bench_lcd_clipr(benchmark) -> None:
    x, u = _train_cells(50)
    model = create_model("lcd", device="cpu", seed=0, progress_bar=False, max_steps=50).fit(x, u)
    benchmark.group = "lcd-clipr"
    benchmark.pedantic(model.clipr, rounds=2, iterations=1)
