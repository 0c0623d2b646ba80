"""PerturbedVAE's responsive block: sparse / single-target shift embeddings.

With dense learnable shift embeddings E the model is invariant to any rotation
of z_ν (rotate z_ν, E and the decoder's input together), so nothing selects the
responsive axes. Under single-target shifts (each perturbation moves one latent,
one perturbation per latent) a diagonal E, or an L1 penalty that prefers it,
identifies z_ν up to permutation and scaling; with dense true shifts it cannot.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from simcell import SimcellError
from simcell.models import create_model, get_preset
from simcell.models._trainer import build_module
from simcell.models.perturbed_vae import PerturbedVAEModule
from simcell.simulator.perturb import PerturbParams, simulate

TINY = dict(
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


@pytest.fixture(scope="module")
def tiny():
    dataset = simulate(PerturbParams(**TINY), seed=1)
    x = dataset.factual.X.toarray().astype(np.float32)
    u = dataset.cells.perturbations.astype(np.float32)
    train = dataset.tasks[0].split == "train"
    return x, u, train


def _module(x, u, **changes):
    config = get_preset("perturbed_vae", "fast").replace(**changes)
    return build_module(lambda: PerturbedVAEModule(x.shape[1], u.shape[1], config), seed=0)


def test_the_options_default_to_the_papers_dense_embedding():
    for preset in ("paper", "synthetic", "fast"):
        config = get_preset("perturbed_vae", preset)
        assert (config.shift_sparsity, config.shift_embedding) == (0.0, "dense")
    with pytest.raises(SimcellError, match="shift_embedding"):
        get_preset("perturbed_vae", "fast").replace(shift_embedding="sparse")
    with pytest.raises(SimcellError, match="shift_sparsity"):
        get_preset("perturbed_vae", "fast").replace(shift_sparsity=-1.0)


def test_a_diagonal_embedding_needs_one_latent_per_perturbation(tiny):
    x, u, train = tiny
    model = create_model(
        "perturbed_vae",
        device="cpu",
        progress_bar=False,
        shift_embedding="diagonal",
        responsive_dim=2,
    )
    with pytest.raises(SimcellError, match="one responsive latent per perturbation"):
        model.fit(x[train], u[train])


def test_the_l1_penalty_adds_lambda_times_the_absolute_shifts(tiny):
    x, u, _ = tiny
    batch = {"x": torch.as_tensor(x[:64]), "concepts": torch.as_tensor(u[:64])}
    plain, penalised = _module(x, u), _module(x, u, shift_sparsity=0.5)
    penalised.load_state_dict(plain.state_dict())
    with torch.no_grad():
        a = plain.loss(batch, generator=torch.Generator().manual_seed(2))
        b = penalised.loss(batch, generator=torch.Generator().manual_seed(2))
        l1 = plain.embedding.weight.abs().sum()
    assert float(b - a) == pytest.approx(0.5 * float(l1), rel=1e-5)


def test_a_diagonal_embedding_shifts_each_perturbations_own_latent_only(tiny):
    x, u, train = tiny
    model = create_model(
        "perturbed_vae",
        device="cpu",
        seed=0,
        progress_bar=False,
        max_epochs=2,
        shift_embedding="diagonal",
    ).fit(x[train], u[train])
    module = model.module_
    eye = torch.eye(u.shape[1])
    with torch.no_grad():
        effect = module.shift(eye) - module.shift(torch.zeros_like(eye))
    # row p: the exogenous shift of perturbation p, non-zero at latent p only
    assert torch.all(effect[~eye.bool()] == 0)
    assert torch.all(effect.diagonal() != 0)
    # a dense embedding is the paper's nn.Linear, bit for bit
    dense = _module(x, u)
    with torch.no_grad():
        torch.testing.assert_close(dense.shift(eye), dense.embedding(eye), rtol=0, atol=0)
