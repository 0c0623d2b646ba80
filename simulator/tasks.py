"""Intervention tasks: held-out (cell type, concept) pairs (scCBGM paper, Appendix C.6)."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from simcell import SimcellWarning

TRAIN, INTERVENE, HELDOUT = "train", "intervene", "heldout"
SPLIT_LABELS = (TRAIN, INTERVENE, HELDOUT)


@dataclass(frozen=True, eq=False)
class Task:
    """One intervention task.

    Attributes
    ----------
    name : str
        ``"task_0"``, ``"task_1"``, ...
    cell_type : int
        The held-out cell type u.
    concept : int
        The concept k switched on: the ground truth is ``do(v_k := 1)``.
    split : ndarray of str, shape (n_cells,)
        ``train`` / ``intervene`` / ``heldout`` for every cell.
    """

    name: str
    cell_type: int
    concept: int
    split: np.ndarray

    @property
    def intervene(self) -> np.ndarray:
        """Positions of the ``intervene`` cells, increasing."""
        return np.flatnonzero(self.split == INTERVENE)


def make_tasks(
    cell_type: np.ndarray,
    concepts: np.ndarray,
    *,
    n_tasks: int,
    min_cells: int,
    rng: np.random.Generator,
    concept_kinds: Sequence[str] | None = None,
) -> list[Task]:
    """Choose held-out (cell type, concept) pairs and split the cells.

    For a pair (u, k): every cell of type u with v_k = 1 is ``heldout``; the cells
    of type u with v_k = 0 are split at random, half ``train``, half
    ``intervene``; all other cells are ``train``. A pair is eligible when k is
    binary, type u has at least ``2 * min_cells`` cells with v_k = 0 and at least
    ``min_cells`` cells with v_k = 1 (the ``heldout`` population: the paper holds
    out pairs where the concept is active, and distributional metrics compare
    predictions with it), and other types have at least ``min_cells`` cells with
    v_k = 1 (so the concept is seen switched on in training).

    Parameters
    ----------
    cell_type : ndarray of int, shape (n_cells,)
    concepts : ndarray, shape (n_cells, n_concepts)
        The true concepts.
    n_tasks : int
        Number of pairs to choose (fewer, with a warning, if fewer are eligible).
    min_cells : int
    rng : numpy.random.Generator
        Drives the choice of pairs and the train / intervene split.
    concept_kinds : sequence of {"binary", "continuous"}, optional

    Returns
    -------
    list of Task
    """
    n_cells, n_concepts = concepts.shape
    kinds = concept_kinds or ["binary"] * n_concepts
    eligible = []
    for u in range(int(cell_type.max()) + 1 if n_cells else 0):
        of_type = cell_type == u
        for k in range(n_concepts):
            if kinds[k] != "binary":
                continue
            off = np.count_nonzero(of_type & (concepts[:, k] == 0))
            heldout = np.count_nonzero(of_type & (concepts[:, k] == 1))
            on_elsewhere = np.count_nonzero(~of_type & (concepts[:, k] == 1))
            if off >= 2 * min_cells and heldout >= min_cells and on_elsewhere >= min_cells:
                eligible.append((u, k))
    if len(eligible) < n_tasks:
        warnings.warn(
            f"only {len(eligible)} (cell type, concept) pairs are eligible for "
            f"{n_tasks} tasks; using {len(eligible)}",
            SimcellWarning,
            stacklevel=2,
        )
    chosen = rng.permutation(len(eligible))[: min(n_tasks, len(eligible))]
    tasks = []
    for number, pick in enumerate(chosen):
        u, k = eligible[pick]
        split = np.full(n_cells, TRAIN, dtype=object)
        of_type = cell_type == u
        split[of_type & (concepts[:, k] == 1)] = HELDOUT
        off = np.flatnonzero(of_type & (concepts[:, k] == 0))
        intervene = np.sort(rng.permutation(off)[: off.size // 2])
        split[intervene] = INTERVENE
        tasks.append(Task(name=f"task_{number}", cell_type=int(u), concept=int(k), split=split))
    return tasks
