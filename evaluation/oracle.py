"""The oracle floor: the Bayes-optimal counterfactual predictor E[f(x') | x].

The posterior itself is a public simulator API
(:mod:`simcell.simulator.posterior`): for a task, the oracle is the
:class:`~simcell.simulator.TwinPosterior` of its ``intervene`` cells under the
task's :class:`~simcell.models.Intervention`. It is told what any model is told —
the cells' counts, covariates and factual concepts, and the intervention — and
the simulator's world; never the true counterfactual concepts, so in ``causal``
mode it integrates the descendants' exogenous noise over its posterior and is
Bayes-optimal for the question the models are asked.

* ``oracle`` — :meth:`TwinPosterior.mean` (the posterior mean), for cell-level
  errors: under squared error in any space reached from counts by a map f (here
  log-normalisation, and PCA, which is affine so E[PCA(f(x'))] = PCA(E[f(x')])),
  no predictor does better.
* ``oracle_sample`` — :meth:`TwinPosterior.sample` (one exact posterior draw per
  cell), for distributional metrics: the Bayes-optimal sampler, whose population
  has the true counterfactual law.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from simcell.simulator import CellPosterior, TwinPosterior, cell_posterior, schema
from simcell.simulator.posterior_perturb import is_perturb, perturb_noise_sd, perturb_posterior
from simcell.simulator.posterior_realistic import is_realistic, realistic_posterior


def oracle_available(bundle) -> bool:
    """Whether the harness can build the oracle of a bundle's tasks.

    The concept-latent process always; ``perturb-identifiability`` without a
    residual (``noise_sd`` = 0, every shipped scenario); no other process.
    """
    if is_perturb(bundle):
        return perturb_noise_sd(bundle) == 0
    return schema.process_name(bundle.factual) == schema.CONCEPT_LATENT


def oracle_posterior(bundle, intervene: np.ndarray, intervention) -> TwinPosterior:
    """The oracle of a task: the exact posterior of its intervene cells' twins.

    Parameters
    ----------
    bundle : Bundle
    intervene : ndarray of int, shape (n_cells,)
        Factual positions of the task's ``intervene`` cells.
    intervention : simcell.models.Intervention
        The task's question, as the models are asked it.

    Returns
    -------
    TwinPosterior
        Or, for a bundle with overdispersion or capture (``realistic`` counts),
        the posterior of :mod:`simcell.simulator.posterior_realistic`, and for a
        ``perturb-identifiability`` bundle that of
        :mod:`simcell.simulator.posterior_perturb`; both have the same methods.
    """
    if is_perturb(bundle):
        return perturb_posterior(bundle, intervene, intervention)
    if is_realistic(bundle):
        return realistic_posterior(bundle, intervene, intervention)
    return TwinPosterior(cell_posterior(bundle, intervene), intervention)


@dataclass(frozen=True, eq=False)
class OracleInputs:
    """What the oracle knows about a set of cells, with the change of log-rate given.

    Kept for callers of :func:`oracle_counterfactual`; new code builds a
    :class:`~simcell.simulator.TwinPosterior` (see :func:`oracle_posterior`).

    Attributes
    ----------
    counts : ndarray of int, shape (n_cells, n_genes)
        Factual counts x.
    log_rate_mean : ndarray, shape (n_cells, n_genes)
        m_ij (every known term of the log-rate).
    shift : ndarray, shape (n_cells, n_genes)
        Δ_ij, the change of log-rate under the intervention.
    library_size_sd : ndarray, shape (n_cells,)
        Prior sd of each cell's library size.
    noise_sd : float
        σ_ε.
    """

    counts: np.ndarray
    log_rate_mean: np.ndarray
    shift: np.ndarray
    library_size_sd: np.ndarray
    noise_sd: float


def oracle_counterfactual(
    inputs: OracleInputs,
    transform: Callable[[np.ndarray], np.ndarray],
    *,
    n_samples: int = 32,
    rng: np.random.Generator,
    chunk: int = 256,
) -> np.ndarray:
    """Monte-Carlo posterior mean E[transform(x') | x] of each cell's counterfactual.

    A compatibility wrapper over :meth:`TwinPosterior.mean` for a known shift.

    Parameters
    ----------
    inputs : OracleInputs
    transform : callable
        Maps counts, shape (n, n_genes), to the scored space, row by row.
    n_samples : int
        Posterior draws per cell.
    rng : numpy.random.Generator
    chunk : int
        Cells processed together (memory bound).

    Returns
    -------
    ndarray, shape (n_cells, n_out)
    """
    counts = np.asarray(inputs.counts)
    n_cells, n_genes = counts.shape
    cells = CellPosterior(
        counts=counts,
        log_rate_mean=inputs.log_rate_mean,
        library_size_sd=np.asarray(inputs.library_size_sd, dtype=np.float64),
        noise_sd=float(inputs.noise_sd),
        concepts=np.zeros((n_cells, 0)),
        concept_effects=np.zeros((0, n_genes)),
        concept_liability_mean=np.zeros((n_cells, 0)),
        concept_names=(),
        concept_kinds=(),
        concept_dag=(),
    )
    posterior = TwinPosterior.from_shift(cells, inputs.shift)
    return posterior.mean(transform, n_samples, rng, chunk=chunk)
