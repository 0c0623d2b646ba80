"""The one interface every counterfactual model implements, and the question it answers.

The evaluation harness owns preprocessing: it normalises counts to the median
library size of ``train`` cells (``target_sum``), applies ``log1p`` and, for
``pca``, projects onto a PCA fitted on ``train`` cells only. Concept
annotations are float32 with ``NaN`` where a concept is not annotated.

Input spaces. A model declares the space it works in with the class attribute
``input_space`` (:data:`InputSpace`); :meth:`CounterfactualModel.fit`,
``counterfactual`` and ``predict`` receive ``x`` in that space and return
predictions in it. Models never normalise themselves:

* ``pca`` (default): the PCs, shape ``(n_cells, n_components)``, float32.
* ``lognorm``: ``log1p(x / Σx · target_sum)`` of every gene, float32.
* ``hvg``: ``lognorm`` restricted to the ``n_hvg`` genes of highest variance
  over the train cells (ties broken by gene order; deterministic, no
  dispersion model); genes outside the subset are carried over from the
  source cell in the prediction.
* ``counts``: raw counts, float32. Predictions are counts (expected or
  sampled); the harness normalises each predicted row by its own total to
  ``target_sum`` and applies ``log1p``.

The harness maps every prediction back to log-normalised genes (gene-space
cell-level metrics) and to the task's PCA (distributional metrics), with the
same projection as every other population. :class:`FitContext` carries what a
model may want beyond ``x`` and the annotations: the concept names and DAG
(``uses_dag``), gene names, the train cells' types and library sizes.

An :class:`Intervention` is the question: ``do(v_k := value)`` in ``causal`` or
``direct`` mode, with the scenario's concept DAG. The truth, the oracle and every
model answer the same Intervention; a model that does not model the DAG
(``uses_dag = False``) is handed the direct question's targets.

:meth:`CounterfactualModel.encode` returns an array (one block named
``"latent"``) or a :class:`Representation`: named blocks, each optionally
naming the true latent it should recover, which the latent metrics score it
against (``simcell.simulator.schema.true_latents``).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import ClassVar, Literal

import numpy as np

from simcell import SimcellError

ConceptKind = Literal["binary", "continuous"]
InterventionMode = Literal["causal", "direct"]
InputSpace = Literal["pca", "lognorm", "hvg", "counts"]

_MODES = ("causal", "direct")
#: the values of :data:`InputSpace`
INPUT_SPACES: tuple[InputSpace, ...] = ("pca", "lognorm", "hvg", "counts")
#: the block name of an ``encode`` that returns a plain array
DEFAULT_BLOCK = "latent"


@dataclass(frozen=True, kw_only=True)
class Intervention:
    """An intervention ``do(v_k := value)`` on concepts, and how it propagates.

    In ``direct`` mode only the concepts in ``do`` change. In ``causal`` mode the
    descendants of those concepts in the concept DAG are recomputed too, from
    their own (unobserved) exogenous noise: h_d = μ_{u d} + Σ_p B_pd v_p + η_d.

    Parameters
    ----------
    do : mapping of str to float
        Concept name -> value, e.g. ``{"concept_2": 1.0}``. Empty: nothing changes.
    mode : {"causal", "direct"}
    dag : tuple of (str, str, float)
        The (parent, child, weight) edges of the scenario's concept DAG; only
        ``causal`` mode uses it.

    Raises
    ------
    SimcellError
        On an unknown mode, a value or weight that is not finite, a self-loop or
        a cycle in ``dag``.

    Examples
    --------
    >>> iv = Intervention(do={"concept_0": 1.0}, mode="causal",
    ...                   dag=(("concept_0", "concept_1", 1.5), ("concept_1", "concept_2", -1.2)))
    >>> iv.descendants()
    ('concept_1', 'concept_2')
    """

    do: Mapping[str, float]
    mode: InterventionMode = "direct"
    dag: tuple[tuple[str, str, float], ...] = field(default=())

    def __post_init__(self) -> None:
        if self.mode not in _MODES:
            raise SimcellError(f"intervention mode must be 'causal' or 'direct', got {self.mode!r}")
        if not isinstance(self.do, Mapping):
            raise SimcellError("intervention do must map concept names to values")
        do = {}
        for name, value in self.do.items():
            try:
                value = float(value)
            except (TypeError, ValueError):
                raise SimcellError(f"do(): value of {name!r} is not a number") from None
            if not math.isfinite(value):
                raise SimcellError(f"do(): value of {name!r} is not finite")
            do[str(name)] = value
        dag = []
        for edge in self.dag:
            if len(edge) != 3:
                raise SimcellError(
                    f"intervention dag edges must be (parent, child, weight), got {edge!r}"
                )
            parent, child, weight = str(edge[0]), str(edge[1]), float(edge[2])
            if parent == child:
                raise SimcellError(f"intervention dag: self-loop on {parent!r}")
            if not math.isfinite(weight):
                raise SimcellError(f"intervention dag: weight of {parent}->{child} is not finite")
            dag.append((parent, child, weight))
        object.__setattr__(self, "do", do)
        object.__setattr__(self, "dag", tuple(dag))
        self._topological_order()  # raises on a cycle

    def __hash__(self) -> int:
        return hash((tuple(sorted(self.do.items())), self.mode, self.dag))

    def _topological_order(self) -> tuple[str, ...]:
        """The DAG's concepts, every parent before its children (first-seen order on ties)."""
        nodes = list(dict.fromkeys(name for edge in self.dag for name in edge[:2]))
        indegree = dict.fromkeys(nodes, 0)
        for _, child, _ in self.dag:
            indegree[child] += 1
        ready = [n for n in nodes if indegree[n] == 0]
        order: list[str] = []
        while ready:
            node = ready.pop(0)
            order.append(node)
            for parent, child, _ in self.dag:
                if parent == node:
                    indegree[child] -= 1
                    if indegree[child] == 0:
                        ready.append(child)
        if len(order) != len(nodes):
            raise SimcellError("intervention dag: the concept graph has a cycle")
        return tuple(order)

    def descendants(self) -> tuple[str, ...]:
        """Concepts that change beyond ``do``: in ``causal`` mode, every concept
        reachable from ``do`` along the DAG and not itself set, in topological
        order; in ``direct`` mode, none.

        Returns
        -------
        tuple of str
        """
        if self.mode == "direct":
            return ()
        reach: set[str] = set()
        frontier = list(self.do)
        while frontier:
            node = frontier.pop()
            for parent, child, _ in self.dag:
                if parent == node and child not in reach:
                    reach.add(child)
                    frontier.append(child)
        return tuple(n for n in self._topological_order() if n in reach and n not in self.do)

    def parents(self, concept: str) -> tuple[tuple[str, float], ...]:
        """The (parent, weight) pairs of ``concept`` in the DAG."""
        return tuple((p, w) for p, c, w in self.dag if c == concept)

    def direct_targets(self, concepts: np.ndarray, names: Sequence[str]) -> np.ndarray:
        """The concepts with ``do`` applied and nothing else changed.

        This is the direct question's targets, and what a model that does not
        model the DAG is given in either mode.

        Parameters
        ----------
        concepts : ndarray, shape (n_cells, n_concepts)
            The cells' (annotated or true) concepts; ``NaN`` entries are kept.
        names : sequence of str, length n_concepts
            The name of each column.

        Returns
        -------
        ndarray, shape (n_cells, n_concepts)
            A copy (float dtype: that of ``concepts`` when it is floating).

        Raises
        ------
        SimcellError
            If a concept in ``do`` is not among ``names`` or the shapes disagree.
        """
        concepts = np.asarray(concepts)
        names = [str(n) for n in names]
        if concepts.ndim != 2 or concepts.shape[1] != len(names):
            raise SimcellError(
                f"concepts of shape {concepts.shape} do not match {len(names)} concept names"
            )
        dtype = concepts.dtype if concepts.dtype.kind == "f" else np.float64
        out = np.array(concepts, dtype=dtype, copy=True)
        for name, value in self.do.items():
            if name not in names:
                raise SimcellError(f"do(): unknown concept {name!r}; concepts are {names}")
            out[:, names.index(name)] = value
        return out


@dataclass(frozen=True, kw_only=True)
class FitContext:
    """What a model may use at :meth:`CounterfactualModel.fit` beyond ``x`` and concepts.

    Attributes
    ----------
    concept_names : tuple of str
        The name of each column of ``concepts`` (corruptions may add columns).
    dag : tuple of (str, str, float)
        The (parent, child, weight) edges of the scenario's concept DAG.
    gene_names : tuple of str or None
        The columns of ``x`` unless the model's input space is ``pca`` (None).
    cell_types : ndarray of str, shape (n_train,), optional
        The cell type of each training cell.
    library_size : ndarray, shape (n_train,), optional
        The total count of each training cell.
    """

    concept_names: tuple[str, ...]
    dag: tuple[tuple[str, str, float], ...] = ()
    gene_names: tuple[str, ...] | None = None
    cell_types: np.ndarray | None = None
    library_size: np.ndarray | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "concept_names", tuple(str(n) for n in self.concept_names))
        object.__setattr__(self, "dag", tuple((str(p), str(c), float(w)) for p, c, w in self.dag))
        if self.gene_names is not None:
            object.__setattr__(self, "gene_names", tuple(str(n) for n in self.gene_names))


@dataclass(frozen=True)
class Representation:
    """What :meth:`CounterfactualModel.encode` returns: named blocks of a representation.

    Parameters
    ----------
    blocks : mapping of str to ndarray
        Block name -> array of shape (n_cells, d_block); every block has the
        same cells. Stored as float64 arrays, in the given order.
    targets : mapping of str to str, optional
        Block name -> name of the true latent it should recover (e.g.
        ``{"invariant": "z_invariant"}``, read with
        :func:`simcell.simulator.schema.true_latents`). Blocks without a target
        are scored against the true concepts only.

    Raises
    ------
    SimcellError
        On no block, a block that is not 2-D, blocks with different numbers of
        cells, or a target naming no block.

    Examples
    --------
    >>> rep = Representation({"z": np.zeros((3, 2)), "c": np.ones((3, 1))}, {"z": "z_true"})
    >>> list(rep.blocks), rep.n_cells
    (['z', 'c'], 3)
    """

    blocks: Mapping[str, np.ndarray]
    targets: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.blocks, Mapping) or not self.blocks:
            raise SimcellError("a Representation needs at least one named block")
        blocks: dict[str, np.ndarray] = {}
        for name, block in self.blocks.items():
            try:
                array = np.asarray(block, dtype=np.float64)
            except (TypeError, ValueError):
                raise SimcellError(f"representation block {name!r} is not numeric") from None
            if array.ndim != 2:
                raise SimcellError(
                    f"representation block {name!r} must be 2-D (n_cells, d), got shape "
                    f"{array.shape}"
                )
            blocks[str(name)] = array
        sizes = {array.shape[0] for array in blocks.values()}
        if len(sizes) != 1:
            raise SimcellError(
                f"representation blocks have different numbers of cells: {sorted(sizes)}"
            )
        targets = {str(k): str(v) for k, v in dict(self.targets).items()}
        unknown = sorted(set(targets) - set(blocks))
        if unknown:
            raise SimcellError(f"representation targets name no block: {', '.join(unknown)}")
        object.__setattr__(self, "blocks", blocks)
        object.__setattr__(self, "targets", targets)

    @property
    def n_cells(self) -> int:
        return next(iter(self.blocks.values())).shape[0]

    @classmethod
    def of(cls, encoded: Representation | np.ndarray) -> Representation:
        """``encode``'s return value as a Representation (an array: one block ``"latent"``)."""
        if isinstance(encoded, Representation):
            return encoded
        return cls({DEFAULT_BLOCK: encoded})


def check_input_space(model: object) -> InputSpace:
    """The input space a model (instance or class) declares.

    Raises
    ------
    SimcellError
        If it is not one of :data:`INPUT_SPACES`, or an ``hvg`` model's
        ``n_hvg`` is not a positive integer.
    """
    space = getattr(model, "input_space", "pca")
    name = getattr(model, "name", type(model).__name__)
    if space not in INPUT_SPACES:
        raise SimcellError(
            f"model {name!r} declares input_space {space!r}; choose from {', '.join(INPUT_SPACES)}"
        )
    if space == "hvg":
        n_hvg = getattr(model, "n_hvg", None)
        if isinstance(n_hvg, bool) or not isinstance(n_hvg, (int, np.integer)) or n_hvg < 1:
            raise SimcellError(f"model {name!r}: n_hvg must be a positive integer, got {n_hvg!r}")
    return space


class CounterfactualModel(ABC):
    """A model that predicts a cell's expression under edited concepts.

    Subclasses set ``name`` and implement :meth:`fit` and :meth:`counterfactual`;
    those with a representation also implement :meth:`encode`. The class
    attributes say what the model needs (module docstring).
    """

    name: ClassVar[str]
    #: The space ``x`` is given in and predictions are returned in.
    input_space: ClassVar[InputSpace] = "pca"
    #: Genes of the ``hvg`` space (read only when ``input_space == "hvg"``; an
    #: instance attribute may override it).
    n_hvg: int = 2000
    #: Whether :meth:`encode` returns a representation (False: it raises).
    has_representation: ClassVar[bool] = False
    #: Whether the model answers a ``causal`` :class:`Intervention` through the
    #: concept DAG (False: it is handed the direct targets, see :meth:`predict`).
    uses_dag: ClassVar[bool] = False

    @abstractmethod
    def fit(
        self,
        x: np.ndarray,
        concepts: np.ndarray,
        *,
        concept_kinds: tuple[ConceptKind, ...] | None = None,
        context: FitContext | None = None,
    ) -> CounterfactualModel:
        """Train on cells.

        Parameters
        ----------
        x : ndarray, shape (n_cells, n_dims)
            The training cells in the model's ``input_space`` (float32).
        concepts : ndarray, shape (n_cells, n_concepts)
            Annotated concepts; ``NaN`` where an annotation is missing.
        concept_kinds : tuple of {"binary", "continuous"}, optional
            Kind of each concept column; all binary when omitted.
        context : FitContext, optional
            Concept names, the concept DAG, gene names, the train cells' types
            and library sizes (the harness always passes one; models may
            ignore it).
        """

    @abstractmethod
    def counterfactual(
        self, x: np.ndarray, concepts: np.ndarray, target_concepts: np.ndarray
    ) -> np.ndarray:
        """Predict each cell's expression under ``target_concepts``.

        Parameters
        ----------
        x : ndarray, shape (n_cells, n_dims)
        concepts : ndarray, shape (n_cells, n_concepts)
            The cells' annotated concepts.
        target_concepts : ndarray, shape (n_cells, n_concepts)
            The concepts after the intervention.

        Returns
        -------
        ndarray, shape (n_cells, n_dims)
            One predicted row per source cell, in the space of ``x``.
        """

    def predict(
        self,
        x: np.ndarray,
        concepts: np.ndarray,
        intervention: Intervention,
        concept_names: Sequence[str],
    ) -> np.ndarray:
        """Predict each cell's expression under ``intervention``.

        The default answers with :meth:`counterfactual` on
        ``intervention.direct_targets(concepts, concept_names)``: only the
        concepts in ``do`` change, whatever the mode. A model that models the
        concept DAG sets ``uses_dag = True`` and overrides this method.

        Parameters
        ----------
        x : ndarray, shape (n_cells, n_dims)
        concepts : ndarray, shape (n_cells, n_concepts)
            The cells' annotated concepts.
        intervention : Intervention
        concept_names : sequence of str, length n_concepts
            The name of each concept column.

        Returns
        -------
        ndarray, shape (n_cells, n_dims)
        """
        targets = intervention.direct_targets(concepts, concept_names)
        return self.counterfactual(x, concepts, targets)

    def encode(self, x: np.ndarray, concepts: np.ndarray) -> Representation | np.ndarray:
        """Return the model's representation of cells.

        Returns
        -------
        Representation or ndarray of shape (n_cells, n_latent)
            An array is one block named ``"latent"`` without a target.
        """
        raise NotImplementedError(f"model {self.name!r} has no representation")
