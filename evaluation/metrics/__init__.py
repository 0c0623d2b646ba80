"""Pure metric functions of the evaluation layer, and their registry.

Every metric is a function of arrays (no files, no training state kept),
registered with the direction in which it improves, its level and the inputs
it needs (see :mod:`simcell.evaluation.metrics._registry`). One family per
module:

* :mod:`~simcell.evaluation.metrics.cell` — ``fn(pred, truth) -> (n_cells,)``:
  ``mse``, ``mae``, ``pearson``, ``r2``; and :func:`bootstrap_ci`.
* :mod:`~simcell.evaluation.metrics.distribution` — ``fn(pred, truth, *,
  paired=False, ...) -> float``: ``mmd``, ``energy``, ``fid``, ``sinkhorn``.
* :mod:`~simcell.evaluation.metrics.ratios` — ``fn(pred, truth, references, *,
  paired=False, ...) -> float``: ``rmmd``, ``rfid``, ``rsd`` (paper eq. 10).
* :mod:`~simcell.evaluation.metrics.classification` — ``knn_accuracy(pred,
  reference, reference_labels, target_label)``; latent probes
  ``concept_accuracy`` / ``concept_f1(embedding, concepts_true)``, clusterings
  ``nmi`` / ``ari(embedding, cell_types)``; :func:`concept_leakage` (not
  registered: it returns a table, not one number).
* :mod:`~simcell.evaluation.metrics.disentanglement` — ``concept_f1_weighted``
  (latent), ``concept_agreement`` (classification, needs ``truth``);
  :func:`block_concept_scores`, :func:`reconstruction_scores`,
  :func:`causal_consistency` (not registered: tables).
* :mod:`~simcell.evaluation.metrics.identifiability` — ``linear_r2`` /
  ``mcc(embedding, concepts_true)``; per block of a Representation
  ``block_r2`` / ``block_r2_kernel`` / ``latent_mcc(embedding, latent_true)``
  and :func:`identifiability_table` (recovery and leakage of every block).
* :mod:`~simcell.evaluation.metrics.causal` — ``fn(causal_pred, causal_true)``:
  ``causal_auroc``, ``causal_f1``, ``causal_pearson`` and their ``_undirected`` twins.

Inputs containing NaN or infinite values, or with mismatched shapes, raise
:class:`simcell.SimcellError` with a one-line message. Stochastic metrics take an
explicit ``seed`` (or ``rng``) and never touch global random state.
"""

from simcell.evaluation.metrics._registry import (
    LEVELS,
    METRIC_INPUTS,
    Metric,
    get_metric,
    list_metrics,
    register_metric,
)
from simcell.evaluation.metrics.causal import (
    causal_auroc,
    causal_auroc_undirected,
    causal_f1,
    causal_f1_undirected,
    causal_pearson,
    causal_pearson_undirected,
)
from simcell.evaluation.metrics.cell import bootstrap_ci, mae, mse, pearson, r2
from simcell.evaluation.metrics.classification import (
    ConceptLeakage,
    ari,
    concept_accuracy,
    concept_f1,
    concept_leakage,
    knn_accuracy,
    nmi,
)
from simcell.evaluation.metrics.disentanglement import (
    ReconstructionScores,
    block_concept_scores,
    causal_consistency,
    concept_agreement,
    concept_f1_weighted,
    reconstruction_scores,
)
from simcell.evaluation.metrics.distribution import (
    energy_distance,
    frechet_distance,
    frechet_from_moments,
    median_heuristic_bandwidths,
    mmd,
    sinkhorn_divergence,
)
from simcell.evaluation.metrics.identifiability import (
    block_r2,
    identifiability_table,
    latent_mcc,
    linear_r2,
    mcc,
)
from simcell.evaluation.metrics.ratios import rfid, rmmd, rsd

__all__ = [
    "LEVELS",
    "METRIC_INPUTS",
    "ConceptLeakage",
    "Metric",
    "ari",
    "block_r2",
    "bootstrap_ci",
    "causal_auroc",
    "causal_auroc_undirected",
    "causal_f1",
    "causal_f1_undirected",
    "causal_pearson",
    "causal_pearson_undirected",
    "concept_accuracy",
    "concept_f1",
    "concept_leakage",
    "energy_distance",
    "frechet_distance",
    "frechet_from_moments",
    "get_metric",
    "identifiability_table",
    "knn_accuracy",
    "latent_mcc",
    "linear_r2",
    "list_metrics",
    "mae",
    "mcc",
    "median_heuristic_bandwidths",
    "mmd",
    "mse",
    "nmi",
    "pearson",
    "r2",
    "register_metric",
    "rfid",
    "rmmd",
    "rsd",
    "sinkhorn_divergence",
    # disentanglement (CausCell)
    "ReconstructionScores",
    "block_concept_scores",
    "causal_consistency",
    "concept_agreement",
    "concept_f1_weighted",
    "reconstruction_scores",
]
