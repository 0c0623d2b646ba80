"""The oracle of realistic bundles (negative-binomial counts, capture, interactions).

A realistic bundle adds exogenous draws the Poisson posterior of
:mod:`simcell.simulator.posterior` does not know: the negative-binomial uniform
δ_ij (the gamma multiplier), the thinning uniform ν_ij and the capture
efficiency p_i, and cell-type-specific concept effects. Its exact posterior is
not implemented yet, so asking for it is refused with a clear error rather than
answered by the Poisson posterior, which would be silently wrong.

The harness dispatches here with (evaluation/oracle.py, ``oracle_posterior``)::

    if is_realistic(bundle): return realistic_posterior(bundle, intervene, intervention)
"""

from __future__ import annotations

import numpy as np

from simcell import SimcellError

#: ``var`` / ``obs`` / ``uns`` markers a realistic bundle carries
_MARKERS = ("dispersion", "capture_efficiency")
_INTERACTION_KEYS = ("interaction_rank",)


def is_realistic(bundle) -> bool:
    """Whether a bundle was simulated with a layer the Poisson posterior does not model.

    Parameters
    ----------
    bundle : Bundle or Dataset
        Anything with the bundle's ``factual`` AnnData.

    Returns
    -------
    bool
    """
    factual = bundle.factual
    if "dispersion" in factual.var.columns or "capture_efficiency" in factual.obs.columns:
        return True
    params = factual.uns.get("simcell", {}).get("params", {})
    return int(np.asarray(params.get("interaction_rank", 0))) > 0


def realistic_posterior(bundle, intervene: np.ndarray, intervention):
    """The exact twin posterior of a realistic bundle's cells (not implemented yet).

    Parameters
    ----------
    bundle : Bundle or Dataset
    intervene : ndarray of int, shape (n_cells,)
    intervention : simcell.models.Intervention

    Raises
    ------
    SimcellError
        Always: the oracle of realistic bundles is not available yet.
    """
    raise SimcellError(
        "the oracle of realistic bundles (negative-binomial counts, capture, interactions) "
        "is not implemented yet; evaluate them without oracle rows"
    )
