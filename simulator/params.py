"""The parameters of the generative process (scCBGM paper, Appendix C.1 and C.5)."""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Any, Literal

from simcell import SimcellError

ConceptKind = Literal["binary", "continuous"]
InterventionMode = Literal["causal", "direct"]
CorruptionKind = Literal["none", "missing", "irrelevant", "incorrect", "duplicate"]
BaselineLaw = Literal["loguniform", "lognormal"]

#: the largest count the bundle's int32 ``X`` can hold
MAX_COUNT = 2**31 - 1
#: the fewest genes a bundle the harness can evaluate may have
MIN_GENES = 2
# |Φ⁻¹(p)| + 1 for the clipped concept probabilities of the world (p ≥ 1e-10)
_LIABILITY_REACH = 7.4

_CONCEPT_KINDS = ("binary", "continuous")
_MODES = ("causal", "direct")
_CORRUPTIONS = ("none", "missing", "irrelevant", "incorrect", "duplicate")
_BASELINE_LAWS = ("loguniform", "lognormal")


@dataclass(frozen=True, kw_only=True)
class SimulationParams:
    """Every knob of the simulator, validated on construction.

    The log-rate of gene ``j`` in cell ``i`` is (paper eq. 40)

        log λ_ij = w_j + l_i + γ_{b_i j} + τ_{t_i j} + ω_{u_i j} + Σ_k v_ik c_kj + ε_ij

    and concepts follow the latent linear-Gaussian SCM
    ``h_ik = Φ⁻¹(p_{u_i k}) + Σ_p B_pk v_ip + η_ik``, ``v_ik = 1[h_ik > 0]`` for binary
    concepts and ``v_ik = h_ik`` for continuous ones.

    Parameters
    ----------
    n_cells, n_genes, n_batches, n_tissues, n_cell_types, n_concepts : int
        Sizes of the simulated world.
    baseline_range : (float, float)
        Range of exp(w_j) on the linear scale; w_j is uniform on its log.
    batch_effect_sd, tissue_effect_sd, cell_type_effect_sd : float
        Standard deviations of γ, τ and ω.
    concept_effect_sd : float
        Standard deviation of the non-zero concept coefficients c_kj.
    library_size_sd_range : (float, float)
        Each batch's library-size sd is uniform on this range; l_i ~ N(0, sd_b).
    noise_sd : float
        σ_ε of the residual ε_ij.
    concept_sparsity_alpha, concept_sparsity_beta : float
        Beta(α, β) of π_k, the probability that a gene is unaffected by concept k.
    batch_concentration, tissue_concentration, cell_type_concentration,
    concept_concentration : float
        Symmetric Dirichlet concentrations of the batch proportions, the tissue
        proportions in each batch, the cell-type proportions in each tissue and
        the concept probabilities in each cell type.
    concept_kinds : tuple of {"binary", "continuous"}
        One kind per concept; empty means all binary.
    concept_edges : tuple of (parent, child, weight)
        The weighted DAG B of the concept SCM.
    n_tasks : int
        Number of intervention tasks (paper C.6).
    min_task_cells : int
        A (cell type, concept) pair is eligible for a task when it has at least
        ``2 * min_task_cells`` cells with the concept off and the concept is on in
        at least ``min_task_cells`` cells of other types.
    intervention_mode : {"causal", "direct"}
        How task counterfactuals propagate through the concept DAG.
    corruption, corruption_level, corruption_p : str, int, float or None
        Concept-annotation corruption of paper C.4 applied to the annotations a
        model sees; ``corruption_p`` is the per-entry probability (removal for
        ``missing``, flip for ``incorrect``, "on" for ``irrelevant``), ``None`` for
        the kind's default (1, 0.1, 0.5).
    baseline_law : {"loguniform", "lognormal"}
        Law of the baseline w_j: log-uniform on ``baseline_range`` (the paper's),
        or ``lognormal``: w_j ~ N(baseline_log_mean, baseline_log_sd²), gene
        means over orders of magnitude as in droplet data.
    baseline_log_mean, baseline_log_sd : float
        Mean and sd of w_j under the ``lognormal`` law (unused otherwise).
    dispersion_trend : (float, float)
        (α₀, α₁) of the gene dispersion trend α(μ) = α₀ + α₁ / μ on the gene's
        baseline mean μ = e^{w_j}; (0, 0), the default, keeps Poisson counts.
        Otherwise the pre-capture count is negative binomial with mean λ_ij and
        variance λ_ij + α_j λ_ij², drawn by its exact inverse CDF from δ_ij.
    dispersion_sd : float
        Log-normal scatter of each gene's α_j around the trend:
        α_j = α(μ_j) · exp(dispersion_sd · z_j), z_j ~ N(0, 1).
    capture_mean, capture_concentration : float
        Per-cell capture efficiency p_i ~ Beta(m κ, (1 − m) κ) with mean m =
        ``capture_mean`` and concentration κ; every count is binomially thinned,
        y_ij = Q_Bin(ν_ij; x_ij, p_i), ν_ij ~ U(0, 1). ``capture_mean = 1`` (the
        default) is no thinning.
    interaction_sd, interaction_rank : float, int
        Cell-type × concept interactions of rank R: the effect of concept k on
        gene j in cell type u is c_{ukj} = c_kj + 1[c_kj ≠ 0] Σ_r a_{ur} b_{kr} g_{rj}
        with a, b ~ N(0, 1) and g ~ N(0, interaction_sd²); 0 (default) is off, so
        every cell type shares the concept effects.
    concept_interaction_sd : float
        Concept × concept interactions: Σ_{k<k'} s(v_k) s(v_k') d_{kk'j} is added to
        the log-rate, d ~ N(0, sd²) on genes both concepts act on; 0 is off.
    concept_saturation : float
        Saturating response of continuous concepts: v enters the log-rate as
        h·tanh(v / h) with h = ``concept_saturation``; 0 (default) is linear.
    """

    n_cells: int = 20_000
    n_genes: int = 5_000
    n_batches: int = 2
    n_tissues: int = 3
    n_cell_types: int = 4
    n_concepts: int = 5
    baseline_range: tuple[float, float] = (1.0, 5.0)
    batch_effect_sd: float = 0.06
    tissue_effect_sd: float = 0.05
    cell_type_effect_sd: float = 0.04
    concept_effect_sd: float = 0.08
    library_size_sd_range: tuple[float, float] = (0.01, 0.03)
    noise_sd: float = 0.01
    concept_sparsity_alpha: float = 1.0
    concept_sparsity_beta: float = 0.8
    batch_concentration: float = 10.0
    tissue_concentration: float = 10.0
    cell_type_concentration: float = 1.0
    concept_concentration: float = 0.2
    concept_kinds: tuple[ConceptKind, ...] = ()
    concept_edges: tuple[tuple[int, int, float], ...] = ()
    n_tasks: int = 5
    min_task_cells: int = 20
    intervention_mode: InterventionMode = "causal"
    corruption: CorruptionKind = "none"
    corruption_level: int = 1
    corruption_p: float | None = None
    baseline_law: BaselineLaw = "loguniform"
    baseline_log_mean: float = 0.0
    baseline_log_sd: float = 1.0
    dispersion_trend: tuple[float, float] = (0.0, 0.0)
    dispersion_sd: float = 0.0
    capture_mean: float = 1.0
    capture_concentration: float = 20.0
    interaction_sd: float = 0.0
    interaction_rank: int = 2
    concept_interaction_sd: float = 0.0
    concept_saturation: float = 0.0
    description: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        # normalise TOML lists into tuples so the dataclass stays hashable
        object.__setattr__(self, "baseline_range", _pair(self.baseline_range, "baseline_range"))
        object.__setattr__(
            self,
            "library_size_sd_range",
            _pair(self.library_size_sd_range, "library_size_sd_range"),
        )
        object.__setattr__(
            self, "dispersion_trend", _pair(self.dispersion_trend, "dispersion_trend")
        )
        if isinstance(self.concept_kinds, str):
            raise SimcellError(
                "concept_kinds must be a list with one kind ('binary' or 'continuous') per "
                f"concept, e.g. {list(('binary',) * self.n_concepts)!r} for "
                f"n_concepts={self.n_concepts}; got the string {self.concept_kinds!r}"
            )
        for name, what in (
            ("concept_kinds", "'binary' / 'continuous' per concept"),
            ("concept_edges", "[parent, child, weight] per edge"),
        ):
            if not isinstance(getattr(self, name), (list, tuple)):
                raise SimcellError(f"{name} must be a list of {what}, got {getattr(self, name)!r}")
        if not isinstance(self.description, str):
            raise SimcellError(f"description must be a string, got {self.description!r}")
        object.__setattr__(self, "concept_kinds", tuple(self.concept_kinds))
        object.__setattr__(
            self,
            "concept_edges",
            tuple(_edge(e) for e in self.concept_edges),
        )
        self._validate()

    # ------------------------------------------------------------------ validation
    def _validate(self) -> None:
        for name in ("n_cells", "n_batches", "n_tissues", "n_cell_types", "n_concepts"):
            _check_int(self, name, minimum=1)
        _check_int(self, "n_genes", minimum=1)
        if self.n_genes < MIN_GENES:
            # normalising a cell to a fixed total leaves one gene constant: no
            # model, metric or oracle can tell two cells apart
            raise SimcellError(
                f"n_genes must be >= {MIN_GENES} (got {self.n_genes}): with one gene every "
                "library-size-normalised cell is the same, so the bundle cannot be evaluated"
            )
        _check_int(self, "n_tasks", minimum=0)
        _check_int(self, "min_task_cells", minimum=1)
        _check_int(self, "corruption_level", minimum=0)
        _check_int(self, "interaction_rank", minimum=1)
        for name in (
            "batch_effect_sd",
            "tissue_effect_sd",
            "cell_type_effect_sd",
            "concept_effect_sd",
            "noise_sd",
            "baseline_log_sd",
            "dispersion_sd",
            "interaction_sd",
            "concept_interaction_sd",
            "concept_saturation",
        ):
            _check_float(self, name, minimum=0.0)
        _check_float(self, "baseline_log_mean", minimum=-math.inf)
        _check_float(self, "capture_mean", minimum=0.0, strict=True)
        _check_float(self, "capture_concentration", minimum=0.0, strict=True)
        if self.capture_mean > 1:
            raise SimcellError(f"capture_mean must be in (0, 1], got {self.capture_mean}")
        if self.baseline_law not in _BASELINE_LAWS:
            raise SimcellError(
                f"baseline_law must be one of {_BASELINE_LAWS}, got {self.baseline_law!r}"
            )
        if min(self.dispersion_trend) < 0:
            raise SimcellError(
                f"dispersion_trend (a0, a1) must both be >= 0, got {self.dispersion_trend}"
            )
        for name in (
            "concept_sparsity_alpha",
            "concept_sparsity_beta",
            "batch_concentration",
            "tissue_concentration",
            "cell_type_concentration",
            "concept_concentration",
        ):
            _check_float(self, name, minimum=0.0, strict=True)
        low, high = self.baseline_range
        if not (0 < low <= high):
            raise SimcellError(f"baseline_range must satisfy 0 < low <= high, got {low}, {high}")
        low, high = self.library_size_sd_range
        if not (0 <= low <= high):
            raise SimcellError(
                f"library_size_sd_range must satisfy 0 <= low <= high, got {low}, {high}"
            )
        if self.corruption_p is not None:
            _check_float(self, "corruption_p", minimum=0.0)
        if self.corruption_p is not None and self.corruption_p > 1:
            raise SimcellError(f"corruption_p must be in [0, 1], got {self.corruption_p}")
        if self.intervention_mode not in _MODES:
            raise SimcellError(
                f"intervention_mode must be one of {_MODES}, got {self.intervention_mode!r}"
            )
        if self.corruption not in _CORRUPTIONS:
            raise SimcellError(f"corruption must be one of {_CORRUPTIONS}, got {self.corruption!r}")
        if self.concept_kinds:
            if len(self.concept_kinds) != self.n_concepts:
                raise SimcellError(
                    f"concept_kinds must list one kind ('binary' or 'continuous') per concept: "
                    f"{self.n_concepts} entries for n_concepts={self.n_concepts}, "
                    f"got {len(self.concept_kinds)} ({list(self.concept_kinds)!r})"
                )
            bad = [k for k in self.concept_kinds if k not in _CONCEPT_KINDS]
            if bad:
                raise SimcellError(f"concept_kinds must be 'binary' or 'continuous', got {bad}")
        for parent, child, weight in self.concept_edges:
            for node in (parent, child):
                if not 0 <= node < self.n_concepts:
                    raise SimcellError(
                        f"concept_edges: concept {node} out of range 0..{self.n_concepts - 1}"
                    )
            if parent == child:
                raise SimcellError(f"concept_edges: self-loop on concept {parent}")
            if not math.isfinite(weight):
                raise SimcellError(f"concept_edges: weight of {parent}->{child} is not finite")
        self.topological_order()  # raises on a cycle
        self._check_counts_fit()

    def _check_counts_fit(self) -> None:
        """Refuse parameters whose counts would not fit the bundle's int32 ``X``."""
        tail = self.log_rate_tail()
        if tail > math.log(MAX_COUNT):
            raise SimcellError(
                f"counts would overflow int32: the log-rate reaches about {tail:.1f} "
                f"(a rate of {math.exp(tail):.2g}) among {self.n_cells * self.n_genes:,} "
                f"entries, above log({MAX_COUNT}) = {math.log(MAX_COUNT):.1f}; lower "
                "baseline_range, noise_sd, the effect sds or library_size_sd_range"
            )

    # ------------------------------------------------------------------ derived
    def log_rate_tail(self) -> float:
        """The log-rate the largest of the n_cells × n_genes entries typically reaches.

        log λ_ij is the log of the largest baseline plus a sum of independent
        centred normal terms (γ, τ, ω, l_i, ε and the concept terms Σ_k v_ik c_kj,
        with |v_ik| ≤ 1 for binary concepts and, for continuous ones, bounded by
        their liability's largest mean plus one sd and their parents' reach). Its
        upper quantile at probability 1 / (n_cells · n_genes) is

            log(max baseline) + z · sqrt(Σ sd²),   z = Φ⁻¹(1 − 1 / (n_cells · n_genes)).

        A screen, not a guarantee: generation checks every count as well.
        """
        reach = [1.0] * self.n_concepts
        for k in self.topological_order():
            if self.kinds[k] == "continuous":
                reach[k] = _LIABILITY_REACH + sum(abs(w) * reach[p] for p, w in self.parents(k))
        variance = (
            self.batch_effect_sd**2
            + self.tissue_effect_sd**2
            + self.cell_type_effect_sd**2
            + self.library_size_sd_range[1] ** 2
            + self.noise_sd**2
            + self.concept_effect_sd**2 * sum(r * r for r in reach)
            + self.interaction_sd**2 * self.interaction_rank * sum(r * r for r in reach)
            + self.concept_interaction_sd**2 * sum(r * r for r in reach) ** 2
        )
        entries = float(self.n_cells) * float(self.n_genes)
        z = NormalDist().inv_cdf(1.0 - 1.0 / (entries + 1.0))
        if self.baseline_law == "lognormal":
            variance += self.baseline_log_sd**2
            return self.baseline_log_mean + z * math.sqrt(variance)
        return math.log(self.baseline_range[1]) + z * math.sqrt(variance)

    @property
    def overdispersed(self) -> bool:
        """Whether counts are negative binomial (a non-zero ``dispersion_trend``)."""
        return any(a > 0 for a in self.dispersion_trend)

    @property
    def captured(self) -> bool:
        """Whether counts are binomially thinned by a per-cell capture efficiency."""
        return self.capture_mean < 1.0

    @property
    def interacting(self) -> bool:
        """Whether a graded-difficulty knob (interactions, saturation) is on."""
        return (
            self.interaction_sd > 0
            or self.concept_interaction_sd > 0
            or (self.concept_saturation > 0 and "continuous" in self.kinds)
        )

    @property
    def realistic(self) -> bool:
        """Whether any layer beyond the paper's process is on (counts or concept terms)."""
        return self.overdispersed or self.captured or self.interacting

    @property
    def kinds(self) -> tuple[ConceptKind, ...]:
        """The kind of every concept (all binary unless ``concept_kinds`` says otherwise)."""
        return self.concept_kinds or ("binary",) * self.n_concepts

    def parents(self, concept: int) -> list[tuple[int, float]]:
        """Return the (parent, weight) pairs of ``concept`` in the DAG."""
        return [(p, w) for p, c, w in self.concept_edges if c == concept]

    def topological_order(self) -> tuple[int, ...]:
        """Concepts ordered so that every parent precedes its children.

        Raises
        ------
        SimcellError
            If ``concept_edges`` has a cycle.
        """
        indegree = [0] * self.n_concepts
        for _, child, _ in self.concept_edges:
            indegree[child] += 1
        ready = [k for k in range(self.n_concepts) if indegree[k] == 0]
        order: list[int] = []
        while ready:
            node = ready.pop(0)
            order.append(node)
            for parent, child, _ in self.concept_edges:
                if parent == node:
                    indegree[child] -= 1
                    if indegree[child] == 0:
                        ready.append(child)
        if len(order) != self.n_concepts:
            raise SimcellError("concept_edges: the concept graph has a cycle")
        return tuple(order)

    def descendants(self, concept: int) -> set[int]:
        """All concepts reachable from ``concept`` along DAG edges (excluding itself)."""
        found: set[int] = set()
        frontier = [concept]
        while frontier:
            node = frontier.pop()
            for parent, child, _ in self.concept_edges:
                if parent == node and child not in found:
                    found.add(child)
                    frontier.append(child)
        return found

    def to_dict(self) -> dict[str, Any]:
        """A plain, JSON-friendly dictionary of every field."""
        out = dataclasses.asdict(self)
        out["baseline_range"] = list(self.baseline_range)
        out["library_size_sd_range"] = list(self.library_size_sd_range)
        out["concept_kinds"] = list(self.kinds)
        out["concept_edges"] = [list(e) for e in self.concept_edges]
        out["dispersion_trend"] = list(self.dispersion_trend)
        # the realistic knobs are written only when changed, so that the paper's
        # presets keep their bundles byte for byte
        for name in _REALISTIC_DEFAULTS:
            if getattr(self, name) == _REALISTIC_DEFAULTS[name]:
                del out[name]
        return out

    def replace(self, **changes: Any) -> SimulationParams:
        """Return a copy with ``changes`` applied (validated; unknown keys are an error)."""
        unknown = sorted(set(changes) - set(field_names()))
        if unknown:
            raise SimcellError(f"unknown parameter(s): {', '.join(unknown)}")
        return dataclasses.replace(self, **changes)


#: fields added for realistic counts and graded difficulty, with their "off" value
_REALISTIC_DEFAULTS: dict[str, Any] = {
    "baseline_law": "loguniform",
    "baseline_log_mean": 0.0,
    "baseline_log_sd": 1.0,
    "dispersion_trend": (0.0, 0.0),
    "dispersion_sd": 0.0,
    "capture_mean": 1.0,
    "capture_concentration": 20.0,
    "interaction_sd": 0.0,
    "interaction_rank": 2,
    "concept_interaction_sd": 0.0,
    "concept_saturation": 0.0,
}


def field_names() -> tuple[str, ...]:
    """Names of every field of :class:`SimulationParams`."""
    return tuple(f.name for f in dataclasses.fields(SimulationParams))


def _pair(value: Any, name: str) -> tuple[float, float]:
    try:
        low, high = (float(v) for v in value)
    except (TypeError, ValueError):
        raise SimcellError(f"{name} must be a pair of numbers, got {value!r}") from None
    if not (math.isfinite(low) and math.isfinite(high)):
        raise SimcellError(f"{name} must be finite, got {value!r}")
    return (low, high)


def _edge(value: Any) -> tuple[int, int, float]:
    try:
        parent, child, weight = value
        if int(parent) != parent or int(child) != child:
            raise ValueError
        return (int(parent), int(child), float(weight))
    except (TypeError, ValueError):
        raise SimcellError(
            f"concept_edges entries must be [parent, child, weight], got {value!r}"
        ) from None


def _check_int(params: SimulationParams, name: str, *, minimum: int) -> None:
    value = getattr(params, name)
    if isinstance(value, bool) or not isinstance(value, int):
        raise SimcellError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise SimcellError(f"{name} must be >= {minimum}, got {value}")


def _check_float(
    params: SimulationParams, name: str, *, minimum: float, strict: bool = False
) -> None:
    value = getattr(params, name)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SimcellError(f"{name} must be a number, got {value!r}")
    if not math.isfinite(value):
        raise SimcellError(f"{name} must be finite, got {value}")
    if value < minimum or (strict and value == minimum):
        relation = ">" if strict else ">="
        raise SimcellError(f"{name} must be {relation} {minimum}, got {value}")


# ---------------------------------------------------------------------- resources
# measured peaks of a streamed generation (ru_maxrss), rounded up: per cell
# ~750 B of state + ~500 B of h5ad metadata, ~35 B per concept and ~95 B per
# task (split columns and twins), at 2e5-8e5 cells; per entry of the chunk being
# counted ~80 B (noise drawn block by block, float32 residual + float64 uniform,
# dense int32 counts, CSR copies, h5 buffers) and ~40 B more per extra thread,
# at 20,000 x 2,000 with 1 and 2 threads
_BYTES_PER_CELL = 1_400
_BYTES_PER_CELL_CONCEPT = 40
_BYTES_PER_CELL_TASK = 100
_BYTES_PER_CHUNK_ENTRY = 80
_BYTES_PER_THREAD_ENTRY = 40
_BYTES_PER_STORED_COUNT = 8  # int32 data + int32 index
_BYTES_PER_REALISTIC_ENTRY = 32  # estimated from the arrays, not measured


def memory_estimate(
    params: SimulationParams,
    *,
    chunk_size: int = 1024,
    n_threads: int = 1,
    counts_in_memory: bool = False,
) -> int:
    """Bytes of memory a generation of ``params`` needs, about (an upper estimate).

    Parameters
    ----------
    params : SimulationParams
    chunk_size : int
        Cells evaluated together (rounded up to whole blocks of 256 cells).
    n_threads : int
        Worker threads counting chunks at once.
    counts_in_memory : bool
        The counts are kept in memory (``simulate``) rather than streamed to
        disk (``generate_bundle``); every entry is counted as stored.

    Returns
    -------
    int
    """
    from simcell.simulator._rng import CELL_BLOCK

    n_cells, n_genes = params.n_cells, params.n_genes
    per_cell = (
        _BYTES_PER_CELL
        + _BYTES_PER_CELL_CONCEPT * params.n_concepts
        + _BYTES_PER_CELL_TASK * params.n_tasks
    )
    groups = 1 + params.n_batches + params.n_tissues + params.n_cell_types + params.n_concepts
    world = 3 * 8 * n_genes * groups
    rows = min(n_cells, max(CELL_BLOCK, -(-int(chunk_size) // CELL_BLOCK) * CELL_BLOCK))
    per_entry = _BYTES_PER_CHUNK_ENTRY + _BYTES_PER_THREAD_ENTRY * (max(1, n_threads) - 1)
    if params.realistic:  # thinning uniforms, rates, int64 counts and the concept term
        per_entry += _BYTES_PER_REALISTIC_ENTRY * max(1, n_threads)
    chunks = per_entry * rows * n_genes
    stored = _BYTES_PER_STORED_COUNT * n_cells * n_genes if counts_in_memory else 0
    return n_cells * per_cell + world + chunks + stored


def available_memory() -> int | None:
    """Bytes of memory available to a new allocation (``MemAvailable``), if known."""
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None


def check_memory(
    params: SimulationParams,
    *,
    chunk_size: int = 1024,
    n_threads: int = 1,
    counts_in_memory: bool = False,
) -> None:
    """Refuse, up front, a generation that cannot fit in the available memory.

    Raises
    ------
    SimcellError
        With the estimate (see :func:`memory_estimate`) and what is available.
    """
    needed = memory_estimate(
        params, chunk_size=chunk_size, n_threads=n_threads, counts_in_memory=counts_in_memory
    )
    available = available_memory()
    if available is not None and needed > available:
        raise SimcellError(
            f"{params.n_cells:,} cells x {params.n_genes:,} genes need about "
            f"{_gib(needed)} of memory, more than the {_gib(available)} available; "
            "lower n_cells or n_genes (or --chunk-size / --threads)"
        )


def _gib(n_bytes: int) -> str:
    return f"{n_bytes / 2**30:,.1f} GiB"
