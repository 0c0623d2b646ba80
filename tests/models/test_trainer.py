"""The shared trainer: devices, seeding, early stopping, checkpoints."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from simcell import SimcellError
from simcell.models import (
    Trainer,
    create_model,
    derive_seed,
    load_checkpoint,
    resolve_device,
    save_checkpoint,
)
from simcell.models._nn import ResidualMLP
from simcell.models._trainer import build_module


def test_resolve_device() -> None:
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(SimcellError, match="unknown device 'gpu0'"):
        resolve_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(SimcellError, match="CUDA is not available"):
            resolve_device("cuda")


def test_derive_seed_is_stable_and_keyed_by_name() -> None:
    assert derive_seed(0, "init") == derive_seed(0, "init")
    assert len({derive_seed(0, "init"), derive_seed(0, "shuffle"), derive_seed(1, "init")}) == 3
    assert 0 <= derive_seed(123, "noise") < 2**63


def test_build_module_is_seeded_and_leaves_global_rng_alone() -> None:
    before = torch.random.get_rng_state()
    a = build_module(lambda: ResidualMLP(5, 8, 2, 0.1, out_dim=3), seed=7)
    b = build_module(lambda: ResidualMLP(5, 8, 2, 0.1, out_dim=3), seed=7)
    c = build_module(lambda: ResidualMLP(5, 8, 2, 0.1, out_dim=3), seed=8)
    assert torch.equal(torch.random.get_rng_state(), before)
    for (name, pa), (_, pb), (_, pc) in zip(
        a.named_parameters(), b.named_parameters(), c.named_parameters(), strict=True
    ):
        assert torch.equal(pa, pb), name
        if name.endswith("linear.weight"):
            assert not torch.equal(pa, pc), name
            bound = 1 / np.sqrt(pa.shape[1])
            assert float(pa.detach().abs().max()) <= bound


def test_same_seed_gives_identical_weights_and_global_rng_is_untouched(toy) -> None:
    torch_state = torch.random.get_rng_state()
    numpy_state = np.random.get_state()[1].copy()  # noqa: NPY002 (the global state is the point)

    def fit(seed: int):
        # dropout > 0 exercises the seeded dropout masks
        return create_model(
            "sccbgm", device="cpu", seed=seed, progress_bar=False, max_epochs=3, dropout=0.2
        ).fit(toy.x_train, toy.concepts_train, concept_kinds=toy.concept_kinds)

    first, second, other = fit(3), fit(3), fit(4)
    for key, value in first.module_.state_dict().items():
        assert torch.equal(value, second.module_.state_dict()[key]), key
    assert not torch.equal(
        first.module_.state_dict()["decoder.output.weight"],
        other.module_.state_dict()["decoder.output.weight"],
    )
    assert first.history_.train_loss == second.history_.train_loss
    assert torch.equal(torch.random.get_rng_state(), torch_state)
    assert np.array_equal(np.random.get_state()[1], numpy_state)  # noqa: NPY002


class _DriftingModule(nn.Module):
    """Training pulls w towards +1; the validation loss measures the distance to -1.

    The validation loss therefore grows every epoch: the best epoch is the first.
    """

    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(1, 1, bias=False)

    def loss(self, batch, *, generator):
        w = self.layer.weight.squeeze()
        target = 1.0 if self.training else -1.0
        return (w - target) ** 2 + 0.0 * batch["x"].sum()


def _drifting() -> _DriftingModule:
    module = build_module(_DriftingModule, seed=0)
    with torch.no_grad():
        module.layer.weight.fill_(-0.5)
    return module


def test_early_stopping_restores_the_best_weights() -> None:
    data = {"x": torch.zeros((40, 1))}
    options = dict(batch_size=8, learning_rate=0.02, seed=0, device="cpu", progress_bar=False)
    module = _drifting()
    trainer = Trainer(max_epochs=50, validation_fraction=0.25, early_stopping_patience=3, **options)
    history = trainer.fit(module, data)
    assert history.stopped_early
    assert history.best_epoch == 0
    assert len(history.validation_loss) == 4
    assert history.validation_loss == sorted(history.validation_loss)

    one_epoch = _drifting()
    Trainer(max_epochs=1, validation_fraction=0.25, **options).fit(one_epoch, data)
    assert torch.equal(module.layer.weight, one_epoch.layer.weight)


def test_max_steps_caps_training_in_whole_epochs() -> None:
    data = {"x": torch.zeros((40, 1))}  # 5 batches of 8 per epoch
    options = dict(batch_size=8, learning_rate=0.02, device="cpu", progress_bar=False)
    # ceil(12 / 5) = 3 epochs: the cap is reached inside the third, which is finished
    capped = Trainer(max_epochs=10, max_steps=12, **options)
    assert capped.n_epochs(40) == 3
    assert len(capped.fit(_drifting(), data).train_loss) == 3
    assert Trainer(max_epochs=10, max_steps=1, **options).n_epochs(40) == 1
    assert Trainer(max_epochs=10, max_steps=10**6, **options).n_epochs(40) == 10
    assert Trainer(max_epochs=10, **options).n_epochs(10**6) == 10


def test_a_cap_that_does_not_bind_changes_no_weight(toy) -> None:
    """CI-sized data train exactly as before: the fast presets' cap binds only on big data."""

    def fit(max_steps):
        return create_model(
            "sccbgm", device="cpu", progress_bar=False, max_epochs=3, max_steps=max_steps
        ).fit(toy.x_train, toy.concepts_train, concept_kinds=toy.concept_kinds)

    free, loose, tight = fit(None), fit(10**6), fit(1)
    for key, value in free.module_.state_dict().items():
        assert torch.equal(value, loose.module_.state_dict()[key]), key
    assert len(free.history_.train_loss) == 3 and len(tight.history_.train_loss) == 1


def test_learning_rate_decays_exponentially() -> None:
    module = _drifting()
    trainer = Trainer(
        max_epochs=1,
        batch_size=40,
        learning_rate=0.1,
        lr_decay=0.5,
        device="cpu",
        progress_bar=False,
    )
    # one full-batch Adam step moves w by the learning rate, whatever the gradient's size
    start = module.layer.weight.detach().item()
    trainer.fit(module, {"x": torch.zeros((40, 1))})
    assert abs(module.layer.weight.detach().item() - start) == pytest.approx(0.1, rel=1e-4)
    trainer = Trainer(
        max_epochs=2,
        batch_size=40,
        learning_rate=0.1,
        lr_decay=0.5,
        device="cpu",
        progress_bar=False,
    )
    module = _drifting()
    start = module.layer.weight.detach().item()
    trainer.fit(module, {"x": torch.zeros((40, 1))})
    # second step at lr 0.05; Adam's first steps move by ~lr each
    assert abs(module.layer.weight.detach().item() - start) == pytest.approx(0.15, rel=1e-2)


def test_non_finite_loss_is_reported() -> None:
    class Exploding(_DriftingModule):
        def loss(self, batch, *, generator):
            return self.layer.weight.sum() * float("inf")

    trainer = Trainer(
        max_epochs=1, batch_size=4, learning_rate=0.1, device="cpu", progress_bar=False
    )
    with pytest.raises(SimcellError, match="non-finite loss at epoch 0"):
        trainer.fit(build_module(Exploding, seed=0), {"x": torch.zeros((8, 1))})


def test_progress_bar_can_be_disabled(capsys, toy) -> None:
    create_model("cvae", device="cpu", progress_bar=False, max_epochs=1).fit(
        toy.x_train, toy.concepts_train, concept_kinds=toy.concept_kinds
    )
    captured = capsys.readouterr()
    assert captured.err == "" and captured.out == ""


class _Payload:
    """An arbitrary Python object: loading it would need unpickling code."""


def test_checkpoint_loads_weights_only(tmp_path) -> None:
    path = tmp_path / "state.pt"
    save_checkpoint(path, {"weights": torch.arange(3.0), "name": "x", "sizes": (1, 2)})
    loaded = load_checkpoint(path)
    assert torch.equal(loaded["weights"], torch.arange(3.0)) and loaded["sizes"] == (1, 2)

    torch.save({"payload": _Payload()}, tmp_path / "unsafe.pt")
    with pytest.raises(Exception, match="[Ww]eights only"):
        load_checkpoint(tmp_path / "unsafe.pt")
