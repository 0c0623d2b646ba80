"""Cell exogenous state and the latent linear-Gaussian concept SCM."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from scipy import special

from simcell import SimcellError
from simcell.simulator._rng import CELL_BLOCK, stream
from simcell.simulator.params import InterventionMode, SimulationParams
from simcell.simulator.world import World


@dataclass(frozen=True, eq=False)
class CellStates:
    """Exogenous state and factual concepts of every cell.

    Attributes
    ----------
    batch, tissue, cell_type : ndarray of int64, shape (n_cells,)
    library_size : ndarray, shape (n_cells,)
        l_i (log scale).
    concept_noise : ndarray, shape (n_cells, n_concepts)
        η_i, the exogenous noise of the concept SCM.
    concepts : ndarray, shape (n_cells, n_concepts)
        The factual concepts v_i.
    capture : ndarray, shape (n_cells,), or None
        p_i, the capture efficiency each count is thinned with; ``None``: no thinning.
    """

    batch: np.ndarray
    tissue: np.ndarray
    cell_type: np.ndarray
    library_size: np.ndarray
    concept_noise: np.ndarray
    concepts: np.ndarray
    capture: np.ndarray | None = None

    @property
    def n_cells(self) -> int:
        return self.batch.shape[0]


def _categorical(uniform: np.ndarray, cumulative: np.ndarray) -> np.ndarray:
    """Inverse-CDF categorical draw; ``cumulative`` has one row per cell."""
    index = (uniform[:, None] >= cumulative).sum(axis=1)
    return np.minimum(index, cumulative.shape[1] - 1)


def draw_cells(params: SimulationParams, world: World, seed: int) -> CellStates:
    """Draw every cell's covariates, library size, concept noise and concepts.

    Cells are drawn in blocks of ``CELL_BLOCK`` from the stream ``"cells"`` of each
    block, so the state of cell i does not depend on how many cells follow it.

    Parameters
    ----------
    params : SimulationParams
    world : World
    seed : int

    Returns
    -------
    CellStates
    """
    n, n_concepts = params.n_cells, params.n_concepts
    uniform = np.empty((n, 3))
    normal = np.empty((n, 1 + n_concepts))
    for block, start in enumerate(range(0, n, CELL_BLOCK)):
        stop = min(start + CELL_BLOCK, n)
        # always draw a whole block so that a cell's state does not depend on n_cells
        rng = stream(seed, "cells", block)
        uniform[start:stop] = rng.random((CELL_BLOCK, 3))[: stop - start]
        normal[start:stop] = rng.standard_normal((CELL_BLOCK, 1 + n_concepts))[: stop - start]

    batch_cdf = np.cumsum(world.batch_proportions)
    batch = _categorical(uniform[:, 0], np.broadcast_to(batch_cdf, (n, batch_cdf.size)))
    tissue = _categorical(uniform[:, 1], np.cumsum(world.tissue_proportions, axis=1)[batch])
    cell_type = _categorical(uniform[:, 2], np.cumsum(world.cell_type_proportions, axis=1)[tissue])
    library_size = world.library_size_sd[batch] * normal[:, 0]
    concept_noise = np.ascontiguousarray(normal[:, 1:])
    concepts = solve_concepts(params, world, cell_type, concept_noise)
    return CellStates(
        batch=batch,
        tissue=tissue,
        cell_type=cell_type,
        library_size=library_size,
        concept_noise=concept_noise,
        concepts=concepts,
        capture=draw_capture(params, seed) if params.captured else None,
    )


def draw_capture(params: SimulationParams, seed: int) -> np.ndarray:
    """Per-cell capture efficiencies p_i ~ Beta(m κ, (1 − m) κ) by their inverse CDF.

    Each block of ``CELL_BLOCK`` cells reads its uniforms from the stream
    ``"capture"`` of that block (a whole block is always drawn), so p_i does not
    depend on ``n_cells`` and the paper's streams are untouched.

    Parameters
    ----------
    params : SimulationParams
    seed : int

    Returns
    -------
    ndarray, shape (n_cells,)
        p_i in (0, 1].
    """
    n = params.n_cells
    uniform = np.empty(n)
    for block, start in enumerate(range(0, n, CELL_BLOCK)):
        stop = min(start + CELL_BLOCK, n)
        uniform[start:stop] = stream(seed, "capture", block).random(CELL_BLOCK)[: stop - start]
    m, kappa = params.capture_mean, params.capture_concentration
    capture = special.betaincinv(m * kappa, (1.0 - m) * kappa, uniform)
    # a capture of exactly 0 would erase the cell: keep it inside (0, 1]
    return np.clip(capture, np.finfo(np.float64).tiny, 1.0)


def solve_concepts(
    params: SimulationParams,
    world: World,
    cell_type: np.ndarray,
    concept_noise: np.ndarray,
    do: Mapping[int, float | np.ndarray] | None = None,
) -> np.ndarray:
    """Solve the concept SCM in topological order.

    h_ik = μ_{u_i k} + Σ_p B_pk v_ip + η_ik, with v_ik = 1[h_ik > 0] for binary concepts
    and v_ik = h_ik for continuous ones; concepts in ``do`` are set, not solved.

    Parameters
    ----------
    params : SimulationParams
    world : World
    cell_type : ndarray of int, shape (n_cells,)
    concept_noise : ndarray, shape (n_cells, n_concepts)
        η.
    do : mapping of concept index to value(s), optional
        Interventions ``do(v_k := value)``; a value is a scalar or shape (n_cells,).

    Returns
    -------
    ndarray, shape (n_cells, n_concepts)
    """
    do = do or {}
    mean = world.concept_liability_mean[cell_type]
    concepts = np.zeros_like(concept_noise)
    kinds = params.kinds
    for k in params.topological_order():
        if k in do:
            concepts[:, k] = do[k]
            continue
        liability = mean[:, k] + concept_noise[:, k]
        for parent, weight in params.parents(k):
            liability = liability + weight * concepts[:, parent]
        concepts[:, k] = (liability > 0).astype(np.float64) if kinds[k] == "binary" else liability
    return concepts


def intervene_concepts(
    params: SimulationParams,
    world: World,
    cells: CellStates,
    index: np.ndarray,
    do: Mapping[int, float | np.ndarray],
    mode: InterventionMode,
) -> np.ndarray:
    """Concepts of cells ``index`` after ``do(v_k := value)``.

    In ``causal`` mode the descendants of the intervened concepts are recomputed
    from their own exogenous noise; in ``direct`` mode only the intervened
    concepts change. ``do`` of nothing returns the factual concepts exactly.

    Parameters
    ----------
    params : SimulationParams
    world : World
    cells : CellStates
    index : ndarray of int, shape (n,)
        Positions of the cells.
    do : mapping of concept index to value(s)
    mode : {"causal", "direct"}

    Returns
    -------
    ndarray, shape (n, n_concepts)
    """
    for k, value in do.items():
        if not 0 <= k < params.n_concepts:
            raise SimcellError(f"do(): concept {k} out of range 0..{params.n_concepts - 1}")
        if not np.all(np.isfinite(value)):
            raise SimcellError(f"do(): value of concept {k} is not finite")
    factual = cells.concepts[index]
    if mode == "direct":
        out = factual.copy()
        for k, value in do.items():
            out[:, k] = value
        return out
    if mode != "causal":
        raise SimcellError(f"mode must be 'causal' or 'direct', got {mode!r}")
    solved = solve_concepts(params, world, cells.cell_type[index], cells.concept_noise[index], do)
    # concepts outside the intervention's reach are copied, not re-solved, so that
    # they stay bit for bit the factual values
    reach = set(do)
    for k in do:
        reach |= params.descendants(k)
    out = factual.copy()
    for k in reach:
        out[:, k] = solved[:, k]
    return out
