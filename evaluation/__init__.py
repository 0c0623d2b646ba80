"""Metrics, the oracle floor and the harness that scores counterfactual predictions."""

from simcell.evaluation.harness import (
    RESULT_COLUMNS,
    ResultRow,
    add_gap_closed,
    debiased_mse,
    evaluate,
    results_frame,
)
from simcell.evaluation.metrics import (
    bootstrap_ci,
    energy_distance,
    frechet_distance,
    get_metric,
    list_metrics,
    mmd,
    rfid,
    rmmd,
    rsd,
    sinkhorn_divergence,
)
from simcell.evaluation.oracle import OracleInputs, oracle_counterfactual
from simcell.evaluation.predictions import read_predictions
from simcell.evaluation.preprocess import Preprocessor, lognormalise
from simcell.evaluation.report import summary_markdown, write_report
from simcell.evaluation.tasks import Corruption, TaskData, build_task

__all__ = [
    "RESULT_COLUMNS",
    "Corruption",
    "ResultRow",
    "TaskData",
    "build_task",
    "results_frame",
    "OracleInputs",
    "Preprocessor",
    "add_gap_closed",
    "bootstrap_ci",
    "debiased_mse",
    "energy_distance",
    "evaluate",
    "frechet_distance",
    "get_metric",
    "list_metrics",
    "lognormalise",
    "mmd",
    "oracle_counterfactual",
    "read_predictions",
    "rfid",
    "rmmd",
    "rsd",
    "sinkhorn_divergence",
    "summary_markdown",
    "write_report",
]
