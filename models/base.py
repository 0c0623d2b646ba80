"""The one interface every counterfactual model implements.

The evaluation harness owns preprocessing: it normalises counts to the median
library size of ``train`` cells, applies ``log1p`` and projects onto a PCA fitted
on ``train`` cells only, then hands a model the representation ``x`` of shape
``(n_cells, n_dims)`` (float32). Concept annotations are float32 with ``NaN``
where a concept is not annotated.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar, Literal

import numpy as np

ConceptKind = Literal["binary", "continuous"]


class CounterfactualModel(ABC):
    """A model that predicts a cell's expression under edited concepts.

    Subclasses set ``name`` and implement :meth:`fit` and :meth:`counterfactual`;
    those with a representation also implement :meth:`encode`.
    """

    name: ClassVar[str]
    #: Whether :meth:`encode` returns a representation (False: it raises).
    has_representation: ClassVar[bool] = False

    @abstractmethod
    def fit(
        self,
        x: np.ndarray,
        concepts: np.ndarray,
        *,
        concept_kinds: tuple[ConceptKind, ...] | None = None,
    ) -> CounterfactualModel:
        """Train on cells.

        Parameters
        ----------
        x : ndarray, shape (n_cells, n_dims)
            Representation of the training cells (float32).
        concepts : ndarray, shape (n_cells, n_concepts)
            Annotated concepts; ``NaN`` where an annotation is missing.
        concept_kinds : tuple of {"binary", "continuous"}, optional
            Kind of each concept column; all binary when omitted.
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

    def encode(self, x: np.ndarray, concepts: np.ndarray) -> np.ndarray:
        """Return the model's representation of cells, shape (n_cells, n_latent)."""
        raise NotImplementedError(f"model {self.name!r} has no representation")
