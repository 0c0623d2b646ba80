"""Identifiability: how well a learned embedding (or one block of it) recovers the true latents."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import numpy as np
import numpy.typing as npt
import pandas as pd
from scipy.optimize import linear_sum_assignment
from sklearn.linear_model import LinearRegression
from sklearn.model_selection import train_test_split

from simcell import SimcellError
from simcell.evaluation.metrics._registry import register_metric
from simcell.evaluation.metrics._validation import as_cells, check_fraction, constant_rows

__all__ = [
    "block_r2",
    "block_r2_kernel",
    "block_r2_linear",
    "identifiability_table",
    "latent_mcc",
    "linear_r2",
    "mcc",
    "random_split_r2_reference",
    "rotation_mcc_reference",
    "wrong_block_r2",
]

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


# ----------------------------------------------------------------------------- blocks
#
# A Representation has named blocks (``invariant``, ``responsive``), each meant to
# recover one true latent the simulator stored (``z_invariant``, ``z_responsive``).
# Block R² asks whether the true latent is a function of the block (linear: an
# invertible linear map, identifiability up to a linear block transform; kernel:
# any smooth map), scored on held-out cells; MCC asks for a one-to-one matching
# of dims (identifiability up to permutation and scaling); leakage is the block
# R² of the *other* latent (what a block knows that it should not).

#: cells the block regressions use at most (a seeded subsample; kernel ridge is O(n³))
MAX_BLOCK_CELLS = 2000
_RIDGE_ALPHAS = np.logspace(-4, 2, 7)
_KERNEL_GRID = {"alpha": [1e-3, 1e-2, 1e-1, 1.0], "gamma": [0.1, 0.3, 1.0]}
RegressionKind = Literal["linear", "kernel"]


def _block_pair(embedding: npt.ArrayLike, latent_true: npt.ArrayLike):
    learned = as_cells(embedding, "embedding", min_cells=10)
    true = as_cells(latent_true, "latent_true", min_cells=10)
    if learned.shape[0] != true.shape[0]:
        raise SimcellError(
            f"embedding and latent_true must describe the same cells; got "
            f"{learned.shape[0]} vs {true.shape[0]} rows"
        )
    keep = ~constant_rows(learned.T)
    if not keep.any():
        raise SimcellError("every embedding dim is constant")
    if constant_rows(true.T).any():
        raise SimcellError("a latent_true dim is constant")
    return learned[:, keep], true


def block_r2(
    embedding: npt.ArrayLike,
    latent_true: npt.ArrayLike,
    *,
    kind: RegressionKind = "linear",
    test_fraction: float = 0.3,
    seed: int = 0,
) -> float:
    """Held-out R² of a true latent regressed on a learned block, mean over true dims.

    The cells (a seeded subsample of at most :data:`MAX_BLOCK_CELLS`) are split
    ``1 - test_fraction`` / ``test_fraction``. On the first part the standardised
    block is regressed on each true dim by ridge regression (``linear``,
    ``RidgeCV`` over α ∈ 10^-4..10^2) or RBF kernel ridge (``kernel``,
    ``GridSearchCV`` over α and γ / n_dims, 3 folds); the R²
    ``1 - SS_res / SS_tot`` of each true dim on the held-out cells is averaged.
    1: the latent is recovered (up to a linear / smooth map); about 0: the block
    holds nothing of it.

    Parameters
    ----------
    embedding : array-like, shape (n_cells, n_learned)
        One learned block (constant dims are dropped).
    latent_true : array-like, shape (n_cells, n_true)
        The true latent. No constant dim.
    kind : {"linear", "kernel"}
    test_fraction : float
    seed : int
        Seed of the subsample and the split.

    Returns
    -------
    float
        At most 1, unbounded below.
    """
    from sklearn.kernel_ridge import KernelRidge
    from sklearn.linear_model import RidgeCV
    from sklearn.model_selection import GridSearchCV, KFold
    from sklearn.preprocessing import StandardScaler

    if kind not in ("linear", "kernel"):
        raise SimcellError(f"kind must be 'linear' or 'kernel', got {kind!r}")
    learned, true = _block_pair(embedding, latent_true)
    check_fraction(test_fraction, "test_fraction")
    rng = np.random.default_rng(seed)
    cells = rng.permutation(learned.shape[0])[:MAX_BLOCK_CELLS]
    train, test = train_test_split(cells, test_size=test_fraction, random_state=seed)
    if test.size < 2 or train.size < 6:
        raise SimcellError("block_r2 needs at least 6 fit and 2 held-out cells; use more cells")
    scaler = StandardScaler().fit(learned[train])
    x_fit, x_test = scaler.transform(learned[train]), scaler.transform(learned[test])
    if kind == "linear":
        model = RidgeCV(alphas=_RIDGE_ALPHAS).fit(x_fit, true[train])
    else:
        grid = dict(_KERNEL_GRID, gamma=[g / learned.shape[1] for g in _KERNEL_GRID["gamma"]])
        folds = KFold(n_splits=3, shuffle=True, random_state=seed)
        model = GridSearchCV(KernelRidge(kernel="rbf"), grid, cv=folds).fit(x_fit, true[train])
    residual = np.sum((true[test] - model.predict(x_test)) ** 2, axis=0)
    total = np.sum((true[test] - true[test].mean(axis=0)) ** 2, axis=0)
    if np.any(total == 0):
        raise SimcellError("a true latent dim is constant on the held-out cells")
    return float(np.mean(1.0 - residual / total))


@register_metric("block_r2", direction="higher", level="latent", reference=_REFERENCE)
def block_r2_linear(
    embedding: npt.ArrayLike, latent_true: npt.ArrayLike, *, seed: int = 0
) -> float:
    """:func:`block_r2` with ridge regression (identifiability up to a linear map)."""
    return block_r2(embedding, latent_true, kind="linear", seed=seed)


@register_metric("block_r2_kernel", direction="higher", level="latent", reference=_REFERENCE)
def block_r2_kernel(
    embedding: npt.ArrayLike, latent_true: npt.ArrayLike, *, seed: int = 0
) -> float:
    """:func:`block_r2` with RBF kernel ridge (any smooth map)."""
    return block_r2(embedding, latent_true, kind="kernel", seed=seed)


@register_metric("latent_mcc", direction="higher", level="latent", reference=_REFERENCE)
def latent_mcc(embedding: npt.ArrayLike, latent_true: npt.ArrayLike) -> float:
    """:func:`mcc` of a learned block against a true latent (Hungarian matching on
    |Pearson|; identifiability up to permutation and scaling)."""
    learned, true = _block_pair(embedding, latent_true)
    return mcc(learned, true)


def rotation_mcc_reference(
    latent_true: npt.ArrayLike, *, n_rotations: int = 200, seed: int = 0
) -> np.ndarray:
    """MCC of the true latent under random rotations: what a non-identifiable answer scores.

    A method that recovers a latent only up to an invertible linear map (block
    R² ≈ 1) is not identified up to permutation and scaling; its MCC is then
    that of ``latent_true @ Q`` for some orthogonal Q. This returns
    ``latent_mcc(latent_true @ Q, latent_true)`` for ``n_rotations`` Haar-random
    Q (``scipy.stats.ortho_group``, seeded). Far above 0 for few dims or
    correlated latents (about 0.7-0.8 for 4 dims), so an MCC is evidence of
    identifiability only above this distribution (e.g. above its 95th percentile).

    Parameters
    ----------
    latent_true : array-like, shape (n_cells, d)
        The true latent, d >= 2 (with d = 1 every rotation is a sign flip: MCC 1).
    n_rotations : int
    seed : int

    Returns
    -------
    ndarray, shape (n_rotations,)
    """
    from scipy.stats import ortho_group

    true = as_cells(latent_true, "latent_true", min_cells=3)
    if true.shape[1] < 2:
        raise SimcellError("rotation_mcc_reference needs a latent of at least 2 dims")
    if isinstance(n_rotations, bool) or not isinstance(n_rotations, int) or n_rotations < 1:
        raise SimcellError(f"n_rotations must be an integer >= 1, got {n_rotations!r}")
    rng = np.random.default_rng(seed)
    rotations = ortho_group.rvs(true.shape[1], size=n_rotations, random_state=rng)
    rotations = rotations.reshape(n_rotations, true.shape[1], true.shape[1])
    return np.array([latent_mcc(true @ rotation, true) for rotation in rotations])


def random_split_r2_reference(
    latent_true: npt.ArrayLike,
    other_latent: npt.ArrayLike,
    block_dim: int,
    *,
    n_rotations: int = 50,
    seed: int = 0,
) -> np.ndarray:
    """Block R² of a latent from a random split of all the latents: what a
    non-identified block scores.

    A block that is identified recovers its latent up to an invertible map (R²
    near the ceiling) and holds nothing else. When the split between blocks is
    not identified, a block is some ``block_dim``-dim subspace of the joint
    latent. This standardises ``[latent_true, other_latent]`` per dim, projects it
    on the first ``block_dim`` columns of Haar-random orthogonal matrices (seeded)
    and returns the linear :func:`block_r2` of ``latent_true`` from each
    projection. It grows with ``block_dim`` (about ``block_dim / d_total`` for
    independent latents): a block wider than its latent scores high without
    identifying anything, so compare a block's R² with this distribution at the
    block's own width.

    Parameters
    ----------
    latent_true : array-like, shape (n_cells, d)
        The latent the block targets.
    other_latent : array-like, shape (n_cells, d_other)
        Every other true latent (concatenated), same cells.
    block_dim : int
        The learned block's width, 1 <= block_dim <= d + d_other.
    n_rotations : int
    seed : int

    Returns
    -------
    ndarray, shape (n_rotations,)
    """
    from scipy.stats import ortho_group

    true = as_cells(latent_true, "latent_true", min_cells=10)
    other = as_cells(other_latent, "other_latent", min_cells=10)
    if other.shape[0] != true.shape[0]:
        raise SimcellError(
            f"latent_true and other_latent must describe the same cells; got "
            f"{true.shape[0]} vs {other.shape[0]} rows"
        )
    joint = np.concatenate([true, other], axis=1)
    if constant_rows(joint.T).any():
        raise SimcellError("a latent dim is constant")
    joint = (joint - joint.mean(axis=0)) / joint.std(axis=0)
    d = joint.shape[1]
    if isinstance(block_dim, bool) or not isinstance(block_dim, int) or not 1 <= block_dim <= d:
        raise SimcellError(f"block_dim must be an integer in [1, {d}], got {block_dim!r}")
    if isinstance(n_rotations, bool) or not isinstance(n_rotations, int) or n_rotations < 1:
        raise SimcellError(f"n_rotations must be an integer >= 1, got {n_rotations!r}")
    rng = np.random.default_rng(seed)
    rotations = ortho_group.rvs(d, size=n_rotations, random_state=rng).reshape(n_rotations, d, d)
    return np.array(
        [
            block_r2(joint @ rotation[:, :block_dim], true, kind="linear", seed=seed)
            for rotation in rotations
        ]
    )


def wrong_block_r2(
    blocks: Mapping[str, npt.ArrayLike],
    targets: Mapping[str, str],
    latents: Mapping[str, npt.ArrayLike],
    *,
    seed: int = 0,
) -> dict[tuple[str, str], float]:
    """Leakage: the linear :func:`block_r2` of every true latent a block does *not* target.

    Parameters
    ----------
    blocks : mapping of str to array-like, each (n_cells, d_block)
    targets : mapping of str to str
        Block name -> the true latent it should recover; blocks without a target
        are skipped (they claim nothing, so nothing leaks into them).
    latents : mapping of str to array-like, each (n_cells, d)
        The true latents.
    seed : int

    Returns
    -------
    dict
        ``(block, latent) -> R²`` for each targeted block and each other latent
        (about 0: the block holds nothing of that latent; it is not 0 for a
        latent that depends on the block's own one, e.g. z_ν through Γ z_ι).
    """
    return {
        (block, latent): block_r2(blocks[block], truth, kind="linear", seed=seed)
        for block, target in targets.items()
        if block in blocks
        for latent, truth in latents.items()
        if latent != target
    }


def _split_reference95(embedding, latent: str, latents: Mapping, seed: int) -> float:
    """95th percentile of :func:`random_split_r2_reference` for a block of
    ``embedding``'s width targeting ``latent`` (capped at the joint latent's width)."""
    others = np.concatenate(
        [np.asarray(v, dtype=np.float64) for k, v in latents.items() if k != latent], axis=1
    )
    truth = np.asarray(latents[latent], dtype=np.float64)
    width = min(np.shape(embedding)[1], truth.shape[1] + others.shape[1])
    return float(np.quantile(random_split_r2_reference(truth, others, width, seed=seed), 0.95))


def identifiability_table(
    blocks: Mapping[str, npt.ArrayLike],
    targets: Mapping[str, str],
    latents: Mapping[str, npt.ArrayLike],
    *,
    seed: int = 0,
) -> pd.DataFrame:
    """Every block against every true latent: recovery where a block targets it,
    leakage elsewhere.

    Parameters
    ----------
    blocks : mapping of str to array-like, each (n_cells, d_block)
        A Representation's blocks.
    targets : mapping of str to str
        Block name -> the true latent it should recover (e.g. ``invariant`` ->
        ``z_invariant``); blocks without a target are scored as leakage only.
    latents : mapping of str to array-like, each (n_cells, d)
        The true latents (:func:`simcell.simulator.schema.true_latents`).
    seed : int

    Returns
    -------
    DataFrame
        Columns ``block``, ``latent``, ``role`` (``recovery`` / ``leakage``),
        ``block_r2``, ``block_r2_kernel``, ``latent_mcc`` (MCC for recovery only,
        NaN for leakage), ``mcc_rotation95`` (recovery rows of a latent of 2+ dims:
        the 95th percentile of :func:`rotation_mcc_reference`, the MCC a latent
        identified only up to a rotation reaches; NaN elsewhere),
        ``r2_random_split95`` (recovery rows when there are other latents: the 95th
        percentile of :func:`random_split_r2_reference` at the block's width, the
        block R² of a block that is a random subspace of all the latents).
    """
    unknown = sorted(set(targets.values()) - set(latents))
    if unknown:
        raise SimcellError(
            f"block targets {unknown} are not among the true latents {sorted(latents)}"
        )
    rows = []
    for block, embedding in blocks.items():
        for latent, truth in latents.items():
            recovery = targets.get(block) == latent
            rows.append(
                {
                    "block": block,
                    "latent": latent,
                    "role": "recovery" if recovery else "leakage",
                    "block_r2": block_r2(embedding, truth, kind="linear", seed=seed),
                    "block_r2_kernel": block_r2(embedding, truth, kind="kernel", seed=seed),
                    "latent_mcc": latent_mcc(embedding, truth) if recovery else np.nan,
                    "mcc_rotation95": (
                        float(np.quantile(rotation_mcc_reference(truth, seed=seed), 0.95))
                        if recovery and np.shape(truth)[1] >= 2
                        else np.nan
                    ),
                    "r2_random_split95": (
                        _split_reference95(embedding, latent, latents, seed)
                        if recovery and len(latents) > 1
                        else np.nan
                    ),
                }
            )
    return pd.DataFrame(rows)
