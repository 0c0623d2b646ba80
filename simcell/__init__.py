"""simcell: single-cell RNA-seq simulation with exact counterfactuals.

The library lives in the subpackages ``simcell.simulator``, ``simcell.scenarios``,
``simcell.models``, ``simcell.evaluation`` and ``simcell.cli``.
"""

__version__ = "0.1.0"


class SimcellWarning(UserWarning):
    """Warnings raised by simcell itself."""


class SimcellError(ValueError):
    """Bad input to simcell: the message is one line naming what is wrong."""


__all__ = ["__version__", "SimcellError", "SimcellWarning"]
