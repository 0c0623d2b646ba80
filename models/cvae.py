"""Conditional VAE baseline (paper §5.1, Appendix D.4).

The concepts go into both the encoder, q(z | x, c), and the decoder, p(x | z, c);
the same residual-MLP backbone and training hyperparameters as scCBGM. A
missing annotation enters as the pair (value 0, observed 0), see
:func:`simcell.models._concepts.concept_condition`.

Counterfactual: z = posterior mean of q(z | x, c) under the original
annotations (abduction), then decode with the edited concepts:
x̂' = D(z, c') where c' takes the target value in the edited entries and keeps
the annotation elsewhere.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ._common import NeuralModel, map_batches
from ._concepts import (
    check_counterfactual_inputs,
    concept_condition,
    edited_mask,
)
from ._config import (
    FAST_MAX_STEPS,
    NeuralConfig,
    check_fraction,
    check_non_negative,
    check_positive,
)
from ._nn import GaussianEncoder, ResidualMLP, gaussian_kl, reparameterize
from ._trainer import build_module

__all__ = ["CVAE", "CVAEConfig", "CVAEModule", "CVAE_PRESETS"]


@dataclass(frozen=True, kw_only=True)
class CVAEConfig(NeuralConfig):
    """Hyperparameters of the (conditional) VAE.

    Parameters
    ----------
    hidden_dim : int
        Width of the hidden layers.
    n_layers : int
        Residual blocks in the encoder and in the decoder.
    latent_dim : int
        Dimension of z.
    dropout : float
        Dropout probability.
    beta : float
        Weight of the KL term (averaged over latent dimensions).
    residual_abduction : bool
        ``False``: decode under the edited concepts. ``True``: also abduct the
        observation noise, x' = x + D(z, c') − D(z, c). As for scCBGM, the
        ``paper`` preset decodes and ``synthetic`` / ``fast`` abduct the residual.
    """

    hidden_dim: int
    n_layers: int
    latent_dim: int
    dropout: float = 0.1
    beta: float
    residual_abduction: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive(self, "hidden_dim", "n_layers", "latent_dim")
        check_fraction(self, "dropout")
        check_non_negative(self, "beta")


CVAE_PRESETS: dict[str, CVAEConfig] = {
    # D.4: "the same backbone architecture and training hyperparameters" as the CBGM models.
    "paper": CVAEConfig(
        hidden_dim=1024,
        n_layers=4,
        latent_dim=128,
        dropout=0.1,
        beta=1e-5,
        learning_rate=5e-4,
        max_epochs=200,
        batch_size=128,
    ),
    "synthetic": CVAEConfig(
        hidden_dim=128,
        n_layers=2,
        latent_dim=64,
        dropout=0.0,
        beta=1e-4,
        learning_rate=5e-4,
        max_epochs=200,
        batch_size=128,
        residual_abduction=True,
    ),
    "fast": CVAEConfig(
        hidden_dim=64,
        n_layers=2,
        latent_dim=16,
        dropout=0.0,
        beta=1e-4,
        learning_rate=3e-3,
        max_epochs=30,
        max_steps=FAST_MAX_STEPS,
        batch_size=128,
        residual_abduction=True,
    ),
}


class CVAEModule(nn.Module):
    """Conditional VAE network; with ``n_concepts == 0`` a plain VAE.

    Parameters
    ----------
    n_dims : int
        Dimension of x.
    n_concepts : int
        Number of concept columns (each enters as value and observed indicator).
    config : CVAEConfig
    """

    def __init__(self, n_dims: int, n_concepts: int, config: CVAEConfig) -> None:
        super().__init__()
        self.config = config
        condition_dim = 2 * n_concepts
        self.encoder = GaussianEncoder(
            n_dims + condition_dim,
            config.hidden_dim,
            config.n_layers,
            config.dropout,
            config.latent_dim,
        )
        self.decoder = ResidualMLP(
            config.latent_dim + condition_dim,
            config.hidden_dim,
            config.n_layers,
            config.dropout,
            out_dim=n_dims,
        )

    def posterior(
        self, x: torch.Tensor, concepts: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and log-variance of q(z | x, c), each of shape (n, latent_dim)."""
        return self.encoder(torch.cat([x, concept_condition(concepts)], dim=-1))

    def decode(self, z: torch.Tensor, concepts: torch.Tensor) -> torch.Tensor:
        """x̂ = D(z, c), shape (n, n_dims)."""
        return self.decoder(torch.cat([z, concept_condition(concepts)], dim=-1))

    def loss(
        self, batch: Mapping[str, torch.Tensor], *, generator: torch.Generator
    ) -> torch.Tensor:
        """β-VAE loss ``MSE + β KL`` of a mini-batch with keys ``x`` and ``concepts``."""
        x, concepts = batch["x"], batch["concepts"]
        mean, log_var = self.posterior(x, concepts)
        z = reparameterize(mean, log_var, generator)
        x_hat = self.decode(z, concepts)
        return F.mse_loss(x_hat, x) + self.config.beta * gaussian_kl(mean, log_var)

    def counterfactual(
        self, x: torch.Tensor, concepts: torch.Tensor, target_concepts: torch.Tensor
    ) -> torch.Tensor:
        """Encode (posterior mean) under ``concepts``, decode under ``target_concepts``."""
        mean, _ = self.posterior(x, concepts)
        prediction = self.decode(mean, target_concepts)
        if self.config.residual_abduction:
            prediction = x + prediction - self.decode(mean, concepts)
        return prediction


class CVAE(NeuralModel):
    """Conditional VAE with concepts in the encoder and the decoder.

    Parameters
    ----------
    config : CVAEConfig, optional
        Hyperparameters (``CVAE_PRESETS["fast"]`` when omitted).
    device : str or torch.device
    seed : int
    progress_bar : bool
    """

    name: ClassVar[str] = "cvae"
    has_representation: ClassVar[bool] = True
    config_class = CVAEConfig
    presets: ClassVar[Mapping[str, CVAEConfig]] = CVAE_PRESETS
    config: CVAEConfig

    def _build(self) -> CVAEModule:
        assert self.n_dims_ is not None and self.n_concepts_ is not None
        n_dims, n_concepts, config = self.n_dims_, self.n_concepts_, self.config
        return build_module(lambda: CVAEModule(n_dims, n_concepts, config), seed=self.seed)

    def counterfactual(
        self, x: np.ndarray, concepts: np.ndarray, target_concepts: np.ndarray
    ) -> np.ndarray:
        """Encode with the original concepts (posterior mean), decode with the edited ones.

        Returns
        -------
        ndarray, shape (n_cells, n_dims)
        """
        self._require_fitted()
        x, concepts, target_concepts = check_counterfactual_inputs(
            x, concepts, target_concepts, n_dims=self.n_dims_, n_concepts=self.n_concepts_
        )
        edited = np.where(edited_mask(concepts, target_concepts), target_concepts, concepts)
        self.module_.eval()
        return map_batches(self.module_.counterfactual, x, concepts, edited, device=self.device_)

    def encode(self, x: np.ndarray, concepts: np.ndarray) -> np.ndarray:
        """Posterior mean of q(z | x, c), shape (n_cells, latent_dim)."""
        self._require_fitted()
        x, concepts, _ = check_counterfactual_inputs(
            x, concepts, concepts, n_dims=self.n_dims_, n_concepts=self.n_concepts_
        )
        self.module_.eval()
        return map_batches(
            lambda xb, cb: self.module_.posterior(xb, cb)[0], x, concepts, device=self.device_
        )
