"""Fixtures for the model tests: a small seeded toy dataset with known counterfactuals.

Cells are ``x = cell-type offset + Σ_k c_k s_k + noise`` in 32 dimensions, with
two binary concepts and one continuous concept, each with a fixed effect
vector ``s_k``. The combination (cell type 0, concept 0 = 1) is never seen in
training: half of the type-0 cells with concept 0 off are held out as
``intervene`` cells, and their true counterfactual under ``do(c_0 := 1)`` is
``x + s_0`` (the same noise, the same everything else).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch

N_CELLS = 1500
N_DIMS = 32
N_TYPES = 3
CONCEPT_KINDS = ("binary", "binary", "continuous")


@dataclass(frozen=True)
class ToyData:
    """Training cells, intervene cells and their true counterfactuals."""

    x_train: np.ndarray
    concepts_train: np.ndarray
    x_intervene: np.ndarray
    concepts_intervene: np.ndarray
    target_concepts: np.ndarray
    x_truth: np.ndarray
    concept_effects: np.ndarray
    concept_kinds: tuple[str, ...] = CONCEPT_KINDS


def make_toy_data(seed: int = 0) -> ToyData:
    """Build the toy dataset (milliseconds)."""
    rng = np.random.default_rng(seed)
    type_offsets = rng.normal(0.0, 2.0, size=(N_TYPES, N_DIMS))
    concept_effects = rng.normal(0.0, 1.5, size=(len(CONCEPT_KINDS), N_DIMS))
    cell_type = rng.integers(0, N_TYPES, size=N_CELLS)
    concepts = np.column_stack(
        [
            rng.random(N_CELLS) < 0.5,
            rng.random(N_CELLS) < 0.5,
            rng.normal(0.0, 1.0, size=N_CELLS),
        ]
    ).astype(np.float64)
    noise = rng.normal(0.0, 0.5, size=(N_CELLS, N_DIMS))
    x = type_offsets[cell_type] + concepts @ concept_effects + noise

    held_out = (cell_type == 0) & (concepts[:, 0] == 1)
    candidates = np.flatnonzero((cell_type == 0) & (concepts[:, 0] == 0))
    intervene = np.zeros(N_CELLS, dtype=bool)
    intervene[rng.permutation(candidates)[: len(candidates) // 2]] = True
    train = ~held_out & ~intervene

    target = concepts[intervene].copy()
    target[:, 0] = 1.0
    x_truth = x[intervene] + concept_effects[0]
    as32 = lambda array: np.ascontiguousarray(array, dtype=np.float32)  # noqa: E731
    return ToyData(
        x_train=as32(x[train]),
        concepts_train=as32(concepts[train]),
        x_intervene=as32(x[intervene]),
        concepts_intervene=as32(concepts[intervene]),
        target_concepts=as32(target),
        x_truth=as32(x_truth),
        concept_effects=as32(concept_effects),
    )


@pytest.fixture(scope="module", autouse=True)
def _one_cpu_thread():
    """Train the tiny test networks on one thread, restoring torch's setting afterwards.

    Intra-op parallelism does not pay for 64-wide layers, and on a busy 2-core
    machine it slows them down by an order of magnitude.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def toy() -> ToyData:
    """The toy dataset with seed 0."""
    return make_toy_data(0)


@pytest.fixture(scope="session")
def fitted_models(toy: ToyData) -> dict:
    """Every built-in model fitted once on the toy data with its ``fast`` preset (CPU)."""
    from simcell.models import create_model, get_model_class, list_models

    return {
        name: create_model(name, preset="fast", device="cpu", seed=0, progress_bar=False).fit(
            toy.x_train, toy.concepts_train, concept_kinds=toy.concept_kinds
        )
        for name in list_models()
        # external adapters: test_external.py; count-space models: the toy x is PCA-like
        if not getattr(get_model_class(name), "requires", ())
        and get_model_class(name).input_space != "counts"
    }


@pytest.fixture
def cuda_device() -> torch.device:
    """The CUDA device; skips the test with a readable reason when there is none."""
    if not torch.cuda.is_available():
        pytest.skip("CUDA is not available (torch.cuda.is_available() is False)")
    return torch.device("cuda")


@pytest.fixture(scope="module")
def perturb_tiny(perturb_tiny_params):
    """(dataset, counts, perturbation labels, train mask) of the tiny perturbation
    process (``perturb_tiny_params``), seed 1."""
    from simcell.simulator.perturb import simulate

    dataset = simulate(perturb_tiny_params, seed=1)
    x = dataset.factual.X.toarray().astype(np.float32)
    u = dataset.cells.perturbations.astype(np.float32)
    train = dataset.tasks[0].split == "train"
    return dataset, x, u, train
