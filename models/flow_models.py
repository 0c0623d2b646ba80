"""Conditional flow-matching models: Vanilla-FM, scCBGM-FM and CVAE-FM (paper §2.5).

All three learn a velocity field ``v_θ(x_t, t; condition)`` with the objective
and solvers of :mod:`simcell.models.flow`; they differ only in the condition:

* ``vanilla_fm_*`` — the annotated concepts, as ``[value, observed]`` per
  concept: a missing annotation enters as value 0 with indicator 0, so the
  field can tell "not annotated" from "annotated 0".
* ``sccbgm_fm_*`` — ``[u, ĉ]`` from a trained scCBGM (posterior mean). ``fit``
  first trains the scCBGM (its preset is ``config.backbone``), then the flow.
  The concept part is what the scCBGM decoder sees (``decoder_concepts``: by
  default the annotations, ĉ where one is missing), so that an edit 0 -> 1 is
  the change the flow was trained on. The edited condition replaces the
  edited concepts only (the scCBGM action step, §2.4).
* ``cvae_fm_*`` — ``[z, c]``: the CVAE posterior mean under the original
  annotations and the concepts (as for Vanilla-FM); the edited condition
  replaces c by the edited concepts and keeps z.

Two counterfactual modes, one class per registered name:

* ``decode``: fresh noise (seeded, so repeatable), integrated from t = 0 to 1
  under the edited condition.
* ``edit``: integrate the cell backwards (t = 1 -> 0) under its original
  condition, then forwards under the edited one.

Every flow model has both :meth:`~FlowMatchingModel.edit` and
:meth:`~FlowMatchingModel.decode`; ``counterfactual`` calls the one its name
says, so one trained model serves both modes. :meth:`~FlowMatchingModel.inversion_error`
reports the edit round-trip error with an unchanged condition.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from torch import nn

from simcell import SimcellError

from . import flow
from ._common import ModelBase, map_batches, state_dict_cpu, to_tensor
from ._concepts import (
    check_counterfactual_inputs,
    check_fit_inputs,
    concept_condition,
    edited_mask,
)
from ._config import FAST_MAX_STEPS, NeuralConfig, check_fraction, check_positive
from ._nn import VelocityNetwork
from ._trainer import Trainer, build_module, derive_seed
from .base import ConceptKind, FitContext
from .cvae import CVAE, CVAE_PRESETS, CVAEConfig
from .flow import SolverName
from .sccbgm import SCCBGM, SCCBGM_PRESETS, SCCBGMConfig

__all__ = [
    "CVAEFMConfig",
    "CVAEFMDecode",
    "CVAEFMEdit",
    "FlowMatchingModel",
    "SCCBGMFMConfig",
    "SCCBGMFMDecode",
    "SCCBGMFMEdit",
    "VanillaFMConfig",
    "VanillaFMDecode",
    "VanillaFMEdit",
]

FlowMode = Literal["edit", "decode"]


@dataclass(frozen=True, kw_only=True)
class VanillaFMConfig(NeuralConfig):
    """Hyperparameters of a flow-matching model (velocity network, training, solver).

    Parameters
    ----------
    hidden_dim : int
        Width of the velocity network (1024 in the paper).
    n_layers : int
        Residual blocks of the velocity network (4 in the paper).
    dropout : float
        Dropout probability.
    solver : {"euler", "midpoint", "rk4"}
        Fixed-step ODE solver used for generation and inversion.
    n_steps : int
        Steps per integration from t = 0 to 1 (or back).
    """

    hidden_dim: int
    n_layers: int
    dropout: float = 0.1
    solver: SolverName = "euler"
    n_steps: int = 100

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive(self, "hidden_dim", "n_layers", "n_steps")
        check_fraction(self, "dropout")


@dataclass(frozen=True, kw_only=True)
class SCCBGMFMConfig(VanillaFMConfig):
    """Flow hyperparameters plus the preset of the scCBGM trained first (``backbone``)."""

    backbone: SCCBGMConfig


@dataclass(frozen=True, kw_only=True)
class CVAEFMConfig(VanillaFMConfig):
    """Flow hyperparameters plus the preset of the CVAE trained first (``backbone``)."""

    backbone: CVAEConfig


# D.4: 4 x 1024 residual layers with dropout, 200 epochs of batch 128, Adam 3e-4 with
# decay 0.997, no classifier-free guidance. The paper does not state the solver; the
# published code integrates with 1000 Euler steps.
_FLOW_PAPER: dict[str, Any] = {
    "hidden_dim": 1024,
    "n_layers": 4,
    "dropout": 0.1,
    "learning_rate": 3e-4,
    "max_epochs": 200,
    "batch_size": 128,
    "solver": "euler",
    "n_steps": 1000,
}
_FLOW_FAST: dict[str, Any] = {
    "hidden_dim": 64,
    "n_layers": 2,
    "dropout": 0.0,
    "learning_rate": 3e-3,
    "max_epochs": 40,
    "max_steps": FAST_MAX_STEPS,
    "batch_size": 128,
    "solver": "midpoint",
    "n_steps": 16,
}

VANILLA_FM_PRESETS: dict[str, VanillaFMConfig] = {
    "paper": VanillaFMConfig(**_FLOW_PAPER),
    # D.5: the synthetic benchmark uses the D.4 settings.
    "synthetic": VanillaFMConfig(**_FLOW_PAPER),
    "fast": VanillaFMConfig(**_FLOW_FAST),
}
SCCBGM_FM_PRESETS: dict[str, SCCBGMFMConfig] = {
    name: SCCBGMFMConfig(**(_FLOW_FAST if name == "fast" else _FLOW_PAPER), backbone=backbone)
    for name, backbone in SCCBGM_PRESETS.items()
}
# The flow only needs the backbone's [u, c]; trained without dropout, the fast
# backbone gives a steadier condition (scCBGM-FM beat identity on 4 of 5 tasks on
# each of three CI-sized synthetic2 seeds, 2 of 5 on one with dropout 0.2).
SCCBGM_FM_PRESETS["fast"] = SCCBGM_FM_PRESETS["fast"].replace(backbone={"dropout": 0.0})
CVAE_FM_PRESETS: dict[str, CVAEFMConfig] = {
    name: CVAEFMConfig(**(_FLOW_FAST if name == "fast" else _FLOW_PAPER), backbone=backbone)
    for name, backbone in CVAE_PRESETS.items()
}


class _VelocityModule(nn.Module):
    """A velocity network trained with the conditional flow-matching loss."""

    def __init__(self, network: VelocityNetwork) -> None:
        super().__init__()
        self.network = network

    def forward(
        self, x: torch.Tensor, t: torch.Tensor, condition: torch.Tensor | None
    ) -> torch.Tensor:
        return self.network(x, t, condition)

    def loss(
        self, batch: Mapping[str, torch.Tensor], *, generator: torch.Generator
    ) -> torch.Tensor:
        """Flow-matching loss of a mini-batch with keys ``x`` and ``condition``."""
        return flow.flow_matching_loss(
            self.network, batch["x"], batch["condition"], generator=generator
        )


class FlowMatchingModel(ModelBase):
    """Base of the conditional flow-matching models.

    Subclasses define the condition (:meth:`_condition`, :meth:`_target_condition`)
    and, if any, the backbone trained before the flow (:meth:`_fit_backbone`).

    Attributes
    ----------
    mode : {"edit", "decode"}
        What :meth:`counterfactual` does.
    velocity_ : nn.Module
        The trained velocity field.
    history_ : TrainingHistory
        Training history of the flow.
    """

    mode: ClassVar[FlowMode]
    config: VanillaFMConfig

    # -- conditions (subclasses) ---------------------------------------------------

    def _fit_backbone(
        self, x: np.ndarray, concepts: np.ndarray, kinds: tuple[ConceptKind, ...]
    ) -> None:
        """Train whatever the condition needs (nothing by default)."""

    def _condition_dim(self) -> int:
        raise NotImplementedError

    def _condition(self, x: np.ndarray, concepts: np.ndarray) -> np.ndarray:
        """Condition of each cell under its own annotations, shape (n, condition_dim)."""
        raise NotImplementedError

    def _target_condition(
        self, x: np.ndarray, concepts: np.ndarray, target_concepts: np.ndarray
    ) -> np.ndarray:
        """Condition of each cell after the intervention, shape (n, condition_dim)."""
        raise NotImplementedError

    # -- training ----------------------------------------------------------------------

    def _build(self) -> _VelocityModule:
        assert self.n_dims_ is not None
        n_dims, condition_dim, config = self.n_dims_, self._condition_dim(), self.config
        return build_module(
            lambda: _VelocityModule(
                VelocityNetwork(
                    n_dims, condition_dim, config.hidden_dim, config.n_layers, config.dropout
                )
            ),
            seed=self.seed,
        )

    def fit(
        self,
        x: np.ndarray,
        concepts: np.ndarray,
        *,
        concept_kinds: tuple[ConceptKind, ...] | None = None,
        context: FitContext | None = None,
    ) -> FlowMatchingModel:
        """Train the backbone (if any), then the conditional flow on the cells."""
        x, concepts, kinds = check_fit_inputs(x, concepts, concept_kinds)
        self._set_dims(x.shape[1], kinds)
        self._fit_backbone(x, concepts, kinds)
        trainer = Trainer.from_config(
            self.config,
            device=self.device,
            seed=self.seed,
            progress_bar=self.progress_bar,
            description=f"{self.name} (flow)",
        )
        self.device_ = trainer.device
        condition = self._condition(x, concepts)
        self.velocity_ = self._build()
        self.history_ = trainer.fit(
            self.velocity_, {"x": to_tensor(x), "condition": to_tensor(condition)}
        )
        return self

    # -- counterfactuals ----------------------------------------------------------------

    def _solver_options(self) -> dict[str, Any]:
        return {"n_steps": self.config.n_steps, "method": self.config.solver}

    def _check(
        self, x: np.ndarray, concepts: np.ndarray, target_concepts: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        self._require_fitted()
        self.velocity_.eval()
        return check_counterfactual_inputs(
            x, concepts, target_concepts, n_dims=self.n_dims_, n_concepts=self.n_concepts_
        )

    def edit(self, x: np.ndarray, concepts: np.ndarray, target_concepts: np.ndarray) -> np.ndarray:
        """Invert each cell to noise under its condition, generate under the edited one.

        Parameters
        ----------
        x : ndarray, shape (n_cells, n_dims)
        concepts, target_concepts : ndarray, shape (n_cells, n_concepts)

        Returns
        -------
        ndarray, shape (n_cells, n_dims)
        """
        x, concepts, target_concepts = self._check(x, concepts, target_concepts)
        condition = self._condition(x, concepts)
        target = self._target_condition(x, concepts, target_concepts)
        options = self._solver_options()
        return map_batches(
            lambda xb, cb, tb: flow.edit(self.velocity_, xb, cb, tb, **options),
            x,
            condition,
            target,
            device=self.device_,
        )

    def decode(
        self, x: np.ndarray, concepts: np.ndarray, target_concepts: np.ndarray
    ) -> np.ndarray:
        """Generate from fresh noise under the edited condition.

        The noise comes from a generator seeded by the model seed, so repeated
        calls return the same prediction.

        Returns
        -------
        ndarray, shape (n_cells, n_dims)
        """
        x, concepts, target_concepts = self._check(x, concepts, target_concepts)
        target = self._target_condition(x, concepts, target_concepts)
        generator = torch.Generator().manual_seed(derive_seed(self.seed, "decode-noise"))
        noise = torch.randn(x.shape, generator=generator).numpy()
        options = self._solver_options()
        return map_batches(
            lambda nb, tb: flow.generate(self.velocity_, nb, tb, **options),
            noise,
            target,
            device=self.device_,
        )

    def counterfactual(
        self, x: np.ndarray, concepts: np.ndarray, target_concepts: np.ndarray
    ) -> np.ndarray:
        """:meth:`edit` or :meth:`decode`, as the model's ``mode`` says."""
        if self.mode == "edit":
            return self.edit(x, concepts, target_concepts)
        return self.decode(x, concepts, target_concepts)

    def inversion_error(self, x: np.ndarray, concepts: np.ndarray) -> float:
        """MSE between cells and their ``edit`` round trip with unchanged concepts.

        The solver's error along the learned flow: a floor under the error of
        every ``edit`` counterfactual, reported next to results.

        Parameters
        ----------
        x : ndarray, shape (n_cells, n_dims)
        concepts : ndarray, shape (n_cells, n_concepts)

        Returns
        -------
        float
            Mean over cells and dimensions of the squared difference.
        """
        x, concepts, _ = self._check(x, concepts, concepts)
        if len(x) == 0:
            return 0.0
        roundtrip = self.edit(x, concepts, concepts)
        return float(np.mean((roundtrip.astype(np.float64) - x) ** 2))

    def with_mode(self, mode: FlowMode) -> FlowMatchingModel:
        """The same trained model, registered under the other counterfactual mode.

        Returns a new object sharing the trained weights, e.g. turn a fitted
        ``sccbgm_fm_edit`` into ``sccbgm_fm_decode`` without retraining.
        """
        family = next(base for base in type(self).__mro__ if base in _VARIANTS)
        variants = _VARIANTS[family]
        if mode not in variants:
            raise SimcellError(f"unknown flow mode {mode!r}; valid modes: {', '.join(variants)}")
        twin = variants[mode].__new__(variants[mode])
        twin.__dict__.update(self.__dict__)
        return twin

    # -- checkpoints ----------------------------------------------------------------------

    def _get_state(self) -> dict[str, Any]:
        state = super()._get_state()
        state["velocity"] = state_dict_cpu(self.velocity_)
        return state

    def _set_state(self, state: Mapping[str, Any]) -> None:
        super()._set_state(state)
        self.device_ = self._resolved_device()
        self.velocity_ = self._build()
        self.velocity_.load_state_dict(state["velocity"])
        self.velocity_.to(self.device_).eval()


class _VanillaFM(FlowMatchingModel):
    """Flow conditioned on the annotated concepts (CellFlow-like, paper §5.1)."""

    config_class = VanillaFMConfig
    presets: ClassVar[Mapping[str, VanillaFMConfig]] = VANILLA_FM_PRESETS

    def _condition_dim(self) -> int:
        assert self.n_concepts_ is not None
        return 2 * self.n_concepts_

    def _condition(self, x: np.ndarray, concepts: np.ndarray) -> np.ndarray:
        return concept_condition(to_tensor(concepts)).numpy()

    def _target_condition(
        self, x: np.ndarray, concepts: np.ndarray, target_concepts: np.ndarray
    ) -> np.ndarray:
        edited = edited_mask(concepts, target_concepts)
        return self._condition(x, np.where(edited, target_concepts, concepts))


class _BackboneFM(FlowMatchingModel):
    """A flow conditioned on the representation of a model trained first."""

    backbone_class: ClassVar[type[ModelBase]]
    config: SCCBGMFMConfig | CVAEFMConfig  # type: ignore[assignment]

    def _new_backbone(self) -> ModelBase:
        return self.backbone_class(
            self.config.backbone,
            device=self.device,
            seed=derive_seed(self.seed, "backbone") % (2**31),
            progress_bar=self.progress_bar,
        )

    def _fit_backbone(
        self, x: np.ndarray, concepts: np.ndarray, kinds: tuple[ConceptKind, ...]
    ) -> None:
        self.backbone_ = self._new_backbone()
        self.backbone_.fit(x, concepts, concept_kinds=kinds)

    def encode(self, x: np.ndarray, concepts: np.ndarray) -> np.ndarray:
        """The backbone's representation (see its ``encode``)."""
        self._require_fitted()
        return self.backbone_.encode(x, concepts)

    def _get_state(self) -> dict[str, Any]:
        state = super()._get_state()
        state["backbone"] = self.backbone_._get_state()
        return state

    def _set_state(self, state: Mapping[str, Any]) -> None:
        self.backbone_ = self._new_backbone()
        self.backbone_._set_state(state["backbone"])
        super()._set_state(state)


class _SCCBGMFM(_BackboneFM):
    """Flow conditioned on the scCBGM embedding ``[u, ĉ]`` (scCBGM-FM, §2.5).

    The concepts in the condition are those the backbone's decoder sees (see
    :meth:`SCCBGM.decoder_parts`).
    """

    config_class = SCCBGMFMConfig
    presets: ClassVar[Mapping[str, SCCBGMFMConfig]] = SCCBGM_FM_PRESETS
    backbone_class = SCCBGM
    has_representation: ClassVar[bool] = True
    backbone_: SCCBGM

    def _condition_dim(self) -> int:
        return self.backbone_.module_.n_unknown + self.backbone_.n_concepts_

    def _condition(self, x: np.ndarray, concepts: np.ndarray) -> np.ndarray:
        unknowns, factual = self.backbone_.decoder_parts(x, concepts)
        return np.concatenate([unknowns, factual], axis=1)

    def _target_condition(
        self, x: np.ndarray, concepts: np.ndarray, target_concepts: np.ndarray
    ) -> np.ndarray:
        unknowns, factual = self.backbone_.decoder_parts(x, concepts)
        edited = edited_mask(concepts, target_concepts)
        return np.concatenate([unknowns, np.where(edited, target_concepts, factual)], axis=1)


class _CVAEFM(_BackboneFM):
    """Flow conditioned on the CVAE latent and the concepts (CVAE-FM, §5.1)."""

    config_class = CVAEFMConfig
    presets: ClassVar[Mapping[str, CVAEFMConfig]] = CVAE_FM_PRESETS
    backbone_class = CVAE
    has_representation: ClassVar[bool] = True
    backbone_: CVAE

    def _condition_dim(self) -> int:
        assert self.n_concepts_ is not None
        return self.backbone_.config.latent_dim + 2 * self.n_concepts_

    def _condition(self, x: np.ndarray, concepts: np.ndarray) -> np.ndarray:
        latent = self.backbone_.encode(x, concepts)
        return np.concatenate([latent, concept_condition(to_tensor(concepts)).numpy()], axis=1)

    def _target_condition(
        self, x: np.ndarray, concepts: np.ndarray, target_concepts: np.ndarray
    ) -> np.ndarray:
        latent = self.backbone_.encode(x, concepts)
        edited = np.where(edited_mask(concepts, target_concepts), target_concepts, concepts)
        return np.concatenate([latent, concept_condition(to_tensor(edited)).numpy()], axis=1)


class VanillaFMEdit(_VanillaFM):
    """Vanilla-FM, ``edit`` mode: invert under c, generate under c'."""

    name: ClassVar[str] = "vanilla_fm_edit"
    mode: ClassVar[FlowMode] = "edit"


class VanillaFMDecode(_VanillaFM):
    """Vanilla-FM, ``decode`` mode: generate from fresh noise under c'."""

    name: ClassVar[str] = "vanilla_fm_decode"
    mode: ClassVar[FlowMode] = "decode"


class SCCBGMFMEdit(_SCCBGMFM):
    """scCBGM-FM, ``edit`` mode: invert under [u, ĉ], generate under [u, ĉ']."""

    name: ClassVar[str] = "sccbgm_fm_edit"
    mode: ClassVar[FlowMode] = "edit"


class SCCBGMFMDecode(_SCCBGMFM):
    """scCBGM-FM, ``decode`` mode: generate from fresh noise under [u, ĉ']."""

    name: ClassVar[str] = "sccbgm_fm_decode"
    mode: ClassVar[FlowMode] = "decode"


class CVAEFMEdit(_CVAEFM):
    """CVAE-FM, ``edit`` mode: invert under [z, c], generate under [z, c']."""

    name: ClassVar[str] = "cvae_fm_edit"
    mode: ClassVar[FlowMode] = "edit"


class CVAEFMDecode(_CVAEFM):
    """CVAE-FM, ``decode`` mode: generate from fresh noise under [z, c']."""

    name: ClassVar[str] = "cvae_fm_decode"
    mode: ClassVar[FlowMode] = "decode"


_VARIANTS: dict[type[FlowMatchingModel], dict[str, type[FlowMatchingModel]]] = {
    _VanillaFM: {"edit": VanillaFMEdit, "decode": VanillaFMDecode},
    _SCCBGMFM: {"edit": SCCBGMFMEdit, "decode": SCCBGMFMDecode},
    _CVAEFM: {"edit": CVAEFMEdit, "decode": CVAEFMDecode},
}
