"""The ``linear-sde`` process: gene programs at the stationary law of a linear SDE.

Gene programs x ∈ R^d follow the Ornstein–Uhlenbeck process

    dx = (A x + b + c_u) dt + σ dW

where A is a stable matrix with a sparse random graph (``A[i, j]`` is the
direct effect of program j on the drift of program i), b a bias and c_u the
drift shift of perturbation u (combinations add their shifts). Cells are drawn
**exactly** from the stationary law

    x ~ N(μ_u, Σ),   μ_u = −A⁻¹ (b + c_u),   A Σ + Σ Aᵀ = −σ² I

as x = μ_u + L z with L Lᵀ = Σ (Cholesky) and z ~ N(0, I) the cell's exogenous
noise, so the twin of a cell under ``do(u := u')`` is exactly x + μ_{u'} − μ_u.
Observations are either x itself (``gaussian``, the Python API) or counts
(``counts``) with log-rate ``count_baseline + count_scale · x`` through the
exact Poisson inverse CDF with one uniform per cell and program, shared by a
cell and its twins, so count twins are exact too.

Reference: Lorch et al., *Latent causal diffusions for single-cell
perturbation modeling* (2026), synthetic study.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Literal

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy.linalg import cho_factor, solve_continuous_lyapunov

import simcell
from simcell import SimcellError
from simcell._random import stream
from simcell.simulator import schema as S
from simcell.simulator.poisson import poisson_ppf

PROCESS = "linear-sde"
#: split label of cells a task neither trains on nor asks about
EXCLUDED = "excluded"
#: uns[simcell][LINEAR_SDE] holds the process's parameters under these keys
LINEAR_SDE = "linear_sde"
DRIFT_MATRIX, BIAS, SHIFTS, COVARIANCE = "drift_matrix", "bias", "shifts", "covariance"
CONDITIONS, TRAIN_SINGLES, TASK_CONDITIONS = "conditions", "train_singles", "task_conditions"
#: obsm key of the true programs x (the interface's ``simcell_latent_<name>``)
LATENT_PROGRAMS = "simcell_latent_programs"

Graph = Literal["erdos_renyi", "scale_free"]
Observation = Literal["gaussian", "counts"]
ShiftSign = Literal["both", "positive"]


@dataclass(frozen=True, kw_only=True)
class LinearSDEParams:
    """Every knob of the ``linear-sde`` process, validated on construction.

    Parameters
    ----------
    process : {"linear-sde"}
        The scenario key that selects this process.
    n_genes : int
        d, the number of gene programs (each one can be perturbed).
    cells_per_condition : int
        Cells drawn for the control, every single and every double.
    graph : {"erdos_renyi", "scale_free"}
        Random graph of A's off-diagonal support.
    degree : float
        Expected number of parents per program.
    weight_range : (float, float)
        Edge weights are U[low, high] times a random sign.
    stability_margin : float
        A = W − (max Re λ(W) + margin) I, so every eigenvalue has Re ≤ −margin.
    bias_range : (float, float)
        b ~ U[low, high] per program.
    shift_range : (float, float)
        On-target shift |c_kk| ~ U[low, high].
    shift_sign : {"both", "positive"}
        Random sign of every shift, or positive shifts only.
    off_target_fraction : float
        Probability that perturbation k also shifts another program (U[low, high]
        times a random sign).
    sigma : float
        Diffusion σ.
    n_heldout_singles : int
        Single perturbations never trained on (one task each).
    n_doubles : int
        Pairs of trained singles, never trained on (one task each).
    observation : {"gaussian", "counts"}
    count_baseline, count_scale : float
        log λ = count_baseline + count_scale · x for the ``counts`` observation.
    """

    process: Literal["linear-sde"] = PROCESS
    n_genes: int = 20
    cells_per_condition: int = 200
    graph: Graph = "erdos_renyi"
    degree: float = 2.0
    weight_range: tuple[float, float] = (0.5, 1.5)
    stability_margin: float = 0.5
    bias_range: tuple[float, float] = (-1.0, 1.0)
    shift_range: tuple[float, float] = (5.0, 15.0)
    shift_sign: ShiftSign = "both"
    off_target_fraction: float = 0.0
    sigma: float = 1.0
    n_heldout_singles: int = 2
    n_doubles: int = 4
    observation: Observation = "counts"
    count_baseline: float = 1.5
    count_scale: float = 0.3

    def __post_init__(self) -> None:
        for name in ("weight_range", "bias_range", "shift_range"):
            value = getattr(self, name)
            try:
                low, high = (float(v) for v in value)
            except (TypeError, ValueError):
                raise SimcellError(f"{name} must be a pair of numbers, got {value!r}") from None
            if not (math.isfinite(low) and math.isfinite(high) and low <= high):
                raise SimcellError(f"{name} must be finite with low <= high, got {value!r}")
            object.__setattr__(self, name, (low, high))
        options = {
            "process": (PROCESS,),
            "graph": ("erdos_renyi", "scale_free"),
            "observation": ("gaussian", "counts"),
            "shift_sign": ("both", "positive"),
        }
        for name, allowed in options.items():
            if getattr(self, name) not in allowed:
                raise SimcellError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        for name in ("n_genes", "cells_per_condition", "n_heldout_singles", "n_doubles"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
                raise SimcellError(f"{name} must be a non-negative integer, got {value!r}")
            object.__setattr__(self, name, int(value))
        if self.n_genes < 2 or self.cells_per_condition < 2:
            raise SimcellError("n_genes and cells_per_condition must be >= 2")
        for name in (
            "degree",
            "stability_margin",
            "sigma",
            "off_target_fraction",
            "count_baseline",
            "count_scale",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
                raise SimcellError(f"{name} must be a number, got {value!r}")
            if not math.isfinite(float(value)):
                raise SimcellError(f"{name} must be finite, got {value!r}")
            object.__setattr__(self, name, float(value))
        if self.sigma <= 0 or self.stability_margin <= 0 or self.degree < 0:
            raise SimcellError("sigma and stability_margin must be > 0, degree >= 0")
        if not 0.0 <= self.off_target_fraction <= 1.0:
            raise SimcellError(
                f"off_target_fraction must lie in [0, 1], got {self.off_target_fraction}"
            )
        n_train = self.n_genes - self.n_heldout_singles
        if n_train < 2 and self.n_doubles:
            raise SimcellError("doubles need at least two trained singles")
        if self.n_doubles > n_train * (n_train - 1) // 2:
            raise SimcellError(
                f"n_doubles = {self.n_doubles} exceeds the {n_train * (n_train - 1) // 2} "
                f"pairs of {n_train} trained singles"
            )

    # the names the bundle writer and the CLI expect of a scenario's parameters
    @property
    def n_conditions(self) -> int:
        """Control, every single and every double."""
        return 1 + self.n_genes + self.n_doubles

    @property
    def n_cells(self) -> int:
        return self.n_conditions * self.cells_per_condition

    @property
    def n_concepts(self) -> int:
        """One perturbation indicator per program."""
        return self.n_genes

    def to_dict(self) -> dict[str, Any]:
        """A plain, JSON-friendly dictionary of every field."""
        out = dataclasses.asdict(self)
        for name in ("weight_range", "bias_range", "shift_range"):
            out[name] = list(out[name])
        return out


def field_names() -> tuple[str, ...]:
    """Names of every field of :class:`LinearSDEParams`."""
    return tuple(f.name for f in dataclasses.fields(LinearSDEParams))


# ----------------------------------------------------------------------------- the system


@dataclass(frozen=True, eq=False)
class LinearSystem:
    """The drawn parameters of one linear SDE.

    Attributes
    ----------
    drift_matrix : ndarray, shape (d, d)
        A (stable); ``A[i, j]`` is the direct effect of program j on program i.
    bias : ndarray, shape (d,)
        b.
    shifts : ndarray, shape (d, d)
        Row k is c_k, the drift shift of perturbing program k.
    sigma : float
    covariance : ndarray, shape (d, d)
        Σ, solving A Σ + Σ Aᵀ = −σ² I.
    """

    drift_matrix: np.ndarray
    bias: np.ndarray
    shifts: np.ndarray
    sigma: float
    covariance: np.ndarray

    @property
    def d(self) -> int:
        return self.bias.size

    def shift_of(self, indicators: np.ndarray) -> np.ndarray:
        """c_u = Σ_k u_k c_k, shape (..., d), for perturbation indicators (..., d)."""
        return np.asarray(indicators, dtype=np.float64) @ self.shifts

    def mean(self, indicators: np.ndarray) -> np.ndarray:
        """μ_u = −A⁻¹ (b + c_u), shape (..., d)."""
        rhs = self.bias + self.shift_of(indicators)
        return -np.linalg.solve(self.drift_matrix, np.atleast_2d(rhs).T).T.reshape(rhs.shape)

    def drift(self, x: np.ndarray, indicators: np.ndarray) -> np.ndarray:
        """f(x, u) = A x + b + c_u, shape (n, d)."""
        return x @ self.drift_matrix.T + self.bias + self.shift_of(indicators)


def stationary_covariance(drift_matrix: np.ndarray, sigma: float) -> np.ndarray:
    """Σ with A Σ + Σ Aᵀ = −σ² I (scipy's continuous Lyapunov solver), symmetrised."""
    d = drift_matrix.shape[0]
    cov = solve_continuous_lyapunov(drift_matrix, -(sigma**2) * np.eye(d))
    return 0.5 * (cov + cov.T)


def _graph(params: LinearSDEParams, rng: np.random.Generator) -> np.ndarray:
    """Boolean support (d, d), ``support[i, j]``: an edge j -> i, no self-loops."""
    d = params.n_genes
    if params.graph == "erdos_renyi":
        p = min(1.0, params.degree / (d - 1))
        support = rng.random((d, d)) < p
    else:  # preferential attachment: each new node takes m parents among earlier ones
        m = max(1, round(params.degree))
        support = np.zeros((d, d), dtype=bool)
        weight = np.ones(d)
        for node in range(1, d):
            k = min(m, node)
            chosen = rng.choice(node, size=k, replace=False, p=weight[:node] / weight[:node].sum())
            support[node, chosen] = True
            weight[chosen] += 1
            weight[node] += k
        order = rng.permutation(d)
        support = support[np.ix_(order, order)]
    np.fill_diagonal(support, False)
    return support


def _signed_uniform(
    rng: np.random.Generator, bounds: tuple[float, float], shape, sign: ShiftSign = "both"
) -> np.ndarray:
    magnitude = rng.uniform(bounds[0], bounds[1], size=shape)
    if sign == "positive":
        return magnitude
    return magnitude * rng.choice([-1.0, 1.0], size=shape)


def draw_system(params: LinearSDEParams, seed: int) -> LinearSystem:
    """Draw A, b, the shifts and Σ from named streams of ``seed``."""
    d = params.n_genes
    rng = stream(seed, PROCESS, "drift")
    weights = _graph(params, rng) * _signed_uniform(rng, params.weight_range, (d, d))
    top = float(np.linalg.eigvals(weights).real.max())
    drift_matrix = weights - (top + params.stability_margin) * np.eye(d)
    bias = stream(seed, PROCESS, "bias").uniform(*params.bias_range, size=d)
    rng = stream(seed, PROCESS, "shifts")
    shifts = np.diag(_signed_uniform(rng, params.shift_range, d, params.shift_sign))
    off = rng.random((d, d)) < params.off_target_fraction
    np.fill_diagonal(off, False)
    shifts = shifts + off * _signed_uniform(rng, params.shift_range, (d, d), params.shift_sign)
    return LinearSystem(
        drift_matrix=drift_matrix,
        bias=bias,
        shifts=shifts,
        sigma=params.sigma,
        covariance=stationary_covariance(drift_matrix, params.sigma),
    )


# ----------------------------------------------------------------------------- cells


@dataclass(frozen=True, eq=False)
class LinearSDEDataset:
    """Cells of the ``linear-sde`` process with their exogenous noise.

    Attributes
    ----------
    params : LinearSDEParams
    seed : int
    system : LinearSystem
    conditions : ndarray of int8, shape (n_conditions, d)
        Perturbation indicators of the control (row 0), every single, every double.
    train_singles : ndarray of int64
        The singles models may train on (the rest are held out).
    condition : ndarray of int64, shape (n_cells,)
        Each cell's row of ``conditions``.
    noise : ndarray, shape (n_cells, d)
        L z, the cell's exogenous deviation from its condition's mean.
    uniforms : ndarray, shape (n_cells, d)
        δ of the count observation (one per cell and program).
    """

    params: LinearSDEParams
    seed: int
    system: LinearSystem
    conditions: np.ndarray
    train_singles: np.ndarray
    condition: np.ndarray
    noise: np.ndarray
    uniforms: np.ndarray

    @property
    def indicators(self) -> np.ndarray:
        """Every cell's perturbation indicators, shape (n_cells, d)."""
        return self.conditions[self.condition].astype(np.float64)

    @property
    def programs(self) -> np.ndarray:
        """x = μ_u + L z of every cell, shape (n_cells, d)."""
        return self.system.mean(self.indicators) + self.noise

    def twin_programs(self, cells: np.ndarray, indicators: np.ndarray) -> np.ndarray:
        """x' = μ_{u'} + L z of ``cells`` under ``do(u := indicators)``, shape (n, d).

        Equal to x + μ_{u'} − μ_u; ``indicators`` equal to the cells' own give x.
        """
        cells = np.asarray(cells, dtype=np.int64)
        return self.system.mean(np.asarray(indicators, dtype=np.float64)) + self.noise[cells]

    def counts_of(self, programs: np.ndarray, cells: np.ndarray) -> np.ndarray:
        """Counts Q(δ; exp(baseline + scale · x)) of ``programs`` with ``cells``' uniforms."""
        rate = np.exp(self.params.count_baseline + self.params.count_scale * programs)
        return poisson_ppf(self.uniforms[np.asarray(cells, dtype=np.int64)], rate)

    def counts(self) -> np.ndarray:
        """Every cell's counts, shape (n_cells, d), int64."""
        return self.counts_of(self.programs, np.arange(self.condition.size))


def _conditions(params: LinearSDEParams, seed: int) -> tuple[np.ndarray, np.ndarray]:
    d = params.n_genes
    order = stream(seed, PROCESS, "heldout singles").permutation(d)
    train_singles = np.sort(order[params.n_heldout_singles :])
    pairs = np.array(
        [(a, b) for i, a in enumerate(train_singles) for b in train_singles[i + 1 :]],
        dtype=np.int64,
    ).reshape(-1, 2)
    chosen = stream(seed, PROCESS, "doubles").choice(len(pairs), params.n_doubles, replace=False)
    conditions = np.zeros((params.n_conditions, d), dtype=np.int8)
    conditions[1 : d + 1] = np.eye(d, dtype=np.int8)
    for row, pair in enumerate(pairs[np.sort(chosen)]):
        conditions[d + 1 + row, pair] = 1
    return conditions, train_singles


def simulate_linear_sde(params: LinearSDEParams, seed: int = 0) -> LinearSDEDataset:
    """Draw the system and every cell (control, singles, doubles) exactly.

    Parameters
    ----------
    params : LinearSDEParams
    seed : int
        Non-negative; every random quantity comes from a stream named by it.

    Returns
    -------
    LinearSDEDataset
    """
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise SimcellError(f"seed must be a non-negative integer, got {seed!r}")
    seed = int(seed)
    system = draw_system(params, seed)
    conditions, train_singles = _conditions(params, seed)
    condition = np.repeat(np.arange(params.n_conditions), params.cells_per_condition)
    try:
        chol = np.tril(cho_factor(system.covariance, lower=True)[0])
    except np.linalg.LinAlgError:  # pragma: no cover - Σ of a stable A is positive definite
        raise SimcellError("the stationary covariance is not positive definite") from None
    z = stream(seed, PROCESS, "exogenous").standard_normal((condition.size, params.n_genes))
    uniforms = stream(seed, PROCESS, "uniform").random((condition.size, params.n_genes))
    return LinearSDEDataset(
        params=params,
        seed=seed,
        system=system,
        conditions=conditions,
        train_singles=train_singles.astype(np.int64),
        condition=condition.astype(np.int64),
        noise=z @ chol.T,
        uniforms=uniforms,
    )


# ----------------------------------------------------------------------------- the bundle


@dataclass(frozen=True)
class LinearSDETask:
    """One held-out perturbation: twins of ``source`` cells under ``do(concept := 1)``.

    Attributes
    ----------
    name : str
    cell_type : int
        Always 0 (the process has one cell type).
    concept : int
        The program whose perturbation indicator is switched on.
    source : int
        The condition (row of ``conditions``) of the source cells.
    target : int
        The condition of the true target population (heldout cells).
    split : ndarray of str, shape (n_cells,)
        ``train`` / ``intervene`` / ``heldout`` / ``excluded``.
    """

    name: str
    cell_type: int
    concept: int
    source: int
    target: int
    split: np.ndarray


def _condition_label(indicators: np.ndarray) -> str:
    on = np.flatnonzero(indicators)
    return "control" if on.size == 0 else "+".join(str(k) for k in on)


def make_linear_sde_tasks(data: LinearSDEDataset) -> list[LinearSDETask]:
    """One task per double (source: its first single, concept: the second) and per
    held-out single (source: the control).

    Every task trains on the control and the trained singles, except the half of
    the source cells it asks about (``intervene``, seeded per task); the target
    condition's cells are ``heldout``; every other cell is ``excluded``.
    """
    params, conditions = data.params, data.conditions
    d = params.n_genes
    trained = np.zeros(params.n_conditions, dtype=bool)
    trained[0] = True
    trained[1 + data.train_singles] = True
    heldout_singles = [k for k in range(d) if k not in set(data.train_singles.tolist())]
    questions = []  # (source condition, concept, target condition)
    for row in range(d + 1, params.n_conditions):
        first, second = np.flatnonzero(conditions[row])
        questions.append((1 + int(first), int(second), row))
    questions += [(0, k, 1 + k) for k in heldout_singles]
    tasks = []
    for number, (source, concept, target) in enumerate(questions):
        name = f"task_{number}"
        split = np.where(trained[data.condition], S.TRAIN, EXCLUDED).astype(object)
        members = np.flatnonzero(data.condition == source)
        chosen = stream(data.seed, PROCESS, "intervene", name).permutation(members)
        split[chosen[: members.size // 2]] = S.INTERVENE
        split[data.condition == target] = S.HELDOUT
        tasks.append(
            LinearSDETask(
                name=name,
                cell_type=0,
                concept=concept,
                source=source,
                target=target,
                split=split.astype(str),
            )
        )
    return tasks


class LinearSDEBundle:
    """A ``linear-sde`` dataset laid out as a bundle (what :func:`write_bundle` takes).

    Attributes
    ----------
    params : LinearSDEParams
    seed : int
    scenario : str
    data : LinearSDEDataset
    tasks : list of LinearSDETask
    factual, counterfactuals : AnnData
        Laid out as ``factual.h5ad`` and ``counterfactual.h5ad``.
    """

    def __init__(self, data: LinearSDEDataset, scenario: str) -> None:
        self.params, self.seed, self.scenario, self.data = data.params, data.seed, scenario, data
        self.tasks = make_linear_sde_tasks(data)
        self.factual = _factual_anndata(data, self.tasks, scenario)
        self.counterfactuals = _counterfactual_anndata(data, self.tasks, self.factual.obs_names)

    def __repr__(self) -> str:
        return (
            f"LinearSDEBundle(scenario={self.scenario!r}, seed={self.seed}, "
            f"n_cells={self.params.n_cells}, n_genes={self.params.n_genes}, "
            f"tasks={len(self.tasks)})"
        )


def _storable(value):
    if isinstance(value, dict):
        return {k: _storable(v) for k, v in value.items() if v is not None}
    if isinstance(value, (list, tuple)):
        array = np.asarray(value)
        return array.astype(str) if array.dtype.kind in "OU" or array.size == 0 else array
    return value


def _factual_anndata(data: LinearSDEDataset, tasks: list[LinearSDETask], scenario: str):
    params, system = data.params, data.system
    n, d = data.condition.size, params.n_genes
    names = pd.Index([f"cell_{i}" for i in range(n)], dtype=str)
    single = pd.Categorical.from_codes(np.zeros(n, dtype=np.int64), categories=["x_0"])
    obs = pd.DataFrame(
        {
            S.OBS_BATCH: single.rename_categories(["batch_0"]),
            S.OBS_TISSUE: single.rename_categories(["tissue_0"]),
            S.OBS_CELL_TYPE: single.rename_categories(["cell_type_0"]),
            S.OBS_LIBRARY_SIZE: np.zeros(n),
            "condition": pd.Categorical(
                [_condition_label(row) for row in data.conditions[data.condition]]
            ),
        },
        index=names,
    )
    for task in tasks:
        obs[S.split_column(task.name)] = pd.Categorical(
            task.split, categories=(S.TRAIN, S.INTERVENE, S.HELDOUT, EXCLUDED)
        )
    columns = [S.concept_name(k) for k in range(d)]
    concepts = pd.DataFrame(data.indicators.astype(np.float32), index=names, columns=columns)
    factual = ad.AnnData(
        X=sp.csr_matrix(data.counts().astype(np.int32)),
        obs=obs,
        var=pd.DataFrame(index=pd.Index([f"gene_{j}" for j in range(d)], dtype=str)),
        obsm={
            S.CONCEPTS: concepts,
            S.CONCEPTS_TRUE: concepts.astype(np.float64),
            LATENT_PROGRAMS: data.programs,
        },
    )
    table = pd.DataFrame(
        {
            S.TASK_NAME: [t.name for t in tasks],
            S.TASK_CELL_TYPE: ["cell_type_0"] * len(tasks),
            S.TASK_CONCEPT: [S.concept_name(t.concept) for t in tasks],
            S.TASK_N_INTERVENE: [int((t.split == S.INTERVENE).sum()) for t in tasks],
            S.TASK_N_HELDOUT: [int((t.split == S.HELDOUT).sum()) for t in tasks],
        }
    )
    factual.uns[S.UNS] = _storable(
        {
            S.UNS_VERSION: simcell.__version__,
            S.UNS_PROCESS: PROCESS,
            S.UNS_SCENARIO: scenario,
            S.UNS_SEED: data.seed,
            S.UNS_PARAMS: params.to_dict(),
            S.UNS_TASKS: table,
            S.UNS_CONCEPT_DAG: np.zeros((0, 3)),
            S.UNS_CONCEPT_KINDS: np.asarray(["binary"] * d, dtype=str),
            LINEAR_SDE: {
                DRIFT_MATRIX: system.drift_matrix,
                BIAS: system.bias,
                SHIFTS: system.shifts,
                COVARIANCE: system.covariance,
                CONDITIONS: data.conditions.astype(np.int64),
                TRAIN_SINGLES: data.train_singles,
                TASK_CONDITIONS: np.array(
                    [[t.source, t.target] for t in tasks], dtype=np.int64
                ).reshape(-1, 2),
            },
        }
    )
    return factual


def _counterfactual_anndata(data: LinearSDEDataset, tasks: list[LinearSDETask], obs_names):
    d = data.params.n_genes
    sources, targets, labels = [], [], []
    for task in tasks:
        cells = np.flatnonzero(task.split == S.INTERVENE)
        indicators = data.conditions[data.condition[cells]].astype(np.float64)
        indicators[:, task.concept] = 1.0
        sources.append(cells)
        targets.append(indicators)
        labels += [task.name] * cells.size
    source = np.concatenate(sources) if sources else np.zeros(0, dtype=np.int64)
    target = np.concatenate(targets) if targets else np.zeros((0, d))
    programs = data.twin_programs(source, target)
    counts = data.counts_of(programs, source) if source.size else np.zeros((0, d))
    source_names = np.asarray(obs_names)[source].astype(str)
    obs = pd.DataFrame(
        {
            S.TRUTH_TASK: pd.Categorical(labels),
            S.TRUTH_SOURCE_CELL: source_names,
            S.TRUTH_MODE: pd.Categorical(["causal"] * source.size, categories=["causal", "direct"]),
        },
        index=pd.Index([f"{t}:{s}" for t, s in zip(labels, source_names, strict=True)], dtype=str),
    )
    columns = [S.concept_name(k) for k in range(d)]
    return ad.AnnData(
        X=sp.csr_matrix(np.asarray(counts, dtype=np.int32)),
        obs=obs,
        var=pd.DataFrame(index=pd.Index([f"gene_{j}" for j in range(d)], dtype=str)),
        obsm={
            S.CONCEPTS_TRUE: pd.DataFrame(target, index=obs.index, columns=columns),
            LATENT_PROGRAMS: programs,
        },
    )


def linear_sde_bundle(
    params: LinearSDEParams, seed: int = 0, *, scenario: str = "linear-sde"
) -> LinearSDEBundle:
    """Simulate ``params`` and lay it out as a bundle (counts observation only).

    Raises
    ------
    SimcellError
        For the ``gaussian`` observation, which has no count bundle (use
        :func:`simulate_linear_sde`).
    """
    if params.observation != "counts":
        raise SimcellError(
            "the linear-sde bundle holds counts: set observation = 'counts' "
            "(the gaussian observation is available from simulate_linear_sde)"
        )
    return LinearSDEBundle(simulate_linear_sde(params, seed), scenario)


def write_linear_sde_bundle(
    params: LinearSDEParams,
    seed: int,
    out_dir,
    *,
    scenario: str = "linear-sde",
    overwrite: bool = False,
) -> LinearSDEBundle:
    """Simulate and write a ``linear-sde`` bundle (what ``simcell generate`` calls)."""
    from simcell.simulator.bundle import write_bundle

    bundle = linear_sde_bundle(params, seed, scenario=scenario)
    write_bundle(bundle, out_dir, overwrite=overwrite)  # type: ignore[arg-type]
    return bundle


def read_system(factual: ad.AnnData) -> LinearSystem:
    """The A, b, shifts and Σ a ``linear-sde`` bundle stores."""
    meta = factual.uns.get(S.UNS, {})
    if S.process_name(factual) != PROCESS or LINEAR_SDE not in meta:
        raise SimcellError("not a linear-sde bundle: it stores no drift matrix")
    stored = meta[LINEAR_SDE]
    return LinearSystem(
        drift_matrix=np.asarray(stored[DRIFT_MATRIX], dtype=np.float64),
        bias=np.asarray(stored[BIAS], dtype=np.float64),
        shifts=np.asarray(stored[SHIFTS], dtype=np.float64),
        sigma=float(meta[S.UNS_PARAMS]["sigma"]),
        covariance=np.asarray(stored[COVARIANCE], dtype=np.float64),
    )
