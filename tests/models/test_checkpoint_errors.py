"""Loading a bad checkpoint is a one-line SimcellError naming the file, never code execution."""

from __future__ import annotations

import pathlib

import numpy as np
import pytest
import torch

from simcell import SimcellError
from simcell._device import resolve_device
from simcell.models import create_model, load_checkpoint, load_model


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    """A fitted ``cvae`` (weights in its state) saved to disk."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 4)).astype(np.float32)
    concepts = (rng.random((60, 2)) < 0.5).astype(np.float32)
    model = create_model("cvae", device="cpu", progress_bar=False, max_epochs=1)
    model.fit(x, concepts, concept_kinds=("binary", "binary"))
    path = tmp_path_factory.mktemp("checkpoints") / "cvae.pt"
    model.save(path)
    return path


class _TouchOnLoad:
    """Unpickling this object would create the file ``marker`` (a stand-in for any code)."""

    def __init__(self, marker: pathlib.Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


def _check(path, *fragments):
    with pytest.raises(SimcellError) as caught:
        load_model(path, device="cpu")
    message = str(caught.value)
    assert "\n" not in message and str(path) in message
    for fragment in fragments:
        assert fragment in message, message


def test_garbage_and_truncated_files(saved_model, tmp_path):
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x00not a checkpoint" * 10)
    _check(garbage, "not a readable simcell checkpoint")
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(saved_model.read_bytes()[: saved_model.stat().st_size // 2])
    _check(truncated, "not a readable simcell checkpoint")
    with pytest.raises(SimcellError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "absent.pt")


def test_damaged_payloads(saved_model, tmp_path):
    payload = torch.load(saved_model, weights_only=True)
    for key in ("model", "state"):
        damaged = {k: v for k, v in payload.items() if k != key}
        torch.save(damaged, tmp_path / f"no-{key}.pt")
        _check(tmp_path / f"no-{key}.pt", "damaged model checkpoint", key)
    torch.save({**payload, "model": "no_such_model"}, tmp_path / "unknown.pt")
    _check(tmp_path / "unknown.pt", "unknown model")
    torch.save({**payload, "state": {"n_dims": 4}}, tmp_path / "state.pt")
    _check(tmp_path / "state.pt", "damaged model checkpoint")
    # the untouched file still loads
    assert load_model(saved_model, device="cpu").is_fitted


def test_a_crafted_pickle_executes_nothing(tmp_path):
    marker = tmp_path / "executed"
    path = tmp_path / "crafted.pt"
    torch.save({"format": "simcell.models/1", "model": _TouchOnLoad(marker)}, path)
    _check(path, "not a readable simcell checkpoint")
    assert not marker.exists()
    # negative control: an unrestricted load of the same file does run the code
    torch.load(path, weights_only=False)
    assert marker.exists()


def test_one_device_resolver():
    assert resolve_device("cpu") == "cpu"
    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    for bad in ("gpu0", "cuda:x", "", "cpu:0 "):
        with pytest.raises(SimcellError, match="unknown device"):
            resolve_device(bad)
    if not torch.cuda.is_available():
        for request in ("cuda", "cuda:1"):
            with pytest.raises(SimcellError, match="CUDA is not available"):
                resolve_device(request)
        # the models and the simulator use the same resolver
        with pytest.raises(SimcellError, match="CUDA is not available"):
            create_model("cvae", device="cuda").fit(
                np.zeros((4, 2), np.float32), np.zeros((4, 1), np.float32)
            )
