"""Network building blocks shared by the models (paper Appendix D.4).

Every hidden layer is ``Linear -> LayerNorm -> ReLU -> Dropout`` with a residual
connection around it. Dropout draws its masks from an explicit
``torch.Generator`` that the shared trainer attaches during training, so no
module ever uses torch's global random state.
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = [
    "GaussianEncoder",
    "ResidualBlock",
    "ResidualMLP",
    "SeededDropout",
    "VelocityNetwork",
    "gaussian_kl",
    "reparameterize",
    "sinusoidal_time_features",
]

LOG_VAR_RANGE = (-30.0, 20.0)


class SeededDropout(nn.Module):
    """Inverted dropout whose masks come from ``self.generator``.

    Parameters
    ----------
    p : float
        Probability of zeroing an element during training.

    Notes
    -----
    The trainer sets ``generator`` for the duration of training; in eval mode
    (or with ``p == 0``) the module is the identity and needs no generator.
    """

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = float(p)
        self.generator: torch.Generator | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        if self.generator is None:
            raise RuntimeError(
                "SeededDropout needs a generator in training mode: train through simcell's Trainer"
            )
        keep = torch.rand(x.shape, generator=self.generator, device=x.device, dtype=x.dtype)
        return x * (keep >= self.p) / (1.0 - self.p)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class ResidualBlock(nn.Module):
    """``h + Dropout(ReLU(LayerNorm(Linear([h + shift, skip]))))``.

    Parameters
    ----------
    width : int
        Hidden width (input and output of the block).
    dropout : float
        Dropout probability.
    skip_dim : int
        Width of an extra input concatenated to the block's input (the concept
        skip connection of eq. 5); 0 for none.
    """

    def __init__(self, width: int, dropout: float, skip_dim: int = 0) -> None:
        super().__init__()
        self.linear = nn.Linear(width + skip_dim, width)
        self.norm = nn.LayerNorm(width)
        self.activation = nn.ReLU()
        self.dropout = SeededDropout(dropout)
        self.skip_dim = skip_dim

    def forward(
        self,
        h: torch.Tensor,
        skip: torch.Tensor | None = None,
        shift: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Apply the block.

        Parameters
        ----------
        h : Tensor, shape (n, width)
        skip : Tensor, shape (n, skip_dim), optional
            Concatenated to the input of the linear layer.
        shift : Tensor, shape (n, width), optional
            Added to the input of the linear layer (condition/time embeddings).
        """
        inputs = h if shift is None else h + shift
        if self.skip_dim:
            inputs = torch.cat([inputs, skip], dim=-1)
        return h + self.dropout(self.activation(self.norm(self.linear(inputs))))


class ResidualMLP(nn.Module):
    """``Linear(in -> width)``, ``n_layers`` residual blocks, optional output layer.

    Parameters
    ----------
    in_dim : int
        Input width.
    width : int
        Hidden width.
    n_layers : int
        Number of residual blocks.
    dropout : float
        Dropout probability in every block.
    out_dim : int, optional
        Width of a final linear output layer; none when omitted.
    skip_dim : int
        Width of an input fed to every block (eq. 5); 0 for none.
    """

    def __init__(
        self,
        in_dim: int,
        width: int,
        n_layers: int,
        dropout: float,
        out_dim: int | None = None,
        skip_dim: int = 0,
    ) -> None:
        super().__init__()
        self.embed = nn.Linear(in_dim, width)
        self.blocks = nn.ModuleList(
            ResidualBlock(width, dropout, skip_dim) for _ in range(n_layers)
        )
        self.output = nn.Linear(width, out_dim) if out_dim is not None else None

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        """Map ``x`` of shape (n, in_dim) to shape (n, out_dim or width)."""
        h = self.embed(x)
        for block in self.blocks:
            h = block(h, skip=skip)
        return h if self.output is None else self.output(h)


class GaussianEncoder(nn.Module):
    """Residual MLP with two heads: the mean and log-variance of q(z | x).

    Parameters
    ----------
    in_dim, width, n_layers, dropout : see :class:`ResidualMLP`
    latent_dim : int
        Dimension of z.
    """

    def __init__(
        self, in_dim: int, width: int, n_layers: int, dropout: float, latent_dim: int
    ) -> None:
        super().__init__()
        self.backbone = ResidualMLP(in_dim, width, n_layers, dropout)
        self.mean = nn.Linear(width, latent_dim)
        self.log_var = nn.Linear(width, latent_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(mean, log_var)``, each of shape (n, latent_dim)."""
        h = self.backbone(x)
        return self.mean(h), self.log_var(h).clamp(*LOG_VAR_RANGE)


def reparameterize(
    mean: torch.Tensor, log_var: torch.Tensor, generator: torch.Generator
) -> torch.Tensor:
    """Draw ``z = mean + exp(log_var / 2) * eps`` with ``eps ~ N(0, I)`` from ``generator``."""
    eps = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
    return mean + torch.exp(0.5 * log_var) * eps


def gaussian_kl(mean: torch.Tensor, log_var: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, exp(log_var)) || N(0, I)), averaged over cells and latent dimensions.

    The average (rather than the sum over dimensions) is the scale on which the
    published β values were tuned.
    """
    return -0.5 * torch.mean(1.0 + log_var - mean.pow(2) - log_var.exp())


def sinusoidal_time_features(t: torch.Tensor, n_features: int) -> torch.Tensor:
    """Sine/cosine features of times ``t`` in [0, 1].

    Parameters
    ----------
    t : Tensor, shape (n,)
    n_features : int
        Even number of features; frequencies are geometric from 1 to 1000.

    Returns
    -------
    Tensor, shape (n, n_features)
    """
    half = n_features // 2
    frequencies = torch.exp(
        torch.linspace(0.0, math.log(1000.0), half, device=t.device, dtype=t.dtype)
    )
    angles = t[:, None] * frequencies[None, :]
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1)


class VelocityNetwork(nn.Module):
    """Velocity field ``v_θ(x_t, t; condition)`` for conditional flow matching (D.4).

    A residual MLP over ``x_t``; the condition goes through a learned linear
    embedding and the time through sinusoidal features and a small MLP, both
    of the hidden width and added to the input of every block.

    Parameters
    ----------
    n_dims : int
        Dimension of x.
    condition_dim : int
        Dimension of the condition (0 for an unconditional field).
    width : int
        Hidden width (1024 in the paper).
    n_layers : int
        Number of residual blocks (4 in the paper).
    dropout : float
        Dropout probability.
    n_time_features : int
        Number of sinusoidal time features.
    """

    def __init__(
        self,
        n_dims: int,
        condition_dim: int,
        width: int,
        n_layers: int,
        dropout: float,
        n_time_features: int = 32,
    ) -> None:
        super().__init__()
        self.n_time_features = n_time_features
        self.x_embed = nn.Linear(n_dims, width)
        self.condition_embed = nn.Linear(condition_dim, width) if condition_dim > 0 else None
        self.time_embed = nn.Sequential(
            nn.Linear(n_time_features, width), nn.ReLU(), nn.Linear(width, width)
        )
        self.blocks = nn.ModuleList(ResidualBlock(width, dropout) for _ in range(n_layers))
        self.output = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, n_dims))

    def forward(
        self, x: torch.Tensor, t: torch.Tensor, condition: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Velocity at ``(x, t)``.

        Parameters
        ----------
        x : Tensor, shape (n, n_dims)
        t : Tensor, shape (n,)
        condition : Tensor, shape (n, condition_dim), optional

        Returns
        -------
        Tensor, shape (n, n_dims)
        """
        shift = self.time_embed(sinusoidal_time_features(t, self.n_time_features))
        if self.condition_embed is not None:
            if condition is None:
                raise ValueError("this velocity network needs a condition")
            shift = shift + self.condition_embed(condition)
        h = self.x_embed(x)
        for block in self.blocks:
            h = block(h, shift=shift)
        return self.output(h)
