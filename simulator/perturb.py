"""The ``perturb-identifiability`` process: known latents behind genetic perturbations.

A second generative process on the same exact count engine and bundle layout
(PerturbedVAE paper, simulation study). For cell i with perturbation label
u_i ∈ {0, 1}^P (controls u = 0, single and double perturbations):

    z_ι,i ~ N(m_{c_i}, I)                                   invariant latent (cell type c_i)
    z_ν,i = B z_ν,i + Γ z_ι,i + Σ_p u_ip s_p + η_i          responsive latent, η_i ~ N(0, σ_η² I)
    log λ_ij = w_j + l_i + g(z_ι,i, z_ν,i)_j + σ_ε ε_ij
    x_ij = Q(δ_ij; λ_ij)                                    exact Poisson inverse CDF

B is strictly lower triangular (a DAG over the responsive latents), s_p a sparse
shift (the targets of perturbation p), g an injective mixing: on the
``responsive`` genes an invertible leaky-ReLU MLP with orthogonal square layers
of (z_ι, z_ν) followed by a full-rank linear map to the genes; on the
``invariant`` genes the same construction of z_ι alone (so those genes never
respond to a perturbation). l_i ~ N(0, σ_l) is the library size.

Exact twins: ``do(u := u')`` keeps z_ι, η, l, ε and every uniform δ, recomputes
z_ν through the SCM and redraws nothing, so ``do()`` of the factual u reproduces
the cell bit for bit. Every random quantity comes from a stream keyed by
(seed, name, cell block), as in the scCBGM process.

Tasks map onto the bundle's task schema with the perturbation indicators u_p as
binary concepts: a ``double`` task (p, q) trains on controls and singles, asks
``do(u_q := 1)`` of half the single-p cells and holds out the (p, q) doubles; a
``single`` task asks ``do(u_q := 1)`` of half the controls and holds out the
single-q cells. Every double a task does not ask about is ``excluded`` (in no
population), so no double is ever trained on.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

import simcell
from simcell import SimcellError
from simcell.simulator import schema as S
from simcell.simulator._rng import CELL_BLOCK, stream
from simcell.simulator.counts import block_noise, settle_counts
from simcell.simulator.tasks import Task

PROCESS = S.PROCESS_PERTURB
MixingKind = Literal["mlp", "linear"]
#: split label of cells in no population of a task (the doubles it does not ask about)
EXCLUDED = S.EXCLUDED
_SPLITS = (S.TRAIN, S.INTERVENE, S.HELDOUT, EXCLUDED)


@dataclass(frozen=True, kw_only=True)
class PerturbParams:
    """Every knob of the ``perturb-identifiability`` process, validated on construction.

    Parameters
    ----------
    process : {"perturb-identifiability"}
        The process's name (what a scenario file's ``process`` key selects).
    n_genes : int
    n_perturbations : int
        P, the number of perturbation indicators (concepts ``concept_0``...).
    d_invariant, d_responsive : int
        Dimensions of z_ι and z_ν.
    n_controls, n_per_single, n_per_double : int
        Cells with u = 0, with each single perturbation and with each double.
    n_doubles : int
        Distinct double perturbations (pairs drawn seeded among the P(P-1)/2).
    n_cell_types : int
        Components of the mixture over z_ι (means N(0, separation²)).
    cell_type_separation : float
    shift_scale : float
        Magnitude of a perturbation's shift on each of its targets.
    shift_targets : int
        Responsive latents each perturbation shifts (perturbation p always
        targets latent p mod d_ν, so P ≥ d_ν intervenes on every latent).
    edge_probability, edge_weight : float
        Probability of each edge k <- j (j < k) of B, and the scale of its weight
        (|B_kj| uniform on [0.5, 1] × edge_weight, random sign).
    invariant_coupling : float
        Standard deviation of the entries of Γ (how z_ι drives z_ν).
    responsive_noise_sd : float
        σ_η, the scale of the SCM's exogenous noise η (small: z_ν varies mostly
        between perturbations, through the shifts, and through Γ z_ι).
    mixing : {"mlp", "linear"}
        An invertible leaky-ReLU MLP (``mixing_layers`` orthogonal layers) or a
        linear map.
    mixing_layers : int
    leaky_slope : float
        Slope of the leaky ReLU for negative inputs, in (0, 1].
    mixing_scale : float
        Scale of the mixing's output (per-gene sd of g for unit-variance inputs).
    mixing_density : float
        Fraction of non-zero entries of the output map of the responsive genes
        (1: dense).
    responsive_gene_fraction : float
        Fraction of genes read by the full mixing g(z_ι, z_ν); the rest read z_ι only.
    baseline_log_range : (float, float)
        w_j uniform on this range (log scale).
    library_size_sd : float
        σ_l of l_i ~ N(0, σ_l²).
    noise_sd : float
        σ_ε of the residual ε_ij.
    n_double_tasks, n_single_tasks : int
        Tasks of each kind (see the module docstring).
    """

    process: Literal["perturb-identifiability"] = PROCESS
    n_genes: int = 200
    n_perturbations: int = 4
    d_invariant: int = 6
    d_responsive: int = 4
    n_controls: int = 800
    n_per_single: int = 300
    n_per_double: int = 150
    n_doubles: int = 3
    n_cell_types: int = 1
    cell_type_separation: float = 2.0
    shift_scale: float = 2.0
    shift_targets: int = 1
    edge_probability: float = 0.5
    edge_weight: float = 0.8
    invariant_coupling: float = 0.3
    responsive_noise_sd: float = 1.0
    mixing: MixingKind = "mlp"
    mixing_layers: int = 2
    leaky_slope: float = 0.5
    mixing_scale: float = 1.0
    mixing_density: float = 1.0
    responsive_gene_fraction: float = 0.5
    baseline_log_range: tuple[float, float] = (1.5, 3.0)
    library_size_sd: float = 0.2
    noise_sd: float = 0.0
    n_double_tasks: int = 2
    n_single_tasks: int = 0

    def __post_init__(self) -> None:
        def fail(message: str) -> None:
            raise SimcellError(message)

        if self.process != PROCESS:
            fail(f"process must be {PROCESS!r}, got {self.process!r}")
        for name in ("n_genes", "n_perturbations", "d_invariant", "d_responsive", "n_cell_types"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                fail(f"{name} must be an integer >= 1, got {value!r}")
        for name in (
            "n_controls",
            "n_per_single",
            "n_per_double",
            "n_doubles",
            "mixing_layers",
            "n_double_tasks",
            "n_single_tasks",
            "shift_targets",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                fail(f"{name} must be an integer >= 0, got {value!r}")
        for name in (
            "cell_type_separation",
            "shift_scale",
            "edge_weight",
            "invariant_coupling",
            "responsive_noise_sd",
            "mixing_scale",
            "library_size_sd",
            "noise_sd",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                fail(f"{name} must be a number, got {value!r}")
            if not (math.isfinite(value) and value >= 0):
                fail(f"{name} must be finite and >= 0, got {value!r}")
            object.__setattr__(self, name, float(value))
        for name in ("edge_probability", "mixing_density", "responsive_gene_fraction"):
            value = float(getattr(self, name))
            if not 0 <= value <= 1:
                fail(f"{name} must be in [0, 1], got {value!r}")
            object.__setattr__(self, name, value)
        if self.mixing not in ("mlp", "linear"):
            fail(f"mixing must be 'mlp' or 'linear', got {self.mixing!r}")
        if not 0 < float(self.leaky_slope) <= 1:
            fail(f"leaky_slope must be in (0, 1] (an invertible mixing), got {self.leaky_slope!r}")
        object.__setattr__(self, "leaky_slope", float(self.leaky_slope))
        try:
            low, high = (float(v) for v in self.baseline_log_range)
        except (TypeError, ValueError):
            fail(f"baseline_log_range must be a pair of numbers, got {self.baseline_log_range!r}")
        if not (math.isfinite(low) and math.isfinite(high) and low <= high):
            fail(f"baseline_log_range must be finite, low <= high, got {self.baseline_log_range!r}")
        object.__setattr__(self, "baseline_log_range", (low, high))
        n_pairs = self.n_perturbations * (self.n_perturbations - 1) // 2
        if self.n_doubles > n_pairs:
            fail(f"n_doubles={self.n_doubles} exceeds the {n_pairs} pairs of perturbations")
        if self.shift_targets > self.d_responsive:
            fail(f"shift_targets={self.shift_targets} exceeds d_responsive={self.d_responsive}")
        n_responsive = self.n_responsive_genes
        if n_responsive < self.d_invariant + self.d_responsive:
            fail(
                f"{n_responsive} responsive genes cannot hold an injective mixing of "
                f"{self.d_invariant + self.d_responsive} latents; raise n_genes or "
                "responsive_gene_fraction"
            )
        if 0 < self.n_genes - n_responsive < self.d_invariant:
            fail(
                f"{self.n_genes - n_responsive} invariant genes cannot hold an injective mixing "
                f"of {self.d_invariant} latents; raise n_genes or responsive_gene_fraction"
            )
        if self.n_double_tasks > self.n_doubles:
            fail(f"n_double_tasks={self.n_double_tasks} exceeds n_doubles={self.n_doubles}")
        if self.n_single_tasks > self.n_perturbations:
            fail(f"n_single_tasks={self.n_single_tasks} exceeds n_perturbations")

    @property
    def n_cells(self) -> int:
        """Controls, singles and doubles together."""
        return (
            self.n_controls
            + self.n_perturbations * self.n_per_single
            + self.n_doubles * self.n_per_double
        )

    @property
    def n_responsive_genes(self) -> int:
        return int(round(self.responsive_gene_fraction * self.n_genes))

    @property
    def n_concepts(self) -> int:
        """The perturbation indicators are the bundle's concepts."""
        return self.n_perturbations

    def to_dict(self) -> dict[str, Any]:
        """A plain, JSON-friendly dictionary of every field."""
        out = dataclasses.asdict(self)
        out["baseline_log_range"] = list(self.baseline_log_range)
        # the indicators u have no DAG among them: a task's do(u_q := 1) changes u_q alone
        out[S.PARAM_INTERVENTION_MODE] = "direct"
        return out

    def replace(self, **changes: Any) -> PerturbParams:
        """A copy with ``changes`` applied (validated)."""
        unknown = sorted(set(changes) - set(field_names()))
        if unknown:
            raise SimcellError(f"unknown parameter(s) {', '.join(unknown)}")
        return dataclasses.replace(self, **changes)


def field_names() -> tuple[str, ...]:
    """Names of every field of :class:`PerturbParams`."""
    return tuple(f.name for f in dataclasses.fields(PerturbParams))


# ----------------------------------------------------------------------------- world


@dataclass(frozen=True, eq=False)
class PerturbWorld:
    """The parameters of the process drawn once per seed.

    Attributes
    ----------
    baseline : ndarray, shape (n_genes,)
        w_j.
    scm_weights : ndarray, shape (d_responsive, d_responsive)
        B, strictly lower triangular: ``B[k, j]`` is the weight of z_ν,j on z_ν,k.
    coupling : ndarray, shape (d_responsive, d_invariant)
        Γ.
    shifts : ndarray, shape (n_perturbations, d_responsive)
        s_p, one row per perturbation.
    cell_type_means : ndarray, shape (n_cell_types, d_invariant)
    cell_type_proportions : ndarray, shape (n_cell_types,)
    invariant_genes, responsive_genes : ndarray of int64
        Genes read by g_ι(z_ι) and by g(z_ι, z_ν).
    mixing_invariant, mixing_responsive : tuple of ndarray
        Square orthogonal layers (applied as ``h @ layer``), then the output map
        of shape (d_in, n_genes_of_the_set).
    doubles : ndarray of int64, shape (n_doubles, 2)
        The pairs (p, q), p < q, with double-perturbed cells.
    """

    baseline: np.ndarray
    scm_weights: np.ndarray
    coupling: np.ndarray
    shifts: np.ndarray
    cell_type_means: np.ndarray
    cell_type_proportions: np.ndarray
    invariant_genes: np.ndarray
    responsive_genes: np.ndarray
    mixing_invariant: tuple[np.ndarray, ...]
    mixing_responsive: tuple[np.ndarray, ...]
    doubles: np.ndarray


def _orthogonal(rng: np.random.Generator, d: int) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((d, d)))
    return q * np.sign(np.diag(r))


def _mixing(
    rng: np.random.Generator, d_in: int, n_out: int, params: PerturbParams, density: float
) -> tuple[np.ndarray, ...]:
    layers = (
        [_orthogonal(rng, d_in) for _ in range(params.mixing_layers)]
        if params.mixing == "mlp"
        else []
    )
    output = rng.standard_normal((d_in, n_out)) * params.mixing_scale / math.sqrt(d_in)
    if density < 1:
        output = output * (rng.random((d_in, n_out)) < density)
    return (*layers, output)


def draw_world(params: PerturbParams, seed: int) -> PerturbWorld:
    """Draw the world of a seed from the streams ``"perturb-..."``."""
    d_i, d_r, n_p = params.d_invariant, params.d_responsive, params.n_perturbations
    low, high = params.baseline_log_range
    baseline = stream(seed, "perturb-baseline").uniform(low, high, params.n_genes)

    rng = stream(seed, "perturb-scm")
    edges = np.tril(rng.random((d_r, d_r)) < params.edge_probability, k=-1)
    weights = rng.uniform(0.5, 1.0, (d_r, d_r)) * rng.choice([-1.0, 1.0], (d_r, d_r))
    scm_weights = np.where(edges, weights * params.edge_weight, 0.0)
    coupling = rng.standard_normal((d_r, d_i)) * params.invariant_coupling
    shifts = np.zeros((n_p, d_r))
    for p in range(n_p):
        others = [k for k in range(d_r) if k != p % d_r]
        targets = [p % d_r, *rng.permutation(others)[: params.shift_targets - 1].tolist()]
        signs = rng.choice([-1.0, 1.0], len(targets))
        shifts[p, targets] = signs * params.shift_scale * rng.uniform(0.75, 1.25, len(targets))
    if params.shift_targets == 0:
        shifts[:] = 0.0

    rng = stream(seed, "perturb-cell-types")
    cell_type_means = rng.standard_normal((params.n_cell_types, d_i)) * params.cell_type_separation
    if params.n_cell_types == 1:
        cell_type_means[:] = 0.0
    cell_type_proportions = rng.dirichlet(np.full(params.n_cell_types, 5.0))

    rng = stream(seed, "perturb-mixing")
    genes = rng.permutation(params.n_genes)
    responsive_genes = np.sort(genes[: params.n_responsive_genes]).astype(np.int64)
    invariant_genes = np.sort(genes[params.n_responsive_genes :]).astype(np.int64)
    mixing_responsive = _mixing(
        rng, d_i + d_r, responsive_genes.size, params, params.mixing_density
    )
    mixing_invariant = _mixing(rng, d_i, invariant_genes.size, params, 1.0)

    pairs = np.array([(p, q) for p in range(n_p) for q in range(p + 1, n_p)], dtype=np.int64)
    chosen = stream(seed, "perturb-doubles").permutation(len(pairs))[: params.n_doubles]
    doubles = pairs[np.sort(chosen)].reshape(-1, 2)
    return PerturbWorld(
        baseline=baseline,
        scm_weights=scm_weights,
        coupling=coupling,
        shifts=shifts,
        cell_type_means=cell_type_means,
        cell_type_proportions=cell_type_proportions,
        invariant_genes=invariant_genes,
        responsive_genes=responsive_genes,
        mixing_invariant=mixing_invariant,
        mixing_responsive=mixing_responsive,
        doubles=doubles,
    )


# ----------------------------------------------------------------------------- the maps
#
# Every product below is written as a loop of elementwise multiply-adds over the
# (small) input dimension, so a cell's value never depends on which other cells
# are computed with it: a twin computed alone equals its factual cell bit for bit.


def _times(h: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """``h @ weights`` with a fixed summation order per row; (n, d) x (d, m) -> (n, m)."""
    out = np.zeros((h.shape[0], weights.shape[1]))
    for k in range(weights.shape[0]):
        out += h[:, k : k + 1] * weights[k]
    return out


def _mix(h: np.ndarray, layers: tuple[np.ndarray, ...], slope: float) -> np.ndarray:
    for layer in layers[:-1]:
        h = _times(h, layer)
        h = np.where(h > 0, h, slope * h)
    return _times(h, layers[-1])


def responsive_latent(
    world: PerturbWorld, z_invariant: np.ndarray, perturbations: np.ndarray, eta: np.ndarray
) -> np.ndarray:
    """Solve the SCM z_ν = B z_ν + Γ z_ι + Σ_p u_p s_p + η for z_ν.

    Parameters
    ----------
    world : PerturbWorld
    z_invariant : ndarray, shape (n_cells, d_invariant)
    perturbations : ndarray, shape (n_cells, n_perturbations)
        u, entries 0 / 1 (any real value is accepted: the shifts are linear in u).
    eta : ndarray, shape (n_cells, d_responsive)

    Returns
    -------
    ndarray, shape (n_cells, d_responsive)
        Forward substitution in the order of B's (lower-triangular) DAG.
    """
    exogenous = (
        _times(z_invariant, world.coupling.T)
        + _times(np.asarray(perturbations, dtype=np.float64), world.shifts)
        + eta
    )
    z = np.zeros_like(exogenous)
    for k in range(z.shape[1]):
        z[:, k] = exogenous[:, k]
        for j in range(k):
            z[:, k] += world.scm_weights[k, j] * z[:, j]
    return z


def log_rates(
    world: PerturbWorld,
    params: PerturbParams,
    z_invariant: np.ndarray,
    z_responsive: np.ndarray,
    library_size: np.ndarray,
) -> np.ndarray:
    """log λ = w + l + g(z_ι, z_ν) without the residual, shape (n_cells, n_genes)."""
    out = np.empty((z_invariant.shape[0], params.n_genes))
    slope = params.leaky_slope
    out[:, world.responsive_genes] = _mix(
        np.concatenate([z_invariant, z_responsive], axis=1), world.mixing_responsive, slope
    )
    if world.invariant_genes.size:
        out[:, world.invariant_genes] = _mix(z_invariant, world.mixing_invariant, slope)
    out += world.baseline
    out += library_size[:, None]
    return out


# ----------------------------------------------------------------------------- cells


@dataclass(frozen=True, eq=False)
class PerturbCells:
    """Every cell's exogenous state and label.

    Attributes
    ----------
    perturbations : ndarray of float64, shape (n_cells, n_perturbations)
        u (0 / 1).
    cell_type : ndarray of int64, shape (n_cells,)
    z_invariant : ndarray, shape (n_cells, d_invariant)
    eta : ndarray, shape (n_cells, d_responsive)
    library_size : ndarray, shape (n_cells,)
    """

    perturbations: np.ndarray
    cell_type: np.ndarray
    z_invariant: np.ndarray
    eta: np.ndarray
    library_size: np.ndarray


def _labels(params: PerturbParams, world: PerturbWorld) -> np.ndarray:
    rows = [np.zeros((params.n_controls, params.n_perturbations))]
    for p in range(params.n_perturbations):
        block = np.zeros((params.n_per_single, params.n_perturbations))
        block[:, p] = 1.0
        rows.append(block)
    for p, q in world.doubles:
        block = np.zeros((params.n_per_double, params.n_perturbations))
        block[:, [p, q]] = 1.0
        rows.append(block)
    return np.concatenate(rows)


def draw_cells(params: PerturbParams, world: PerturbWorld, seed: int) -> PerturbCells:
    """Labels in a fixed order (controls, singles, doubles); noise per cell block."""
    n = params.n_cells
    cell_type = np.empty(n, dtype=np.int64)
    z_invariant = np.empty((n, params.d_invariant))
    eta = np.empty((n, params.d_responsive))
    library_size = np.empty(n)
    for start in range(0, n, CELL_BLOCK):
        stop = min(start + CELL_BLOCK, n)
        block, rows = start // CELL_BLOCK, stop - start
        cell_type[start:stop] = stream(seed, "perturb-cell-type", block).choice(
            params.n_cell_types, rows, p=world.cell_type_proportions
        )
        z_invariant[start:stop] = world.cell_type_means[cell_type[start:stop]] + stream(
            seed, "perturb-invariant", block
        ).standard_normal((rows, params.d_invariant))
        eta[start:stop] = params.responsive_noise_sd * stream(
            seed, "perturb-eta", block
        ).standard_normal((rows, params.d_responsive))
        library_size[start:stop] = params.library_size_sd * stream(
            seed, "perturb-library", block
        ).standard_normal(rows)
    return PerturbCells(
        perturbations=_labels(params, world),
        cell_type=cell_type,
        z_invariant=z_invariant,
        eta=eta,
        library_size=library_size,
    )


def _counts(
    params: PerturbParams,
    world: PerturbWorld,
    seed: int,
    positions: np.ndarray,
    z_invariant: np.ndarray,
    z_responsive: np.ndarray,
    library_size: np.ndarray,
) -> sp.csr_matrix:
    """Counts of cells at ``positions`` (rows aligned with the latents) from their
    cell blocks' residuals and uniforms, CSR int32."""
    out = np.empty((positions.size, params.n_genes), dtype=np.int32)
    blocks = positions // CELL_BLOCK
    for block in np.unique(blocks):
        rows = np.flatnonzero(blocks == block)
        start = int(block) * CELL_BLOCK
        n_rows = min(CELL_BLOCK, params.n_cells - start)
        residual, uniform = block_noise(seed, int(block), n_rows, params.n_genes)
        local = positions[rows] - start
        log_rate = log_rates(
            world, params, z_invariant[rows], z_responsive[rows], library_size[rows]
        )
        log_rate += params.noise_sd * residual[local].astype(np.float64)
        q = np.ascontiguousarray(uniform[local]).reshape(-1)
        out[rows] = settle_counts(q, np.exp(log_rate).reshape(-1)).reshape(rows.size, -1)
    return sp.csr_matrix(out)


# ----------------------------------------------------------------------------- tasks


def _half(rng: np.random.Generator, members: np.ndarray) -> np.ndarray:
    return np.sort(rng.permutation(members)[: members.size // 2])


def draw_tasks(
    params: PerturbParams, world: PerturbWorld, cells: PerturbCells, seed: int
) -> list[Task]:
    """The double tasks, then the single tasks, from the stream ``"perturb-tasks"``."""
    rng = stream(seed, "perturb-tasks")
    u = cells.perturbations
    n_on = u.sum(axis=1)
    double = n_on == 2
    tasks: list[Task] = []
    for pick in rng.permutation(len(world.doubles))[: params.n_double_tasks]:
        p, q = (int(v) for v in rng.permutation(world.doubles[pick]))
        cell_type = int(rng.integers(params.n_cell_types))
        of_type = cells.cell_type == cell_type
        split = np.full(params.n_cells, S.TRAIN, dtype=object)
        split[double] = EXCLUDED
        target = double & (u[:, p] == 1) & (u[:, q] == 1)
        split[target & of_type] = S.HELDOUT
        sources = np.flatnonzero(of_type & (n_on == 1) & (u[:, p] == 1))
        split[_half(rng, sources)] = S.INTERVENE
        tasks.append(Task(name=f"task_{len(tasks)}", cell_type=cell_type, concept=q, split=split))
    for q in rng.permutation(params.n_perturbations)[: params.n_single_tasks]:
        q = int(q)
        cell_type = int(rng.integers(params.n_cell_types))
        of_type = cells.cell_type == cell_type
        split = np.full(params.n_cells, S.TRAIN, dtype=object)
        split[double | ((n_on == 1) & (u[:, q] == 1))] = EXCLUDED
        split[of_type & (n_on == 1) & (u[:, q] == 1)] = S.HELDOUT
        split[_half(rng, np.flatnonzero(of_type & (n_on == 0)))] = S.INTERVENE
        tasks.append(Task(name=f"task_{len(tasks)}", cell_type=cell_type, concept=q, split=split))
    return tasks


def task_kinds(params: PerturbParams) -> list[str]:
    """``double`` / ``single`` for the tasks of :func:`draw_tasks`, in order."""
    return ["double"] * params.n_double_tasks + ["single"] * params.n_single_tasks


# ----------------------------------------------------------------------------- dataset


def _concept_columns(params: PerturbParams) -> list[str]:
    return [S.concept_name(p) for p in range(params.n_perturbations)]


class PerturbDataset:
    """A simulated ``perturb-identifiability`` dataset with exact twins.

    Attributes
    ----------
    params : PerturbParams
    seed : int
    scenario : str
    world : PerturbWorld
    cells : PerturbCells
    z_responsive : ndarray, shape (n_cells, d_responsive)
        The factual cells' z_ν.
    tasks : list of Task
    factual, counterfactuals : AnnData
        Laid out as the bundle's ``factual.h5ad`` / ``counterfactual.h5ad``.
    corruption : None
    """

    corruption = None

    def __init__(self, params: PerturbParams, seed: int, scenario: str) -> None:
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise SimcellError(f"seed must be a non-negative integer, got {seed!r}")
        self.params, self.seed, self.scenario = params, int(seed), scenario
        self.world = draw_world(params, self.seed)
        self.cells = draw_cells(params, self.world, self.seed)
        self.z_responsive = responsive_latent(
            self.world, self.cells.z_invariant, self.cells.perturbations, self.cells.eta
        )
        self.tasks = draw_tasks(params, self.world, self.cells, self.seed)
        everyone = np.arange(params.n_cells)
        counts = _counts(
            params,
            self.world,
            self.seed,
            everyone,
            self.cells.z_invariant,
            self.z_responsive,
            self.cells.library_size,
        )
        self.factual = self._factual(counts)
        sources, targets, labels = [], [], []
        for task in self.tasks:
            index = task.intervene
            target = self.cells.perturbations[index].copy()
            target[:, task.concept] = 1.0
            sources.append(index)
            targets.append(target)
            labels += [task.name] * index.size
        if sources:
            source, target = np.concatenate(sources), np.concatenate(targets)
        else:
            source, target = np.zeros(0, dtype=np.int64), np.zeros((0, params.n_perturbations))
        self.counterfactuals = self._twins(source, target, labels)

    def __repr__(self) -> str:
        return (
            f"PerturbDataset(scenario={self.scenario!r}, seed={self.seed}, "
            f"n_cells={self.params.n_cells}, n_genes={self.params.n_genes}, "
            f"tasks={len(self.tasks)})"
        )

    def _positions(self, cells) -> np.ndarray:
        values = np.atleast_1d(np.asarray(cells))
        if values.dtype.kind in "OUS":
            index = self.factual.obs_names.get_indexer(values.astype(str))
            if (index < 0).any():
                raise SimcellError(f"unknown cell name(s): {values[index < 0][:5].tolist()}")
            return index.astype(np.int64)
        if values.dtype.kind not in "iu":
            raise SimcellError("cells must be obs names or integer positions")
        n = self.params.n_cells
        if ((values < 0) | (values >= n)).any():
            raise SimcellError(f"cell position out of range for {n} cells")
        return values.astype(np.int64)

    def latents(
        self, cells, perturbations: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(z_ι, z_ν) of ``cells`` under ``do(u := perturbations)`` (factual u when None)."""
        index = self._positions(cells)
        u = self._targets(index, perturbations)
        z_inv = self.cells.z_invariant[index]
        return z_inv, responsive_latent(self.world, z_inv, u, self.cells.eta[index])

    def _targets(self, index: np.ndarray, perturbations) -> np.ndarray:
        if perturbations is None:
            return self.cells.perturbations[index]
        u = np.asarray(perturbations, dtype=np.float64)
        u = np.broadcast_to(u, (index.size, self.params.n_perturbations)) if u.ndim == 1 else u
        if u.shape != (index.size, self.params.n_perturbations):
            raise SimcellError(
                f"do(): perturbations of shape {u.shape}, expected "
                f"({index.size}, {self.params.n_perturbations})"
            )
        if not np.isfinite(u).all():
            raise SimcellError("do(): perturbations must be finite")
        return np.array(u)

    def counterfactual(self, cells, perturbations: np.ndarray | None = None) -> ad.AnnData:
        """Exact twins of ``cells`` under ``do(u := perturbations)``.

        z_ι, η, the library size, the residuals and every uniform are the
        factual cell's; z_ν is recomputed through the SCM.

        Parameters
        ----------
        cells : sequence of str or int
        perturbations : ndarray, shape (n_perturbations,) or (n_cells, n_perturbations), optional
            The new u (the factual one when omitted: the factual cells, bit for bit).

        Returns
        -------
        AnnData
            Laid out as ``counterfactual.h5ad`` (task ``"do"``), with the twins'
            latents in ``obsm``.
        """
        index = self._positions(cells)
        return self._twins(index, self._targets(index, perturbations), ["do"] * index.size)

    def _twins(self, source: np.ndarray, target: np.ndarray, labels: list[str]) -> ad.AnnData:
        z_inv = self.cells.z_invariant[source]
        z_resp = responsive_latent(self.world, z_inv, target, self.cells.eta[source])
        counts = _counts(
            self.params,
            self.world,
            self.seed,
            source,
            z_inv,
            z_resp,
            self.cells.library_size[source],
        )
        source_names = np.asarray(self.factual.obs_names)[source].astype(str)
        names = [f"{t}:{s}" for t, s in zip(labels, source_names, strict=True)]
        obs = pd.DataFrame(
            {
                S.TRUTH_TASK: pd.Categorical(labels),
                S.TRUTH_SOURCE_CELL: source_names,
                S.TRUTH_MODE: pd.Categorical(
                    ["direct"] * len(names), categories=["causal", "direct"]
                ),
            },
            index=pd.Index(names, dtype=str),
        )
        return ad.AnnData(
            X=counts,
            obs=obs,
            var=pd.DataFrame(index=self.factual.var_names.copy()),
            obsm={
                S.CONCEPTS_TRUE: pd.DataFrame(
                    target, index=obs.index, columns=_concept_columns(self.params)
                ),
                S.latent_key("z_invariant"): z_inv,
                S.latent_key("z_responsive"): z_resp,
            },
        )

    def _factual(self, counts: sp.csr_matrix) -> ad.AnnData:
        params, cells = self.params, self.cells
        obs_names = pd.Index([f"cell_{i}" for i in range(params.n_cells)], dtype=str)
        obs = pd.DataFrame(
            {
                S.OBS_BATCH: pd.Categorical(["batch_0"] * params.n_cells),
                S.OBS_TISSUE: pd.Categorical(["tissue_0"] * params.n_cells),
                S.OBS_CELL_TYPE: pd.Categorical.from_codes(
                    cells.cell_type, [f"cell_type_{c}" for c in range(params.n_cell_types)]
                ),
                S.OBS_LIBRARY_SIZE: cells.library_size,
            },
            index=obs_names,
        )
        for task in self.tasks:
            obs[S.split_column(task.name)] = pd.Categorical(
                task.split.astype(str), categories=_SPLITS
            )
        columns = _concept_columns(params)
        concepts = pd.DataFrame(cells.perturbations, index=obs_names, columns=columns)
        factual = ad.AnnData(
            X=counts,
            obs=obs,
            var=pd.DataFrame(
                {S.BASELINE: self.world.baseline},
                index=pd.Index([f"gene_{j}" for j in range(params.n_genes)], dtype=str),
            ),
            obsm={
                S.CONCEPTS: concepts.astype(np.float32),
                S.CONCEPTS_TRUE: concepts,
                S.latent_key("z_invariant"): cells.z_invariant,
                S.latent_key("z_responsive"): self.z_responsive,
            },
        )
        factual.uns[S.UNS] = self._metadata()
        return factual

    def _metadata(self) -> dict:
        params, world = self.params, self.world
        tasks = pd.DataFrame(
            {
                S.TASK_NAME: [t.name for t in self.tasks],
                S.TASK_CELL_TYPE: [f"cell_type_{t.cell_type}" for t in self.tasks],
                S.TASK_CONCEPT: [S.concept_name(t.concept) for t in self.tasks],
                S.TASK_N_INTERVENE: [int((t.split == S.INTERVENE).sum()) for t in self.tasks],
                S.TASK_N_HELDOUT: [int((t.split == S.HELDOUT).sum()) for t in self.tasks],
                "kind": task_kinds(params)[: len(self.tasks)],
            }
        )
        resolved = params.to_dict()
        return {
            S.UNS_VERSION: simcell.__version__,
            S.UNS_SCENARIO: self.scenario,
            S.UNS_SEED: self.seed,
            S.UNS_PROCESS: PROCESS,
            S.UNS_PARAMS: resolved,
            S.UNS_TASKS: tasks,
            S.UNS_CONCEPT_DAG: np.zeros((0, 3)),
            S.UNS_CONCEPT_KINDS: np.asarray(["binary"] * params.n_perturbations, dtype=str),
            S.UNS_PERTURB: {
                S.PERTURB_SCM_WEIGHTS: world.scm_weights,
                S.PERTURB_COUPLING: world.coupling,
                S.PERTURB_SHIFTS: world.shifts,
                S.PERTURB_DOUBLES: world.doubles,
                S.PERTURB_CELL_TYPE_MEANS: world.cell_type_means,
                S.PERTURB_INVARIANT_GENES: world.invariant_genes,
                S.PERTURB_RESPONSIVE_GENES: world.responsive_genes,
                S.PERTURB_MIXING_INVARIANT: _layers(world.mixing_invariant),
                S.PERTURB_MIXING_RESPONSIVE: _layers(world.mixing_responsive),
            },
        }


def _layers(layers: tuple[np.ndarray, ...]) -> dict[str, np.ndarray]:
    """The mixing's matrices as ``layer_0``, ``layer_1``, ..., ``output`` (h5ad-storable)."""
    named = {f"layer_{k}": layer for k, layer in enumerate(layers[:-1])}
    named["output"] = layers[-1]
    return named


#: the derived true latent a shift readout identifies (see :func:`exogenous_latent`)
EXOGENOUS = "z_exogenous"


def exogenous_latent(factual: ad.AnnData) -> np.ndarray | None:
    """The SCM's exogenous term S u + η = (I − B) z_ν − Γ z_ι of every cell.

    Shift interventions move the means only, so B and Γ are free
    reparametrisations of the responsive latents: z̃ = (I − B) z_ν − Γ z_ι is
    the same data under B̃ = 0, Γ̃ = 0. What single-target shifts identify up to
    permutation and scale is therefore this term, not z_ν (equal to it when the
    scenario has no DAG and no coupling, as ``perturb-identifiability-sparse``).

    Parameters
    ----------
    factual : AnnData
        A bundle's ``factual`` (its stored latents and world).

    Returns
    -------
    ndarray, shape (n_cells, d_responsive), or None
        None for a bundle of another process.
    """
    if S.process_name(factual) != PROCESS:
        return None
    latents = S.true_latents(factual)
    world = factual.uns[S.UNS][S.UNS_PERTURB]
    scm = np.asarray(world[S.PERTURB_SCM_WEIGHTS], dtype=np.float64)
    coupling = np.asarray(world[S.PERTURB_COUPLING], dtype=np.float64)
    z_responsive, z_invariant = latents["z_responsive"], latents["z_invariant"]
    return z_responsive - z_responsive @ scm.T - z_invariant @ coupling.T


def simulate(params: PerturbParams, seed: int = 0, *, scenario: str = "custom") -> PerturbDataset:
    """Simulate a ``perturb-identifiability`` dataset in memory (counts and twins)."""
    if not isinstance(params, PerturbParams):
        raise SimcellError(f"expected PerturbParams, got {type(params).__name__}")
    return PerturbDataset(params, seed, scenario)


def generate_bundle(
    params: PerturbParams,
    seed: int,
    out_dir: str | os.PathLike,
    *,
    scenario: str = "custom",
    progress=None,
    overwrite: bool = False,
    **_engine: Any,
) -> PerturbDataset:
    """Simulate and write the bundle (the same files and manifest as the scCBGM process).

    The dataset is small by design (thousands of cells): it is simulated in
    memory, so the engine options of the scCBGM process (chunks, threads,
    device, Dask) are accepted and ignored; they never change counts.
    """
    from simcell.simulator.bundle import write_bundle

    dataset = simulate(params, seed, scenario=scenario)
    write_bundle(dataset, Path(out_dir), overwrite=overwrite)  # type: ignore[arg-type]
    if progress is not None:
        progress(params.n_cells)
    return dataset
