"""Exact inverse-CDF counts evaluated with torch, on a GPU when one is given.

:func:`evaluate_counts_torch` returns the same int32 array as
:func:`simcell.simulator.counts.evaluate_counts`, element for element:

* the log-rate is summed in exactly the order of ``counts._log_rate``,

      w_j + γ_{b_i j} + τ_{t_i j} + ω_{u_i j} + Σ_k v_ik c_kj + l_i + σ_ε ε_ij,

  one eager float64 elementwise op per term (no fused multiply-add, no
  ``torch.compile``), so every log-rate is bit for bit the numba one;
* the inverse CDF Q(δ; λ) = min{k ≥ 0 : F(k; λ) ≥ δ} walks the pmf recursion
  p(k) = p(k-1) λ / k from p(0) = e^{-λ} exactly as ``poisson._ppf_scalar``
  does, over all still-active elements at once, with the same iteration limit
  and the same certification rule; rates above ``_SEQUENTIAL_MAX_RATE`` are left
  uncertain;
* uncertain elements are moved to the CPU and settled as ``evaluate_counts``
  settles them: their rates are recomputed by the same compiled ``_rates_at``
  and answered by ``counts.settle_counts`` (``_ppf_flat``, checked to fit int32).

The one possible difference is ``exp``: torch's exp (Sleef on CPU, libdevice on
CUDA) may differ from the libm exp numba calls by an ulp, so λ and e^{-λ} may
differ by about 1e-16 relative. A certified answer is at least ``_CERTIFY_TOL``
(1e-11) away from both CDF steps that bracket it, far beyond what an ulp can
move, so certified answers agree; only an element within about 1e-16 of a CDF
step could be answered differently, and such elements are uncertain (hence
settled from the numba rate, as ``evaluate_counts`` does) unless the running
sum's own error is close to the tolerance. The probability of a difference is
about 1e-16 per element.
"""

from __future__ import annotations

import numpy as np
import torch

from simcell.simulator.counts import RowBatch, _rates_at, settle_counts
from simcell.simulator.poisson import (
    _CERTIFY_TOL,
    _SEQUENTIAL_MAX_RATE,
    _UNCERTAIN,
)

#: elements (rows x genes) evaluated together on the device, bounding its memory
_SLICE_ELEMENTS = 1 << 22


def _log_rate_torch(
    world: tuple[torch.Tensor, ...],
    noise_sd: float,
    batch: torch.Tensor,
    tissue: torch.Tensor,
    cell_type: torch.Tensor,
    library_size: torch.Tensor,
    concepts: torch.Tensor,
    residual: torch.Tensor,
) -> torch.Tensor:
    """Log-rates of a slice of rows, summed in the order of ``counts._log_rate``.

    Parameters
    ----------
    world : tuple of Tensor
        ``(baseline, batch_effects, tissue_effects, cell_type_effects,
        concept_effects)``, float64, shapes (n_genes,), (n_batches, n_genes),
        (n_tissues, n_genes), (n_cell_types, n_genes), (n_concepts, n_genes).
    noise_sd : float
        σ_ε.
    batch, tissue, cell_type : Tensor of int64, shape (n_rows,)
    library_size : Tensor of float64, shape (n_rows,)
    concepts : Tensor of float64, shape (n_rows, n_concepts)
    residual : Tensor of float32, shape (n_rows, n_genes)
        ε_ij / σ_ε.

    Returns
    -------
    Tensor of float64, shape (n_rows, n_genes)
    """
    baseline, batch_effects, tissue_effects, cell_type_effects, concept_effects = world
    acc = baseline.unsqueeze(0) + batch_effects[batch]
    acc = acc + tissue_effects[tissue]
    acc = acc + cell_type_effects[cell_type]
    for k in range(concepts.shape[1]):
        acc = acc + concepts[:, k : k + 1] * concept_effects[k].unsqueeze(0)
    acc = acc + library_size.unsqueeze(1)
    acc = acc + noise_sd * residual.to(torch.float64)
    return acc


def _sequential_ppf_torch(q: torch.Tensor, rate: torch.Tensor) -> torch.Tensor:
    """Sequential inverse CDF of flat float64 tensors, as ``poisson._ppf_scalar``.

    Parameters
    ----------
    q : Tensor of float64, shape (n,)
        Probabilities δ.
    rate : Tensor of float64, shape (n,)
        Rates λ.

    Returns
    -------
    Tensor of int32, shape (n,)
        The quantiles, ``_UNCERTAIN`` where the sum cannot certify them or
        λ > ``_SEQUENTIAL_MAX_RATE``.
    """
    out = torch.full(q.shape, _UNCERTAIN, dtype=torch.int32, device=q.device)
    sequential = ~(rate > _SEQUENTIAL_MAX_RATE)
    at_zero = q <= 0.0
    out[sequential & at_zero] = 0
    index = torch.nonzero(sequential & ~at_zero).squeeze(1)
    if index.numel() == 0:
        return out
    target = q[index]
    lam = rate[index]
    pmf = torch.exp(-lam)
    cdf = pmf.clone()
    below = torch.zeros_like(cdf)
    k = torch.zeros_like(cdf)  # float64: exact for the counts reached here
    limit = lam + 12.0 * torch.sqrt(lam) + 40.0
    failed = torch.zeros(index.shape, dtype=torch.bool, device=q.device)

    # the walk over still-active elements, kept compacted; the final state of
    # each element is written back to (k, cdf, below, failed) when it stops
    active = torch.nonzero(cdf < target).squeeze(1)
    k_a, pmf_a, cdf_a = k[active], pmf[active], cdf[active]
    lam_a, limit_a, target_a = lam[active], limit[active], target[active]
    while active.numel():
        k_a = k_a + 1.0
        pmf_a = pmf_a * (lam_a / k_a)
        below_a = cdf_a
        cdf_a = cdf_a + pmf_a
        stop = (k_a > limit_a) | (pmf_a == 0.0)
        keep = ~stop & (cdf_a < target_a)
        leave = ~keep
        leaving = active[leave]
        k[leaving] = k_a[leave]
        cdf[leaving] = cdf_a[leave]
        below[leaving] = below_a[leave]
        failed[leaving] = stop[leave]
        active = active[keep]
        k_a, pmf_a, cdf_a = k_a[keep], pmf_a[keep], cdf_a[keep]
        lam_a, limit_a, target_a = lam_a[keep], limit_a[keep], target_a[keep]

    uncertain = (
        failed | (cdf - target < _CERTIFY_TOL) | ((k > 0.0) & (target - below <= _CERTIFY_TOL))
    )
    out[index] = torch.where(uncertain, torch.full_like(k, _UNCERTAIN), k).to(torch.int32)
    return out


def evaluate_counts_torch(
    arrays: tuple,
    rows: RowBatch,
    residual: np.ndarray,
    uniform: np.ndarray,
    device: torch.device,
) -> np.ndarray:
    """Counts of ``rows`` given their chunk's noise, evaluated with torch on ``device``.

    x_ij = Q(δ_ij; exp(w_j + γ_{b_i j} + τ_{t_i j} + ω_{u_i j} + Σ_k v_ik c_kj + l_i + ε_ij)),
    equal element for element to :func:`simcell.simulator.counts.evaluate_counts`
    (see the module docstring for the one, ~1e-16 per element, caveat).

    Parameters
    ----------
    arrays : tuple
        The world arrays, as returned by :func:`simcell.simulator.counts.world_arrays`.
    rows : RowBatch
        The rows to evaluate, ``rows.local`` indexing the chunk's noise.
    residual : ndarray of float32, shape (n_chunk_rows, n_genes)
        Standard-normal residual noise of the chunk.
    uniform : ndarray of float64, shape (n_chunk_rows, n_genes)
        Uniforms δ of the chunk.
    device : torch.device
        Where the log-rates and the sequential inverse CDF are computed; rows
        are processed in slices of about 2^22 elements to bound its memory.

    Returns
    -------
    ndarray of int32, shape (n_rows, n_genes)
        The counts.
    """
    n_genes = residual.shape[1]
    out = np.empty((rows.local.size, n_genes), dtype=np.int32)
    args = (
        rows.local.astype(np.int64),
        rows.batch.astype(np.int64),
        rows.tissue.astype(np.int64),
        rows.cell_type.astype(np.int64),
        np.ascontiguousarray(rows.library_size, dtype=np.float64),
        np.ascontiguousarray(rows.concepts, dtype=np.float64),
    )
    local, batch, tissue, cell_type, library_size, concepts = args
    world = tuple(
        torch.from_numpy(np.ascontiguousarray(a, dtype=np.float64)).to(device) for a in arrays[:5]
    )
    noise_sd = float(arrays[5])
    step = max(1, _SLICE_ELEMENTS // max(1, n_genes))

    def on_device(values: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(values)).to(device)

    for lo in range(0, local.size, step):
        hi = min(lo + step, local.size)
        log_rate = _log_rate_torch(
            world,
            noise_sd,
            on_device(batch[lo:hi]),
            on_device(tissue[lo:hi]),
            on_device(cell_type[lo:hi]),
            on_device(library_size[lo:hi]),
            on_device(concepts[lo:hi]),
            on_device(residual[local[lo:hi]]),
        )
        rate = torch.exp(log_rate).reshape(-1)
        q = on_device(np.asarray(uniform[local[lo:hi]], dtype=np.float64)).reshape(-1)
        counts = _sequential_ppf_torch(q, rate)
        out[lo:hi] = counts.reshape(hi - lo, n_genes).cpu().numpy()

    uncertain_rows, uncertain_genes = np.nonzero(out == _UNCERTAIN)
    if uncertain_rows.size:
        rates = _rates_at(
            arrays,
            uncertain_rows.astype(np.int64),
            uncertain_genes.astype(np.int64),
            *args,
            residual,
        )
        q = uniform[local[uncertain_rows], uncertain_genes]
        out[uncertain_rows, uncertain_genes] = settle_counts(np.ascontiguousarray(q), rates)
    return out
