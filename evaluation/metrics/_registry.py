"""The metric registry: each metric's function, direction, level and the inputs it needs.

A metric is registered with :func:`register_metric`; the registry reads the
function's signature once, at registration, and records which keyword names
the function **requires** (``inputs``) and which it **accepts** with a default
(``options``). A runner then needs no per-metric code: it keeps a context
mapping of named arrays and calls ::

    metric.fn(**{k: context[k] for k in metric.inputs},
              **{k: context[k] for k in metric.options if k in context})

skipping a metric whose inputs are not all in the context (e.g. the cell-level
errors on real data, which has no true counterfactual).

Required inputs are named from one fixed vocabulary, :data:`METRIC_INPUTS`, so
that one context serves every metric:

===================  ==========================================================
``pred``             predicted cells, shape (n_cells, n_dims)
``truth``            true counterfactual cells, shape (n_cells, n_dims); row
                     ``i`` is the twin of ``pred`` row ``i`` for cell metrics
``references``       list of reference populations, each (n_r, n_dims)
``reference``        observed, labelled cells for a classifier, (n_ref, n_dims)
``reference_labels`` their labels, shape (n_ref,)
``target_label``     the label a prediction should be classified as
``embedding``        a model's representation of cells, (n_cells, n_latent)
``concepts_true``    true concept values of those cells, (n_cells, n_concepts)
``cell_types``       cell type of those cells, shape (n_cells,)
``latent_true``      a true latent of those cells the simulator stored, (n_cells, d)
===================  ==========================================================
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from simcell import SimcellError

Direction = Literal["lower", "higher"]
Level = Literal["cell", "distribution", "classification", "latent"]
MetricFn = TypeVar("MetricFn", bound=Callable[..., Any])

LEVELS: tuple[str, ...] = ("cell", "distribution", "classification", "latent")
DIRECTIONS: tuple[str, ...] = ("lower", "higher")
METRIC_INPUTS: frozenset[str] = frozenset(
    {
        "pred",
        "truth",
        "references",
        "reference",
        "reference_labels",
        "target_label",
        "embedding",
        "concepts_true",
        "cell_types",
        "latent_true",
    }
)


@dataclass(frozen=True)
class Metric:
    """A registered metric.

    Attributes
    ----------
    name : str
        Registry key, e.g. ``"rmmd"``.
    fn : callable
        The metric function; called with keyword arguments only.
    direction : {"lower", "higher"}
        Which way is better.
    level : {"cell", "distribution", "classification", "latent"}
        What the metric compares: ``"cell"`` returns one score per predicted
        cell, shape (n_cells,), against its own true twin; ``"distribution"``
        a float comparing two populations (or a ratio to reference
        populations); ``"classification"`` a float from a classifier of
        predicted cells against observed ones; ``"latent"`` a float scoring a
        model's embedding against true latents or labels.
    inputs : tuple of str
        Keyword names ``fn`` requires (no default), in signature order; each is
        in :data:`METRIC_INPUTS`.
    options : tuple of str
        Keyword names ``fn`` accepts with a default, in signature order.
    reference : str or None
        What a score is compared with (its floor or ceiling), for the report.
    """

    name: str
    fn: Callable[..., Any]
    direction: Direction
    level: Level
    inputs: tuple[str, ...]
    options: tuple[str, ...]
    reference: str | None = None


_REGISTRY: dict[str, Metric] = {}


def _signature_names(name: str, fn: Callable[..., Any]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Split ``fn``'s parameters into required and optional keyword names."""
    inputs: list[str] = []
    options: list[str] = []
    for parameter in inspect.signature(fn).parameters.values():
        if parameter.kind not in (parameter.POSITIONAL_OR_KEYWORD, parameter.KEYWORD_ONLY):
            raise SimcellError(
                f"metric {name!r}: parameter {parameter.name!r} cannot be passed by keyword "
                "(no *args, **kwargs or positional-only parameters)"
            )
        if parameter.default is parameter.empty:
            inputs.append(parameter.name)
        else:
            options.append(parameter.name)
    unknown = [input_name for input_name in inputs if input_name not in METRIC_INPUTS]
    if unknown:
        raise SimcellError(
            f"metric {name!r} requires {unknown[0]!r}, which is not a metric input; "
            f"valid inputs: {', '.join(sorted(METRIC_INPUTS))}"
        )
    if not inputs:
        raise SimcellError(f"metric {name!r} requires no input")
    return tuple(inputs), tuple(options)


def register_metric(
    name: str, *, direction: Direction, level: Level, reference: str | None = None
) -> Callable[[MetricFn], MetricFn]:
    """Register a metric function under ``name`` (decorator).

    The function's required parameters become the metric's ``inputs`` and
    its parameters with defaults its ``options`` (see :class:`Metric`).

    Parameters
    ----------
    name : str
        Registry key; must not be registered already.
    direction : {"lower", "higher"}
        Which way is better.
    level : {"cell", "distribution", "classification", "latent"}
    reference : str, optional
        What a score is compared with (its floor or ceiling), for the report.

    Returns
    -------
    callable
        Decorator that registers the function and returns it unchanged.

    Raises
    ------
    SimcellError
        On an unknown direction or level, a name already registered, a required
        parameter outside :data:`METRIC_INPUTS`, or ``*args`` / ``**kwargs``.

    Examples
    --------
    >>> @register_metric("my_rmse", direction="lower", level="cell")  # doctest: +SKIP
    ... def my_rmse(pred, truth): ...
    """
    if direction not in DIRECTIONS:
        raise SimcellError(f"direction must be one of {DIRECTIONS}; got {direction!r}")
    if level not in LEVELS:
        raise SimcellError(f"level must be one of {LEVELS}; got {level!r}")

    def decorate(fn: MetricFn) -> MetricFn:
        if name in _REGISTRY:
            raise SimcellError(f"metric {name!r} is already registered")
        inputs, options = _signature_names(name, fn)
        _REGISTRY[name] = Metric(
            name=name,
            fn=fn,
            direction=direction,
            level=level,
            inputs=inputs,
            options=options,
            reference=reference,
        )
        return fn

    return decorate


def get_metric(name: str) -> Metric:
    """Look up a registered metric by name.

    Parameters
    ----------
    name : str

    Returns
    -------
    Metric

    Raises
    ------
    SimcellError
        If ``name`` is not registered; the message lists the valid names.
    """
    try:
        return _REGISTRY[name]
    except KeyError:
        valid = ", ".join(sorted(_REGISTRY))
        raise SimcellError(f"unknown metric {name!r}; valid metrics: {valid}") from None


def list_metrics(level: Level | None = None) -> list[Metric]:
    """All registered metrics, optionally of one level, in registration order.

    Parameters
    ----------
    level : {"cell", "distribution", "classification", "latent"}, optional

    Returns
    -------
    list of Metric
    """
    if level is not None and level not in LEVELS:
        raise SimcellError(f"level must be one of {LEVELS}; got {level!r}")
    return [metric for metric in _REGISTRY.values() if level is None or metric.level == level]
