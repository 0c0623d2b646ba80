"""CausCell: concept tokens through a linear SCM, decoded by a cross-attention DDPM.

Architecture (CausCell paper, Methods; ``papers/CausCell.txt`` eq. 1-9, 16):

* **Concept encoder** F: expression x (the highly variable genes of the train
  cells: ``input_space = "hvg"``) → for each of the M concepts and one
  *unexplained* token, a Gaussian exogenous vector ε_i ∈ R^d (reparameterised).
* **Linear SCM**: ``z = A z + ε = (I − A)⁻¹ ε`` over the M + 1 tokens, with
  ``A[child, parent]`` non-zero only on the edges of the concept DAG handed in
  :class:`FitContext` (a fixed 0/1 mask as in the published code, or learnable
  weights on the mask, ``scm_weights="learned"``). ``causcell_ind`` uses A = 0.
* **Concept heads** D_k on each concept token z_k (cross-entropy for binary
  concepts, squared error for continuous ones; missing annotations are masked)
  and an **adversary** reading the concepts from the unexplained token u,
  whose success the encoder is trained to prevent (eq. 2).
* **Generator** G: a DDPM (:mod:`simcell.models.generative`) whose x₀-predicting
  denoiser embeds the noised expression x_t and the time into one query token
  that cross-attends to the M + 1 tokens z (eq. 7-9), ``depth`` pre-LayerNorm
  blocks of multi-head cross-attention and a GELU feed-forward.

Loss (eq. 16)::

    L = L_G + λ_c mean_k CE(D_k(z_k), y_k) + λ_adv L_adv
            + β [KL(q(ε|x) || N(0, I)) + KL(q(z|x) || N(0, I))]

where q(z | x) is the push-forward of q(ε | x) through (I − A)⁻¹ (token-wise
marginals ``N(C μ, (C∘C) σ²)``).

Counterfactual ``do(c_k := v)`` (paper, "Single-cell counterfactual generation"):
abduct ε (posterior mean); ``intervention="exogenous_swap"`` (the published
procedure) replaces ε_k by the ε_k of a random training cell annotated
``c_k = v`` and recomputes z through the SCM (so z_k still receives its parents'
contributions); ``intervention="hard"`` sets z_k to the z_k of such a cell, cuts
its parents and recomputes only its descendants (the registered model
``causcell_hard``: the same network, so the harness compares the two do()s
row for row). Every other token, u included, keeps its abducted value; the
generator then samples x' from the new tokens.
``abduction="residual"`` returns ``x + G(z') − G(z)`` with shared sampler noise
(the exact counterfactual of an additive-noise decoder; an option, the paper
samples).

Where the published code and the paper differ, the paper is the default and
the code an option:

==========================  =========================  ==============================
option                      paper (default)            published code
==========================  =========================  ==============================
``reconstruction``          ``cell_sum`` (eq. 6)       ``sum`` over genes and batch
``concept_softmax``         ``once`` (CE on logits)    ``twice`` (softmax, then CE)
``kl``                      ``exogenous_and_endogenous``  ``exogenous`` (ε only)
``adversary``               ``confusion`` (the         ``negated`` (−CE of the concept
                            adversarial debiasing of   heads on u, no reversal;
                            eq. 16, own heads)         unbounded below)
==========================  =========================  ==============================

Other differences, not options: abduction uses the posterior mean of ε (the
code averages 10 posterior draws, whose limit it is); the denoiser's hidden
width is ``width`` (the code uses the number of genes), and the tokens get a
learned position embedding so that the attention can tell them apart; no EMA
of the weights and no per-cell weights ``1 − frequency`` of the label
combination; the trainer is simcell's (Adam with exponential decay).

References
----------
Gao et al., Causal disentanglement for single-cell representations and
controllable counterfactual generation, ``papers/CausCell.txt``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from simcell import SimcellError

from ._common import NeuralModel
from ._concepts import check_counterfactual_inputs, check_fit_inputs, check_x, edited_mask
from ._config import FAST_MAX_STEPS, NeuralConfig, check_non_negative, check_positive
from ._nn import gaussian_kl, reparameterize, sinusoidal_time_features
from ._trainer import build_module, derive_seed
from .base import ConceptKind, FitContext, Intervention, Representation
from .generative import DDPM

__all__ = [
    "CAUSCELL_HARD_PRESETS",
    "CAUSCELL_IND_PRESETS",
    "CAUSCELL_PRESETS",
    "CausCell",
    "CausCellConfig",
    "CausCellHard",
    "CausCellIND",
    "CausCellModule",
    "FitContext",
]

UNEXPLAINED = "unexplained"
_DONOR_NEIGHBOURS = 20  # continuous concepts: donors are the cells with the nearest annotations


@dataclass(frozen=True, kw_only=True)
class CausCellConfig(NeuralConfig):
    """Hyperparameters of CausCell.

    Parameters
    ----------
    n_hvg : int
        Highly variable genes the harness hands the model (``input_space="hvg"``).
    use_dag : bool
        Use the concept DAG of the :class:`FitContext` (False: A = 0, CausCell_IND).
    scm_weights : {"fixed", "learned"}
        A fixed 0/1 mask on the DAG's edges, or a learnable weight per edge
        (``1 + 0.1 w``, ``w`` initialised uniform on [-1, 1]).
    token_dim : int
        d, the width of each concept / unexplained token.
    encoder_hidden : int or None
        Hidden width of the encoder (None: ``max(16, n_genes // 4)``, the code).
    width : int or None
        Hidden width of the denoiser (None: the number of genes, the code).
    depth, n_heads, head_dim : int
        Cross-attention blocks, heads per block and width per head.
    n_diffusion_steps : int
        T.
    beta_schedule : {"scaled_linear", "linear"}
    beta_start, beta_end : float
        The β schedule; choose ``beta_end`` so that ᾱ_T is close to 0.
    sampler : {"ancestral", "ddim"}
    sample_steps : int or None
        DDIM steps (T when None).
    reconstruction : {"cell_sum", "mean", "sum"}
        Reduction of the denoising loss (see :func:`~simcell.models.generative.ddpm_loss`).
    concept_weight, adversary_weight, kl_weight : float
        λ_c, λ_adv and β.
    exogenous_adversary_weight : float
        Not in the paper (0 there): weight of a ``confusion`` adversary that
        reads each concept's ancestors from the concept's own exogenous ε_j,
        which the encoder makes fail. The SCM assumes ε_j independent of
        j's ancestors; the KL to N(0, I) encourages it only weakly, and without
        it the encoder may put the parents' information into ε_j, so that the
        SCM's edges carry no mechanism and a descendant moves in an arbitrary
        direction after do() (measured on the ``causal`` scenario: concept_1
        moved −0.13 where its twins moved +0.12).
    concept_softmax : {"once", "twice"}
    kl : {"exogenous_and_endogenous", "exogenous"}
    adversary : {"confusion", "gradient_reversal", "negated", "none"}
        How concept information is kept out of the unexplained token u. Each
        uses an adversary reading the concepts from u. ``confusion`` (default):
        the adversary's heads learn on a detached u while the encoder drives
        their frozen reading towards chance (bounded below); ``gradient_reversal``:
        the encoder maximises the adversary's cross-entropy; ``negated``: the
        code's −CE of the concept heads on u. The last two are unbounded below:
        the encoder can win by scaling u (the weighted term reached 7.2, a
        cross-entropy of 72, after 5 epochs on the toy data).
    intervention : {"exogenous_swap", "hard"}
    abduction : {"sample", "residual"}
    """

    n_hvg: int = 2000
    use_dag: bool = True
    scm_weights: Literal["fixed", "learned"] = "fixed"
    token_dim: int = 32
    encoder_hidden: int | None = None
    width: int | None = None
    depth: int = 4
    n_heads: int = 4
    head_dim: int = 64
    n_diffusion_steps: int = 1000
    beta_schedule: Literal["scaled_linear", "linear"] = "scaled_linear"
    beta_start: float = 1e-4
    beta_end: float = 2e-2
    sampler: Literal["ancestral", "ddim"] = "ancestral"
    sample_steps: int | None = None
    reconstruction: Literal["cell_sum", "mean", "sum"] = "cell_sum"
    concept_weight: float = 1.0
    adversary_weight: float = 1.0
    exogenous_adversary_weight: float = 0.0
    kl_weight: float = 1.0
    concept_softmax: Literal["once", "twice"] = "once"
    kl: Literal["exogenous_and_endogenous", "exogenous"] = "exogenous_and_endogenous"
    adversary: Literal["confusion", "gradient_reversal", "negated", "none"] = "confusion"
    intervention: Literal["exogenous_swap", "hard"] = "exogenous_swap"
    abduction: Literal["sample", "residual"] = "sample"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive(self, "n_hvg", "token_dim", "depth", "n_heads", "head_dim")
        check_positive(self, "n_diffusion_steps")
        for name in ("encoder_hidden", "width", "sample_steps"):
            if getattr(self, name) is not None:
                check_positive(self, name)
        check_non_negative(
            self, "concept_weight", "adversary_weight", "exogenous_adversary_weight", "kl_weight"
        )
        self.objective()  # validates the schedule

    def objective(self) -> DDPM:
        """The DDPM objective these hyperparameters describe."""
        return DDPM(
            n_steps=self.n_diffusion_steps,
            schedule=self.beta_schedule,
            beta_start=self.beta_start,
            beta_end=self.beta_end,
            sampler=self.sampler,
            sample_steps=self.sample_steps,
            reduction=self.reconstruction,
        )


CAUSCELL_PRESETS: dict[str, CausCellConfig] = {
    # The published code: 2,000 genes, tokens of 32, 4 blocks of 4 x 64 heads, T = 1000,
    # Adam 2e-5, batch 64, 100k steps (gradient accumulation and EMA not reproduced).
    "paper": CausCellConfig(
        n_hvg=2000,
        token_dim=32,
        depth=4,
        n_heads=4,
        head_dim=64,
        n_diffusion_steps=1000,
        learning_rate=2e-5,
        lr_decay=1.0,
        batch_size=64,
        max_epochs=100_000,
        max_steps=100_000,
    ),
    # Between the two: the fast recipe with a wider network, trained longer.
    "synthetic": CausCellConfig(
        n_hvg=500,
        token_dim=8,
        encoder_hidden=128,
        width=256,
        depth=2,
        n_heads=4,
        head_dim=32,
        n_diffusion_steps=200,
        beta_end=0.1,
        sampler="ddim",
        sample_steps=50,
        reconstruction="mean",
        concept_weight=1.0,
        adversary_weight=1.0,
        exogenous_adversary_weight=1.0,
        kl_weight=0.05,
        abduction="residual",
        learning_rate=1e-3,
        max_epochs=100,
    ),
    # About a minute on 2 CPU cores at CI size: 200 genes, depth 2, T = 100, 20 DDIM steps.
    # Tokens of 4 and the exogenous adversary: on the `causal` scenario (2,000 cells,
    # 200 genes, concept_effect_sd 0.3) they made the descendants follow do(concept_0)
    # (mean |shift error| 0.05 against CausCell_IND's 0.10); with tokens of 16 and no
    # exogenous adversary concept_1 moved against its twins.
    "fast": CausCellConfig(
        n_hvg=200,
        token_dim=4,
        encoder_hidden=64,
        width=128,
        depth=2,
        n_heads=4,
        head_dim=16,
        n_diffusion_steps=100,
        beta_end=0.2,
        sampler="ddim",
        sample_steps=20,
        reconstruction="mean",
        concept_weight=1.0,
        adversary_weight=1.0,
        exogenous_adversary_weight=1.0,
        kl_weight=0.05,
        abduction="residual",
        learning_rate=2e-3,
        max_epochs=30,
        max_steps=FAST_MAX_STEPS,
    ),
}

CAUSCELL_IND_PRESETS: dict[str, CausCellConfig] = {
    name: preset.replace(use_dag=False) for name, preset in CAUSCELL_PRESETS.items()
}

CAUSCELL_HARD_PRESETS: dict[str, CausCellConfig] = {
    name: preset.replace(intervention="hard") for name, preset in CAUSCELL_PRESETS.items()
}


# ----------------------------------------------------------------------------- the network


def _ancestor_pairs(
    edges: tuple[tuple[int, int], ...], n_concepts: int
) -> tuple[tuple[int, int], ...]:
    """(ancestor, concept) pairs of the DAG, sorted."""
    pairs = set()
    for node in range(n_concepts):
        frontier = [p for p, c in edges if c == node]
        while frontier:
            ancestor = frontier.pop()
            if (ancestor, node) not in pairs:
                pairs.add((ancestor, node))
                frontier.extend(p for p, c in edges if c == ancestor)
    return tuple(sorted(pairs))


class _ReverseGradient(torch.autograd.Function):
    """Identity forward, gradient times −1 backward (adversarial debiasing)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        return -grad


class _CrossAttentionBlock(nn.Module):
    """``h + W_o MultiHead(LN(h), z)`` then ``h + FF(LN(h))`` (eq. 7-9), one query token."""

    def __init__(self, width: int, token_dim: int, n_heads: int, head_dim: int) -> None:
        super().__init__()
        self.n_heads, self.head_dim = n_heads, head_dim
        inner = n_heads * head_dim
        self.norm = nn.LayerNorm(width)
        self.query = nn.Linear(width, inner)
        self.key = nn.Linear(token_dim, inner)
        self.value = nn.Linear(token_dim, inner)
        self.out = nn.Linear(inner, width)
        self.ff_norm = nn.LayerNorm(width)
        self.ff = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))

    def attention(self, h: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Attention weights of each head over the tokens, shape (n, n_heads, n_tokens)."""
        n = h.shape[0]
        q = self.query(self.norm(h)).view(n, self.n_heads, self.head_dim)
        k = self.key(tokens).view(n, tokens.shape[1], self.n_heads, self.head_dim)
        return torch.softmax(torch.einsum("nhd,nthd->nht", q, k) / self.head_dim**0.5, dim=-1)

    def forward(self, h: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        n = h.shape[0]
        v = self.value(tokens).view(n, tokens.shape[1], self.n_heads, self.head_dim)
        mixed = torch.einsum("nht,nthd->nhd", self.attention(h, tokens), v)
        h = h + self.out(mixed.reshape(n, self.n_heads * self.head_dim))
        return h + self.ff(self.ff_norm(h))


class _CrossAttentionDenoiser(nn.Module):
    """x₀-predictor ``g(x_t, t; z)``: shapes (n, G), (n,), (n, M+1, d) -> (n, G)."""

    def __init__(
        self,
        n_genes: int,
        n_tokens: int,
        token_dim: int,
        width: int,
        depth: int,
        n_heads: int,
        head_dim: int,
        n_time_features: int = 32,
    ) -> None:
        super().__init__()
        self.n_tokens = n_tokens
        self.n_time_features = n_time_features
        self.x_embed = nn.Linear(n_genes, width)
        self.time_embed = nn.Sequential(
            nn.Linear(n_time_features, width), nn.SiLU(), nn.Linear(width, width)
        )
        self.position = nn.Linear(n_tokens, token_dim, bias=False)
        self.blocks = nn.ModuleList(
            _CrossAttentionBlock(width, token_dim, n_heads, head_dim) for _ in range(depth)
        )
        self.output = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, n_genes))

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        h = self.x_embed(x_t) + self.time_embed(sinusoidal_time_features(t, self.n_time_features))
        tokens = tokens + self.position.weight.T[None]  # (1, n_tokens, d)
        for block in self.blocks:
            h = block(h, tokens)
        return self.output(h)


class CausCellModule(nn.Module):
    """The CausCell network: encoder, SCM layer, concept heads, adversary and denoiser.

    Parameters
    ----------
    n_genes : int
    concept_kinds : tuple of {"binary", "continuous"}
        One per concept (M).
    edges : tuple of (int, int)
        (parent, child) concept indices of the SCM's DAG (empty: A = 0).
    config : CausCellConfig
    """

    def __init__(
        self,
        n_genes: int,
        concept_kinds: tuple[ConceptKind, ...],
        edges: tuple[tuple[int, int], ...],
        config: CausCellConfig,
    ) -> None:
        super().__init__()
        self.config = config
        self.binary = tuple(kind == "binary" for kind in concept_kinds)
        self.n_concepts = len(concept_kinds)
        self.n_tokens = self.n_concepts + 1
        self.edges = tuple(edges)
        self.token_dim = d = config.token_dim
        hidden = config.encoder_hidden or max(16, n_genes // 4)
        self.encoder = nn.Sequential(
            nn.Linear(n_genes, hidden), nn.Mish(), nn.Linear(hidden, 2 * self.n_tokens * d)
        )
        self.edge_weights = (
            nn.Linear(1, len(self.edges), bias=False)
            if config.scm_weights == "learned" and self.edges
            else None
        )
        self.heads = nn.ModuleList(nn.Linear(d, 2 if b else 1) for b in self.binary)
        self.adversary_heads = (
            nn.ModuleList(nn.Linear(d, 2 if b else 1) for b in self.binary)
            if config.adversary in ("confusion", "gradient_reversal")
            else None
        )
        self.ancestor_pairs = _ancestor_pairs(self.edges, self.n_concepts)
        self.exogenous_adversary = (
            nn.ModuleList(nn.Linear(d, 2 if self.binary[a] else 1) for a, _ in self.ancestor_pairs)
            if config.exogenous_adversary_weight and self.ancestor_pairs
            else None
        )
        self.denoiser = _CrossAttentionDenoiser(
            n_genes,
            self.n_tokens,
            d,
            config.width or n_genes,
            config.depth,
            config.n_heads,
            config.head_dim,
        )
        self.objective = config.objective()

    # the SCM ------------------------------------------------------------------------

    def adjacency(self, like: torch.Tensor) -> torch.Tensor:
        """A, shape (M+1, M+1), ``A[child, parent]``; the unexplained token has no edges."""
        a = torch.zeros((self.n_tokens, self.n_tokens), dtype=like.dtype, device=like.device)
        if self.edges:
            parents = torch.tensor([p for p, _ in self.edges], device=like.device)
            children = torch.tensor([c for _, c in self.edges], device=like.device)
            weights = torch.ones(len(self.edges), dtype=like.dtype, device=like.device)
            if self.edge_weights is not None:
                weights = weights + 0.1 * self.edge_weights.weight[:, 0].to(like.dtype)
            a = a.index_put((children, parents), weights)
        return a

    def mixing(self, like: torch.Tensor) -> torch.Tensor:
        """C = (I − A)⁻¹, shape (M+1, M+1) (eq. 1)."""
        eye = torch.eye(self.n_tokens, dtype=like.dtype, device=like.device)
        return torch.linalg.inv(eye - self.adjacency(like))

    def scm(self, eps: torch.Tensor) -> torch.Tensor:
        """z = (I − A)⁻¹ ε token-wise: (n, M+1, d) -> (n, M+1, d)."""
        return torch.einsum("ij,njd->nid", self.mixing(eps), eps)

    def propagate(
        self, eps: torch.Tensor, fixed: torch.Tensor, values: torch.Tensor
    ) -> torch.Tensor:
        """Solve the SCM with some tokens held at given values (their parents cut).

        Parameters
        ----------
        eps : Tensor, shape (n, M+1, d)
        fixed : Tensor of bool, shape (n, M+1)
            Tokens set by the intervention (or held at their factual value).
        values : Tensor, shape (n, M+1, d)
            Their values (read where ``fixed``).

        Returns
        -------
        Tensor, shape (n, M+1, d)
            ``z_j = values_j`` where fixed, else ``ε_j + Σ_p A[j, p] z_p``,
            in topological order.
        """
        a = self.adjacency(eps)
        z = torch.zeros_like(eps)
        for j in self._topological_order():
            free = eps[:, j] + torch.einsum("p,npd->nd", a[j], z)
            z[:, j] = torch.where(fixed[:, j, None], values[:, j], free)
        return z

    def _topological_order(self) -> list[int]:
        order: list[int] = []
        remaining = list(range(self.n_tokens))
        while remaining:
            for node in remaining:
                if all(p in order for p, c in self.edges if c == node):
                    order.append(node)
                    remaining.remove(node)
                    break
        return order

    # the encoder ----------------------------------------------------------------------

    def exogenous(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and log-variance of q(ε | x), each of shape (n, M+1, d)."""
        out = self.encoder(x).view(x.shape[0], 2, self.n_tokens, self.token_dim)
        return out[:, 0], out[:, 1].clamp(-30.0, 20.0)

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Posterior-mean tokens z = C E[ε | x], shape (n, M+1, d)."""
        mean, _ = self.exogenous(x)
        return self.scm(mean)

    # the loss -------------------------------------------------------------------------

    def _concept_terms(
        self, heads: nn.ModuleList, tokens: torch.Tensor, concepts: torch.Tensor
    ) -> torch.Tensor:
        """Mean over concepts of the masked per-concept loss of ``heads`` on ``tokens``.

        ``tokens`` has shape (n, M, d) (one per head) or (n, d) (one for all heads).
        """
        terms = []
        for k, head in enumerate(heads):
            observed = ~torch.isnan(concepts[:, k])
            if not observed.any():
                continue
            token = tokens[:, k] if tokens.dim() == 3 else tokens
            terms.append(self._head_loss(head(token[observed]), concepts[observed, k], k))
        if not terms:
            return tokens.new_zeros(())
        return torch.stack(terms).mean()

    def _head_loss(self, out: torch.Tensor, target: torch.Tensor, k: int) -> torch.Tensor:
        """Cross-entropy (binary concept k) or squared error (continuous) of a head's output."""
        if self.binary[k]:
            if self.config.concept_softmax == "twice":
                out = torch.softmax(out, dim=-1)
            return F.cross_entropy(out, target.round().long())
        return F.mse_loss(out[:, 0], target)

    def _confusion_loss(self, out: torch.Tensor, target: torch.Tensor, k: int) -> torch.Tensor:
        """Distance of a frozen adversary's reading to chance: CE to the uniform label
        (binary), or squared distance to the batch mean of the annotations."""
        if self.binary[k]:
            return -torch.log_softmax(out, dim=-1).mean()
        return torch.mean((out[:, 0] - target.mean()) ** 2)

    def _confusion(self, unexplained: torch.Tensor, concepts: torch.Tensor) -> torch.Tensor:
        """The encoder's side of the ``confusion`` adversary, bounded below.

        With the adversary's weights frozen: for a binary concept, the
        cross-entropy between its prediction from u and the uniform label
        (minimal, log 2, when u tells nothing); for a continuous one, the squared
        distance of its prediction to the batch mean of the annotations.
        """
        assert self.adversary_heads is not None
        terms = []
        for k, head in enumerate(self.adversary_heads):
            observed = ~torch.isnan(concepts[:, k])
            if not observed.any():
                continue
            out = F.linear(unexplained[observed], head.weight.detach(), head.bias.detach())
            terms.append(self._confusion_loss(out, concepts[observed, k], k))
        if not terms:
            return unexplained.new_zeros(())
        return torch.stack(terms).mean()

    def loss_terms(
        self, batch: Mapping[str, torch.Tensor], *, generator: torch.Generator
    ) -> dict[str, torch.Tensor]:
        """The named terms of eq. 16 for a mini-batch with keys ``x`` and ``concepts``.

        Returns
        -------
        dict
            ``reconstruction`` (L_G), ``concept``, ``adversary`` and ``kl``, each
            already multiplied by its weight.
        """
        x, concepts = batch["x"], batch["concepts"]
        config = self.config
        mean, log_var = self.exogenous(x)
        eps = reparameterize(mean, log_var, generator)
        z = self.scm(eps)
        terms = {"reconstruction": self.objective.loss(self.denoiser, x, z, generator=generator)}
        if self.n_concepts and config.concept_weight:
            concept = self._concept_terms(self.heads, z[:, : self.n_concepts], concepts)
            terms["concept"] = config.concept_weight * concept
        if self.n_concepts and config.adversary_weight and config.adversary != "none":
            unexplained = z[:, self.n_concepts]
            if config.adversary == "confusion":
                assert self.adversary_heads is not None
                # the adversary learns to read the concepts from u (its heads only) ...
                fitted = self._concept_terms(self.adversary_heads, unexplained.detach(), concepts)
                # ... and the encoder makes its (frozen) reading uninformative
                adversary = fitted + self._confusion(unexplained, concepts)
            elif config.adversary == "gradient_reversal":
                assert self.adversary_heads is not None
                adversary = self._concept_terms(
                    self.adversary_heads, _ReverseGradient.apply(unexplained), concepts
                )
            else:  # the published code: the concept heads on u, cross-entropy negated
                adversary = -self._concept_terms(self.heads, unexplained, concepts)
            terms["adversary"] = config.adversary_weight * adversary
        if self.exogenous_adversary is not None:
            fitted, confused = [], []
            for (ancestor, child), head in zip(
                self.ancestor_pairs, self.exogenous_adversary, strict=True
            ):
                observed = ~torch.isnan(concepts[:, ancestor])
                if not observed.any():
                    continue
                target = concepts[observed, ancestor]
                own = eps[observed, child]
                fitted.append(self._head_loss(head(own.detach()), target, ancestor))
                frozen = F.linear(own, head.weight.detach(), head.bias.detach())
                confused.append(self._confusion_loss(frozen, target, ancestor))
            if fitted:
                terms["exogenous_adversary"] = config.exogenous_adversary_weight * (
                    torch.stack(fitted).mean() + torch.stack(confused).mean()
                )
        if config.kl_weight:
            kl = gaussian_kl(mean, log_var)
            if config.kl == "exogenous_and_endogenous":
                mixing = self.mixing(mean)
                z_mean = torch.einsum("ij,njd->nid", mixing, mean)
                z_var = torch.einsum("ij,njd->nid", mixing**2, log_var.exp())
                kl = kl + gaussian_kl(z_mean, torch.log(z_var))
            terms["kl"] = config.kl_weight * kl
        return terms

    def loss(
        self, batch: Mapping[str, torch.Tensor], *, generator: torch.Generator
    ) -> torch.Tensor:
        """Sum of :meth:`loss_terms` (what the shared trainer minimises)."""
        return torch.stack(list(self.loss_terms(batch, generator=generator).values())).sum()

    # generation -----------------------------------------------------------------------

    def generate(
        self, tokens: torch.Tensor, noise: torch.Tensor, generator: torch.Generator | None
    ) -> torch.Tensor:
        """Sample expression from tokens (n, M+1, d), starting from ``noise`` (n, G)."""
        return self.objective.sample(self.denoiser, noise, tokens, generator=generator)


# ----------------------------------------------------------------------------- the model


class CausCell(NeuralModel):
    """CausCell: causal concept tokens and a cross-attention diffusion decoder.

    Parameters
    ----------
    config : CausCellConfig, optional
        Hyperparameters (``CAUSCELL_PRESETS["fast"]`` when omitted).
    device : str or torch.device
    seed : int
    progress_bar : bool

    Attributes
    ----------
    concept_names_ : tuple of str
    edges_ : tuple of (int, int)
        (parent, child) concept indices of the SCM's DAG.
    module_ : CausCellModule
    history_ : TrainingHistory

    Notes
    -----
    The DAG comes from ``fit(..., context=FitContext(concept_names=..., dag=...))``;
    without a context (or with ``use_dag=False``) A = 0.
    """

    name: ClassVar[str] = "causcell"
    input_space: ClassVar[str] = "hvg"
    uses_dag: ClassVar[bool] = True
    has_representation: ClassVar[bool] = True
    config_class = CausCellConfig
    presets: ClassVar[Mapping[str, CausCellConfig]] = CAUSCELL_PRESETS
    config: CausCellConfig
    module_: CausCellModule

    def __init__(self, config: CausCellConfig | None = None, **kwargs: Any) -> None:
        super().__init__(config, **kwargs)
        self.n_hvg = self.config.n_hvg
        self.concept_names_: tuple[str, ...] = ()
        self.edges_: tuple[tuple[int, int], ...] = ()

    def _build(self) -> CausCellModule:
        assert self.n_dims_ is not None and self.concept_kinds_ is not None
        n_dims, kinds, edges, config = self.n_dims_, self.concept_kinds_, self.edges_, self.config
        return build_module(lambda: CausCellModule(n_dims, kinds, edges, config), seed=self.seed)

    def fit(
        self,
        x: np.ndarray,
        concepts: np.ndarray,
        *,
        concept_kinds: tuple[ConceptKind, ...] | None = None,
        context: FitContext | None = None,
    ) -> CausCell:
        """Train on cells; the concept DAG comes from ``context``.

        Parameters
        ----------
        x : ndarray, shape (n_cells, n_genes)
        concepts : ndarray, shape (n_cells, n_concepts)
            Annotations; NaN where missing (masked in the concept losses).
        concept_kinds : tuple of {"binary", "continuous"}, optional
        context : FitContext, optional
            ``concept_names`` (one per column) and ``dag`` (parent, child, weight);
            the weights' values are not used (A is a 0/1 mask or learned).

        Raises
        ------
        simcell.SimcellError
            On bad inputs, names that do not match the columns, or a DAG edge
            naming an unknown concept.
        """
        x, concepts, kinds = check_fit_inputs(x, concepts, concept_kinds)
        n_concepts = concepts.shape[1]
        names = (
            tuple(str(n) for n in context.concept_names)
            if context is not None
            else tuple(f"concept_{k}" for k in range(n_concepts))
        )
        if len(names) != n_concepts:
            raise SimcellError(
                f"context names {len(names)} concepts, the annotations have {n_concepts}"
            )
        edges: list[tuple[int, int]] = []
        if context is not None and self.config.use_dag and context.dag:
            Intervention(do={}, dag=tuple(context.dag))  # validates: no self-loop, no cycle
            for parent, child, _ in context.dag:
                for concept in (parent, child):
                    if concept not in names:
                        raise SimcellError(f"DAG edge names unknown concept {concept!r}")
                edges.append((names.index(parent), names.index(child)))
        self.concept_names_ = names
        self.edges_ = tuple(edges)
        self._set_dims(x.shape[1], kinds)
        self._train_module(x, concepts)
        self._store_bank(x, concepts)
        return self

    # abduction ------------------------------------------------------------------------

    @torch.no_grad()
    def _exogenous_means(self, x: np.ndarray) -> np.ndarray:
        """Posterior means of ε, shape (n_cells, M+1, d)."""
        self.module_.eval()
        out = []
        for start in range(0, max(len(x), 1), 4096):
            xb = torch.as_tensor(x[start : start + 4096]).to(self.device_)
            out.append(self.module_.exogenous(xb)[0].cpu().numpy())
        return np.concatenate(out).astype(np.float32)

    def _store_bank(self, x: np.ndarray, concepts: np.ndarray) -> None:
        """Exogenous noise and endogenous tokens of the training cells: the donors of do()."""
        self.bank_eps_ = self._exogenous_means(x)
        with torch.no_grad():
            eps = torch.as_tensor(self.bank_eps_)
            self.bank_z_ = self.module_.cpu().scm(eps).numpy().astype(np.float32)
            self.module_.to(self.device_)
        self.bank_concepts_ = np.asarray(concepts, dtype=np.float32)

    def _donors(self, k: int, values: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """One random training cell per requested value of concept k (index into the bank)."""
        annotated = self.bank_concepts_[:, k]
        observed = np.flatnonzero(~np.isnan(annotated))
        donors = np.empty(values.shape[0], dtype=np.int64)
        binary = self.concept_kinds_ is not None and self.concept_kinds_[k] == "binary"
        for value in np.unique(values):
            rows = np.flatnonzero(values == value)
            if binary:
                pool = observed[annotated[observed] == value]
            else:
                distance = np.abs(annotated[observed] - value)
                pool = observed[np.argsort(distance, kind="stable")[:_DONOR_NEIGHBOURS]]
            if pool.size == 0:
                name = self.concept_names_[k] if self.concept_names_ else k
                raise SimcellError(f"do(): no training cell is annotated {name} = {value:g}")
            donors[rows] = rng.choice(pool, size=rows.size)
        return donors

    def _counterfactual_tokens(
        self, eps: np.ndarray, edited: np.ndarray, targets: np.ndarray, propagate: bool
    ) -> tuple[np.ndarray, np.ndarray]:
        """Factual and counterfactual tokens, each of shape (n_cells, M+1, d)."""
        rng = np.random.default_rng(derive_seed(self.seed, "counterfactual-donors"))
        module = self.module_.cpu()
        with torch.no_grad():
            eps_t = torch.as_tensor(eps)
            factual = module.scm(eps_t)
            new_eps = eps_t.clone()
            values = factual.clone()
            fixed = torch.zeros(eps.shape[:2], dtype=torch.bool)
            if not propagate:  # direct: every token not edited keeps its factual value
                fixed[:, : self.n_concepts_] = torch.as_tensor(~edited)
                fixed[:, -1] = True
            for k in range(self.n_concepts_ or 0):
                rows = np.flatnonzero(edited[:, k])
                if rows.size == 0:
                    continue
                donors = self._donors(k, targets[rows, k], rng)
                if self.config.intervention == "hard":
                    values[rows, k] = torch.as_tensor(self.bank_z_[donors, k])
                    fixed[rows, k] = True
                else:
                    new_eps[rows, k] = torch.as_tensor(self.bank_eps_[donors, k])
            counterfactual = module.propagate(new_eps, fixed, values)
        self.module_.to(self.device_)
        return factual.numpy(), counterfactual.numpy()

    @torch.no_grad()
    def _decode(self, tokens: np.ndarray, stream: str) -> np.ndarray:
        """Sample expression from tokens; the same ``stream`` gives the same sampler noise."""
        self.module_.eval()
        n_genes = self.n_dims_ or 0
        noise_gen = torch.Generator().manual_seed(derive_seed(self.seed, f"{stream}/x_T"))
        noise = torch.randn((tokens.shape[0], n_genes), generator=noise_gen)
        sampler = torch.Generator(device=self.device_)
        sampler.manual_seed(derive_seed(self.seed, f"{stream}/steps"))
        out = []
        for start in range(0, max(len(tokens), 1), 4096):
            zb = torch.as_tensor(tokens[start : start + 4096]).to(self.device_)
            nb = noise[start : start + 4096].to(self.device_)
            out.append(self.module_.generate(zb, nb, sampler).cpu().numpy())
        return np.concatenate(out).astype(np.float32)

    def _predict_tokens(
        self, x: np.ndarray, concepts: np.ndarray, target_concepts: np.ndarray, propagate: bool
    ) -> np.ndarray:
        self._require_fitted()
        x, concepts, target_concepts = check_counterfactual_inputs(
            x, concepts, target_concepts, n_dims=self.n_dims_, n_concepts=self.n_concepts_
        )
        edited = edited_mask(concepts, target_concepts)
        eps = self._exogenous_means(x)
        factual, counterfactual = self._counterfactual_tokens(
            eps, edited, target_concepts, propagate and self.uses_dag
        )
        generated = self._decode(counterfactual, "counterfactual")
        if self.config.abduction == "residual":
            # the difference first: an unedited cell comes back bit for bit
            generated = x + (generated - self._decode(factual, "counterfactual"))
        return generated

    def counterfactual(
        self, x: np.ndarray, concepts: np.ndarray, target_concepts: np.ndarray
    ) -> np.ndarray:
        """do() on every edited concept, propagated to its descendants through the SCM.

        Parameters
        ----------
        x : ndarray, shape (n_cells, n_genes)
        concepts : ndarray, shape (n_cells, n_concepts)
            Annotations (they say which concepts the targets change).
        target_concepts : ndarray, shape (n_cells, n_concepts)
            NaN leaves a concept as it is.

        Returns
        -------
        ndarray, shape (n_cells, n_genes)
        """
        return self._predict_tokens(x, concepts, target_concepts, propagate=True)

    def predict(
        self,
        x: np.ndarray,
        concepts: np.ndarray,
        intervention: Intervention,
        concept_names: Sequence[str],
    ) -> np.ndarray:
        """Answer ``intervention``: ``causal`` propagates through the SCM, ``direct`` not.

        Only the concepts in ``do`` are intervened on (the direct targets); in
        ``causal`` mode their descendants follow through z = (I − A)⁻¹ ε.
        """
        targets = intervention.direct_targets(concepts, concept_names)
        return self._predict_tokens(x, concepts, targets, intervention.mode == "causal")

    # representation -------------------------------------------------------------------

    def encode_tokens(self, x: np.ndarray) -> np.ndarray:
        """Posterior-mean tokens z, shape (n_cells, M+1, d); the last is the unexplained one."""
        self._require_fitted()
        x = check_x(x, self.n_dims_)
        eps = torch.as_tensor(self._exogenous_means(x))
        with torch.no_grad():
            z = self.module_.cpu().scm(eps).numpy()
        self.module_.to(self.device_)
        return z.astype(np.float32)

    def token_blocks(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """The tokens by name: ``concept_name -> (n_cells, d)`` and ``"unexplained"``."""
        z = self.encode_tokens(x)
        blocks = {name: z[:, k] for k, name in enumerate(self.concept_names_)}
        blocks[UNEXPLAINED] = z[:, -1]
        return blocks

    def encode(self, x: np.ndarray, concepts: np.ndarray) -> Representation:
        """A :class:`Representation` with one block per token (the annotations are not used)."""
        return Representation(blocks=self.token_blocks(x))

    # checkpoints ------------------------------------------------------------------------

    def _get_state(self) -> dict[str, Any]:
        state = super()._get_state()
        state["concept_names"] = list(self.concept_names_)
        state["edges"] = [list(edge) for edge in self.edges_]
        state["bank_eps"] = torch.as_tensor(self.bank_eps_)
        state["bank_z"] = torch.as_tensor(self.bank_z_)
        state["bank_concepts"] = torch.as_tensor(self.bank_concepts_)
        return state

    def _set_state(self, state: Mapping[str, Any]) -> None:
        self.concept_names_ = tuple(state["concept_names"])
        self.edges_ = tuple((int(p), int(c)) for p, c in state["edges"])
        super()._set_state(state)
        self.bank_eps_ = state["bank_eps"].numpy()
        self.bank_z_ = state["bank_z"].numpy()
        self.bank_concepts_ = state["bank_concepts"].numpy()


class CausCellIND(CausCell):
    """CausCell_IND: CausCell without the SCM layer (A = 0; the paper's ablation)."""

    name: ClassVar[str] = "causcell_ind"
    uses_dag: ClassVar[bool] = False
    presets: ClassVar[Mapping[str, CausCellConfig]] = CAUSCELL_IND_PRESETS


class CausCellHard(CausCell):
    """CausCell answering ``do()`` with the hard intervention instead of the ε-swap.

    ``intervention="hard"``: the intervened token z_k is set to the z_k of a
    training cell carrying the target value, its parents are cut and only its
    descendants are recomputed. Everything else is CausCell's: trained with the
    same seed it has the same weights bit for bit (``intervention`` is not read
    by training), so the harness rows ``causcell`` and ``causcell_hard`` differ
    by the ``do()`` alone. On a root concept (no parents) z_k = ε_k and the
    same donors are drawn: the two predictions are identical.
    """

    name: ClassVar[str] = "causcell_hard"
    presets: ClassVar[Mapping[str, CausCellConfig]] = CAUSCELL_HARD_PRESETS
