"""The one training loop shared by every neural model.

The trainer owns what is common to all models: device choice, seeding, the
optimiser (Adam with exponential learning-rate decay per epoch), mini-batching,
an optional validation split with early stopping, the progress bar and
checkpoint files. A model only provides an ``nn.Module`` with a
``loss(batch, *, generator)`` method.

Randomness never goes through torch's global generator: weights are
initialised from a seeded ``torch.Generator`` (modules are built on the
``meta`` device and initialised explicitly), mini-batch order, reparameterisation
noise, flow-matching noise and dropout masks are all drawn from generators the
trainer creates from the model seed. The same seed therefore gives the same
weights on the CPU, whatever else the process does with ``torch.manual_seed``.
"""

from __future__ import annotations

import copy
import hashlib
import math
import os
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import nn
from tqdm.auto import tqdm

from simcell import SimcellError
from simcell._device import resolve_device as _resolve_device

from ._config import NeuralConfig
from ._nn import SeededDropout

__all__ = [
    "Trainer",
    "TrainingHistory",
    "TrainableModule",
    "build_module",
    "derive_seed",
    "init_parameters",
    "load_checkpoint",
    "resolve_device",
    "save_checkpoint",
]


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """Turn a device request into a ``torch.device`` (see :func:`simcell._device.resolve_device`).

    Parameters
    ----------
    device : str or torch.device
        ``"auto"`` picks CUDA when ``torch.cuda.is_available()`` and the CPU
        otherwise; ``"cpu"``, ``"cuda"`` or ``"cuda:<index>"``.

    Raises
    ------
    simcell.SimcellError
        For an unknown device string, or CUDA requested where none is present.
    """
    return torch.device(_resolve_device(device))


def derive_seed(seed: int, stream: str) -> int:
    """Derive an independent 63-bit seed for a named random stream.

    Streams are keyed by name, never by call order, so adding a stream does not
    change the others.

    Parameters
    ----------
    seed : int
        The model seed.
    stream : str
        Name of the stream (``"init"``, ``"shuffle"``, ``"noise"``, ...).
    """
    digest = hashlib.blake2b(f"{int(seed)}/{stream}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def _generator(seed: int, stream: str, device: torch.device | str = "cpu") -> torch.Generator:
    generator = torch.Generator(device=device)
    generator.manual_seed(derive_seed(seed, stream))
    return generator


@torch.no_grad()
def init_parameters(module: nn.Module, generator: torch.Generator) -> nn.Module:
    """Initialise every parameter of ``module`` from ``generator``, in place.

    ``nn.Linear`` gets torch's default scheme (weights and biases uniform on
    ``±1/sqrt(fan_in)``), ``nn.LayerNorm`` gets ones and zeros. Any other module
    that owns parameters directly is refused, so no parameter is left
    uninitialised.
    """
    for name, child in module.named_modules():
        if isinstance(child, nn.Linear):
            bound = 1.0 / math.sqrt(child.in_features) if child.in_features > 0 else 0.0
            child.weight.uniform_(-bound, bound, generator=generator)
            if child.bias is not None:
                child.bias.uniform_(-bound, bound, generator=generator)
        elif isinstance(child, nn.LayerNorm):
            if child.weight is not None:
                child.weight.fill_(1.0)
            if child.bias is not None:
                child.bias.fill_(0.0)
        elif any(True for _ in child.parameters(recurse=False)):
            raise TypeError(f"init_parameters: no rule for module {name!r} ({type(child)})")
    return module


def build_module(factory: Callable[[], nn.Module], *, seed: int) -> nn.Module:
    """Build a module without touching torch's global random state.

    The module is constructed on the ``meta`` device (no random draws), then
    materialised on the CPU and initialised from a generator seeded with
    ``derive_seed(seed, "init")``.
    """
    with torch.device("meta"):
        module = factory()
    if any(True for _ in module.buffers()):
        raise TypeError("build_module: modules with buffers are not supported")
    module = module.to_empty(device="cpu")
    return init_parameters(module, _generator(seed, "init"))


class TrainableModule(Protocol):
    """What the trainer needs from a module: parameters and a scalar loss."""

    def loss(
        self, batch: Mapping[str, torch.Tensor], *, generator: torch.Generator
    ) -> torch.Tensor:
        """Return the scalar training loss of a mini-batch."""
        ...


@dataclass
class TrainingHistory:
    """Per-epoch losses of one training run.

    Attributes
    ----------
    train_loss : list of float
        Mean training loss of each epoch.
    validation_loss : list of float
        Mean validation loss of each epoch (empty without a validation split).
    best_epoch : int
        Epoch (0-based) whose weights were kept.
    stopped_early : bool
        Whether early stopping ended training before ``max_epochs``.
    """

    train_loss: list[float] = field(default_factory=list)
    validation_loss: list[float] = field(default_factory=list)
    best_epoch: int = -1
    stopped_early: bool = False

    def to_dict(self) -> dict[str, Any]:
        """Return the history as a plain ``dict``."""
        return {
            "train_loss": list(self.train_loss),
            "validation_loss": list(self.validation_loss),
            "best_epoch": self.best_epoch,
            "stopped_early": self.stopped_early,
        }


@contextmanager
def _dropout_generator(module: nn.Module, generator: torch.Generator) -> Iterator[None]:
    dropouts = [child for child in module.modules() if isinstance(child, SeededDropout)]
    for dropout in dropouts:
        dropout.generator = generator
    try:
        yield
    finally:
        for dropout in dropouts:
            dropout.generator = None


class Trainer:
    """Mini-batch Adam training with exponential LR decay, seeding and early stopping.

    Parameters
    ----------
    max_epochs : int
        Number of epochs.
    max_steps : int or None
        Cap on the optimiser steps: training stops after the first epoch that
        reaches it (so every epoch is whole), i.e. after
        ``min(max_epochs, ceil(max_steps / batches_per_epoch))`` epochs.
        ``None``: no cap.
    batch_size : int
        Mini-batch size (the last, smaller batch of an epoch is kept).
    learning_rate : float
        Initial Adam learning rate.
    lr_decay : float
        Learning-rate multiplier applied after every epoch (0.997 in the paper).
    validation_fraction : float
        Fraction of the cells held out, seeded, to compute a validation loss.
    early_stopping_patience : int or None
        Epochs without validation improvement before stopping; the best
        weights are restored at the end.
    device : str or torch.device
        ``"auto"`` (CUDA when present), ``"cpu"``, ``"cuda"``...
    seed : int
        Seed of every random stream used in training.
    progress_bar : bool
        Show a tqdm progress bar over epochs.
    description : str
        Label of the progress bar.
    """

    def __init__(
        self,
        *,
        max_epochs: int,
        batch_size: int,
        learning_rate: float,
        max_steps: int | None = None,
        lr_decay: float = 0.997,
        validation_fraction: float = 0.0,
        early_stopping_patience: int | None = None,
        device: str | torch.device = "auto",
        seed: int = 0,
        progress_bar: bool = True,
        description: str = "training",
    ) -> None:
        self.max_epochs = max_epochs
        self.max_steps = max_steps
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.lr_decay = lr_decay
        self.validation_fraction = validation_fraction
        self.early_stopping_patience = early_stopping_patience
        self.device = resolve_device(device)
        self.seed = seed
        self.progress_bar = progress_bar
        self.description = description

    @classmethod
    def from_config(
        cls,
        config: NeuralConfig,
        *,
        device: str | torch.device = "auto",
        seed: int = 0,
        progress_bar: bool = True,
        description: str = "training",
    ) -> Trainer:
        """Build a trainer from the training fields of a model preset."""
        return cls(
            max_epochs=config.max_epochs,
            max_steps=config.max_steps,
            batch_size=config.batch_size,
            learning_rate=config.learning_rate,
            lr_decay=config.lr_decay,
            validation_fraction=config.validation_fraction,
            early_stopping_patience=config.early_stopping_patience,
            device=device,
            seed=seed,
            progress_bar=progress_bar,
            description=description,
        )

    def _split(self, n_cells: int) -> tuple[torch.Tensor, torch.Tensor]:
        order = torch.randperm(n_cells, generator=_generator(self.seed, "validation-split"))
        n_validation = int(round(self.validation_fraction * n_cells))
        if self.validation_fraction > 0:
            n_validation = max(n_validation, 1)
        if n_cells - n_validation < 2:
            raise SimcellError(
                f"too few cells to train: {n_cells} cells, {n_validation} held out for validation"
            )
        return order[n_validation:], order[:n_validation]

    def n_epochs(self, n_train: int) -> int:
        """Epochs trained on ``n_train`` cells: ``max_epochs``, or fewer under ``max_steps``."""
        if self.max_steps is None:
            return self.max_epochs
        batches_per_epoch = max(1, math.ceil(n_train / self.batch_size))
        return max(1, min(self.max_epochs, math.ceil(self.max_steps / batches_per_epoch)))

    def _batches(
        self, indices: torch.Tensor, generator: torch.Generator | None
    ) -> list[torch.Tensor]:
        if generator is not None:
            indices = indices[torch.randperm(len(indices), generator=generator)]
        return list(torch.split(indices, self.batch_size))

    def fit(self, module: nn.Module, data: Mapping[str, torch.Tensor]) -> TrainingHistory:
        """Train ``module`` on ``data`` in place and return its history.

        Parameters
        ----------
        module : nn.Module
            Implements :class:`TrainableModule` (a ``loss(batch, *, generator)``
            method returning a scalar tensor).
        data : mapping of str to Tensor, each of shape (n_cells, ...)
            Training arrays; every mini-batch is the same rows of each.

        Returns
        -------
        TrainingHistory

        Raises
        ------
        simcell.SimcellError
            If the arrays disagree in length or the loss becomes non-finite.
        """
        lengths = {name: len(tensor) for name, tensor in data.items()}
        if len(set(lengths.values())) != 1:
            raise SimcellError(f"training arrays differ in length: {lengths}")
        n_cells = next(iter(lengths.values()))
        train_idx, validation_idx = self._split(n_cells)

        device = self.device
        module.to(device)
        tensors = {name: tensor.to(device) for name, tensor in data.items()}
        loss_fn: Callable[..., torch.Tensor] = module.loss  # type: ignore[attr-defined]

        # the multi-tensor implementation: the same arithmetic as the per-parameter
        # loop (bit for bit), without its Python overhead on small CPU networks
        optimizer = torch.optim.Adam(module.parameters(), lr=self.learning_rate, foreach=True)
        scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=self.lr_decay)
        shuffle = _generator(self.seed, "shuffle")
        noise = _generator(self.seed, "noise", device)

        history = TrainingHistory()
        best_loss = math.inf
        best_state: dict[str, torch.Tensor] | None = None
        epochs_without_improvement = 0
        n_epochs = self.n_epochs(len(train_idx))
        epochs = tqdm(
            range(n_epochs),
            desc=self.description,
            disable=not self.progress_bar,
            leave=False,
        )
        with _dropout_generator(module, noise):
            for epoch in epochs:
                module.train()
                # summed on the device: one host synchronisation per epoch, not per step
                total = torch.zeros((), device=device)
                for batch_idx in self._batches(train_idx, shuffle):
                    batch_idx = batch_idx.to(device)
                    batch = {name: tensor[batch_idx] for name, tensor in tensors.items()}
                    loss = loss_fn(batch, generator=noise)
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    total = total + loss.detach() * len(batch_idx)
                scheduler.step()
                epoch_loss = float(total) / len(train_idx)
                if not math.isfinite(epoch_loss):
                    raise SimcellError(
                        f"{self.description}: non-finite loss at epoch {epoch}; "
                        "lower the learning rate or check the inputs"
                    )
                history.train_loss.append(epoch_loss)
                postfix = {"loss": f"{history.train_loss[-1]:.4g}"}

                if len(validation_idx) > 0:
                    validation_loss = self._validation_loss(module, tensors, validation_idx)
                    history.validation_loss.append(validation_loss)
                    postfix["val"] = f"{validation_loss:.4g}"
                    if validation_loss < best_loss:
                        best_loss = validation_loss
                        history.best_epoch = epoch
                        epochs_without_improvement = 0
                        if self.early_stopping_patience is not None:
                            best_state = copy.deepcopy(module.state_dict())
                    else:
                        epochs_without_improvement += 1
                else:
                    history.best_epoch = epoch
                epochs.set_postfix(postfix)
                if (
                    self.early_stopping_patience is not None
                    and epochs_without_improvement >= self.early_stopping_patience
                ):
                    history.stopped_early = epoch < n_epochs - 1
                    break
        epochs.close()
        if best_state is not None:
            module.load_state_dict(best_state)
        module.eval()
        return history

    @torch.no_grad()
    def _validation_loss(
        self,
        module: nn.Module,
        tensors: Mapping[str, torch.Tensor],
        validation_idx: torch.Tensor,
    ) -> float:
        module.eval()
        # the same noise every epoch, so that validation losses are comparable
        noise = _generator(self.seed, "validation-noise", self.device)
        total, count = 0.0, 0
        for batch_idx in self._batches(validation_idx, None):
            batch_idx = batch_idx.to(self.device)
            batch = {name: tensor[batch_idx] for name, tensor in tensors.items()}
            loss = module.loss(batch, generator=noise)  # type: ignore[attr-defined]
            total += float(loss) * len(batch_idx)
            count += len(batch_idx)
        return total / count


def save_checkpoint(path: str | os.PathLike[str], payload: Mapping[str, Any]) -> None:
    """Write a checkpoint: a ``dict`` of tensors, state dicts and Python scalars.

    Everything in ``payload`` must be loadable with ``weights_only=True``
    (tensors, dicts, lists, tuples, strings, numbers, booleans, ``None``).
    """
    torch.save(dict(payload), os.fspath(path))


def load_checkpoint(
    path: str | os.PathLike[str], *, map_location: str | torch.device = "cpu"
) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`.

    Uses ``torch.load(..., weights_only=True)``, so a checkpoint can never run
    code on load.

    Raises
    ------
    simcell.SimcellError
        If the file is missing, is not a torch file, holds anything but plain
        data (a pickled object is refused without being run) or is not a dict.
    """
    try:
        payload = torch.load(os.fspath(path), map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise SimcellError(f"checkpoint not found: {os.fspath(path)}") from None
    except Exception as error:  # torch raises UnpicklingError, RuntimeError, EOFError...
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise SimcellError(
            f"{os.fspath(path)!r} is not a readable simcell checkpoint ({reason})"
        ) from None
    if not isinstance(payload, dict):
        raise SimcellError(f"{os.fspath(path)!r} is not a simcell checkpoint")
    return payload
