"""Concept handling shared by the models: input checks, edits, masked losses.

Conventions
-----------
* ``NaN`` in ``concepts`` means *not annotated*. It is never turned into a
  value silently: losses mask it out (eq. 7) and models that take concepts as
  input receive the pair ``[value with NaN -> 0, observed indicator]`` (see
  :func:`concept_condition`).
* A concept is *edited* in a cell when its target is given (not ``NaN``) and
  differs from the annotation, or the annotation is missing. ``NaN`` in
  ``target_concepts`` therefore means "leave this concept as it is".
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from simcell import SimcellError

from .base import ConceptKind

__all__ = [
    "ORTHOGONALITY_PENALTIES",
    "check_counterfactual_inputs",
    "check_fit_inputs",
    "check_x",
    "concept_condition",
    "concept_loss",
    "cosine_penalty",
    "cross_covariance_penalty",
    "edited_mask",
]

_KINDS = ("binary", "continuous")


def _as_float_matrix(values: np.ndarray, what: str) -> np.ndarray:
    array = np.asarray(values)
    if array.ndim != 2:
        raise SimcellError(f"{what} must be 2-dimensional, got shape {array.shape}")
    if not np.issubdtype(array.dtype, np.number) and array.dtype != bool:
        raise SimcellError(f"{what} must be numeric, got dtype {array.dtype}")
    return array.astype(np.float32, copy=False)


def check_x(x: np.ndarray, n_dims: int | None = None) -> np.ndarray:
    """Validate cells: a finite 2-d float matrix, with ``n_dims`` columns if given."""
    x = _as_float_matrix(x, "x")
    if not np.all(np.isfinite(x)):
        raise SimcellError("x contains NaN or infinite values")
    if n_dims is not None and x.shape[1] != n_dims:
        raise SimcellError(f"x has {x.shape[1]} dimensions, the model was fitted on {n_dims}")
    return x


def _check_concepts(concepts: np.ndarray, n_cells: int, what: str = "concepts") -> np.ndarray:
    concepts = _as_float_matrix(concepts, what)
    if concepts.shape[0] != n_cells:
        raise SimcellError(f"{what} has {concepts.shape[0]} rows, x has {n_cells}")
    if np.any(np.isinf(concepts)):
        raise SimcellError(f"{what} contains infinite values (use NaN for 'not annotated')")
    return concepts


def check_fit_inputs(
    x: np.ndarray,
    concepts: np.ndarray,
    concept_kinds: Sequence[ConceptKind] | None,
) -> tuple[np.ndarray, np.ndarray, tuple[ConceptKind, ...]]:
    """Validate training inputs.

    Returns
    -------
    x : ndarray, shape (n_cells, n_dims), float32
    concepts : ndarray, shape (n_cells, n_concepts), float32 (NaN kept)
    concept_kinds : tuple of {"binary", "continuous"}, one per concept

    Raises
    ------
    simcell.SimcellError
        On shape mismatches, non-finite ``x``, infinite concepts, unknown kinds
        or binary annotations outside [0, 1].
    """
    x = check_x(x)
    if x.shape[0] < 2:
        raise SimcellError(f"need at least 2 training cells, got {x.shape[0]}")
    concepts = _check_concepts(concepts, x.shape[0])
    n_concepts = concepts.shape[1]
    kinds: tuple[ConceptKind, ...] = (
        ("binary",) * n_concepts if concept_kinds is None else tuple(concept_kinds)
    )
    if len(kinds) != n_concepts:
        raise SimcellError(f"concept_kinds has {len(kinds)} entries, concepts has {n_concepts}")
    bad = sorted({kind for kind in kinds if kind not in _KINDS})
    if bad:
        raise SimcellError(f"unknown concept kind(s) {bad}; valid kinds: {', '.join(_KINDS)}")
    for k, kind in enumerate(kinds):
        column = concepts[:, k]
        observed = column[~np.isnan(column)]
        if kind == "binary" and np.any((observed < 0) | (observed > 1)):
            raise SimcellError(f"binary concept {k} has annotations outside [0, 1]")
    return x, concepts, kinds


def check_counterfactual_inputs(
    x: np.ndarray,
    concepts: np.ndarray,
    target_concepts: np.ndarray,
    *,
    n_dims: int,
    n_concepts: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Validate ``counterfactual`` inputs against the fitted dimensions."""
    x = check_x(x, n_dims)
    concepts = _check_concepts(concepts, x.shape[0])
    target_concepts = _check_concepts(target_concepts, x.shape[0], "target_concepts")
    for what, array in (("concepts", concepts), ("target_concepts", target_concepts)):
        if array.shape[1] != n_concepts:
            raise SimcellError(
                f"{what} has {array.shape[1]} columns, the model was fitted on {n_concepts}"
            )
    return x, concepts, target_concepts


def edited_mask(concepts: np.ndarray, target_concepts: np.ndarray) -> np.ndarray:
    """Which (cell, concept) entries an intervention sets.

    Parameters
    ----------
    concepts, target_concepts : ndarray, shape (n_cells, n_concepts)

    Returns
    -------
    ndarray of bool, shape (n_cells, n_concepts)
        True where the target is annotated and differs from the annotation
        (a missing annotation counts as different).
    """
    target_given = ~np.isnan(target_concepts)
    with np.errstate(invalid="ignore"):
        differs = np.isnan(concepts) | (target_concepts != concepts)
    return target_given & differs


def concept_condition(concepts: torch.Tensor) -> torch.Tensor:
    """Encode annotations as a model input: ``[value (NaN -> 0), observed (0/1)]``.

    Parameters
    ----------
    concepts : Tensor, shape (n, K)
        With NaN where not annotated.

    Returns
    -------
    Tensor, shape (n, 2K)
        The indicator half lets a model tell "annotated 0" from "not annotated".
    """
    observed = ~torch.isnan(concepts)
    values = torch.where(observed, concepts, torch.zeros_like(concepts))
    return torch.cat([values, observed.to(concepts.dtype)], dim=-1)


def concept_loss(
    predictions: torch.Tensor, concepts: torch.Tensor, binary: torch.Tensor
) -> torch.Tensor:
    """Masked concept loss (eq. 7): BCE for binary concepts, MSE for continuous ones.

    .. math::

        L = \\frac{1}{\\sum_{ik} m_{ik}} \\sum_{ik} m_{ik}\\, \\ell_k(\\hat c_{ik}, c_{ik})

    where ``m`` is 1 where the annotation is observed; the normalisation is by
    the number of observed entries of the mini-batch, so the loss equals the
    mean per-entry loss over the observed subset, exactly.

    Parameters
    ----------
    predictions : Tensor, shape (n, K)
        Logits for binary concepts, values for continuous ones.
    concepts : Tensor, shape (n, K)
        Annotations with NaN where missing.
    binary : Tensor of bool, shape (K,)
        True for binary concepts.

    Returns
    -------
    Tensor
        Scalar; 0 (with zero gradient) when nothing is observed.
    """
    observed = ~torch.isnan(concepts)
    # NaN targets are replaced before the loss, so neither value nor gradient sees them
    targets = torch.where(observed, concepts, torch.zeros_like(concepts))
    bce = F.binary_cross_entropy_with_logits(predictions, targets, reduction="none")
    squared = (predictions - targets) ** 2
    per_entry = torch.where(binary[None, :], bce, squared)
    per_entry = torch.where(observed, per_entry, torch.zeros_like(per_entry))
    n_observed = observed.sum()
    return per_entry.sum() / n_observed.clamp(min=1).to(per_entry.dtype)


def cross_covariance_penalty(concepts_hat: torch.Tensor, unknowns: torch.Tensor) -> torch.Tensor:
    """Squared Frobenius norm of the empirical cross-covariance (eq. 8).

    .. math:: L_{cc} = \\| \\tfrac{1}{B-1} (\\hat C - \\bar{\\hat c})^T (U - \\bar u) \\|_F^2

    Parameters
    ----------
    concepts_hat : Tensor, shape (B, K)
    unknowns : Tensor, shape (B, d_u)
    """
    centred_c = concepts_hat - concepts_hat.mean(dim=0, keepdim=True)
    centred_u = unknowns - unknowns.mean(dim=0, keepdim=True)
    denominator = max(concepts_hat.shape[0] - 1, 1)
    cross_covariance = centred_c.T @ centred_u / denominator
    return torch.sum(cross_covariance**2)


def cosine_penalty(concepts_hat: torch.Tensor, unknowns: torch.Tensor) -> torch.Tensor:
    """Mean absolute cosine similarity between each cell's concept and unknown vectors.

    The CBGM orthogonality loss (Ismail et al., 2023); needs ``K == d_u``.

    Parameters
    ----------
    concepts_hat : Tensor, shape (B, D)
    unknowns : Tensor, shape (B, D)
    """
    return torch.abs(F.cosine_similarity(concepts_hat, unknowns, dim=1, eps=1e-6)).mean()


def _no_penalty(concepts_hat: torch.Tensor, unknowns: torch.Tensor) -> torch.Tensor:
    return concepts_hat.new_zeros(())


ORTHOGONALITY_PENALTIES = {
    "cross_covariance": cross_covariance_penalty,
    "cosine": cosine_penalty,
    "none": _no_penalty,
}
"""Orthogonality penalties between concept representation and unknowns, by name."""
