"""External adapters without their packages: one-line errors, availability, global state."""

from __future__ import annotations

import importlib.util
import random

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from simcell import SimcellError, scenarios
from simcell.cli import main
from simcell.models import available_models, create_model, list_models
from simcell.models.external import _package_scope

EXTERNAL = ("biolord", "cinemaot")


@pytest.fixture
def without_extra(monkeypatch):
    """Pretend the packages of simcell[baselines] are not installed."""
    real = importlib.util.find_spec

    def find_spec(name, *args, **kwargs):
        if name.split(".")[0] in {"biolord", "scvi", "cinemaot"}:
            return None
        return real(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)


@pytest.mark.parametrize("name", EXTERNAL)
def test_missing_extra_is_one_line_naming_it(name, without_extra) -> None:
    with pytest.raises(SimcellError) as error:
        create_model(name)
    message = str(error.value)
    assert "\n" not in message
    assert f"model {name!r} needs the package(s)" in message
    assert message.endswith("pip install 'simcell[baselines]'")


def test_unavailable_models_are_listed_but_not_available(without_extra) -> None:
    assert set(EXTERNAL) <= set(list_models())
    available = available_models()
    assert not set(EXTERNAL) & set(available)
    assert available == tuple(n for n in list_models() if n not in EXTERNAL)
    assert "scgen" in available  # our own implementation needs no extra


def test_cli_evaluate_fails_with_one_line_before_any_work(without_extra, tmp_path) -> None:
    from simcell.simulator import simulate, write_bundle

    params = scenarios.load("synthetic2", n_cells=300, n_genes=20, n_tasks=1)
    bundle = tmp_path / "bundle"
    write_bundle(simulate(params, seed=0, scenario="synthetic2"), bundle)
    result = CliRunner().invoke(main, ["evaluate", str(bundle), "--models", "mean_shift,biolord"])
    assert result.exit_code != 0
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    assert "pip install 'simcell[baselines]'" in lines[0]
    assert not (tmp_path / "bundle-evaluation").exists()


def test_package_scope_restores_every_global_random_state() -> None:
    np.random.seed(7)  # noqa: NPY002  (the legacy state is what the scope must protect)
    random.seed(7)
    torch.manual_seed(7)
    expected = (np.random.random(), random.random(), torch.rand(1).item())  # noqa: NPY002
    np.random.seed(7)  # noqa: NPY002
    random.seed(7)
    torch.manual_seed(7)
    with _package_scope(123):
        inside = (np.random.random(), random.random(), torch.rand(1).item())  # noqa: NPY002
    after = (np.random.random(), random.random(), torch.rand(1).item())  # noqa: NPY002
    assert after == expected
    with _package_scope(123):  # seeded: the same draws again
        again = (np.random.random(), random.random(), torch.rand(1).item())  # noqa: NPY002
    assert again == inside
