"""The gene-level world drawn once per seed (scCBGM paper, Appendix C.1)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import special

from simcell.simulator._rng import stream
from simcell.simulator.params import SimulationParams

# concept probabilities are kept away from 0 and 1 so that Φ⁻¹ stays finite
_PROBABILITY_FLOOR = 1e-10


@dataclass(frozen=True, eq=False)
class World:
    """Parameters of the generative process shared by all cells.

    Attributes
    ----------
    baseline : ndarray, shape (n_genes,)
        w_j, log scale.
    batch_effects : ndarray, shape (n_batches, n_genes)
        γ.
    tissue_effects : ndarray, shape (n_tissues, n_genes)
        τ.
    cell_type_effects : ndarray, shape (n_cell_types, n_genes)
        ω.
    concept_effects : ndarray, shape (n_concepts, n_genes)
        c_kj (zero-inflated normal).
    unaffected_probability : ndarray, shape (n_concepts,)
        π_k ~ Beta(α, β), the probability that a gene is unaffected by concept k.
    batch_proportions : ndarray, shape (n_batches,)
    tissue_proportions : ndarray, shape (n_batches, n_tissues)
        Tissue proportions in each batch.
    cell_type_proportions : ndarray, shape (n_tissues, n_cell_types)
        Cell-type proportions in each tissue.
    concept_probability : ndarray, shape (n_cell_types, n_concepts)
        p_uk, the probability that concept k is on in cell type u with no parents on.
    library_size_sd : ndarray, shape (n_batches,)
        Library-size sd of each batch.
    concept_weights : ndarray, shape (n_concepts, n_concepts)
        B of the concept SCM; ``concept_weights[p, k]`` is the weight of p -> k.
    dispersion : ndarray, shape (n_genes,), or None
        α_j of the negative-binomial counts; ``None`` for Poisson counts.
    typed_concept_effects : ndarray, shape (n_cell_types, n_concepts, n_genes), or None
        c_{ukj}, the concept effects of each cell type with the low-rank
        interaction added; ``None`` when ``interaction_sd`` is 0.
    concept_pair_effects : ndarray, shape (n_concepts, n_concepts, n_genes), or None
        d_{kk'j} (non-zero for k < k' only); ``None`` when ``concept_interaction_sd`` is 0.
    """

    baseline: np.ndarray
    batch_effects: np.ndarray
    tissue_effects: np.ndarray
    cell_type_effects: np.ndarray
    concept_effects: np.ndarray
    unaffected_probability: np.ndarray
    batch_proportions: np.ndarray
    tissue_proportions: np.ndarray
    cell_type_proportions: np.ndarray
    concept_probability: np.ndarray
    library_size_sd: np.ndarray
    concept_weights: np.ndarray
    dispersion: np.ndarray | None = None
    typed_concept_effects: np.ndarray | None = None
    concept_pair_effects: np.ndarray | None = None

    @property
    def concept_liability_mean(self) -> np.ndarray:
        """μ_uk = Φ⁻¹(p_uk), shape (n_cell_types, n_concepts)."""
        return special.ndtri(self.concept_probability)


def draw_world(params: SimulationParams, seed: int) -> World:
    """Draw the gene-level world of a simulation.

    Each component comes from its own named stream, so changing, say, the number
    of batches leaves the baseline expression unchanged.

    Parameters
    ----------
    params : SimulationParams
    seed : int

    Returns
    -------
    World
    """
    p = params
    n_genes = p.n_genes
    if p.baseline_law == "lognormal":
        baseline = stream(seed, "baseline").normal(
            p.baseline_log_mean, p.baseline_log_sd, size=n_genes
        )
    else:
        low, high = np.log(p.baseline_range[0]), np.log(p.baseline_range[1])
        baseline = stream(seed, "baseline").uniform(low, high, size=n_genes)
    batch_effects = stream(seed, "batch_effects").normal(
        0.0, p.batch_effect_sd, (p.n_batches, n_genes)
    )
    tissue_effects = stream(seed, "tissue_effects").normal(
        0.0, p.tissue_effect_sd, (p.n_tissues, n_genes)
    )
    cell_type_effects = stream(seed, "cell_type_effects").normal(
        0.0, p.cell_type_effect_sd, (p.n_cell_types, n_genes)
    )
    rng = stream(seed, "concept_effects")
    unaffected = rng.beta(p.concept_sparsity_alpha, p.concept_sparsity_beta, size=p.n_concepts)
    coefficients = rng.normal(0.0, p.concept_effect_sd, (p.n_concepts, n_genes))
    affected = rng.random((p.n_concepts, n_genes)) >= unaffected[:, None]
    concept_effects = np.where(affected, coefficients, 0.0)

    rng = stream(seed, "proportions")
    batch_proportions = rng.dirichlet(np.full(p.n_batches, p.batch_concentration))
    tissue_proportions = rng.dirichlet(
        np.full(p.n_tissues, p.tissue_concentration), size=p.n_batches
    )
    cell_type_proportions = rng.dirichlet(
        np.full(p.n_cell_types, p.cell_type_concentration), size=p.n_tissues
    )
    concept_probability = rng.dirichlet(
        np.full(p.n_concepts, p.concept_concentration), size=p.n_cell_types
    )
    concept_probability = np.clip(concept_probability, _PROBABILITY_FLOOR, 1 - _PROBABILITY_FLOOR)
    library_size_sd = stream(seed, "library_size_sd").uniform(
        *p.library_size_sd_range, size=p.n_batches
    )

    concept_weights = np.zeros((p.n_concepts, p.n_concepts))
    for parent, child, weight in p.concept_edges:
        concept_weights[parent, child] = weight
    return World(
        baseline=baseline,
        batch_effects=batch_effects,
        tissue_effects=tissue_effects,
        cell_type_effects=cell_type_effects,
        concept_effects=concept_effects,
        unaffected_probability=unaffected,
        batch_proportions=batch_proportions,
        tissue_proportions=tissue_proportions,
        cell_type_proportions=cell_type_proportions,
        concept_probability=concept_probability,
        library_size_sd=library_size_sd,
        concept_weights=concept_weights,
        dispersion=draw_dispersion(p, baseline, seed) if p.overdispersed else None,
        **draw_interactions(p, concept_effects, seed),
    )


def draw_interactions(params: SimulationParams, concept_effects: np.ndarray, seed: int) -> dict:
    """The graded-difficulty interaction effects, from the stream ``"interactions"``.

    c_{ukj} = c_kj + 1[c_kj ≠ 0] Σ_r a_{ur} b_{kr} g_{rj} (a, b ~ N(0, 1),
    g ~ N(0, interaction_sd²)) and d_{kk'j} ~ N(0, concept_interaction_sd²) for
    k < k' on genes both concepts act on; a gene no concept acts on stays
    unaffected, so ``do()`` leaves it unchanged.

    Returns
    -------
    dict
        ``typed_concept_effects`` and ``concept_pair_effects`` (each ``None`` when off).
    """
    p = params
    out: dict = {"typed_concept_effects": None, "concept_pair_effects": None}
    if p.interaction_sd == 0 and p.concept_interaction_sd == 0:
        return out
    rng = stream(seed, "interactions")
    rank, n_genes = p.interaction_rank, concept_effects.shape[1]
    a = rng.standard_normal((p.n_cell_types, rank))
    b = rng.standard_normal((p.n_concepts, rank))
    g = rng.normal(0.0, p.interaction_sd, (rank, n_genes))
    d = rng.normal(0.0, p.concept_interaction_sd, (p.n_concepts, p.n_concepts, n_genes))
    affected = concept_effects != 0
    if p.interaction_sd > 0:
        extra = np.einsum("ur,kr,rj->ukj", a, b, g)
        out["typed_concept_effects"] = concept_effects[None] + np.where(affected, extra, 0.0)
    if p.concept_interaction_sd > 0:
        both = affected[:, None, :] & affected[None, :, :]
        upper = np.triu(np.ones((p.n_concepts, p.n_concepts), dtype=bool), k=1)[:, :, None]
        out["concept_pair_effects"] = np.where(both & upper, d, 0.0)
    return out


def draw_dispersion(params: SimulationParams, baseline: np.ndarray, seed: int) -> np.ndarray:
    """Gene dispersions α_j = (α₀ + α₁ / e^{w_j}) · exp(s z_j), z_j ~ N(0, 1).

    The trend on the gene's baseline mean (dispersion falls with expression, to
    the asymptote α₀) is the one fitted to droplet data by edgeR / DESeq2; the
    log-normal scatter s is ``dispersion_sd``. Drawn from the stream
    ``"dispersion"``.

    Parameters
    ----------
    params : SimulationParams
    baseline : ndarray, shape (n_genes,)
        w_j.
    seed : int

    Returns
    -------
    ndarray, shape (n_genes,)
        α_j > 0.
    """
    asymptote, extra = params.dispersion_trend
    trend = asymptote + extra * np.exp(-baseline)
    scatter = stream(seed, "dispersion").standard_normal(baseline.size)
    return np.maximum(trend * np.exp(params.dispersion_sd * scatter), 1e-12)
