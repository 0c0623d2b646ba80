"""Study files: a TOML grid resolved, and refused when wrong, before any work.

A study file declares a grid and how to summarise it::

    name = "fig3"
    description = "scCBGM vs CBGM under noisy concepts"
    layout = "fig3"            # which paper table / figure the summary reproduces
    metric = "mse"             # the score the summary and the claims use
    space = "genes"

    [grid]
    scenarios = ["synthetic1", "synthetic2"]
    overrides = [{}]           # crossed with the scenarios, e.g. [{n_concepts = 5}, ...]
    scenario_options = {}      # applied to every scenario (sizes)
    data_seeds = [0]
    corruptions = ["none", "missing:1", "missing:3"]
    models = ["sccbgm", "cbgm", "sccbgm{decoder=direct, orthogonality=cosine}"]
    model_seeds = [0, 1]
    presets = ["fast"]
    tasks = 5                  # tasks per bundle (n_tasks), or a list of task names

    [evaluation]               # evaluate()'s settings
    n_components = 128
    oracle_samples = 32
    n_boot = 1000

    [[claims]]                 # "a is lower than b", tested paired across (task, seed)
    text = "scCBGM degrades less than CBGM under missing concepts"
    a = {model = "sccbgm"}
    b = {model = "cbgm"}
    where = {corruption = "missing"}
    measure = "degradation"    # or "value"; margin = 0.02 for "a within 2 % of b"

    [variants.fast.grid]       # a variant replaces keys of [grid] / [evaluation]
    scenario_options = {n_cells = 1500, n_genes = 200}

Each grid point is a :class:`Cell`: its fully resolved configuration (the
scenario's parameters, the model's hyperparameters) is hashed into its key.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from simcell import SimcellError

_PACKAGE = "simcell.study"
Variant = Literal["fast", "full"]
Layout = Literal["fig3", "table_s5", "table_s6", "table_s8", "generic"]
LAYOUTS: tuple[str, ...] = ("fig3", "table_s5", "table_s6", "table_s8", "generic")
_TOP_KEYS = {
    "name",
    "description",
    "layout",
    "metric",
    "space",
    "grid",
    "evaluation",
    "claims",
    "variants",
}
_GRID_KEYS = {
    "scenarios",
    "overrides",
    "scenario_options",
    "data_seeds",
    "corruptions",
    "models",
    "model_seeds",
    "presets",
    "tasks",
}
_EVALUATION_DEFAULTS = {"n_components": 128, "oracle_samples": 32, "n_boot": 1000}
_CLAIM_KEYS = {"text", "a", "b", "where", "measure", "margin"}


def _digest(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------- models


@dataclass(frozen=True)
class ModelSpec:
    """A registered model and the preset fields a study changes.

    Attributes
    ----------
    name : str
        The registered model (``simcell.models.list_models``).
    options : tuple of (str, value)
        Preset fields to replace, sorted by name.
    """

    name: str
    options: tuple[tuple[str, Any], ...] = ()

    @property
    def label(self) -> str:
        """``name`` or ``name{key=value,...}``: the ``model`` column of the results."""
        if not self.options:
            return self.name
        inner = ",".join(f"{key}={_show(value)}" for key, value in self.options)
        return f"{self.name}{{{inner}}}"

    @classmethod
    def parse(cls, value: str | dict) -> ModelSpec:
        """From ``"sccbgm{concept_layer=cem, decoder=direct}"`` or ``{name = ..., ...}``.

        Raises
        ------
        SimcellError
            A malformed text (the message quotes it).
        """
        if isinstance(value, dict):
            options = dict(value)
            name = options.pop("name", None)
            if not isinstance(name, str):
                raise SimcellError(f"a model table needs a 'name', got {value!r}")
            return cls(name.strip(), tuple(sorted(options.items())))
        if not isinstance(value, str):
            raise SimcellError(f"a model is 'NAME' or 'NAME{{key=value,...}}', got {value!r}")
        text = value.strip()
        name, brace, rest = text.partition("{")
        if not brace:
            return cls(name.strip())
        if not rest.endswith("}"):
            raise SimcellError(f"model {value!r}: options must end with '}}'")
        options = {}
        for part in rest[:-1].split(","):
            if not part.strip():
                continue
            key, equals, raw = part.partition("=")
            if not equals or not key.strip():
                raise SimcellError(f"model {value!r}: expected key=value, got {part.strip()!r}")
            options[key.strip()] = _parse_value(raw.strip())
        return cls(name.strip(), tuple(sorted(options.items())))


def _parse_value(text: str) -> Any:
    """A TOML value (``3``, ``0.5``, ``true``, ``"x"``); a bare word is a string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


# ----------------------------------------------------------------------------- cells


@dataclass(frozen=True)
class Cell:
    """One point of a study's grid: one model trained and scored on one bundle.

    Attributes
    ----------
    scenario : str
    overrides : tuple of (str, value)
        Scenario fields changed for this cell (the grid's override, the study's
        ``scenario_options`` and ``n_tasks``), sorted.
    data_seed : int
    corruption : str
        ``"none"`` or ``"KIND:LEVEL"``.
    model : ModelSpec
    model_seed : int
    preset : str
    tasks : tuple of str or None
        A subset of the bundle's tasks (None: all).
    evaluation : tuple of (str, int)
        ``evaluate()``'s settings.
    params : dict
        The scenario's fully resolved parameters.
    model_config : dict
        The model's fully resolved hyperparameters.
    """

    scenario: str
    overrides: tuple[tuple[str, Any], ...]
    data_seed: int
    corruption: str
    model: ModelSpec
    model_seed: int
    preset: str
    tasks: tuple[str, ...] | None
    evaluation: tuple[tuple[str, int], ...]
    params: dict = field(compare=False, repr=False)
    model_config: dict = field(compare=False, repr=False)

    def config(self) -> dict:
        """The fully resolved configuration (what the key hashes)."""
        return {
            "scenario": self.scenario,
            "scenario_params": self.params,
            "data_seed": self.data_seed,
            "corruption": self.corruption,
            "model": self.model.name,
            "model_options": dict(self.model.options),
            "model_config": self.model_config,
            "model_seed": self.model_seed,
            "preset": self.preset,
            "tasks": None if self.tasks is None else list(self.tasks),
            "evaluation": dict(self.evaluation),
        }

    @property
    def key(self) -> str:
        """Hash of :meth:`config` (16 hex digits)."""
        return _digest(self.config())

    @property
    def bundle_key(self) -> str:
        """Hash of what the bundle depends on: scenario, its parameters, data seed."""
        return _digest(
            {"scenario": self.scenario, "params": self.params, "data_seed": self.data_seed}
        )

    def labels(self) -> dict:
        """The study's columns of this cell's rows in the results table."""
        return {
            "cell": self.key,
            "model": self.model.label,
            "base_model": self.model.name,
            "options": json.dumps(dict(self.model.options), sort_keys=True),
            "overrides": json.dumps(dict(self.overrides), sort_keys=True),
            "preset": self.preset,
        }


# ----------------------------------------------------------------------------- claims


@dataclass(frozen=True)
class Claim:
    """A statement "``a`` scores lower than ``b``" tested paired across (task, seed).

    Attributes
    ----------
    text : str
    a, b : tuple of (str, value)
        Filters on the results' columns (``model``, ``corruption``, ``level``,
        ``scenario``), the scenario's overrides (``n_concepts``) or the model's
        hyperparameters (``concept_layer``).
    where : tuple of (str, value)
        A filter applied to both sides.
    measure : {"value", "degradation"}
        The metric itself, or its increase over the same configuration without
        corruption.
    margin : float
        Relative margin: the claim is ``a < (1 + margin) * b``.
    """

    text: str
    a: tuple[tuple[str, Any], ...]
    b: tuple[tuple[str, Any], ...]
    where: tuple[tuple[str, Any], ...] = ()
    measure: Literal["value", "degradation"] = "value"
    margin: float = 0.0


def _claim(raw: Any, index: int) -> Claim:
    where = f"claims[{index}]"
    if not isinstance(raw, dict):
        raise SimcellError(f"{where}: expected a table")
    unknown = sorted(set(raw) - _CLAIM_KEYS)
    if unknown:
        raise SimcellError(f"{where}: unknown key(s) {', '.join(unknown)}")
    for side in ("a", "b"):
        if not isinstance(raw.get(side), dict) or not raw[side]:
            raise SimcellError(f"{where}.{side}: expected a non-empty table of filters")
    if not isinstance(raw.get("where", {}), dict):
        raise SimcellError(f"{where}.where: expected a table of filters")
    measure = raw.get("measure", "value")
    if measure not in ("value", "degradation"):
        raise SimcellError(f"{where}.measure: 'value' or 'degradation', got {measure!r}")
    margin = raw.get("margin", 0.0)
    if not isinstance(margin, int | float) or isinstance(margin, bool) or not margin >= 0:
        raise SimcellError(f"{where}.margin: a number >= 0, got {margin!r}")
    return Claim(
        text=str(raw.get("text", f"claim {index}")),
        a=tuple(sorted(raw["a"].items())),
        b=tuple(sorted(raw["b"].items())),
        where=tuple(sorted(raw.get("where", {}).items())),
        measure=measure,
        margin=float(margin),
    )


# ----------------------------------------------------------------------------- the study


@dataclass(frozen=True)
class Study:
    """A resolved study: its cells and how to summarise them.

    Attributes
    ----------
    name, description : str
    variant : {"fast", "full"}
    layout : {"fig3", "table_s5", "table_s6", "table_s8", "generic"}
    metric, space : str
        The score the summary and the claims read (e.g. ``mse`` in ``genes``).
    cells : tuple of Cell
        Sorted by key; never empty.
    claims : tuple of Claim
    source : dict
        The study file's content (written next to the results).
    """

    name: str
    description: str
    variant: str
    layout: str
    metric: str
    space: str
    cells: tuple[Cell, ...]
    claims: tuple[Claim, ...]
    source: dict = field(repr=False)


def list_studies() -> list[str]:
    """Names of the shipped studies, sorted."""
    folder = resources.files(_PACKAGE).joinpath("studies")
    return sorted(
        entry.name.removesuffix(".toml")
        for entry in folder.iterdir()
        if entry.name.endswith(".toml")
    )


def describe_study(name: str) -> str:
    """The description line of a shipped study."""
    return str(_read(name)[0].get("description", ""))


def _read(name_or_path: str | Path) -> tuple[dict, str]:
    text_name = str(name_or_path)
    if text_name in list_studies():
        text = resources.files(_PACKAGE).joinpath("studies", f"{text_name}.toml").read_text()
        label, default_name = text_name, text_name
    else:
        path = Path(name_or_path)
        if path.suffix != ".toml" and not path.exists():
            raise SimcellError(
                f"unknown study {text_name!r}; choose one of {', '.join(list_studies())} "
                "or a .toml file"
            )
        try:
            text = path.read_text()
        except (OSError, UnicodeDecodeError) as error:
            raise SimcellError(f"study file {path}: cannot read it ({error})") from None
        label, default_name = str(path), path.stem
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise SimcellError(f"study file {label}: invalid TOML ({error})") from None
    data.setdefault("name", default_name)
    return data, label


def _list(grid: dict, key: str, default: Any = None) -> list:
    value = grid.get(key, default)
    if value is None:
        raise SimcellError(f"grid.{key}: missing")
    if not isinstance(value, list):
        value = [value]
    return value


def _seeds(grid: dict, key: str) -> list[int]:
    seeds = _list(grid, key, [0])
    for seed in seeds:
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise SimcellError(f"grid.{key}: seeds are integers >= 0, got {seed!r}")
    return list(dict.fromkeys(seeds))


def _evaluation(raw: Any) -> tuple[tuple[str, int], ...]:
    if not isinstance(raw, dict):
        raise SimcellError("evaluation: expected a table")
    unknown = sorted(set(raw) - set(_EVALUATION_DEFAULTS))
    if unknown:
        raise SimcellError(
            f"evaluation: unknown key(s) {', '.join(unknown)}; "
            f"valid: {', '.join(_EVALUATION_DEFAULTS)}"
        )
    values = {**_EVALUATION_DEFAULTS, **raw}
    for key, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise SimcellError(f"evaluation.{key}: an integer >= 1, got {value!r}")
    if values["oracle_samples"] < 2:
        raise SimcellError("evaluation.oracle_samples: at least 2 (two halves)")
    return tuple(sorted(values.items()))


def _apply_variant(data: dict, variant: str) -> dict:
    variants = data.get("variants", {})
    if not isinstance(variants, dict):
        raise SimcellError("variants: expected a table of variants")
    unknown = sorted(set(variants) - {"fast", "full"})
    if unknown:
        raise SimcellError(f"variants: unknown variant(s) {', '.join(unknown)}; use fast, full")
    chosen = variants.get(variant, {})
    if not isinstance(chosen, dict):
        raise SimcellError(f"variants.{variant}: expected a table")
    extra = sorted(set(chosen) - {"grid", "evaluation"})
    if extra:
        raise SimcellError(f"variants.{variant}: unknown key(s) {', '.join(extra)}")
    resolved = dict(data)
    for section in ("grid", "evaluation"):
        part = chosen.get(section, {})
        if not isinstance(part, dict):
            raise SimcellError(f"variants.{variant}.{section}: expected a table")
        resolved[section] = {**data.get(section, {}), **part}
    return resolved


def load_study(name_or_path: str | Path, variant: Variant = "full") -> Study:
    """Read a study (a shipped name or a TOML file) and resolve its grid.

    Every cell is checked before anything runs: the scenario and its overrides,
    each model and its options against the model's preset fields, each
    corruption against the concepts a task leaves free.

    Parameters
    ----------
    name_or_path : str or path
        A name from :func:`list_studies` or a ``.toml`` file.
    variant : {"fast", "full"}
        ``fast`` applies the file's ``[variants.fast]`` (sized for a 2-core
        CPU); ``full`` the study as written (plus ``[variants.full]`` if any).

    Returns
    -------
    Study

    Raises
    ------
    SimcellError
        One line naming the field: unreadable file, unknown key, unknown model
        option, unknown corruption kind, a level above the free concepts, a grid
        with no cells.
    """
    if variant not in ("fast", "full"):
        raise SimcellError(f"variant must be fast or full, got {variant!r}")
    raw, label = _read(name_or_path)
    unknown = sorted(set(raw) - _TOP_KEYS)
    if unknown:
        raise SimcellError(f"study {label}: unknown key(s) {', '.join(unknown)}")
    data = _apply_variant(raw, variant)
    layout = data.get("layout", "generic")
    if layout not in LAYOUTS:
        raise SimcellError(f"layout: one of {', '.join(LAYOUTS)}, got {layout!r}")
    grid = data.get("grid")
    if not isinstance(grid, dict):
        raise SimcellError(f"study {label}: no [grid] table")
    unknown = sorted(set(grid) - _GRID_KEYS)
    if unknown:
        raise SimcellError(
            f"grid: unknown key(s) {', '.join(unknown)}; valid: {', '.join(sorted(_GRID_KEYS))}"
        )
    evaluation = _evaluation(data.get("evaluation", {}))
    cells = _cells(grid, evaluation)
    claims = data.get("claims", [])
    if not isinstance(claims, list):
        raise SimcellError("claims: expected an array of tables ([[claims]])")
    return Study(
        name=str(data["name"]),
        description=str(data.get("description", "")),
        variant=variant,
        layout=layout,
        metric=str(data.get("metric", "mse")),
        space=str(data.get("space", "genes")),
        cells=cells,
        claims=tuple(_claim(claim, i) for i, claim in enumerate(claims)),
        source=raw,
    )


def _cells(grid: dict, evaluation: tuple) -> tuple[Cell, ...]:
    from simcell import scenarios
    from simcell.evaluation.tasks import Corruption
    from simcell.models import get_preset
    from simcell.simulator.corrupt import check_corruption

    names = _list(grid, "scenarios")
    overrides = _list(grid, "overrides", [{}])
    common = grid.get("scenario_options", {})
    if not isinstance(common, dict):
        raise SimcellError("grid.scenario_options: expected a table")
    if not all(isinstance(o, dict) for o in overrides):
        raise SimcellError("grid.overrides: expected an array of tables")
    tasks = grid.get("tasks")
    task_names: tuple[str, ...] | None = None
    if isinstance(tasks, int) and not isinstance(tasks, bool) and tasks >= 1:
        common = {**common, "n_tasks": tasks}
    elif isinstance(tasks, list) and tasks and all(isinstance(t, str) for t in tasks):
        task_names = tuple(dict.fromkeys(tasks))
    elif tasks is not None:
        raise SimcellError(f"grid.tasks: an integer >= 1 or a list of task names, got {tasks!r}")
    data_seeds = _seeds(grid, "data_seeds")
    model_seeds = _seeds(grid, "model_seeds")
    presets = [str(p) for p in _list(grid, "presets", ["fast"])]
    try:
        conditions = [Corruption.parse(c) for c in _list(grid, "corruptions", ["none"])]
    except SimcellError as error:
        raise SimcellError(f"grid.corruptions: {error}") from None
    try:
        models = [ModelSpec.parse(m) for m in _list(grid, "models")]
    except SimcellError as error:
        raise SimcellError(f"grid.models: {error}") from None
    configs = {}
    for spec in models:
        for preset in presets:
            try:
                config = get_preset(spec.name, preset)
                if spec.options:
                    config = config.replace(**dict(spec.options))
            except SimcellError as error:
                raise SimcellError(f"grid.models: {spec.label}: {error}") from None
            configs[spec, preset] = config.to_dict()
    worlds = []
    for name, override in itertools.product(names, overrides):
        changes = {**common, **override}
        try:
            params = scenarios.load(str(name), **changes)
        except SimcellError as error:
            raise SimcellError(f"grid.scenarios: {error}") from None
        n_free = params.n_concepts - 1  # a task protects its own concept
        for condition in conditions:
            try:
                check_corruption(condition.kind, condition.level, n_free)
            except SimcellError as error:
                raise SimcellError(f"grid.corruptions: {name} {changes or ''}: {error}") from None
        if task_names is not None:
            known = {f"task_{i}" for i in range(params.n_tasks)}
            missing = sorted(set(task_names) - known)
            if missing:
                raise SimcellError(f"grid.tasks: {name} has no task(s) {', '.join(missing)}")
        worlds.append((str(name), tuple(sorted(changes.items())), params.to_dict()))
    cells = {}
    for (name, changes, params), data_seed, condition, spec, seed, preset in itertools.product(
        worlds, data_seeds, conditions, models, model_seeds, presets
    ):
        text = "none" if condition.is_none else f"{condition.kind}:{condition.level}"
        cell = Cell(
            scenario=name,
            overrides=changes,
            data_seed=data_seed,
            corruption=text,
            model=spec,
            model_seed=seed,
            preset=preset,
            tasks=task_names,
            evaluation=evaluation,
            params=params,
            model_config=configs[spec, preset],
        )
        cells.setdefault(cell.key, cell)
    if not cells:
        empty = [k for k in ("scenarios", "models", "corruptions") if not grid.get(k, [1])]
        where = f" (grid.{empty[0]} is empty)" if empty else ""
        raise SimcellError(f"grid: no cells{where}")
    for cell in cells.values():
        json.dumps(cell.config(), allow_nan=False)  # every value is plain data
        if any(isinstance(v, float) and not math.isfinite(v) for _, v in cell.model.options):
            raise SimcellError(f"grid.models: {cell.model.label}: a non-finite option")
    return tuple(cells[key] for key in sorted(cells))
