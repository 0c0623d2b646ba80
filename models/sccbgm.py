"""scCBGM: the single-cell concept bottleneck generative model, and the CBGM ablation.

Architecture (paper §2.2, Appendix D.4): a residual-MLP encoder gives the
Gaussian posterior q(z | x); from ``z`` a concept layer predicts the known
concepts ĉ and a ReLU head the unknown factors u; the decoder maps [u, ĉ] to x
with ĉ fed to every hidden layer (eq. 5). Training minimises (eq. 6-9)::

    L = MSE(x̂, x) + λ_c L_concept + β KL(q(z|x) || N(0, I)) + λ_cc L_cc

with the masked concept loss of eq. 7 and the cross-covariance penalty of eq. 8.

Counterfactuals follow abduction-action-prediction (§2.4): z = E_μ(x) (the
posterior *mean*); ĉ and u from z; the target value c'_k replaces a concept only
where the intervention changes it; x̂' = D([u, ĉ']). Elsewhere the decoder sees
what it was trained on: the annotation where there is one, ĉ where it is missing
(the paper's independent training, appendix B; ``decoder_concepts``).

Ablation switches (§3, D.8): the concept layer (``bottleneck``, a CBM with one
scalar per concept, or ``cem``, a concept embedding model), the decoder
(``skip``: concepts into every layer, or ``direct``: only into the first) and the
orthogonality loss (``cross_covariance``, ``cosine`` or ``none``). ``cbgm`` is the
CBGM of Ismail et al. (2023) built from them: CEM, cosine loss, direct decoder.

References
----------
scCBGM paper, ``papers/scCBGM.txt`` §2.2-2.4, Appendix C.7, D.4, D.8.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from simcell import SimcellError

from ._common import NeuralModel, map_batches
from ._concepts import (
    ORTHOGONALITY_PENALTIES,
    check_counterfactual_inputs,
    check_x,
    concept_loss,
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
from .base import ConceptKind

__all__ = ["CBGM", "CBGM_PRESETS", "SCCBGM", "SCCBGMConfig", "SCCBGMModule", "SCCBGM_PRESETS"]


@dataclass(frozen=True, kw_only=True)
class SCCBGMConfig(NeuralConfig):
    """Hyperparameters of scCBGM and its ablations.

    Parameters
    ----------
    hidden_dim : int
        Width of the encoder and decoder hidden layers.
    n_layers : int
        Residual blocks in the encoder and in the decoder.
    latent_dim : int
        Dimension of z.
    n_unknown : int
        Dimension of the unknown factors u. With ``orthogonality="cosine"`` it
        is set to the width of the concept representation (the cosine loss
        needs equal widths, D.8.1).
    dropout : float
        Dropout probability in every hidden block.
    beta : float
        β, weight of the KL term (eq. 6); the KL is averaged over latent dims.
    concept_weight : float
        λ_c, weight of the concept loss (eq. 6-7). The loss is eq. 7: the mean
        per-entry BCE/MSE over the observed annotations of a mini-batch. (The
        published code sums over concepts instead, K times more at full
        annotation; the same λ_c therefore weighs concepts K times less here.)
    orthogonality_weight : float
        λ_cc, weight of the orthogonality penalty (eq. 9).
    concept_layer : {"bottleneck", "cem"}
        Scalar concept bottleneck (scCBGM) or concept embeddings (CBGM).
    decoder : {"skip", "direct"}
        Concepts into every decoder layer (eq. 5) or only into the first.
    orthogonality : {"cross_covariance", "cosine", "none"}
        Penalty between the concept representation and u (eq. 8 or cosine).
    cem_embedding_dim : int or None
        Width m of each concept embedding in the ``cem`` layer; by default
        ``max(1, n_unknown // n_concepts)`` so that the embeddings together are
        as wide as u.
    residual_abduction : bool
        ``False`` (the paper): the counterfactual is the decoder's output under
        the edited concepts. ``True``: the observation noise is abducted too,
        x' = x + D(c', u) − D(c, u) — the exact counterfactual of a decoder with
        additive noise, which keeps what the decoder does not reconstruct. The
        ``paper`` preset keeps the published procedure; ``synthetic`` and
        ``fast`` abduct the residual, because a cell's twin shares everything the
        decoder cannot reconstruct, so decoding alone pays the whole
        reconstruction error at the cell level.
    decoder_concepts : {"annotated", "predicted"}
        The concept values the decoder sees, in training and at abduction.
        ``"annotated"`` (the paper's independent training, appendix B, as in the
        published code): the annotation where there is one, ĉ where it is
        missing, so the decoder learns the effect of a hard 0 → 1 change and an
        edit from the annotated value moves a cell by exactly that effect.
        ``"predicted"`` (joint training): ĉ everywhere; an edit then starts from
        the model's soft ĉ.
    """

    hidden_dim: int
    n_layers: int
    latent_dim: int
    n_unknown: int = 128
    dropout: float = 0.1
    beta: float
    concept_weight: float
    orthogonality_weight: float
    concept_layer: Literal["bottleneck", "cem"] = "bottleneck"
    decoder: Literal["skip", "direct"] = "skip"
    orthogonality: Literal["cross_covariance", "cosine", "none"] = "cross_covariance"
    cem_embedding_dim: int | None = None
    residual_abduction: bool = False
    decoder_concepts: Literal["annotated", "predicted"] = "annotated"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive(self, "hidden_dim", "n_layers", "latent_dim", "n_unknown")
        check_fraction(self, "dropout")
        check_non_negative(self, "beta", "concept_weight", "orthogonality_weight")
        if self.cem_embedding_dim is not None:
            check_positive(self, "cem_embedding_dim")


SCCBGM_PRESETS: dict[str, SCCBGMConfig] = {
    # Appendix D.4: 4 x 1024 residual layers, latent 128, 128 unknowns, dropout 0.1,
    # 200 epochs of batch 128, Adam 5e-4 with decay 0.997, λ_c 0.1, λ_cc 0.5, β 1e-5.
    "paper": SCCBGMConfig(
        hidden_dim=1024,
        n_layers=4,
        latent_dim=128,
        n_unknown=128,
        dropout=0.1,
        beta=1e-5,
        concept_weight=0.1,
        orthogonality_weight=0.5,
        learning_rate=5e-4,
        max_epochs=200,
        batch_size=128,
    ),
    # Appendix C.7: winner of the sweep on "Synthetic 1" (2 layers, bottleneck 128 fixed).
    # The sweep does not report dropout; the published defaults train without it.
    "synthetic": SCCBGMConfig(
        hidden_dim=128,
        n_layers=2,
        latent_dim=64,
        n_unknown=128,
        dropout=0.0,
        beta=1e-4,
        concept_weight=0.005,
        orthogonality_weight=0.05,
        learning_rate=5e-4,
        max_epochs=200,
        batch_size=128,
        residual_abduction=True,
    ),
    # Seconds on a laptop CPU for a few thousand cells; for tests, CI and smoke runs.
    # max_steps binds only above ~8,500 training cells (see FAST_MAX_STEPS).
    # Dropout 0.2 halves the cell-to-cell spread of the decoder's concept effect
    # (its noise) on CI-sized synthetic2 (seeds 1 and 2, 6,000 x 400).
    "fast": SCCBGMConfig(
        hidden_dim=64,
        n_layers=2,
        latent_dim=16,
        n_unknown=16,
        dropout=0.2,
        beta=1e-4,
        concept_weight=0.5,
        orthogonality_weight=0.5,
        learning_rate=3e-3,
        max_epochs=30,
        max_steps=FAST_MAX_STEPS,
        batch_size=128,
        residual_abduction=True,
    ),
}

CBGM_PRESETS: dict[str, SCCBGMConfig] = {
    # CBGM (Ismail et al., 2023) as benchmarked in the paper: same backbone and
    # training as scCBGM, concept embeddings, cosine loss, no skip connections.
    "paper": SCCBGM_PRESETS["paper"].replace(
        concept_layer="cem", decoder="direct", orthogonality="cosine"
    ),
    # C.7 sweep winner for CBGM differs from scCBGM's only in hidden_dim (256).
    "synthetic": SCCBGM_PRESETS["synthetic"].replace(
        hidden_dim=256, concept_layer="cem", decoder="direct", orthogonality="cosine"
    ),
    "fast": SCCBGM_PRESETS["fast"].replace(
        concept_layer="cem", decoder="direct", orthogonality="cosine"
    ),
}


class _ConceptBottleneck(nn.Module):
    """One scalar per concept: sigmoid(logit) for binary, the raw value for continuous."""

    def __init__(self, latent_dim: int, binary: tuple[bool, ...]) -> None:
        super().__init__()
        self.binary = binary
        self.head = nn.Linear(latent_dim, len(binary))
        self.representation_dim = len(binary)

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, None]:
        """Return ``(predictions, context)``: logits/values of shape (n, K), no context."""
        return self.head(z), None

    def represent(self, values: torch.Tensor, context: None) -> torch.Tensor:
        """The representation fed to the decoder: the concept values, shape (n, K)."""
        return values


class _ConceptEmbedding(nn.Module):
    """Concept embedding model (Espinosa Zarlenga et al., 2022).

    Each concept k gets an "active" and an "inactive" embedding of width m from z
    and a probability p_k scored from both; its representation is
    ``p_k e_k⁺ + (1 - p_k) e_k⁻``. Intervening sets p_k.
    """

    def __init__(self, latent_dim: int, binary: tuple[bool, ...], embedding_dim: int) -> None:
        super().__init__()
        self.binary = binary
        self.embedding_dim = embedding_dim
        n_concepts = len(binary)
        self.contexts = nn.Sequential(
            nn.Linear(latent_dim, n_concepts * 2 * embedding_dim), nn.ReLU()
        )
        self.scores = nn.ModuleList(nn.Linear(2 * embedding_dim, 1) for _ in range(n_concepts))
        self.representation_dim = n_concepts * embedding_dim

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return logits/values of shape (n, K) and contexts of shape (n, K, 2m)."""
        n_concepts = len(self.binary)
        contexts = self.contexts(z).reshape(z.shape[0], n_concepts, 2 * self.embedding_dim)
        if n_concepts == 0:
            return z.new_zeros((z.shape[0], 0)), contexts
        predictions = torch.cat(
            [score(contexts[:, k]) for k, score in enumerate(self.scores)], dim=-1
        )
        return predictions, contexts

    def represent(self, values: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """Mix each concept's embeddings by its value; shape (n, K * m)."""
        active, inactive = context[..., : self.embedding_dim], context[..., self.embedding_dim :]
        weight = values[..., None]
        mixed = weight * active + (1.0 - weight) * inactive
        return mixed.reshape(values.shape[0], self.representation_dim)


class SCCBGMModule(nn.Module):
    """The scCBGM network: encoder, concept layer, unknown head and decoder.

    Parameters
    ----------
    n_dims : int
        Dimension of x.
    concept_kinds : tuple of {"binary", "continuous"}
        One per concept.
    config : SCCBGMConfig
    """

    def __init__(
        self, n_dims: int, concept_kinds: tuple[ConceptKind, ...], config: SCCBGMConfig
    ) -> None:
        super().__init__()
        binary = tuple(kind == "binary" for kind in concept_kinds)
        self.binary = binary
        self.config = config
        n_concepts = len(binary)
        self.encoder = GaussianEncoder(
            n_dims, config.hidden_dim, config.n_layers, config.dropout, config.latent_dim
        )
        if config.concept_layer == "bottleneck":
            self.concept_layer: nn.Module = _ConceptBottleneck(config.latent_dim, binary)
        else:
            embedding_dim = config.cem_embedding_dim or max(
                1, config.n_unknown // max(n_concepts, 1)
            )
            self.concept_layer = _ConceptEmbedding(config.latent_dim, binary, embedding_dim)
        representation_dim = self.concept_layer.representation_dim
        n_unknown = representation_dim if config.orthogonality == "cosine" else config.n_unknown
        if n_unknown < 1:
            raise SimcellError("the cosine orthogonality loss needs at least one concept")
        self.n_unknown = n_unknown
        self.unknown_head = nn.Sequential(nn.Linear(config.latent_dim, n_unknown), nn.ReLU())
        self.decoder = ResidualMLP(
            n_unknown + representation_dim,
            config.hidden_dim,
            config.n_layers,
            config.dropout,
            out_dim=n_dims,
            skip_dim=representation_dim if config.decoder == "skip" else 0,
        )
        self.orthogonality_penalty = ORTHOGONALITY_PENALTIES[config.orthogonality]

    def _binary_mask(self, like: torch.Tensor) -> torch.Tensor:
        return torch.tensor(self.binary, dtype=torch.bool, device=like.device)

    def concept_values(self, predictions: torch.Tensor) -> torch.Tensor:
        """ĉ from the concept layer output: sigmoid for binary concepts, identity otherwise."""
        return torch.where(self._binary_mask(predictions), torch.sigmoid(predictions), predictions)

    def bottleneck(
        self, z: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """Split z into ``(predictions, ĉ, context, u)``.

        Returns
        -------
        predictions : Tensor, shape (n, K)
            Logits (binary) or values (continuous), as used by the concept loss.
        concepts_hat : Tensor, shape (n, K)
        context : Tensor or None
            Concept embeddings of the ``cem`` layer.
        unknowns : Tensor, shape (n, n_unknown)
        """
        predictions, context = self.concept_layer(z)
        return predictions, self.concept_values(predictions), context, self.unknown_head(z)

    def decode(
        self,
        concepts_hat: torch.Tensor,
        context: torch.Tensor | None,
        unknowns: torch.Tensor,
    ) -> torch.Tensor:
        """x̂ = D([u, ĉ]) with ĉ (or its embedding) into every layer for ``decoder="skip"``."""
        representation = self.concept_layer.represent(concepts_hat, context)
        return self.decoder(torch.cat([unknowns, representation], dim=-1), skip=representation)

    def loss(
        self, batch: Mapping[str, torch.Tensor], *, generator: torch.Generator
    ) -> torch.Tensor:
        """Training loss (eq. 9) of a mini-batch with keys ``x`` and ``concepts``."""
        x, concepts = batch["x"], batch["concepts"]
        mean, log_var = self.encoder(x)
        z = reparameterize(mean, log_var, generator)
        predictions, concepts_hat, context, unknowns = self.bottleneck(z)
        representation = self.concept_layer.represent(
            self.decoder_input(concepts_hat, concepts), context
        )
        x_hat = self.decoder(torch.cat([unknowns, representation], dim=-1), skip=representation)
        config = self.config
        total = F.mse_loss(x_hat, x) + config.beta * gaussian_kl(mean, log_var)
        if config.concept_weight:
            total = total + config.concept_weight * concept_loss(
                predictions, concepts, self._binary_mask(predictions)
            )
        if config.orthogonality_weight:
            total = total + config.orthogonality_weight * self.orthogonality_penalty(
                representation, unknowns
            )
        return total

    def decoder_input(self, concepts_hat: torch.Tensor, concepts: torch.Tensor) -> torch.Tensor:
        """The concept values the decoder sees for a cell with annotations ``concepts``.

        ``decoder_concepts="annotated"`` (independent training, appendix B): the
        annotation where there is one and ĉ where it is missing (NaN);
        ``"predicted"`` (joint training): ĉ everywhere.
        """
        if self.config.decoder_concepts == "predicted":
            return concepts_hat
        return torch.where(torch.isnan(concepts), concepts_hat, concepts)

    def abduct(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """Abduction with the posterior mean: ``(ĉ, context, u)`` of z = E_μ(x)."""
        mean, _ = self.encoder(x)
        _, concepts_hat, context, unknowns = self.bottleneck(mean)
        return concepts_hat, context, unknowns

    def counterfactual(
        self,
        x: torch.Tensor,
        concepts: torch.Tensor,
        target_concepts: torch.Tensor,
        edited: torch.Tensor,
    ) -> torch.Tensor:
        """Abduction, action on the edited entries only, prediction (§2.4).

        Parameters
        ----------
        x : Tensor, shape (n, d)
        target_concepts : Tensor, shape (n, K)
            Used only where ``edited`` is true (may hold NaN elsewhere).
        edited : Tensor of bool, shape (n, K)
        """
        concepts_hat, context, unknowns = self.abduct(x)
        factual = self.decoder_input(concepts_hat, concepts)
        edited_concepts = torch.where(edited, target_concepts, factual)
        prediction = self.decode(edited_concepts, context, unknowns)
        if self.config.residual_abduction:
            prediction = x + prediction - self.decode(factual, context, unknowns)
        return prediction


class SCCBGM(NeuralModel):
    """Single-cell concept bottleneck generative model (scCBGM).

    Parameters
    ----------
    config : SCCBGMConfig, optional
        Hyperparameters (``SCCBGM_PRESETS["fast"]`` when omitted).
    device : str or torch.device
        ``"auto"`` picks CUDA when present.
    seed : int
    progress_bar : bool

    Attributes
    ----------
    module_ : SCCBGMModule
        The trained network.
    history_ : TrainingHistory
    """

    name: ClassVar[str] = "sccbgm"
    has_representation: ClassVar[bool] = True
    config_class = SCCBGMConfig
    presets: ClassVar[Mapping[str, SCCBGMConfig]] = SCCBGM_PRESETS
    config: SCCBGMConfig

    def _build(self) -> SCCBGMModule:
        assert self.n_dims_ is not None and self.concept_kinds_ is not None
        n_dims, kinds, config = self.n_dims_, self.concept_kinds_, self.config
        return build_module(lambda: SCCBGMModule(n_dims, kinds, config), seed=self.seed)

    def counterfactual(
        self, x: np.ndarray, concepts: np.ndarray, target_concepts: np.ndarray
    ) -> np.ndarray:
        """Abduction (posterior mean), action on the edited concepts only, prediction.

        Parameters
        ----------
        x : ndarray, shape (n_cells, n_dims)
        concepts : ndarray, shape (n_cells, n_concepts)
            Annotations: they say which concepts the target changes, and the
            decoder sees them (``decoder_concepts="annotated"``; ĉ where NaN).
        target_concepts : ndarray, shape (n_cells, n_concepts)
            ``NaN`` leaves a concept as the decoder sees it unedited.

        Returns
        -------
        ndarray, shape (n_cells, n_dims)
        """
        self._require_fitted()
        x, concepts, target_concepts = check_counterfactual_inputs(
            x, concepts, target_concepts, n_dims=self.n_dims_, n_concepts=self.n_concepts_
        )
        edited = edited_mask(concepts, target_concepts)
        self.module_.eval()
        return map_batches(
            lambda xb, cb, tb, eb: self.module_.counterfactual(xb, cb, tb, eb.bool()),
            x,
            concepts,
            target_concepts,
            edited,
            device=self.device_,
        )

    def encode_parts(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Posterior-mean unknowns u and predicted concepts ĉ.

        Returns
        -------
        unknowns : ndarray, shape (n_cells, n_unknown)
        concepts_hat : ndarray, shape (n_cells, n_concepts)
        """
        self._require_fitted()
        x = check_x(x, self.n_dims_)
        self.module_.eval()

        def parts(xb: torch.Tensor) -> torch.Tensor:
            concepts_hat, _, unknowns = self.module_.abduct(xb)
            return torch.cat([unknowns, concepts_hat], dim=-1)

        both = map_batches(parts, x, device=self.device_)
        n_unknown = self.module_.n_unknown
        return both[:, :n_unknown], both[:, n_unknown:]

    def decoder_parts(self, x: np.ndarray, concepts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Posterior-mean unknowns u and the concept values the decoder sees.

        The concept values are the annotations where there are some and ĉ where
        they are missing (``decoder_concepts="annotated"``), or ĉ everywhere
        (``"predicted"``); see :meth:`SCCBGMModule.decoder_input`.

        Returns
        -------
        unknowns : ndarray, shape (n_cells, n_unknown)
        concepts : ndarray, shape (n_cells, n_concepts)
        """
        unknowns, concepts_hat = self.encode_parts(x)
        if self.config.decoder_concepts == "annotated":
            concepts = np.asarray(concepts, dtype=concepts_hat.dtype)
            concepts_hat = np.where(np.isnan(concepts), concepts_hat, concepts)
        return unknowns, concepts_hat

    def encode(self, x: np.ndarray, concepts: np.ndarray) -> np.ndarray:
        """Representation ``[u, ĉ]`` of shape (n_cells, n_unknown + n_concepts).

        The annotations are not used: scCBGM infers ĉ from x.
        """
        unknowns, concepts_hat = self.encode_parts(x)
        return np.concatenate([unknowns, concepts_hat], axis=1)


class CBGM(SCCBGM):
    """Concept bottleneck generative model (Ismail et al., 2023) as an scCBGM ablation.

    Concept embeddings, cosine orthogonality loss and a decoder without concept
    skip connections (paper §3, D.8); otherwise identical to :class:`SCCBGM`.
    """

    name: ClassVar[str] = "cbgm"
    presets: ClassVar[Mapping[str, SCCBGMConfig]] = CBGM_PRESETS
