"""Speed of CausCell's ``fast`` preset: training, and sampling do() counterfactuals.

Run with ``pytest benchmarks/test_bench_causcell.py --benchmark-enable``. Each
group holds CausCell and a reference measured in the same run (plain torch: an
MLP trained for the same number of Adam steps; for sampling, the same number
of forward passes of that MLP), so the ratio is what to read.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from simcell.models import Intervention, Trainer, create_model, get_preset
from simcell.models.causcell import FitContext

N_CELLS, N_CONCEPTS = 2000, 5
N_GENES = get_preset("causcell", "fast").n_hvg
NAMES = tuple(f"concept_{k}" for k in range(N_CONCEPTS))
DAG = (
    ("concept_0", "concept_1", 1.5),
    ("concept_1", "concept_2", -1.2),
    ("concept_0", "concept_3", 0.8),
)


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    concepts = (rng.random((N_CELLS, N_CONCEPTS)) < 0.5).astype(np.float32)
    effects = rng.normal(size=(N_CONCEPTS, N_GENES))
    x = concepts @ effects + rng.normal(size=(N_CELLS, N_GENES))
    return x.astype(np.float32), concepts


def _reference_network(width: int = 128) -> nn.Module:
    return nn.Sequential(nn.Linear(N_GENES, width), nn.ReLU(), nn.Linear(width, N_GENES))


def _reference_training(n_steps: int) -> None:
    x = torch.randn((N_CELLS, N_GENES), generator=torch.Generator().manual_seed(0))
    network = _reference_network()
    optimizer = torch.optim.Adam(network.parameters(), lr=1e-3)
    for step in range(n_steps):
        batch = x[(step * 128) % N_CELLS :][:128]
        loss = torch.mean((network(batch) - batch) ** 2)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


@torch.no_grad()
def _reference_sampling(n_cells: int, n_calls: int) -> None:
    network = _reference_network()
    x = torch.randn((n_cells, N_GENES), generator=torch.Generator().manual_seed(0))
    for _ in range(n_calls):
        x = network(x)


#: the model the training benchmark fitted, reused by the sampling one (a fit is minutes)
_FITTED: dict[str, Any] = {}


def _fit(x: np.ndarray, concepts: np.ndarray):
    model = create_model("causcell", device="cpu", progress_bar=False)
    return model.fit(x, concepts, context=FitContext(concept_names=NAMES, dag=DAG))


def test_bench_fit_causcell(benchmark, data) -> None:
    benchmark.group = "fit-causcell"
    _FITTED["causcell"] = benchmark.pedantic(lambda: _fit(*data), rounds=1, iterations=1)


def test_bench_fit_reference(benchmark) -> None:
    benchmark.group = "fit-causcell"
    config = get_preset("causcell", "fast")
    n_steps = Trainer.from_config(config, device="cpu").n_epochs(N_CELLS) * -(
        -N_CELLS // config.batch_size
    )
    benchmark.pedantic(lambda: _reference_training(n_steps), rounds=1, iterations=1)


def test_bench_do_causcell(benchmark, data) -> None:
    x, concepts = data
    model = _FITTED.get("causcell") or _fit(x, concepts)
    intervention = Intervention(do={"concept_0": 1.0}, mode="causal", dag=DAG)
    benchmark.group = "sample-causcell"
    benchmark(lambda: model.predict(x[:500], concepts[:500], intervention, NAMES))


def test_bench_do_reference(benchmark) -> None:
    config = get_preset("causcell", "fast")
    # residual abduction decodes twice, each with sample_steps network calls
    n_calls = 2 * (config.sample_steps or config.n_diffusion_steps)
    benchmark.group = "sample-causcell"
    benchmark(lambda: _reference_sampling(500, n_calls))
