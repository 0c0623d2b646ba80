"""The parameters of the generative process (scCBGM paper, Appendix C.1 and C.5)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Literal

from simcell import SimcellError

ConceptKind = Literal["binary", "continuous"]
InterventionMode = Literal["causal", "direct"]
CorruptionKind = Literal["none", "missing", "irrelevant", "incorrect", "duplicate"]

_CONCEPT_KINDS = ("binary", "continuous")
_MODES = ("causal", "direct")
_CORRUPTIONS = ("none", "missing", "irrelevant", "incorrect", "duplicate")


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
    description: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        # normalise TOML lists into tuples so the dataclass stays hashable
        object.__setattr__(self, "baseline_range", _pair(self.baseline_range, "baseline_range"))
        object.__setattr__(
            self,
            "library_size_sd_range",
            _pair(self.library_size_sd_range, "library_size_sd_range"),
        )
        object.__setattr__(self, "concept_kinds", tuple(self.concept_kinds))
        object.__setattr__(
            self,
            "concept_edges",
            tuple(_edge(e) for e in self.concept_edges),
        )
        self._validate()

    # ------------------------------------------------------------------ validation
    def _validate(self) -> None:
        for name in ("n_cells", "n_genes", "n_batches", "n_tissues", "n_cell_types", "n_concepts"):
            _check_int(self, name, minimum=1)
        _check_int(self, "n_tasks", minimum=0)
        _check_int(self, "min_task_cells", minimum=1)
        _check_int(self, "corruption_level", minimum=0)
        for name in (
            "batch_effect_sd",
            "tissue_effect_sd",
            "cell_type_effect_sd",
            "concept_effect_sd",
            "noise_sd",
        ):
            _check_float(self, name, minimum=0.0)
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
                    f"concept_kinds has {len(self.concept_kinds)} entries "
                    f"for n_concepts={self.n_concepts}"
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

    # ------------------------------------------------------------------ derived
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
        return out

    def replace(self, **changes: Any) -> SimulationParams:
        """Return a copy with ``changes`` applied (validated; unknown keys are an error)."""
        unknown = sorted(set(changes) - set(field_names()))
        if unknown:
            raise SimcellError(f"unknown parameter(s): {', '.join(unknown)}")
        return dataclasses.replace(self, **changes)


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
