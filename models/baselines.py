"""Reference baselines: identity, mean shift and scGen-style latent arithmetic.

The shift baselines estimate one effect vector per concept from the training
cells, as an ordinary-least-squares slope of each output dimension on the
concept over the cells where it is annotated::

    slope_k = Σ_i (c_ik - c̄_k)(v_i - v̄) / Σ_i (c_ik - c̄_k)²

For a binary concept this is exactly the difference of means between cells
with the concept on and off; for a continuous concept it is the regression
slope. A counterfactual adds ``slope_k × (c'_k - c_k)`` for every edited
concept k; when a cell's annotation ``c_k`` is missing, the training mean
``c̄_k`` stands in for it. A concept that is constant (or annotated in fewer
than two cells) in training has no estimable effect: its slope is 0 and a
:class:`simcell.SimcellWarning` says so at fit time.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch

from simcell import SimcellWarning

from ._common import ModelBase, NeuralModel, map_batches
from ._concepts import check_counterfactual_inputs, check_fit_inputs, edited_mask
from ._config import ModelConfig
from ._trainer import build_module
from .base import ConceptKind, FitContext
from .cvae import CVAE_PRESETS, CVAEConfig, CVAEModule

__all__ = [
    "Additive",
    "BASELINE_PRESETS",
    "LATENT_SHIFT_PRESETS",
    "BaselineConfig",
    "Identity",
    "LatentShift",
    "LatentShiftConfig",
    "MeanShift",
    "additive_effects",
    "concept_slopes",
]


@dataclass(frozen=True, kw_only=True)
class BaselineConfig(ModelConfig):
    """The (empty) preset of a baseline without hyperparameters."""


BASELINE_PRESETS: dict[str, BaselineConfig] = {
    "paper": BaselineConfig(),
    "synthetic": BaselineConfig(),
    "fast": BaselineConfig(),
}


def concept_slopes(
    values: np.ndarray, concepts: np.ndarray, *, model_name: str = "model"
) -> tuple[np.ndarray, np.ndarray]:
    """Per-concept OLS slopes of ``values`` on each concept, over annotated cells.

    Parameters
    ----------
    values : ndarray, shape (n_cells, p)
        Responses (cells in PC space, or latent means).
    concepts : ndarray, shape (n_cells, n_concepts)
        Annotations with NaN where missing.
    model_name : str
        Named in the warning for a concept without an estimable effect.

    Returns
    -------
    slopes : ndarray, shape (n_concepts, p), float64
        Difference of means for binary concepts; 0 for a concept constant in
        (or annotated in fewer than two of) the training cells.
    concept_means : ndarray, shape (n_concepts,), float64
        Mean annotation (stand-in for a missing annotation); 0 if none observed.
    """
    values = np.asarray(values, dtype=np.float64)
    n_concepts = concepts.shape[1]
    slopes = np.zeros((n_concepts, values.shape[1]))
    concept_means = np.zeros(n_concepts)
    degenerate = []
    for k in range(n_concepts):
        observed = ~np.isnan(concepts[:, k])
        column = concepts[observed, k].astype(np.float64)
        if column.size:
            concept_means[k] = column.mean()
        centred = column - concept_means[k]
        spread = float(centred @ centred)
        if column.size < 2 or spread == 0.0:
            degenerate.append(k)
            continue
        responses = values[observed]
        slopes[k] = centred @ (responses - responses.mean(axis=0)) / spread
    _warn_degenerate(model_name, degenerate)
    return slopes, concept_means


def _warn_degenerate(model_name: str, degenerate: list[int]) -> None:
    if degenerate:
        warnings.warn(
            f"{model_name}: concept(s) {degenerate} do not vary among annotated training "
            "cells; their effect is set to 0",
            SimcellWarning,
            stacklevel=4,
        )


def additive_effects(
    values: np.ndarray, concepts: np.ndarray, *, model_name: str = "model"
) -> tuple[np.ndarray, np.ndarray]:
    """Effects of all concepts at once: the joint OLS regression v = a + Σ_k c_k β_k.

    Where :func:`concept_slopes` regresses on one concept at a time (cells with
    other concepts on count as "off"), this fits them together, so each effect
    is adjusted for the others. With controls (every concept 0) and single
    perturbations only, β_k is exactly the mean of the single-k cells minus the
    controls' mean, and a double's prediction is the sum of the single effects.

    Parameters
    ----------
    values : ndarray, shape (n_cells, p)
    concepts : ndarray, shape (n_cells, n_concepts)
        Annotations with NaN where missing (the concept's mean stands in).
    model_name : str

    Returns
    -------
    slopes : ndarray, shape (n_concepts, p), float64
        β_k; 0 for a concept constant in (or annotated in fewer than two of)
        the training cells.
    concept_means : ndarray, shape (n_concepts,), float64
    """
    values = np.asarray(values, dtype=np.float64)
    concepts = np.asarray(concepts, dtype=np.float64)
    observed = ~np.isnan(concepts)
    n_observed = observed.sum(axis=0)
    concept_means = np.where(observed, concepts, 0.0).sum(axis=0) / np.maximum(n_observed, 1)
    filled = np.where(observed, concepts, concept_means)
    varying = (n_observed >= 2) & (np.ptp(filled, axis=0) > 0)
    design = np.column_stack([np.ones(len(values)), filled[:, varying]])
    coefficients = np.linalg.lstsq(design, values, rcond=None)[0]
    slopes = np.zeros((concepts.shape[1], values.shape[1]))
    slopes[varying] = coefficients[1:]
    _warn_degenerate(model_name, np.flatnonzero(~varying).tolist())
    return slopes, concept_means


def _shift(
    slopes: np.ndarray,
    concept_means: np.ndarray,
    concepts: np.ndarray,
    target_concepts: np.ndarray,
) -> np.ndarray:
    """Σ_k slope_k (c'_k - c_k) over edited entries; shape (n_cells, p)."""
    edited = edited_mask(concepts, target_concepts)
    reference = np.where(np.isnan(concepts), concept_means[None, :], concepts)
    change = np.where(edited, target_concepts - reference, 0.0)
    return change @ slopes


class Identity(ModelBase):
    """Predicts no change: the counterfactual of a cell is the cell itself."""

    name: ClassVar[str] = "identity"
    config_class = BaselineConfig
    presets: ClassVar[Mapping[str, BaselineConfig]] = BASELINE_PRESETS

    def fit(
        self,
        x: np.ndarray,
        concepts: np.ndarray,
        *,
        concept_kinds: tuple[ConceptKind, ...] | None = None,
        context: FitContext | None = None,
    ) -> Identity:
        """Record the dimensions; nothing is learned."""
        x, concepts, kinds = check_fit_inputs(x, concepts, concept_kinds)
        self._set_dims(x.shape[1], kinds)
        return self

    def counterfactual(
        self, x: np.ndarray, concepts: np.ndarray, target_concepts: np.ndarray
    ) -> np.ndarray:
        """Return a float32 copy of ``x``, shape (n_cells, n_dims)."""
        self._require_fitted()
        x, _, _ = check_counterfactual_inputs(
            x, concepts, target_concepts, n_dims=self.n_dims_, n_concepts=self.n_concepts_
        )
        return np.array(x, dtype=np.float32, copy=True)


class MeanShift(ModelBase):
    """Adds the training-set effect of each edited concept to the cell.

    Binary concepts: the difference of means between annotated cells with the
    concept on and off; continuous concepts: the regression slope times the
    change (module docstring).

    Attributes
    ----------
    slopes_ : ndarray, shape (n_concepts, n_dims)
    concept_means_ : ndarray, shape (n_concepts,)
    """

    name: ClassVar[str] = "mean_shift"
    config_class = BaselineConfig
    presets: ClassVar[Mapping[str, BaselineConfig]] = BASELINE_PRESETS
    #: how the effects are estimated from (values, concepts): one concept at a time
    _effects = staticmethod(concept_slopes)

    def fit(
        self,
        x: np.ndarray,
        concepts: np.ndarray,
        *,
        concept_kinds: tuple[ConceptKind, ...] | None = None,
        context: FitContext | None = None,
    ) -> MeanShift:
        """Estimate one shift vector per concept."""
        x, concepts, kinds = check_fit_inputs(x, concepts, concept_kinds)
        self._set_dims(x.shape[1], kinds)
        self.slopes_, self.concept_means_ = self._effects(x, concepts, model_name=self.name)
        return self

    def counterfactual(
        self, x: np.ndarray, concepts: np.ndarray, target_concepts: np.ndarray
    ) -> np.ndarray:
        """``x + Σ_k slope_k (c'_k - c_k)`` over edited concepts; shape (n_cells, n_dims)."""
        self._require_fitted()
        x, concepts, target_concepts = check_counterfactual_inputs(
            x, concepts, target_concepts, n_dims=self.n_dims_, n_concepts=self.n_concepts_
        )
        shift = _shift(self.slopes_, self.concept_means_, concepts, target_concepts)
        return (x + shift).astype(np.float32)

    def _get_state(self) -> dict[str, Any]:
        state = super()._get_state()
        state["slopes"] = torch.from_numpy(self.slopes_)
        state["concept_means"] = torch.from_numpy(self.concept_means_)
        return state

    def _set_state(self, state: Mapping[str, Any]) -> None:
        super()._set_state(state)
        self.slopes_ = state["slopes"].numpy()
        self.concept_means_ = state["concept_means"].numpy()


class Additive(MeanShift):
    """Adds the jointly estimated effect of each edited concept (the sum of single effects).

    The effects are the joint regression of the training cells on all concepts
    (:func:`additive_effects`); with controls and singles, a double's prediction is
    the cell plus the single effect of the added perturbation, measured against
    the controls rather than against every other cell as ``mean_shift`` does.
    """

    name: ClassVar[str] = "additive"
    _effects = staticmethod(additive_effects)


@dataclass(frozen=True, kw_only=True)
class LatentShiftConfig(CVAEConfig):
    """Hyperparameters of the VAE behind :class:`LatentShift` (see :class:`CVAEConfig`)."""


LATENT_SHIFT_PRESETS: dict[str, LatentShiftConfig] = {
    name: LatentShiftConfig(**config.to_dict()) for name, config in CVAE_PRESETS.items()
}


class LatentShift(NeuralModel):
    """scGen-style latent arithmetic (Lotfollahi et al., 2019).

    A VAE (no concepts as input) is trained on the cells; each concept's effect
    is the slope of the posterior-mean latents on the concept (the difference of
    mean latents between cells with the concept on and off, for a binary
    concept). A counterfactual encodes the cell (posterior mean), adds the
    effects of the edited concepts in latent space and decodes; with
    ``residual_abduction`` (the ``fast`` and ``synthetic`` presets) it returns
    x + D(z + δ) − D(z) instead, keeping what the VAE does not reconstruct.

    Attributes
    ----------
    latent_slopes_ : ndarray, shape (n_concepts, latent_dim)
    concept_means_ : ndarray, shape (n_concepts,)
    """

    name: ClassVar[str] = "latent_shift"
    has_representation: ClassVar[bool] = True
    config_class = LatentShiftConfig
    presets: ClassVar[Mapping[str, LatentShiftConfig]] = LATENT_SHIFT_PRESETS
    config: LatentShiftConfig

    def _build(self) -> CVAEModule:
        assert self.n_dims_ is not None
        n_dims, config = self.n_dims_, self.config
        return build_module(lambda: CVAEModule(n_dims, 0, config), seed=self.seed)

    def fit(
        self,
        x: np.ndarray,
        concepts: np.ndarray,
        *,
        concept_kinds: tuple[ConceptKind, ...] | None = None,
        context: FitContext | None = None,
    ) -> LatentShift:
        """Train the VAE, then estimate the latent effect of each concept."""
        x, concepts, kinds = check_fit_inputs(x, concepts, concept_kinds)
        self._set_dims(x.shape[1], kinds)
        self._train_module(x, np.zeros((len(x), 0), dtype=np.float32))
        self.latent_slopes_, self.concept_means_ = concept_slopes(
            self._latent(x), concepts, model_name=self.name
        )
        return self

    def _latent(self, x: np.ndarray) -> np.ndarray:
        self.module_.eval()
        return map_batches(
            lambda xb: self.module_.posterior(xb, xb.new_zeros((len(xb), 0)))[0],
            x,
            device=self.device_,
        )

    def counterfactual(
        self, x: np.ndarray, concepts: np.ndarray, target_concepts: np.ndarray
    ) -> np.ndarray:
        """Decode ``E_μ(x) + Σ_k δ_k (c'_k - c_k)``; shape (n_cells, n_dims)."""
        self._require_fitted()
        x, concepts, target_concepts = check_counterfactual_inputs(
            x, concepts, target_concepts, n_dims=self.n_dims_, n_concepts=self.n_concepts_
        )
        shift = _shift(self.latent_slopes_, self.concept_means_, concepts, target_concepts)
        latent = self._latent(x)
        shifted = self._decode(latent + shift.astype(np.float32))
        if self.config.residual_abduction:
            return x + shifted - self._decode(latent)
        return shifted

    def _decode(self, latent: np.ndarray) -> np.ndarray:
        return map_batches(
            lambda zb: self.module_.decode(zb, zb.new_zeros((len(zb), 0))),
            np.ascontiguousarray(latent, dtype=np.float32),
            device=self.device_,
        )

    def encode(self, x: np.ndarray, concepts: np.ndarray) -> np.ndarray:
        """Posterior mean of the VAE latent, shape (n_cells, latent_dim)."""
        self._require_fitted()
        x, _, _ = check_counterfactual_inputs(
            x, concepts, concepts, n_dims=self.n_dims_, n_concepts=self.n_concepts_
        )
        return self._latent(x)

    def _get_state(self) -> dict[str, Any]:
        state = super()._get_state()
        state["latent_slopes"] = torch.from_numpy(self.latent_slopes_)
        state["concept_means"] = torch.from_numpy(self.concept_means_)
        return state

    def _set_state(self, state: Mapping[str, Any]) -> None:
        super()._set_state(state)
        self.latent_slopes_ = state["latent_slopes"].numpy()
        self.concept_means_ = state["concept_means"].numpy()
