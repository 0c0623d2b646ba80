"""Loading scenarios from the shipped TOML presets or from a user's file."""

from __future__ import annotations

import tomllib
from importlib import resources
from pathlib import Path
from typing import Any

from simcell import SimcellError
from simcell.simulator.params import SimulationParams, field_names
from simcell.simulator.perturb import PROCESS as PROCESS_PERTURB
from simcell.simulator.perturb import PerturbParams
from simcell.simulator.perturb import field_names as perturb_field_names

_PACKAGE = "simcell.scenarios"
_META_KEYS = ("extends",)


def available() -> list[str]:
    """Names of the shipped scenarios, sorted."""
    return sorted(
        entry.name.removesuffix(".toml")
        for entry in resources.files(_PACKAGE).iterdir()
        if entry.name.endswith(".toml")
    )


def _read_toml(name_or_path: str, seen: tuple[str, ...], base: Path | None) -> tuple[dict, str]:
    path = Path(name_or_path)
    if base is not None and not path.is_absolute() and not path.suffix == "":
        path = base / path
    if name_or_path in available():
        text = resources.files(_PACKAGE).joinpath(f"{name_or_path}.toml").read_text()
        label, origin = name_or_path, None
    elif path.suffix == ".toml" or path.exists():
        if not path.is_file():
            raise SimcellError(f"scenario file not found: {path}")
        text, label, origin = path.read_text(), str(path.resolve()), path.parent
    else:
        raise SimcellError(
            f"unknown scenario {name_or_path!r}; "
            f"choose one of {', '.join(available())} or a .toml file"
        )
    if label in seen:
        raise SimcellError(
            f"scenario {label!r} extends itself (cycle: {' -> '.join(seen + (label,))})"
        )
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise SimcellError(f"scenario {label}: invalid TOML ({error})") from None
    parent = data.pop("extends", None)
    if parent is not None:
        inherited, _ = _read_toml(str(parent), seen + (label,), origin)
        inherited.pop("description", None)
        inherited.update(data)
        data = inherited
    return data, label


def load_with_name(name_or_path: str, **overrides: Any) -> tuple[SimulationParams, str]:
    """Like :func:`load`, also returning the scenario's name (file stem for a file)."""
    data, label = _read_toml(str(name_or_path), (), None)
    data.update(overrides)
    if data.get("process", "concept-latent") == "linear-sde":  # its own parameters
        return _load_linear_sde(data, label, overrides)
    if data.get("process") == PROCESS_PERTURB:  # a second process: its own parameters
        return _load_perturb(data, label, name_or_path)
    unknown = sorted(set(data) - set(field_names()))
    if unknown:
        raise SimcellError(f"scenario {name_or_path}: unknown key(s) {', '.join(unknown)}")
    name = label if label in available() else Path(label).stem
    try:
        return SimulationParams(**data), name
    except (SimcellError, TypeError) as error:  # name where the bad value came from
        text = str(error)
        field = max((k for k in field_names() if text.startswith(k)), key=len, default=None)
        source = "override" if field in overrides else f"scenario {label}"
        raise SimcellError(f"{source}: {text}") from None


def _load_linear_sde(data: dict, label: str, overrides: dict) -> tuple[Any, str]:
    from simcell.simulator import linear_sde

    data.pop("description", None)
    unknown = sorted(set(data) - set(linear_sde.field_names()))
    if unknown:
        raise SimcellError(f"scenario {label}: unknown key(s) {', '.join(unknown)}")
    name = label if label in available() else Path(label).stem
    try:
        return linear_sde.LinearSDEParams(**data), name
    except (SimcellError, TypeError) as error:
        source = "override" if overrides else f"scenario {label}"
        raise SimcellError(f"{source}: {error}") from None


def _load_perturb(data: dict, label: str, name_or_path: str) -> tuple[PerturbParams, str]:
    data = {k: v for k, v in data.items() if k != "description"}
    unknown = sorted(set(data) - set(perturb_field_names()))
    if unknown:
        raise SimcellError(f"scenario {name_or_path}: unknown key(s) {', '.join(unknown)}")
    name = label if label in available() else Path(label).stem
    try:
        return PerturbParams(**data), name
    except (SimcellError, TypeError) as error:
        raise SimcellError(f"scenario {label}: {error}") from None


def load(name_or_path: str, **overrides: Any) -> SimulationParams:
    """Turn a scenario name or TOML file into validated parameters.

    Parameters
    ----------
    name_or_path : str
        A shipped scenario (``synthetic1``, ``synthetic2``, ``synthetic3``,
        ``causal``) or the path of a TOML file.
    **overrides
        Field values that replace the scenario's.

    Returns
    -------
    SimulationParams

    Raises
    ------
    SimcellError
        Unknown scenario, unreadable file, unknown key or invalid value.
    """
    return load_with_name(name_or_path, **overrides)[0]


def describe(name: str) -> str:
    """The one-line description of a shipped scenario."""
    data, _ = _read_toml(name, (), None)
    return str(data.get("description", ""))


def parse_override(text: str) -> tuple[str, Any]:
    """Parse ``key=value`` (the value in TOML syntax, bare words as strings).

    Examples: ``noise_sd=0.05``, ``baseline_range=[1, 10]``, ``intervention_mode=direct``.
    """
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise SimcellError(f"--set expects key=value, got {text!r}")
    from simcell.simulator.linear_sde import field_names as linear_sde_fields

    known = (*field_names(), *linear_sde_fields(), *perturb_field_names())
    if key not in known:
        raise SimcellError(f"--set: unknown parameter {key!r}")
    try:
        parsed = tomllib.loads(f"v = {value.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        parsed = value.strip()
    return key, parsed
