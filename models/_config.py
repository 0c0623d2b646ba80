"""Frozen, keyword-only configuration dataclasses shared by every model preset.

A preset is an instance of a :class:`ModelConfig` subclass. It validates its own
fields on construction (types, ``Literal`` options, ranges), can be turned into a
plain ``dict`` (written next to results by the harness) and rebuilt from one
(checkpoints store it that way).
"""

from __future__ import annotations

import dataclasses
import numbers
import types
import typing
from dataclasses import dataclass
from typing import Any, Literal, TypeVar, Union

from simcell import SimcellError

ConfigT = TypeVar("ConfigT", bound="ModelConfig")


def _type_hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _describe(annotation: Any) -> str:
    if typing.get_origin(annotation) is Literal:
        return " | ".join(repr(option) for option in typing.get_args(annotation))
    if isinstance(annotation, type):
        return annotation.__name__
    return str(annotation).replace("typing.", "")


def _matches(value: Any, annotation: Any) -> bool:
    """Whether ``value`` is acceptable for a field annotated ``annotation``."""
    origin = typing.get_origin(annotation)
    if origin is Literal:
        return value in typing.get_args(annotation)
    if origin in (Union, types.UnionType):
        return any(_matches(value, option) for option in typing.get_args(annotation))
    if annotation is type(None):
        return value is None
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if annotation is float:
        return isinstance(value, numbers.Real) and not isinstance(value, bool)
    if annotation is str:
        return isinstance(value, str)
    if isinstance(annotation, type):
        return isinstance(value, annotation)
    return True


def _coerce(value: Any, annotation: Any) -> Any:
    """Plain Python numbers for numeric fields (NumPy scalars, ints given for floats)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return value
    options = typing.get_args(annotation) if typing.get_origin(annotation) else (annotation,)
    if int in options and isinstance(value, numbers.Integral):
        return int(value)
    if float in options:
        return float(value)
    return value


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """Base class of every model preset (a frozen keyword-only dataclass).

    Subclasses declare their hyperparameters as annotated fields. Construction
    checks each value against its annotation (``int``, ``float``, ``bool``,
    ``Literal[...]``, optional values and nested configs) and raises
    :class:`simcell.SimcellError` naming the field and the valid values.
    """

    def __post_init__(self) -> None:
        hints = _type_hints(type(self))
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            annotation = hints[field.name]
            if not _matches(value, annotation):
                raise SimcellError(
                    f"{type(self).__name__}.{field.name}={value!r} is invalid; "
                    f"expected {_describe(annotation)}"
                )
            value = _coerce(value, annotation)
            if isinstance(value, float) and value != value:  # NaN
                raise SimcellError(f"{type(self).__name__}.{field.name} must not be NaN")
            object.__setattr__(self, field.name, value)

    def to_dict(self) -> dict[str, Any]:
        """Return the preset as a plain (nested) ``dict`` of Python scalars."""
        return dataclasses.asdict(self)

    def field_names(self) -> tuple[str, ...]:
        """Names of the hyperparameters, in declaration order."""
        return tuple(field.name for field in dataclasses.fields(self))

    def replace(self: ConfigT, **overrides: Any) -> ConfigT:
        """Return a copy with some fields changed.

        A nested config field accepts either a config instance or a ``dict`` of
        overrides for it.

        Raises
        ------
        simcell.SimcellError
            If a key is not a field of this config, or a value is invalid.
        """
        valid = self.field_names()
        unknown = sorted(set(overrides) - set(valid))
        if unknown:
            raise SimcellError(
                f"unknown option(s) {', '.join(map(repr, unknown))} for "
                f"{type(self).__name__}; valid options: {', '.join(valid)}"
            )
        resolved: dict[str, Any] = {}
        for key, value in overrides.items():
            current = getattr(self, key)
            if isinstance(current, ModelConfig) and isinstance(value, dict):
                value = current.replace(**value)
            resolved[key] = value
        return dataclasses.replace(self, **resolved)

    @classmethod
    def from_dict(cls: type[ConfigT], values: dict[str, Any]) -> ConfigT:
        """Rebuild a config from :meth:`to_dict` output (nested configs included)."""
        hints = _type_hints(cls)
        names = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise SimcellError(
                f"unknown option(s) {', '.join(map(repr, unknown))} for {cls.__name__}; "
                f"valid options: {', '.join(sorted(names))}"
            )
        kwargs: dict[str, Any] = {}
        for key, value in values.items():
            annotation = hints[key]
            if (
                isinstance(annotation, type)
                and issubclass(annotation, ModelConfig)
                and isinstance(value, dict)
            ):
                value = annotation.from_dict(value)
            kwargs[key] = value
        return cls(**kwargs)


#: Optimiser steps of a ``fast`` preset at most. A CI-sized dataset (up to
#: ~8,500 training cells for 30 epochs of 128, ~6,400 for 40) trains its full
#: epochs, bit for bit as without the cap; full-size synthetic2 (~17,600
#: training cells, 138 batches) trains 15 epochs instead of 30-40, half the
#: default ``simcell evaluate``'s training time on a 2-core CPU. PCA-space MSE
#: of 30-40 -> 15 epochs there: task_0 vanilla_fm_edit 0.0590 -> 0.0572, cvae
#: 0.0056 -> 0.0061, scCBGM 0.0120 -> 0.0140 (identity 0.0033); task_3 scCBGM
#: 0.0201 -> 0.0208, CBGM 0.0319 -> 0.0255 (identity 0.0533). The ``synthetic``
#: and ``paper`` presets have no cap.
FAST_MAX_STEPS = 2000


@dataclass(frozen=True, kw_only=True)
class NeuralConfig(ModelConfig):
    """Training hyperparameters shared by every neural model (read by the trainer).

    Parameters
    ----------
    max_epochs : int
        Number of passes over the training cells.
    max_steps : int or None
        Cap on the optimiser steps, applied in whole epochs (see
        :class:`~simcell.models.Trainer`); ``None`` trains ``max_epochs``
        whatever the number of cells. The ``fast`` presets cap it at
        ``FAST_MAX_STEPS`` so that a full-size dataset does not train three
        times the steps they were tuned with on CI-sized data.
    batch_size : int
        Mini-batch size.
    learning_rate : float
        Initial Adam learning rate.
    lr_decay : float
        Exponential learning-rate decay per epoch (``ExponentialLR`` gamma).
    validation_fraction : float
        Fraction of the training cells held out (seeded) to monitor a
        validation loss; 0 trains on every cell.
    early_stopping_patience : int or None
        Stop when the validation loss has not improved for this many epochs and
        restore the best weights; needs ``validation_fraction > 0``.
    """

    max_epochs: int
    max_steps: int | None = None
    batch_size: int = 128
    learning_rate: float
    lr_decay: float = 0.997
    validation_fraction: float = 0.0
    early_stopping_patience: int | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        name = type(self).__name__
        if self.max_epochs < 1:
            raise SimcellError(f"{name}.max_epochs must be >= 1, got {self.max_epochs}")
        if self.max_steps is not None and self.max_steps < 1:
            raise SimcellError(f"{name}.max_steps must be >= 1, got {self.max_steps}")
        if self.batch_size < 2:
            raise SimcellError(f"{name}.batch_size must be >= 2, got {self.batch_size}")
        if not self.learning_rate > 0:
            raise SimcellError(f"{name}.learning_rate must be > 0, got {self.learning_rate}")
        if not 0 < self.lr_decay <= 1:
            raise SimcellError(f"{name}.lr_decay must be in (0, 1], got {self.lr_decay}")
        if not 0 <= self.validation_fraction < 1:
            raise SimcellError(
                f"{name}.validation_fraction must be in [0, 1), got {self.validation_fraction}"
            )
        if self.early_stopping_patience is not None:
            if self.early_stopping_patience < 1:
                raise SimcellError(f"{name}.early_stopping_patience must be >= 1")
            if self.validation_fraction == 0:
                raise SimcellError(f"{name}.early_stopping_patience needs validation_fraction > 0")


def check_positive(config: ModelConfig, *names: str) -> None:
    """Raise :class:`SimcellError` unless every named integer field is >= 1."""
    for name in names:
        value = getattr(config, name)
        if value < 1:
            raise SimcellError(f"{type(config).__name__}.{name} must be >= 1, got {value}")


def check_fraction(config: ModelConfig, *names: str) -> None:
    """Raise :class:`SimcellError` unless every named field lies in [0, 1)."""
    for name in names:
        value = getattr(config, name)
        if not 0 <= value < 1:
            raise SimcellError(f"{type(config).__name__}.{name} must be in [0, 1), got {value}")


def check_non_negative(config: ModelConfig, *names: str) -> None:
    """Raise :class:`SimcellError` unless every named field is >= 0."""
    for name in names:
        value = getattr(config, name)
        if not value >= 0:
            raise SimcellError(f"{type(config).__name__}.{name} must be >= 0, got {value}")
