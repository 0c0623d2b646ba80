"""Counterfactual models behind one interface, with one shared trainer.

>>> from simcell.models import create_model, list_models
>>> model = create_model("sccbgm", preset="fast", seed=0)   # doctest: +SKIP
>>> model.fit(x_train, concepts_train)                       # doctest: +SKIP
>>> x_cf = model.counterfactual(x, concepts, target_concepts)  # doctest: +SKIP

Registered models (:func:`list_models`): ``identity``, ``mean_shift``,
``additive``, ``latent_shift``, ``cvae``, ``sccbgm``, ``cbgm``, ``vanilla_fm_edit``,
``vanilla_fm_decode``, ``sccbgm_fm_edit``, ``sccbgm_fm_decode``,
``cvae_fm_edit``, ``cvae_fm_decode``, ``scgen``, and the adapters ``biolord``
and ``cinemaot`` (they need ``pip install 'simcell[baselines]'``; see
:func:`available_models`). Each has the presets ``fast``,
``synthetic`` and ``paper`` (frozen dataclasses with ``to_dict()``).

A model declares what it needs (see :mod:`simcell.models.base`): its
``input_space`` (:data:`InputSpace`: ``pca``, ``lognorm``, ``hvg`` or
``counts``), whether it ``uses_dag``, and whether :meth:`encode` returns a
:class:`Representation` of named blocks; ``fit`` receives a :class:`FitContext`.

The flow-matching objective and ODE solvers live in :mod:`simcell.models.flow`.
"""

from . import flow
from ._config import ModelConfig, NeuralConfig
from ._registry import (
    DEFAULT_MODELS,
    PRESET_NAMES,
    available_models,
    create_model,
    get_model_class,
    get_preset,
    list_models,
    load_model,
    register_model,
)
from ._trainer import (
    Trainer,
    TrainingHistory,
    derive_seed,
    load_checkpoint,
    resolve_device,
    save_checkpoint,
)
from .base import (
    INPUT_SPACES,
    ConceptKind,
    CounterfactualModel,
    FitContext,
    InputSpace,
    Intervention,
    Representation,
)
from .baselines import (
    BASELINE_PRESETS,
    LATENT_SHIFT_PRESETS,
    Additive,
    BaselineConfig,
    Identity,
    LatentShift,
    LatentShiftConfig,
    MeanShift,
)
from .cvae import CVAE, CVAE_PRESETS, CVAEConfig
from .external import Biolord, CinemaOT
from .flow_models import (
    CVAE_FM_PRESETS,
    SCCBGM_FM_PRESETS,
    VANILLA_FM_PRESETS,
    CVAEFMConfig,
    CVAEFMDecode,
    CVAEFMEdit,
    FlowMatchingModel,
    SCCBGMFMConfig,
    SCCBGMFMDecode,
    SCCBGMFMEdit,
    VanillaFMConfig,
    VanillaFMDecode,
    VanillaFMEdit,
)
from .sccbgm import CBGM, CBGM_PRESETS, SCCBGM, SCCBGM_PRESETS, SCCBGMConfig
from .scgen import SCGen

__all__ = [
    "BASELINE_PRESETS",
    "LATENT_SHIFT_PRESETS",
    "CBGM",
    "CBGM_PRESETS",
    "CVAE",
    "CVAEConfig",
    "CVAEFMConfig",
    "CVAEFMDecode",
    "CVAEFMEdit",
    "CVAE_FM_PRESETS",
    "CVAE_PRESETS",
    "BaselineConfig",
    "ConceptKind",
    "CounterfactualModel",
    "DEFAULT_MODELS",
    "FitContext",
    "INPUT_SPACES",
    "InputSpace",
    "FlowMatchingModel",
    "Additive",
    "Identity",
    "Intervention",
    "LatentShift",
    "LatentShiftConfig",
    "MeanShift",
    "ModelConfig",
    "NeuralConfig",
    "PRESET_NAMES",
    "Representation",
    "SCCBGM",
    "SCCBGMConfig",
    "SCCBGMFMConfig",
    "SCCBGMFMDecode",
    "SCCBGMFMEdit",
    "SCCBGM_FM_PRESETS",
    "SCCBGM_PRESETS",
    "Trainer",
    "TrainingHistory",
    "VANILLA_FM_PRESETS",
    "VanillaFMConfig",
    "VanillaFMDecode",
    "VanillaFMEdit",
    "available_models",
    "Biolord",
    "CinemaOT",
    "SCGen",
    "create_model",
    "derive_seed",
    "flow",
    "get_model_class",
    "get_preset",
    "list_models",
    "load_checkpoint",
    "load_model",
    "register_model",
    "resolve_device",
    "save_checkpoint",
]
