"""Identifiability: how well a learned embedding recovers the true latents."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from scipy.optimize import linear_sum_assignment
from sklearn.linear_model import LinearRegression
from sklearn.model_selection import train_test_split

from simcell import SimcellError
from simcell.evaluation.metrics._registry import register_metric
from simcell.evaluation.metrics._validation import as_cells, check_fraction, constant_rows

__all__ = ["linear_r2", "mcc"]

_REFERENCE = "1 = the true latents are recovered (up to an affine map / a matching of dims)"


def _latent_pair(
    embedding: npt.ArrayLike, concepts_true: npt.ArrayLike
) -> tuple[np.ndarray, np.ndarray]:
    learned_latents = as_cells(embedding, "embedding", min_cells=3)
    true_latents = as_cells(concepts_true, "concepts_true", min_cells=3)
    if learned_latents.shape[0] != true_latents.shape[0]:
        raise SimcellError(
            f"embedding and concepts_true must describe the same cells; got "
            f"{learned_latents.shape[0]} vs {true_latents.shape[0]} rows"
        )
    for name, latents in (("embedding", learned_latents), ("concepts_true", true_latents)):
        constant = np.flatnonzero(constant_rows(latents.T))
        if constant.size:
            raise SimcellError(f"{name} latent dim {constant[0]} is constant")
    return learned_latents, true_latents


@register_metric("linear_r2", direction="higher", level="latent", reference=_REFERENCE)
def linear_r2(
    embedding: npt.ArrayLike,
    concepts_true: npt.ArrayLike,
    *,
    test_fraction: float = 0.3,
    seed: int = 0,
) -> float:
    """Held-out R² of a linear regression from learned to true latents, mean over true dims.

    An affine map ``true ≈ learned W + b`` is fitted by least squares on a seeded
    ``1 - test_fraction`` share of the cells and scored on the rest; the R² of
    each true dim (``1 - SS_res / SS_tot`` around the held-out mean) is averaged
    uniformly. It is 1 when the true latents are an affine function of the
    learned ones (identifiability up to an invertible linear map).

    Parameters
    ----------
    embedding : array-like, shape (n_cells, n_learned)
        The learned latents.
    concepts_true : array-like, shape (n_cells, n_true)
        The true latents (e.g. the true concept values).
        No constant dim.
    test_fraction : float, default 0.3
    seed : int, default 0
        Seed of the split.

    Returns
    -------
    float
        At most 1, unbounded below.
    """
    learned_latents, true_latents = _latent_pair(embedding, concepts_true)
    check_fraction(test_fraction, "test_fraction")
    train, test = train_test_split(
        np.arange(learned_latents.shape[0]), test_size=test_fraction, random_state=seed
    )
    if test.size < 2:
        raise SimcellError("linear_r2 needs at least 2 held-out cells; use more cells")
    regression = LinearRegression().fit(learned_latents[train], true_latents[train])
    predicted = regression.predict(learned_latents[test])
    residual = np.sum((true_latents[test] - predicted) ** 2, axis=0)
    total = np.sum((true_latents[test] - true_latents[test].mean(axis=0)) ** 2, axis=0)
    if np.any(total == 0):
        raise SimcellError("a true latent dim is constant on the held-out cells")
    return float(np.mean(1.0 - residual / total))


@register_metric("mcc", direction="higher", level="latent", reference=_REFERENCE)
def mcc(embedding: npt.ArrayLike, concepts_true: npt.ArrayLike) -> float:
    """Mean correlation coefficient after optimal one-to-one matching of latent dims.

    ``|ρ_ab|`` is the absolute Pearson correlation between learned dim ``a`` and
    true dim ``b`` over all cells; ``scipy.optimize.linear_sum_assignment`` picks
    the one-to-one matching maximising ``Σ |ρ|`` and the matched values are
    averaged. When the numbers of dims differ, ``min(n_learned, n_true)`` pairs are
    matched. Invariant to permutation, sign flip and rescaling of the learned
    dims.

    Parameters
    ----------
    embedding : array-like, shape (n_cells, n_learned)
        The learned latents.
    concepts_true : array-like, shape (n_cells, n_true)
        The true latents (e.g. the true concept values).
        No constant dim in either.

    Returns
    -------
    float
        In ``[0, 1]``.
    """
    learned_latents, true_latents = _latent_pair(embedding, concepts_true)

    def standardise(latents: np.ndarray) -> np.ndarray:
        centred = latents - latents.mean(axis=0)
        return centred / np.linalg.norm(centred, axis=0)

    correlation = np.abs(standardise(learned_latents).T @ standardise(true_latents))
    correlation = np.clip(correlation, 0.0, 1.0)
    rows, cols = linear_sum_assignment(correlation, maximize=True)
    return float(correlation[rows, cols].mean())
