"""Concept-annotation corruptions (scCBGM paper, Appendix C.4)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pandas as pd

from simcell import SimcellError
from simcell._random import stream

Corruption = Literal["missing", "irrelevant", "incorrect", "duplicate"]


@dataclass(frozen=True)
class CorruptionRecord:
    """What a corruption did.

    Attributes
    ----------
    kind : str
    level : int
        Number of columns corrupted (or added).
    p : float
        Per-entry probability (flip for ``incorrect``, removal for ``missing``,
        "on" for ``irrelevant``).
    columns : tuple of str
        The columns chosen (for ``irrelevant``: the columns added).
    added : tuple of str
        Columns appended to the table.
    changed_entries : int
        Number of entries whose value changed (NaN counts as a change).
    """

    kind: str
    level: int
    p: float
    columns: tuple[str, ...]
    added: tuple[str, ...] = field(default=())
    changed_entries: int = 0

    def to_dict(self) -> dict:
        return {
            "kind": self.kind,
            "level": self.level,
            "p": self.p,
            "columns": list(self.columns),
            "added": list(self.added),
            "changed_entries": self.changed_entries,
        }


def _choose(columns: list[str], level: int, rng: np.random.Generator) -> list[str]:
    if level > len(columns):
        raise SimcellError(
            f"corruption level {level} exceeds the {len(columns)} unprotected concept columns"
        )
    # a uniformly random subset of the free columns (every free column equally likely)
    picked = rng.choice(len(columns), size=level, replace=False)
    return [columns[i] for i in sorted(picked)]


def _missing(table, free, level, p, rng):
    chosen = _choose(free, level, rng)
    for column in chosen:
        drop = rng.random(len(table)) < p
        table.loc[drop, column] = np.nan
    return chosen, []


def _incorrect(table, free, level, p, rng):
    chosen = _choose(free, level, rng)
    for column in chosen:
        values = table[column].to_numpy()
        if not np.isin(values[~np.isnan(values)], (0.0, 1.0)).all():
            raise SimcellError(f"incorrect corruption needs a binary column, {column!r} is not")
        flip = (rng.random(len(table)) < p) & ~np.isnan(values)
        table.loc[flip, column] = 1.0 - values[flip]
    return chosen, []


def _irrelevant(table, free, level, p, rng):
    added = []
    for number in range(level):
        name = f"irrelevant_{number}"
        table[name] = (rng.random(len(table)) < p).astype(np.float32)
        added.append(name)
    return added, added


def _duplicate(table, free, level, p, rng):
    chosen = _choose(free, level, rng)
    added = []
    for column in chosen:
        name = f"{column}_duplicate"
        table[name] = table[column].to_numpy()
        added.append(name)
    return chosen, added


_CORRUPTIONS: dict[str, Callable] = {
    "missing": _missing,
    "incorrect": _incorrect,
    "irrelevant": _irrelevant,
    "duplicate": _duplicate,
}

#: default per-entry probability of each corruption
DEFAULT_P = {"missing": 1.0, "incorrect": 0.1, "irrelevant": 0.5, "duplicate": 0.0}


def corrupt(
    concepts: pd.DataFrame,
    kind: Corruption,
    level: int,
    *,
    p: float | None = None,
    protect: Sequence[str] = (),
    rng: np.random.Generator,
) -> tuple[pd.DataFrame, CorruptionRecord]:
    """Corrupt concept annotations as in paper C.4.

    * ``missing``: in ``level`` chosen columns each entry is removed (NaN) with
      probability ``p`` (default 1: the concept is not annotated at all);
    * ``irrelevant``: ``level`` random on/off columns (on with probability ``p``,
      default 0.5) are appended;
    * ``incorrect``: in ``level`` chosen binary columns each entry is flipped with
      probability ``p`` (default 0.1);
    * ``duplicate``: ``level`` chosen columns are copied and appended.

    Columns in ``protect`` (a task's intervened concept) are never chosen.

    Parameters
    ----------
    concepts : DataFrame, shape (n_cells, n_concepts)
    kind : {"missing", "irrelevant", "incorrect", "duplicate"}
    level : int
        Number of columns corrupted or added.
    p : float, optional
    protect : sequence of str
    rng : numpy.random.Generator

    Returns
    -------
    table : DataFrame
        A corrupted copy (float32).
    record : CorruptionRecord
    """
    if kind not in _CORRUPTIONS:
        raise SimcellError(f"unknown corruption {kind!r}; choose one of {sorted(_CORRUPTIONS)}")
    if level < 0:
        raise SimcellError(f"corruption level must be >= 0, got {level}")
    p = DEFAULT_P[kind] if p is None else float(p)
    if not 0.0 <= p <= 1.0:
        raise SimcellError(f"corruption p must be in [0, 1], got {p}")
    unknown = [c for c in protect if c not in concepts.columns]
    if unknown:
        raise SimcellError(f"protected column(s) not in the table: {unknown}")
    table = concepts.astype(np.float32).copy()
    free = [c for c in table.columns if c not in set(protect)]
    columns, added = _CORRUPTIONS[kind](table, free, level, p, rng)
    before = concepts.astype(np.float32).to_numpy()
    after = table[concepts.columns].to_numpy()
    changed = int(np.count_nonzero((before != after) & ~(np.isnan(before) & np.isnan(after))))
    record = CorruptionRecord(
        kind=kind,
        level=level,
        p=p,
        columns=tuple(columns),
        added=tuple(added),
        changed_entries=changed,
    )
    return table.astype(np.float32), record


#: corruptions that choose existing columns (their level is bounded by the free columns)
CHOOSING = ("missing", "incorrect", "duplicate")
CORRUPTION_KINDS = ("none", *_CORRUPTIONS)


def check_corruption(kind: str, level: int, n_free: int | None = None) -> tuple[str, int]:
    """Validate a corruption before any work: a known kind and a level within reach.

    Parameters
    ----------
    kind : {"none", "missing", "irrelevant", "incorrect", "duplicate"}
    level : int
        Number of columns corrupted or added (0 for ``none``).
    n_free : int, optional
        Number of columns the corruption may choose from (the annotations less
        the task's protected concept).

    Returns
    -------
    (str, int)

    Raises
    ------
    SimcellError
        One line naming the problem.
    """
    if kind not in CORRUPTION_KINDS:
        raise SimcellError(
            f"unknown corruption {kind!r}; choose one of {', '.join(CORRUPTION_KINDS)}"
        )
    if isinstance(level, bool) or not isinstance(level, (int, np.integer)) or level < 0:
        raise SimcellError(f"corruption level must be an integer >= 0, got {level!r}")
    if kind == "none" and level != 0:
        raise SimcellError(f"corruption 'none' takes level 0, got {level}")
    if kind in CHOOSING and n_free is not None and level > n_free:
        raise SimcellError(
            f"corruption {kind}:{level} exceeds the {n_free} concept columns a task leaves "
            "unprotected"
        )
    return kind, int(level)


def parse_corruption(text: str) -> tuple[str, int]:
    """``"missing:3"`` -> ``("missing", 3)`` (``"none"`` -> ``("none", 0)``).

    Raises
    ------
    SimcellError
        On a malformed text, an unknown kind or a negative level.
    """
    kind, colon, level = str(text).strip().partition(":")
    if not colon:
        if kind == "none":
            return "none", 0
        raise SimcellError(f"corruption must be KIND:LEVEL (e.g. missing:3), got {text!r}")
    try:
        number = int(level)
    except ValueError:
        raise SimcellError(
            f"corruption level must be an integer, got {level!r} in {text!r}"
        ) from None
    return check_corruption(kind.strip(), number)


def corrupt_for_task(
    annotations: pd.DataFrame,
    kind: str,
    level: int,
    *,
    task: str,
    concept: str,
    seed: int,
    p: float | None = None,
) -> tuple[pd.DataFrame, CorruptionRecord | None]:
    """The annotations a model sees for one task, corrupted as in paper C.4.

    Only the task's own concept is protected, so every other column may be
    chosen (uniformly at random), and the draw depends only on
    ``(seed, task, kind, level)``: the same condition gives the same annotations
    whatever else is evaluated, and a corruption grid reuses one bundle.

    Parameters
    ----------
    annotations : DataFrame, shape (n_cells, n_concepts)
        The clean annotations (float32, NaN = not annotated).
    kind : {"none", "missing", "irrelevant", "incorrect", "duplicate"}
    level : int
    task : str
        The task's name (a key of the random stream).
    concept : str
        The task's intervened concept: never corrupted.
    seed : int
    p : float, optional
        Per-entry probability (see :func:`corrupt`).

    Returns
    -------
    table : DataFrame
        float32; the input itself (unchanged) for ``none`` or level 0.
    record : CorruptionRecord or None
    """
    kind, level = check_corruption(kind, level, annotations.shape[1] - 1)
    if kind == "none" or level == 0:
        return annotations.astype(np.float32), None
    rng = stream(seed, "corruption", task, kind, level)
    return corrupt(annotations, kind, level, p=p, protect=[concept], rng=rng)
