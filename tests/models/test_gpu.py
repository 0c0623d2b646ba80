"""Every model on CUDA (skipped, with the reason, where no GPU is present)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from simcell.models import create_model, get_model_class, list_models

# models that need no optional package (the external adapters: test_external.py)
BUILT_IN = tuple(
    n
    for n in list_models()
    if not getattr(get_model_class(n), "requires", ())
    and get_model_class(n).input_space != "counts"  # the toy x is PCA-like
)


@pytest.mark.gpu
@pytest.mark.parametrize("name", BUILT_IN)
def test_model_runs_on_cuda_like_on_cpu(name: str, cuda_device: torch.device, toy) -> None:
    args = (toy.x_intervene, toy.concepts_intervene, toy.target_concepts)
    predictions = {}
    for device in ("cpu", cuda_device):
        model = create_model(name, device=device, seed=0, progress_bar=False).fit(
            toy.x_train, toy.concepts_train, concept_kinds=toy.concept_kinds
        )
        predictions[str(device)] = model.counterfactual(*args)
    cpu, gpu = predictions["cpu"], predictions[str(cuda_device)]
    assert gpu.shape == cpu.shape == toy.x_intervene.shape
    assert np.all(np.isfinite(gpu))
    if name in ("identity", "mean_shift", "additive"):
        np.testing.assert_array_equal(gpu, cpu)


@pytest.mark.gpu
def test_auto_device_picks_cuda(cuda_device: torch.device, toy) -> None:
    model = create_model("sccbgm", device="auto", progress_bar=False, max_epochs=1)
    model.fit(toy.x_train, toy.concepts_train, concept_kinds=toy.concept_kinds)
    assert model.device_.type == "cuda"
    assert next(model.module_.parameters()).is_cuda
