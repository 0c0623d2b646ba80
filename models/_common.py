"""What every simcell model object shares: preset, seed, device, fitted state, saving."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from simcell import SimcellError

from ._concepts import check_fit_inputs
from ._config import ModelConfig
from ._trainer import Trainer, resolve_device, save_checkpoint
from .base import ConceptKind, CounterfactualModel, FitContext

CHECKPOINT_FORMAT = "simcell.models/1"
INFERENCE_BATCH_SIZE = 4096


class ModelBase(CounterfactualModel):
    """Base of the built-in models: holds the preset, seed, device and fitted dimensions.

    Parameters
    ----------
    config : ModelConfig, optional
        Hyperparameters; the class's ``fast`` preset when omitted.
    device : str or torch.device
        ``"auto"`` (CUDA when present), ``"cpu"``, ``"cuda"``...; resolved at
        :meth:`fit` time, never at import.
    seed : int
        Seed of every random stream of the model (initialisation, batches,
        noise, dropout, sampling).
    progress_bar : bool
        Show training progress bars.
    """

    config_class: ClassVar[type[ModelConfig]]
    presets: ClassVar[Mapping[str, ModelConfig]]
    has_representation: ClassVar[bool] = False

    def __init__(
        self,
        config: ModelConfig | None = None,
        *,
        device: str | torch.device = "auto",
        seed: int = 0,
        progress_bar: bool = True,
    ) -> None:
        if config is None:
            config = self.presets["fast"]
        if not isinstance(config, self.config_class):
            raise SimcellError(
                f"model {self.name!r} takes a {self.config_class.__name__}, "
                f"got {type(config).__name__}"
            )
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
            raise SimcellError(f"seed must be an integer, got {seed!r}")
        self.config = config
        self.seed = int(seed)
        self.device = device
        self.progress_bar = progress_bar
        self.n_dims_: int | None = None
        self.n_concepts_: int | None = None
        self.concept_kinds_: tuple[ConceptKind, ...] | None = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, seed={self.seed}, config={self.config})"

    # fitted state ---------------------------------------------------------------

    @property
    def is_fitted(self) -> bool:
        """Whether :meth:`fit` (or loading a checkpoint) has been done."""
        return self.n_dims_ is not None

    def _require_fitted(self) -> None:
        if not self.is_fitted:
            raise SimcellError(f"model {self.name!r} is not fitted: call fit() first")

    def _set_dims(self, n_dims: int, kinds: tuple[ConceptKind, ...]) -> None:
        self.n_dims_ = int(n_dims)
        self.n_concepts_ = len(kinds)
        self.concept_kinds_ = tuple(kinds)

    def _train_module(self, x: np.ndarray, concepts: np.ndarray) -> None:
        """Build the module (``_build``) and train it with the shared trainer.

        Sets ``module_``, ``device_`` and ``history_``; ``x`` and ``concepts`` are
        the checked training arrays (``concepts`` may have zero columns).
        """
        self.module_ = self._build()
        trainer = Trainer.from_config(
            self.config,
            device=self.device,
            seed=self.seed,
            progress_bar=self.progress_bar,
            description=self.name,
        )
        self.device_ = trainer.device
        self.history_ = trainer.fit(
            self.module_, {"x": to_tensor(x), "concepts": to_tensor(concepts)}
        )

    def _resolved_device(self) -> torch.device:
        return resolve_device(self.device)

    # checkpoints ----------------------------------------------------------------

    def _get_state(self) -> dict[str, Any]:
        """Fitted state as tensors, state dicts and Python scalars (extended by subclasses)."""
        return {
            "n_dims": self.n_dims_,
            "n_concepts": self.n_concepts_,
            "concept_kinds": self.concept_kinds_,
        }

    def _set_state(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`_get_state` output (extended by subclasses)."""
        self._set_dims(state["n_dims"], tuple(state["concept_kinds"]))

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the fitted model (preset, seed and weights) to ``path``.

        Read it back with :func:`simcell.models.load_model`, which loads with
        ``torch.load(..., weights_only=True)``.
        """
        self._require_fitted()
        save_checkpoint(
            path,
            {
                "format": CHECKPOINT_FORMAT,
                "model": self.name,
                "config": self.config.to_dict(),
                "seed": self.seed,
                "state": self._get_state(),
            },
        )


class NeuralModel(ModelBase):
    """A model whose fitted state is one torch module, ``module_`` (built by ``_build``).

    Checkpoints store its weights and restore them onto the resolved device.
    """

    module_: nn.Module

    def _build(self) -> nn.Module:
        raise NotImplementedError

    def fit(
        self,
        x: np.ndarray,
        concepts: np.ndarray,
        *,
        concept_kinds: tuple[ConceptKind, ...] | None = None,
        context: FitContext | None = None,
    ) -> NeuralModel:
        """Train on cells (see :meth:`CounterfactualModel.fit`); missing concepts are masked."""
        x, concepts, kinds = check_fit_inputs(x, concepts, concept_kinds)
        self._set_dims(x.shape[1], kinds)
        self._train_module(x, concepts)
        return self

    def _get_state(self) -> dict[str, Any]:
        state = super()._get_state()
        state["module"] = state_dict_cpu(self.module_)
        return state

    def _set_state(self, state: Mapping[str, Any]) -> None:
        super()._set_state(state)
        self.module_ = self._build()
        self.module_.load_state_dict(state["module"])
        self.device_ = self._resolved_device()
        self.module_.to(self.device_).eval()


def state_dict_cpu(module: nn.Module) -> dict[str, torch.Tensor]:
    """A module's state dict with every tensor detached and on the CPU."""
    return {key: value.detach().cpu() for key, value in module.state_dict().items()}


@torch.no_grad()
def map_batches(
    fn: Callable[..., torch.Tensor],
    *arrays: np.ndarray,
    device: torch.device,
    batch_size: int = INFERENCE_BATCH_SIZE,
) -> np.ndarray:
    """Apply ``fn`` to row-aligned mini-batches of ``arrays`` and stack the results.

    Parameters
    ----------
    fn : callable
        Takes one tensor per array (on ``device``) and returns a tensor of
        shape (batch, ...).
    *arrays : ndarray, each of shape (n_cells, ...)
    device : torch.device
    batch_size : int

    Returns
    -------
    ndarray, shape (n_cells, ...), float32
    """
    n_cells = arrays[0].shape[0]
    outputs = []
    for start in range(0, max(n_cells, 1), batch_size):
        batch = [
            torch.as_tensor(np.ascontiguousarray(array[start : start + batch_size])).to(device)
            for array in arrays
        ]
        outputs.append(fn(*batch).detach().cpu().numpy())
    return np.concatenate(outputs, axis=0).astype(np.float32, copy=False)


def to_tensor(array: np.ndarray) -> torch.Tensor:
    """A float32 CPU tensor sharing memory with ``array`` where possible."""
    return torch.as_tensor(np.ascontiguousarray(array, dtype=np.float32))
