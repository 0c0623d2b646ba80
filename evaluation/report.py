"""Reports of an evaluation: results.csv, summary.md, plots and config.json."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd

import simcell
from simcell import SimcellError
from simcell._atomic import (
    STAGING_MARKER,
    atomic_output,
    check_output,
    listing_ownership,
)

SUMMARY_METRICS = (
    ("pca", "mse"),
    ("genes", "mse"),
    ("genes", "mse_affected"),
    ("pca", "gap_closed"),
    ("pca", "rmmd"),
    ("pca", "rfid"),
    ("pca", "rsd"),
    ("pca", "knn_accuracy"),
    ("pca", "leakage_concept_after"),
    ("pca", "inversion_error"),
    ("pca", "causal_shift_error_intervened"),
    ("pca", "causal_shift_error_descendant"),
    ("pca", "causal_shift_error_non_descendant"),
)
#: rows that are references, not models, in the order the tables show them
REFERENCE_ROWS = ("oracle", "oracle_sample", "noise_floor", "heldout", "identity")
#: derived scores that are not registered metrics, with their direction
_DERIVED_DIRECTIONS = {
    "gap_closed": "higher",
    "inversion_error": "lower",
    "causal_shift_error_intervened": "lower",
    "causal_shift_error_descendant": "lower",
    "causal_shift_error_non_descendant": "lower",
}


def metric_direction(metric: str) -> str | None:
    """``"lower"`` / ``"higher"`` is better, read from the metric registry (a suffix
    such as ``_affected`` keeps its metric's direction); None when it has none."""
    from simcell.evaluation.metrics import get_metric

    if metric in _DERIVED_DIRECTIONS:
        return _DERIVED_DIRECTIONS[metric]
    if metric.startswith("leakage_"):
        return None  # read against its before / truth rows, not as better or worse
    base = metric.removesuffix("_affected")
    try:
        return get_metric(base).direction
    except SimcellError:
        return None


PLOT_METRICS = (("pca", "mse"), ("genes", "mse"), ("pca", "mmd"), ("pca", "energy"))


def _ordered_models(results: pd.DataFrame) -> list[str]:
    models = list(dict.fromkeys(results["model"]))
    reference = [m for m in REFERENCE_ROWS if m in models]
    return reference + [m for m in models if m not in reference]


def summary_table(results: pd.DataFrame, space: str, metric: str) -> pd.DataFrame:
    """Model × task table of a metric: ``mean [ci]`` per task and mean ± sd over tasks."""
    part = results[(results["space"] == space) & (results["metric"] == metric)]
    if part.empty:
        return pd.DataFrame()
    tasks = list(dict.fromkeys(part["task"]))
    table = {}
    for model in _ordered_models(part):
        rows = part[part["model"] == model].set_index("task")
        cells = {}
        for task in tasks:
            if task not in rows.index:
                cells[task] = ""
                continue
            value, low, high = rows.loc[task, ["value", "ci_low", "ci_high"]]
            cells[task] = f"{value:.4g}" + ("" if np.isnan(low) else f" [{low:.3g}, {high:.3g}]")
        values = rows["value"].to_numpy(dtype=float)
        sd = values.std(ddof=1) if values.size > 1 else 0.0
        cells["mean ± sd"] = f"{np.nanmean(values):.4g} ± {sd:.2g}"
        table[model] = cells
    return pd.DataFrame.from_dict(table, orient="index")


def _markdown_table(table: pd.DataFrame) -> str:
    header = ["model", *map(str, table.columns)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for model, row in table.iterrows():
        lines.append("| " + " | ".join([str(model), *map(str, row.to_numpy())]) + " |")
    return "\n".join(lines)


def summary_markdown(results: pd.DataFrame, title: str) -> str:
    """The Markdown summary: one table per headline metric."""
    lines = [f"# {title}", ""]
    lines.append(
        "Each table says which way is better (from the metric registry); `gap_closed` is "
        "1 when a model is as good as the oracle and 0 when it is no better than identity. "
        "`identity` is the factual cell, unchanged. "
        "`oracle` is the exact posterior mean E[x' | x], the Bayes-optimal prediction of "
        "each cell's twin: no model can have a lower cell-level error. "
        "`oracle_sample` is one exact posterior draw per cell, the Bayes-optimal sampler: "
        "its population has the true counterfactual law, so it is scored on the "
        "distributional metrics. "
        "(On `perturb-identifiability` bundles the latent state behind both is drawn by "
        "importance sampling, exact only in the limit; its effective sample size is "
        "logged.) "
        "`noise_floor` is an independent sample of the true counterfactual law (fresh "
        "exogenous noise): what a perfect sampler scores with these finite populations, "
        "and `heldout` is the real (cell type, concept on) population against the truth. "
        "A ratio below 1 means the prediction is closer to the truth than the closest "
        "observed training population; compare it with the `noise_floor` row. "
        "Leakage rows give the classifiers' scores before (factual cells), after (the "
        "prediction) and on the true twins (`_truth`). "
        "`inversion_error` is the MSE of an `edit` flow's round trip with the "
        "condition unchanged: the floor under its edits. "
        "`causal_shift_error_*` (tasks whose do() propagates along the concept DAG): how "
        "far the concept shift a classifier reads from the prediction is from the shift "
        "it reads from the true twins, for the intervened concept, its descendants and "
        "the other concepts (0 for the twins)."
    )
    for space, metric in SUMMARY_METRICS:
        table = summary_table(results, space, metric)
        if table.empty:
            continue
        direction = metric_direction(metric)
        better = f" — {direction} is better" if direction else ""
        lines += ["", f"## {metric} ({space}){better}", "", _markdown_table(table)]
    latent = latent_table(results)
    if not latent.empty:
        lines += [
            "",
            "## Latent and causal scores (mean over tasks)",
            "",
            "Representation blocks against the bundle's true latents (`<metric>:<block>`), "
            "with the bars a non-identified answer reaches (`*_rotation95`, "
            "`*_random_split95`) and the wrong-block leakage (`wrong_block_r2`); "
            "`<metric>:<block>:z_exogenous` scores a responsive block against a "
            "perturbation SCM's exogenous term S u + η, what mean shifts identify; and "
            "causal-matrix recovery against the true drift matrix (`causal_*`; "
            "`de_baseline` is the differential-expression estimate).",
            "",
            _markdown_table(latent),
        ]
    return "\n".join(lines) + "\n"


def latent_table(results: pd.DataFrame) -> pd.DataFrame:
    """Metric × model table of the ``latent``-space rows, each the mean over tasks."""
    part = results[results["space"] == "latent"]
    if part.empty:
        return pd.DataFrame()
    means = part.groupby(["metric", "model"], sort=False)["value"].mean().unstack("model")
    means = means[_ordered_models(part)]
    return means.map(lambda v: "" if np.isnan(v) else f"{v:.3g}")


def plot_metric(results: pd.DataFrame, space: str, metric: str, path: Path) -> None:
    """Bars per model and task, with the oracle floor and identity line."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    part = results[(results["space"] == space) & (results["metric"] == metric)]
    tasks = list(dict.fromkeys(part["task"]))
    models = [m for m in _ordered_models(part) if m not in ("oracle", "identity")]
    fig, axes = plt.subplots(1, len(tasks), figsize=(3.2 * len(tasks), 3.4), squeeze=False)
    for ax, task in zip(axes[0], tasks, strict=True):
        rows = part[part["task"] == task].set_index("model")
        values = [rows.loc[m, "value"] if m in rows.index else np.nan for m in models]
        ax.bar(range(len(models)), values, color="tab:blue")
        for name, style in (("oracle", "tab:green"), ("identity", "tab:red")):
            if name in rows.index:
                ax.axhline(rows.loc[name, "value"], color=style, ls="--", label=name)
        shown = np.asarray([v for v in [*values, *rows["value"]] if np.isfinite(v)])
        if shown.size and (shown > 0).all() and shown.max() > 20 * shown.min():
            ax.set_yscale("log")  # the oracle floor stays visible next to large errors
        ax.set_xticks(range(len(models)), models, rotation=60, ha="right", fontsize=7)
        ax.set_title(task, fontsize=9)
    axes[0][0].set_ylabel(f"{metric} ({space})")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


REPORT_MARKER = ".simcell-report.json"
_REPORT_FORMAT = "simcell-report/1"
REPORT_OWNERSHIP = listing_ownership("report", REPORT_MARKER, _REPORT_FORMAT)


def check_report_dir(
    out_dir: str | os.PathLike,
    *,
    overwrite: bool = False,
    protect: Iterable[str | os.PathLike] = (),
) -> None:
    """Raise now the SimcellError :func:`write_report` would raise for ``out_dir``.

    Call it before a long evaluation, so that a refused folder costs nothing.
    """
    check_output(out_dir, REPORT_OWNERSHIP, overwrite=overwrite, protect=protect)


def write_report(
    results: pd.DataFrame,
    config: dict,
    out_dir: str | os.PathLike,
    title: str,
    *,
    overwrite: bool = False,
    protect: Iterable[str | os.PathLike] = (),
) -> Path:
    """Write results.csv, summary.md, plots/*.png and config.json atomically.

    The report carries a marker, ``.simcell-report.json``, that lists its files:
    a later report replaces an existing folder only if it holds nothing else.

    Parameters
    ----------
    results : DataFrame
        The tidy results table.
    config : dict
        Written to ``config.json``.
    out_dir : path
        The report folder.
    title : str
        The summary's title.
    overwrite : bool
        Write into a folder that holds files simcell did not write, replacing
        only simcell's own files and keeping every other one.
    protect : iterable of path
        Folders the report must not replace or contain (the evaluated bundle).

    Returns
    -------
    Path
        The report folder.

    Raises
    ------
    SimcellError
        ``out_dir`` is refused (see :func:`check_report_dir`).
    """
    out_dir = Path(out_dir)
    with atomic_output(out_dir, REPORT_OWNERSHIP, overwrite=overwrite, protect=protect) as staging:
        results.to_csv(staging / "results.csv", index=False)
        (staging / "summary.md").write_text(summary_markdown(results, title))
        (staging / "config.json").write_text(json.dumps(config, indent=2, default=str))
        (staging / "plots").mkdir()
        for space, metric in PLOT_METRICS:
            if ((results["space"] == space) & (results["metric"] == metric)).any():
                plot_metric(results, space, metric, staging / "plots" / f"{metric}_{space}.png")
        written = sorted(
            path.relative_to(staging).as_posix()
            for path in staging.rglob("*")
            if path.is_file() and path.name != STAGING_MARKER
        )
        marker = {"format": _REPORT_FORMAT, "simcell_version": simcell.__version__}
        (staging / REPORT_MARKER).write_text(json.dumps({**marker, "files": written}, indent=2))
    return out_dir
