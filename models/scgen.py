"""scGen: a VAE and latent vector arithmetic on cell-type-balanced sets.

Our implementation of the published method (Lotfollahi, Wolf & Theis, "scGen
predicts single-cell perturbation responses", Nature Methods 16, 2019). A VAE
without conditions is trained on the cells (log-normalised genes in the
paper; the harness hands it the model's input space). For a binary concept k
the perturbation vector is the difference of the mean latents of the cells with
the concept on and off, each mean taken over a *cell-type-balanced* set::

    δ_k = mean_{u ∈ U_on} z̄_{u, on} − mean_{u ∈ U_off} z̄_{u, off}

where z̄_{u, on} is the mean posterior latent of cell type u among the cells
with c_k = 1 and U_on the cell types present there. scGen builds these sets by
resampling every cell type with replacement to the size of the largest one;
δ_k above is the expectation of that resampling, without its sampling noise.
A counterfactual encodes the cell (posterior mean), adds Σ_k δ_k (c'_k − c_k)
over the edited concepts and decodes.

How it differs from ``latent_shift`` (:class:`simcell.models.LatentShift`):
that model pools all cells (the OLS slope of the latents on the concept, i.e. an
unbalanced difference of means, so a concept's effect is confounded by the cell
types that carry it) and uses the scCBGM residual-MLP backbone; scGen balances
cell types and uses its own architecture (two 800-unit layers, 100 latent
dimensions, dropout 0.2, KL weight 5e-5 on summed terms). Both are kept.

Deviations from the publication, each forced by a project convention:

* LayerNorm instead of BatchNorm in the hidden layers (the shared trainer builds
  modules without buffers, so that initialisation is seeded and stateless);
* the genes are centred on their training means before the encoder (and the
  means added back after the decoder). The published encoder normalises its
  first layer over the cells of each batch (BatchNorm), which removes the genes'
  common offset; LayerNorm normalises over units and does not. Without the
  centring that offset dominates every hidden layer, and on log-normalised
  genes, where the biology is about 1 % of the per-gene variance, the encoder
  maps every cell to one point and the prediction equals the input (posterior
  collapse that a zero KL weight does not cure: measured);
* a linear output layer (the paper's ReLU would clip the negative values of a
  PCA input space);
* continuous concepts (outside scGen's scope) take the OLS slope of the latents;
* without cell types (no :class:`FitContext` with ``cell_types``) every cell is
  one group and δ_k is the pooled difference of means.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
from torch import nn

from simcell import SimcellError

from ._concepts import check_fit_inputs
from ._config import (
    FAST_MAX_STEPS,
    NeuralConfig,
    check_fraction,
    check_non_negative,
    check_positive,
)
from ._nn import LOG_VAR_RANGE, SeededDropout, reparameterize
from ._trainer import build_module
from .base import ConceptKind
from .baselines import LatentShift, concept_slopes

if TYPE_CHECKING:  # FitContext comes with the input-space interface (models/base.py)
    from .base import FitContext  # type: ignore[attr-defined]

__all__ = ["SCGEN_PRESETS", "SCGen", "SCGenConfig", "SCGenModule", "balanced_deltas"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class SCGenConfig(NeuralConfig):
    """Hyperparameters of scGen.

    Parameters
    ----------
    hidden_dim : int
        Width of the hidden layers (800 in the paper).
    n_layers : int
        Hidden layers in the encoder and in the decoder (2).
    latent_dim : int
        Dimension of z (100).
    dropout : float
        Dropout probability (0.2).
    kl_weight : float
        Weight of the KL term; both terms are summed over dimensions and
        averaged over cells, as published (5e-5).
    residual_abduction : bool
        ``False`` (scGen): decode z + δ. ``True``: x + D(z + δ) − D(z), keeping
        what the VAE does not reconstruct (the ``fast`` preset, as for
        ``latent_shift``).
    """

    hidden_dim: int
    n_layers: int
    latent_dim: int
    dropout: float
    kl_weight: float
    residual_abduction: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive(self, "hidden_dim", "n_layers", "latent_dim")
        check_fraction(self, "dropout")
        check_non_negative(self, "kl_weight")


_PAPER = SCGenConfig(
    hidden_dim=800,
    n_layers=2,
    latent_dim=100,
    dropout=0.2,
    kl_weight=5e-5,
    learning_rate=1e-3,
    lr_decay=1.0,
    max_epochs=100,
    batch_size=32,
    validation_fraction=0.1,
    early_stopping_patience=25,
)

SCGEN_PRESETS: dict[str, SCGenConfig] = {
    # Lotfollahi et al. 2019 (Methods) and the authors' defaults.
    "paper": _PAPER,
    # scGen was not part of the paper's synthetic sweep: its published settings.
    "synthetic": _PAPER,
    "fast": SCGenConfig(
        hidden_dim=128,
        n_layers=2,
        latent_dim=32,
        dropout=0.1,
        kl_weight=5e-5,
        learning_rate=1e-3,
        lr_decay=1.0,
        max_epochs=30,
        max_steps=FAST_MAX_STEPS,
        batch_size=128,
        residual_abduction=True,
    ),
}


def _mlp(in_dim: int, config: SCGenConfig) -> nn.Sequential:
    layers: list[nn.Module] = []
    for layer in range(config.n_layers):
        layers += [
            nn.Linear(in_dim if layer == 0 else config.hidden_dim, config.hidden_dim),
            nn.LayerNorm(config.hidden_dim),
            nn.LeakyReLU(),
            SeededDropout(config.dropout),
        ]
    return nn.Sequential(*layers)


class SCGenModule(nn.Module):
    """scGen's VAE: ``n_layers`` × (Linear, LayerNorm, LeakyReLU, Dropout) each way.

    Parameters
    ----------
    n_dims : int
        Dimension of x.
    config : SCGenConfig
    """

    def __init__(self, n_dims: int, config: SCGenConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = _mlp(n_dims, config)
        self.mean = nn.Linear(config.hidden_dim, config.latent_dim)
        self.log_var = nn.Linear(config.hidden_dim, config.latent_dim)
        self.decoder = nn.Sequential(
            _mlp(config.latent_dim, config), nn.Linear(config.hidden_dim, n_dims)
        )

    def posterior(
        self, x: torch.Tensor, conditions: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and log-variance of q(z | x), each of shape (n, latent_dim).

        scGen's VAE has no conditions: ``conditions`` (shape (n, 0)) is accepted
        and ignored, so that the latent-arithmetic code of
        :class:`~simcell.models.LatentShift` drives this module too.
        """
        h = self.encoder(x)
        return self.mean(h), self.log_var(h).clamp(*LOG_VAR_RANGE)

    def decode(self, z: torch.Tensor, conditions: torch.Tensor | None = None) -> torch.Tensor:
        """x̂ = D(z), shape (n, n_dims); ``conditions`` is ignored (see :meth:`posterior`)."""
        return self.decoder(z)

    def loss(
        self, batch: Mapping[str, torch.Tensor], *, generator: torch.Generator
    ) -> torch.Tensor:
        """mean over cells of ½‖x − x̂‖² + kl_weight · KL(q(z|x) ‖ N(0, I))."""
        x = batch["x"]
        mean, log_var = self.posterior(x)
        x_hat = self.decode(reparameterize(mean, log_var, generator))
        reconstruction = 0.5 * (x - x_hat).pow(2).sum(dim=1)
        kl = 0.5 * (log_var.exp() + mean.pow(2) - 1.0 - log_var).sum(dim=1)
        return (reconstruction + self.config.kl_weight * kl).mean()


def balanced_deltas(
    latent: np.ndarray, concepts: np.ndarray, cell_types: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """scGen's perturbation vector of each concept on cell-type-balanced sets.

    Parameters
    ----------
    latent : ndarray, shape (n_cells, latent_dim)
        Posterior-mean latents of the training cells.
    concepts : ndarray, shape (n_cells, n_concepts)
        Annotations (``NaN`` where missing), binary concepts in {0, 1}.
    cell_types : ndarray, shape (n_cells,)
        Cell-type label of each cell.

    Returns
    -------
    deltas : ndarray, shape (n_concepts, latent_dim), float64
        mean over cell types of the mean latent with c_k = 1, minus the same
        with c_k = 0 (each set over the cell types present in it); zero rows
        where a set is empty.
    defined : ndarray of bool, shape (n_concepts,)
        Whether both sets were non-empty.
    """
    latent = np.asarray(latent, dtype=np.float64)
    cell_types = np.asarray(cell_types)
    deltas = np.zeros((concepts.shape[1], latent.shape[1]))
    defined = np.zeros(concepts.shape[1], dtype=bool)
    for k in range(concepts.shape[1]):
        means = []
        for value in (1.0, 0.0):
            chosen = concepts[:, k] == value
            types = np.unique(cell_types[chosen])
            if types.size == 0:
                break
            per_type = [latent[chosen & (cell_types == u)].mean(axis=0) for u in types]
            means.append(np.mean(per_type, axis=0))
        if len(means) == 2:
            deltas[k] = means[0] - means[1]
            defined[k] = True
    return deltas, defined


def context_cell_types(context: FitContext | None, n_cells: int) -> np.ndarray | None:
    """The train cells' cell types from a ``FitContext`` (None when it has none).

    Raises
    ------
    simcell.SimcellError
        If their number differs from the number of training cells.
    """
    cell_types = getattr(context, "cell_types", None)
    if cell_types is None:
        return None
    cell_types = np.asarray(cell_types).astype(str)
    if cell_types.shape != (n_cells,):
        raise SimcellError(
            f"context.cell_types has shape {cell_types.shape}, expected ({n_cells},) "
            "(one label per training cell)"
        )
    return cell_types


class SCGen(LatentShift):
    """scGen (Lotfollahi et al., 2019): VAE + latent delta on cell-type-balanced sets.

    See the module docstring for the method and how it differs from
    ``latent_shift``. Cell types come from ``fit(..., context=FitContext(...))``.
    The latent arithmetic (``counterfactual``: decode ``E_μ(x) + Σ_k δ_k (c'_k − c_k)``,
    ``encode``, checkpoints) is :class:`~simcell.models.LatentShift`'s; scGen
    differs in its VAE (:class:`SCGenModule`) and in how :meth:`fit` estimates δ_k.

    Attributes
    ----------
    latent_slopes_ : ndarray, shape (n_concepts, latent_dim)
        δ_k, the latent effect of a unit change of each concept (also ``deltas_``).
    concept_means_ : ndarray, shape (n_concepts,)
        Stand-in for a missing annotation.
    gene_means_ : ndarray, shape (n_dims,), float32
        The training cells' mean of each input dimension: ``module_`` sees and
        reconstructs ``x - gene_means_`` (see the module docstring).
    """

    name: ClassVar[str] = "scgen"
    input_space: ClassVar[str] = "lognorm"
    has_representation: ClassVar[bool] = True
    config_class = SCGenConfig
    presets: ClassVar[Mapping[str, SCGenConfig]] = SCGEN_PRESETS
    config: SCGenConfig

    def _build(self) -> SCGenModule:
        assert self.n_dims_ is not None
        n_dims, config = self.n_dims_, self.config
        return build_module(lambda: SCGenModule(n_dims, config), seed=self.seed)

    def fit(
        self,
        x: np.ndarray,
        concepts: np.ndarray,
        *,
        concept_kinds: tuple[ConceptKind, ...] | None = None,
        context: FitContext | None = None,
    ) -> SCGen:
        """Train the VAE on ``x`` (n_cells, n_dims), then estimate each concept's δ_k.

        ``context.cell_types`` (n_cells,) balances the sets; without it every
        cell is one group.
        """
        x, concepts, kinds = check_fit_inputs(x, concepts, concept_kinds)
        cell_types = context_cell_types(context, len(x))
        self._set_dims(x.shape[1], kinds)
        self.gene_means_ = x.mean(axis=0, dtype=np.float64).astype(np.float32)
        self._train_module(x - self.gene_means_, np.zeros((len(x), 0), dtype=np.float32))
        latent = self._latent(x)
        # the OLS slope: continuous concepts, and the warning for a concept without effect
        slopes, self.concept_means_ = concept_slopes(latent, concepts, model_name=self.name)
        if cell_types is None:
            log.info("scgen: no cell types given; the latent delta pools all cells")
            cell_types = np.zeros(len(x), dtype=str)
        binary = np.array([kind == "binary" for kind in kinds], dtype=bool)
        deltas, defined = balanced_deltas(latent, concepts, cell_types)
        use = binary & defined
        slopes[use] = deltas[use]
        self.latent_slopes_ = slopes
        return self

    def _latent(self, x: np.ndarray) -> np.ndarray:
        return super()._latent(x - self.gene_means_)

    def _decode(self, latent: np.ndarray) -> np.ndarray:
        return super()._decode(latent) + self.gene_means_

    def _get_state(self) -> dict[str, Any]:
        state = super()._get_state()
        state["gene_means"] = torch.from_numpy(self.gene_means_)
        return state

    def _set_state(self, state: Mapping[str, Any]) -> None:
        super()._set_state(state)
        self.gene_means_ = state["gene_means"].numpy()

    @property
    def deltas_(self) -> np.ndarray:
        """scGen's name for the latent effects (``latent_slopes_``)."""
        return self.latent_slopes_
