"""summary.md shows the latent and causal rows (identifiability, causal recovery)."""

import numpy as np
import pandas as pd

from simcell.evaluation.report import latent_table, summary_markdown


def _results() -> pd.DataFrame:
    rows = [
        ("task_0", "identity", "pca", "mse", 0.5),
        ("task_0", "oracle", "pca", "mse", 0.1),
        ("task_0", "de_baseline", "latent", "causal_auroc", 0.5),
        ("task_0", "lcd", "latent", "causal_auroc", 0.8),
        ("task_1", "lcd", "latent", "causal_auroc", 0.9),
        ("task_1", "lcd", "latent", "block_r2:invariant", 0.75),
    ]
    table = pd.DataFrame(rows, columns=["task", "model", "space", "metric", "value"])
    table["ci_low"] = np.nan
    table["ci_high"] = np.nan
    return table


def test_latent_table_is_the_mean_over_tasks_per_metric_and_model() -> None:
    table = latent_table(_results())
    assert list(table.columns) == ["de_baseline", "lcd"]
    assert table.loc["causal_auroc", "lcd"] == "0.85"
    assert table.loc["causal_auroc", "de_baseline"] == "0.5"
    assert table.loc["block_r2:invariant", "de_baseline"] == ""


def test_summary_has_a_latent_section_only_when_there_are_latent_rows() -> None:
    results = _results()
    text = summary_markdown(results, "t")
    assert "## Latent and causal scores" in text
    assert "| causal_auroc | 0.5 | 0.85 |" in text
    without = summary_markdown(results[results["space"] != "latent"], "t")
    assert "Latent and causal" not in without
