"""Robustness studies: resumable grids of (scenario, corruption, model, seed) cells.

:func:`load_study` reads a study file (or a shipped study, :func:`list_studies`)
into a :class:`Study` whose cells are keyed by a hash of their resolved
configuration; :func:`run_study` runs the cells not yet done (sequentially, on
local processes or on Dask) and writes the results table, ``summary.md`` with
the paper's numbers and paired tests of the study's claims, and plots.
"""

from simcell.study.runner import (
    ENGINES,
    StudyPlan,
    StudyRun,
    plan_study,
    read_log,
    results_table,
    run_cell,
    run_study,
)
from simcell.study.spec import (
    Cell,
    Claim,
    ModelSpec,
    Study,
    describe_study,
    list_studies,
    load_study,
)
from simcell.study.summary import check_claim, paired_test, summary_markdown

__all__ = [
    "ENGINES",
    "Cell",
    "Claim",
    "ModelSpec",
    "Study",
    "StudyPlan",
    "StudyRun",
    "check_claim",
    "describe_study",
    "list_studies",
    "load_study",
    "paired_test",
    "plan_study",
    "read_log",
    "results_table",
    "run_cell",
    "run_study",
    "summary_markdown",
]
