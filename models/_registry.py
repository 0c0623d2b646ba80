"""The registry of models by name: ``create_model``, ``list_models``, ``load_model``.

The table below is explicit (no registration by import side effect).
:func:`register_model` adds user models that follow the same conventions.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, Literal

import torch

from simcell import SimcellError

from ._common import CHECKPOINT_FORMAT, ModelBase
from ._config import ModelConfig
from ._trainer import load_checkpoint
from .baselines import Additive, Identity, LatentShift, MeanShift
from .causcell import CausCell, CausCellHard, CausCellIND
from .cvae import CVAE
from .external import Biolord, CinemaOT, missing_packages
from .flow_models import (
    CVAEFMDecode,
    CVAEFMEdit,
    SCCBGMFMDecode,
    SCCBGMFMEdit,
    VanillaFMDecode,
    VanillaFMEdit,
)
from .lcd import LCD
from .perturbed_vae import PerturbedVAE, PerturbedVAEMeanAlign, PerturbedVAENoAlign
from .sccbgm import CBGM, SCCBGM
from .scgen import SCGen

__all__ = [
    "DEFAULT_MODELS",
    "PRESET_NAMES",
    "available_models",
    "check_available",
    "create_model",
    "get_model_class",
    "get_preset",
    "list_models",
    "load_model",
    "register_model",
]

PresetName = Literal["fast", "synthetic", "paper"]
PRESET_NAMES: tuple[str, ...] = ("fast", "synthetic", "paper")

_REGISTRY: dict[str, type[ModelBase]] = {
    model.name: model
    for model in (
        Identity,
        MeanShift,
        Additive,
        LatentShift,
        CVAE,
        SCCBGM,
        CBGM,
        VanillaFMEdit,
        VanillaFMDecode,
        SCCBGMFMEdit,
        SCCBGMFMDecode,
        CVAEFMEdit,
        CVAEFMDecode,
        LCD,
        SCGen,
        Biolord,
        CinemaOT,
        CausCell,
        CausCellIND,
        CausCellHard,
        PerturbedVAE,
        PerturbedVAENoAlign,
        PerturbedVAEMeanAlign,
    )
}

DEFAULT_MODELS: tuple[str, ...] = (
    "identity",
    "mean_shift",
    "cvae",
    "cbgm",
    "sccbgm",
    "vanilla_fm_edit",
    "sccbgm_fm_edit",
)
"""Models the harness runs when none are named."""


def list_models() -> tuple[str, ...]:
    """Names of the registered models, in registration order."""
    return tuple(_REGISTRY)


def available_models() -> tuple[str, ...]:
    """Names of the registered models whose packages are installed, in registration order.

    ``biolord`` and ``cinemaot`` need the extra ``simcell[baselines]``; without it
    they are listed by :func:`list_models` but not here.
    """
    return tuple(name for name, model in _REGISTRY.items() if not _missing(model))


def check_available(name: str) -> None:
    """Raise a one-line :class:`SimcellError` naming the extra to install when the
    packages of model ``name`` are missing (an unknown name raises too)."""
    model_class = get_model_class(name)
    missing = _missing(model_class)
    if missing:
        raise SimcellError(
            f"model {name!r} needs the package(s) {', '.join(missing)}: "
            "pip install 'simcell[baselines]'"
        )


def _missing(model_class: type[ModelBase]) -> tuple[str, ...]:
    return missing_packages(getattr(model_class, "requires", ()))


def get_model_class(name: str) -> type[ModelBase]:
    """The class registered under ``name``.

    Raises
    ------
    simcell.SimcellError
        For an unknown name (the message lists the valid ones).
    """
    if name not in _REGISTRY:
        raise SimcellError(f"unknown model {name!r}; valid models: {', '.join(_REGISTRY)}")
    return _REGISTRY[name]


def get_preset(name: str, preset: str = "fast") -> ModelConfig:
    """The preset ``preset`` of model ``name`` (a frozen dataclass; ``.to_dict()``)."""
    model_class = get_model_class(name)
    if preset not in model_class.presets:
        raise SimcellError(
            f"unknown preset {preset!r} for model {name!r}; "
            f"valid presets: {', '.join(sorted(model_class.presets, key=_preset_order))}"
        )
    return model_class.presets[preset]


def _preset_order(preset: str) -> tuple[int, str]:
    return (PRESET_NAMES.index(preset) if preset in PRESET_NAMES else len(PRESET_NAMES), preset)


def create_model(
    name: str,
    *,
    preset: PresetName | str = "fast",
    device: str | torch.device = "auto",
    seed: int = 0,
    progress_bar: bool = True,
    **overrides: Any,
) -> ModelBase:
    """Build an unfitted model by name.

    Parameters
    ----------
    name : str
        One of :func:`list_models`.
    preset : {"fast", "synthetic", "paper"}
        ``paper``: the published hyperparameters (Appendix D.4); ``synthetic``:
        the winner of the paper's sweep on synthetic data (C.7); ``fast``: small
        networks and few epochs, seconds on a CPU.
    device : str or torch.device
        ``"auto"`` (CUDA when present), ``"cpu"``, ``"cuda"``...
    seed : int
        Seed of every random stream of the model.
    progress_bar : bool
        Show training progress bars.
    **overrides
        Preset fields to change, e.g. ``max_epochs=10``; a nested preset (the
        ``backbone`` of a flow model) takes a ``dict`` of its own fields.

    Returns
    -------
    CounterfactualModel

    Raises
    ------
    simcell.SimcellError
        For an unknown model, preset or override key, or an invalid value; the
        message names the valid options.

    Examples
    --------
    >>> model = create_model("sccbgm", preset="fast", seed=1, max_epochs=5)
    >>> model.config.max_epochs
    5
    """
    model_class = get_model_class(name)
    config = get_preset(name, preset)
    if overrides:
        config = config.replace(**overrides)
    return model_class(config, device=device, seed=seed, progress_bar=progress_bar)


def register_model(model_class: type[ModelBase], *, replace: bool = False) -> type[ModelBase]:
    """Add a model class to the registry under ``model_class.name``.

    The class must subclass the built-in model base (``config_class``,
    ``presets`` with the three preset names, ``name``).

    Raises
    ------
    simcell.SimcellError
        If the name is taken (and ``replace`` is false) or presets are missing.
    """
    name = getattr(model_class, "name", None)
    if not isinstance(name, str) or not name:
        raise SimcellError("a registered model class needs a non-empty 'name'")
    if name in _REGISTRY and not replace:
        raise SimcellError(f"model {name!r} is already registered")
    missing = [preset for preset in PRESET_NAMES if preset not in model_class.presets]
    if missing:
        raise SimcellError(f"model {name!r} lacks preset(s) {', '.join(missing)}")
    _REGISTRY[name] = model_class
    return model_class


def load_model(
    path: str | os.PathLike[str],
    *,
    device: str | torch.device = "auto",
    progress_bar: bool = False,
) -> ModelBase:
    """Load a model written by ``model.save(path)``.

    Reads with ``torch.load(..., weights_only=True)``; the preset and seed are
    restored from the file, the weights go to ``device``.

    Raises
    ------
    simcell.SimcellError
        If the file is missing, unreadable, not a simcell model checkpoint or
        damaged (missing keys, weights that do not fit the model); the message
        names the file.
    """
    payload = load_checkpoint(path)
    where = repr(os.fspath(path))
    if payload.get("format") != CHECKPOINT_FORMAT:
        raise SimcellError(f"{where} is not a simcell model checkpoint")
    missing = [key for key in ("model", "config", "seed", "state") if key not in payload]
    if missing:
        raise SimcellError(f"{where}: damaged model checkpoint, no {', '.join(missing)}")
    if not isinstance(payload["model"], str) or not isinstance(payload["config"], Mapping):
        raise SimcellError(f"{where}: damaged model checkpoint (model name or config)")
    try:
        model_class = get_model_class(payload["model"])
        config = model_class.config_class.from_dict(_plain(payload["config"]))
        model = model_class(config, device=device, seed=payload["seed"], progress_bar=progress_bar)
        model._set_state(payload["state"])
    except SimcellError as error:
        raise SimcellError(f"{where}: {error}") from None
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError) as error:
        # a payload that passed the format check but does not fit the model
        reason = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise SimcellError(
            f"{where}: damaged model checkpoint ({type(error).__name__}: {reason})"
        ) from None
    return model


def _plain(values: Mapping[str, Any]) -> dict[str, Any]:
    """Nested mappings as plain dicts (``from_dict`` rebuilds nested configs from dicts)."""
    return {
        key: _plain(value) if isinstance(value, Mapping) else value for key, value in values.items()
    }
