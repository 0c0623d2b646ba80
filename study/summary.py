"""A study's report: the paper's table beside ours, paired tests of its claims, plots.

Scores are summarised as mean ± SEM over every (task, seed) a group holds.
A claim "a scores lower than b" is tested on pairs that share scenario, data
seed, task, model seed and corruption (averaging within a side when a side holds
several configurations): the paired differences ``a - (1 + margin) * b`` get a
Wilcoxon signed-rank test and a paired t-test (``scipy.stats``), and the effect
size d_z = mean difference / sd of the differences.
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

import simcell
from simcell._atomic import STAGING_MARKER, atomic_output, listing_ownership
from simcell.study.spec import Claim, Study

STUDY_MARKER = ".simcell-study.json"
_FORMAT = "simcell-study-report/1"
STUDY_OWNERSHIP = listing_ownership("study report", STUDY_MARKER, _FORMAT)
ALPHA = 0.05
REFERENCES = ("identity", "oracle")
#: the identity of a measurement a claim pairs on (minus what its filters name)
PAIR_KEYS = ("scenario", "overrides", "data_seed", "task", "seed", "corruption", "level")

# ----------------------------------------------------------------------------- the paper

#: Table S5: PCA-space MSE, mean ± sd over 5 interventions x 4 seeds (synthetic 1, 2, 3)
PAPER_S5 = {
    "sccbgm": ((0.0388, 0.0053), (0.0318, 0.0071), (0.0407, 0.0027)),
    "sccbgm_fm_edit": ((0.0025, 0.0016), (0.0028, 0.0014), (0.0039, 0.0023)),
    "sccbgm_fm_decode": ((0.0539, 0.0039), (0.0444, 0.0082), (0.0594, 0.0092)),
    "vanilla_fm_edit": ((0.0031, 0.0014), (0.0049, 0.0016), (0.0049, 0.0027)),
    "vanilla_fm_decode": ((0.0756, 0.0014), (0.0769, 0.0014), (0.0773, 0.0041)),
}
#: Table S5's external baselines (same table, same PCA-space MSE)
PAPER_S5_BASELINES = {
    "cinemaot": ((0.0390, 0.0025), (0.0393, 0.0012), (0.0400, 0.0034)),
    "biolord": ((0.0402, 0.0014), (0.0411, 0.0021), (0.0428, 0.0021)),
}
S5_SCENARIOS = ("synthetic1", "synthetic2", "synthetic3")
#: Table S6: MSE by number of concepts, mean ± sd over 3 seeds x 5 interventions, no noise
PAPER_S6 = {
    5: (0.19617, 0.00195),
    20: (0.19597, 0.00089),
    100: (0.19846, 0.00081),
    250: (0.19809, 0.00053),
}
#: Table S8: MSE, mean ± SEM, keyed by (concept_layer, decoder, orthogonality)
PAPER_S8 = {
    ("bottleneck", "skip", "cosine"): (0.1989, 0.00023),
    ("cem", "skip", "cross_covariance"): (0.19865, 0.00023),
    ("cem", "skip", "cosine"): (0.19816, 0.00022),
    ("cem", "direct", "cross_covariance"): (0.1981, 0.0002),
    ("cem", "direct", "cosine"): (0.19804, 0.00021),
    ("bottleneck", "direct", "cosine"): (0.19791, 0.00021),
    ("bottleneck", "direct", "cross_covariance"): (0.19736, 0.0002),
    ("bottleneck", "skip", "cross_covariance"): (0.19655, 0.00019),
}
S8_FIELDS = ("concept_layer", "decoder", "orthogonality")


# ----------------------------------------------------------------------------- statistics


def mean_sem(values: np.ndarray) -> tuple[float, float]:
    """Mean and standard error of the mean (NaN SEM for a single value)."""
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return math.nan, math.nan
    sem = values.std(ddof=1) / math.sqrt(values.size) if values.size > 1 else math.nan
    return float(values.mean()), float(sem)


def paired_test(a: np.ndarray, b: np.ndarray, margin: float = 0.0) -> dict:
    """Paired comparison of ``a`` against ``(1 + margin) * b``.

    Parameters
    ----------
    a, b : ndarray, shape (n_pairs,)

    Returns
    -------
    dict
        ``n``, ``mean_a``, ``mean_b``, ``relative`` (mean_a / mean_b − 1),
        ``mean_diff`` and ``d_z`` (mean / sd of ``a − (1 + margin) b``),
        ``wilcoxon_p``, ``ttest_p`` (two-sided; NaN with fewer than 2 pairs or
        no non-zero difference).
    """
    from scipy import stats

    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    diff = a - (1.0 + margin) * b
    n = int(diff.size)
    out = {
        "n": n,
        "mean_a": float(a.mean()) if n else math.nan,
        "mean_b": float(b.mean()) if n else math.nan,
        "mean_diff": float(diff.mean()) if n else math.nan,
        "d_z": math.nan,
        "wilcoxon_p": math.nan,
        "ttest_p": math.nan,
    }
    out["relative"] = out["mean_a"] / out["mean_b"] - 1 if n and out["mean_b"] else math.nan
    if n >= 2 and np.any(diff != 0):
        sd = diff.std(ddof=1)
        out["d_z"] = float(diff.mean() / sd) if sd > 0 else math.nan
        with warnings.catch_warnings():
            # nearly constant differences: scipy warns of precision loss; p stays
            warnings.simplefilter("ignore", RuntimeWarning)
            out["wilcoxon_p"] = float(stats.wilcoxon(diff).pvalue)
            out["ttest_p"] = float(stats.ttest_rel(a, (1.0 + margin) * b).pvalue)
    return out


def verdict(test: dict) -> str:
    """``supported`` / ``contradicted`` (p < 0.05 either way), ``not significant``, or
    ``no pairs`` (the table holds no pair for the claim)."""
    if test["n"] == 0:
        return "no pairs"
    p = test["wilcoxon_p"] if math.isfinite(test["wilcoxon_p"]) else test["ttest_p"]
    if not math.isfinite(p) or p >= ALPHA:
        return "not significant"
    return "supported" if test["mean_diff"] < 0 else "contradicted"


# ----------------------------------------------------------------------------- selection


def scores(table: pd.DataFrame, metric: str, space: str) -> pd.DataFrame:
    """The finished rows of one metric, with the overrides and options as columns."""
    rows = table[
        (table["status"] == "ok") & (table["metric"] == metric) & (table["space"] == space)
    ].copy()
    for column in ("overrides", "options"):
        expanded = pd.DataFrame([json.loads(text) for text in rows[column]], index=rows.index)
        for key in expanded.columns:
            if key not in rows.columns:
                rows[key] = expanded[key]
    return rows


def _select(frame: pd.DataFrame, filters) -> pd.DataFrame:
    keep = pd.Series(True, index=frame.index)
    for key, value in filters:
        if key not in frame.columns:
            return frame.iloc[:0]
        keep &= frame[key] == value
    return frame[keep]


def with_degradation(frame: pd.DataFrame) -> pd.DataFrame:
    """Each row's increase over the same configuration without corruption (``degradation``)."""
    same = ["scenario", "overrides", "data_seed", "task", "seed", "model", "preset"]
    clean = frame[frame["corruption"] == "none"].groupby(same)["value"].mean().rename("clean")
    merged = frame.join(clean, on=same)
    return merged.assign(degradation=merged["value"] - merged["clean"])


def check_claim(frame: pd.DataFrame, claim: Claim) -> dict:
    """A claim's paired test (see :func:`paired_test`) on a study's scores."""
    data = frame[~frame["model"].isin(REFERENCES)]
    column = "value"
    if claim.measure == "degradation":
        # against the clean rows, before ``where`` (a corruption kind) drops them
        data = with_degradation(data)
        data = data[data["corruption"] != "none"]
        column = "degradation"
    data = _select(data, claim.where)
    named = {key for key, _ in claim.a + claim.b}
    keys = [k for k in PAIR_KEYS if k not in named]
    if named - set(PAIR_KEYS) - {"model", "base_model", "preset"} and "overrides" in keys:
        keys.remove("overrides")  # a filter on an override (n_concepts) pairs across them
    if named & {"corruption", "level"}:
        keys = [k for k in keys if k not in ("corruption", "level")]
    sides = []
    for side in (claim.a, claim.b):
        chosen = _select(data, side).dropna(subset=[column])
        sides.append(chosen.groupby(keys)[column].mean())
    joined = pd.concat(sides, axis=1, keys=["a", "b"], join="inner")
    return paired_test(joined["a"].to_numpy(), joined["b"].to_numpy(), claim.margin)


def _fmt(mean: float, spread: float, digits: int = 4) -> str:
    if not math.isfinite(mean):
        return ""
    if not math.isfinite(spread):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {spread:.{digits}f}"


def _g(value: float) -> str:
    return "" if not math.isfinite(value) else f"{value:.3g}"


def _p(value: float) -> str:
    return "" if not math.isfinite(value) else f"{value:.2g}"


# ----------------------------------------------------------------------------- layouts


def _generic(frame: pd.DataFrame) -> list[str]:
    groups = frame.groupby(["model", "corruption", "level"])["value"]
    lines = ["| model | corruption | ours (mean ± SEM) | n |", "|---|---|---|---|"]
    for (model, kind, level), values in groups:
        mean, sem = mean_sem(values)
        condition = "none" if kind == "none" else f"{kind}:{level}"
        lines.append(f"| {model} | {condition} | {_fmt(mean, sem)} | {values.size} |")
    return lines


def _fig3(frame: pd.DataFrame) -> list[str]:
    models = frame[~frame["model"].isin(REFERENCES)]
    conditions = sorted(
        {(k, int(lv)) for k, lv in zip(models["corruption"], models["level"], strict=True)},
        key=lambda c: (c[0] != "none", c),
    )
    names = [("none" if k == "none" else f"{k}:{lv}") for k, lv in conditions]
    lines = [
        "The paper's Fig. 3 gives no numbers in its text; its claim is that scCBGM "
        "degrades less than CBGM under each kind of noisy concept (see the claims below).",
        "",
        "Error (mean ± SEM over scenarios × tasks × seeds), then its increase over no corruption:",
        "",
        "| model | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
    ]
    degraded = with_degradation(models)
    for column in ("value", "degradation"):
        for model, group in degraded.groupby("model"):
            cells = []
            for kind, level in conditions:
                values = group[(group["corruption"] == kind) & (group["level"] == level)][column]
                cells.append(_fmt(*mean_sem(values)))
            label = model if column == "value" else f"{model} (Δ)"
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


def _table_s6(frame: pd.DataFrame) -> list[str]:
    models = frame[~frame["model"].isin(REFERENCES)]
    if "n_concepts" not in models.columns:
        return ["(no n_concepts in the grid)"]
    lines = [
        "| model | concepts | ours (mean ± SEM) | vs fewest | paper (mean ± sd) | paper vs 5 |",
        "|---|---|---|---|---|---|",
    ]
    for model, group in models.groupby("model"):
        counts = sorted(group["n_concepts"].dropna().astype(int).unique())
        base = mean_sem(group[group["n_concepts"] == counts[0]]["value"])[0]
        for count in counts:
            mean, sem = mean_sem(group[group["n_concepts"] == count]["value"])
            paper = PAPER_S6.get(count)
            paper_text = _fmt(*paper, digits=5) if paper else ""
            paper_rel = f"{paper[0] / PAPER_S6[5][0] - 1:+.2%}" if paper else ""
            lines.append(
                f"| {model} | {count} | {_fmt(mean, sem)} | {mean / base - 1:+.2%} | "
                f"{paper_text} | {paper_rel} |"
            )
    return lines


def _s8_key(options: str) -> tuple[str, ...]:
    from simcell.models import get_preset

    defaults = get_preset("sccbgm", "fast").to_dict()
    values = {**defaults, **json.loads(options)}
    return tuple(values[name] for name in S8_FIELDS)


def _table_s8(frame: pd.DataFrame) -> list[str]:
    from scipy import stats

    models = frame[~frame["model"].isin(REFERENCES)]
    rows = []
    for (model, options), group in models.groupby(["model", "options"]):
        key = _s8_key(options) if group["base_model"].iloc[0] == "sccbgm" else None
        rows.append((model, key, *mean_sem(group["value"])))
    rows.sort(key=lambda row: row[2])
    lines = [
        "| bottleneck | skip | loss | ours (mean ± SEM) | our rank | paper (mean ± SEM) "
        "| paper rank |",
        "|---|---|---|---|---|---|---|",
    ]
    paper_rank = {key: i + 1 for i, key in enumerate(sorted(PAPER_S8, key=PAPER_S8.get))}
    ours, theirs = [], []
    for rank, (model, key, mean, sem) in enumerate(rows, start=1):
        if key is None:
            lines.append(f"| {model} | | | {_fmt(mean, sem, 5)} | {rank} | | |")
            continue
        layer, decoder, loss = key
        paper = PAPER_S8.get(key)
        if paper is not None:
            ours.append(rank)
            theirs.append(paper_rank[key])
        lines.append(
            f"| {'CBM' if layer == 'bottleneck' else 'CEM'} | {'✓' if decoder == 'skip' else '✗'} "
            f"| {loss} | {_fmt(mean, sem, 5)} | {rank} | "
            f"{_fmt(*paper, digits=5) if paper else ''} | {paper_rank.get(key, '')} |"
        )
    if len(ours) >= 3:
        rho = stats.spearmanr(ours, theirs)
        lines += [
            "",
            f"Rank agreement with the paper: Spearman ρ = {rho.statistic:.2f} "
            f"(p = {_p(rho.pvalue)}, {len(ours)} variants).",
        ]
    return lines


def s5_ordering_holds(means: pd.Series) -> bool:
    """The paper's ordering: FM edit < Vanilla edit < scCBGM < both decode variants."""
    decode = min(means["sccbgm_fm_decode"], means["vanilla_fm_decode"])
    return bool(means["sccbgm_fm_edit"] < means["vanilla_fm_edit"] < means["sccbgm"] < decode)


def _table_s5(frame: pd.DataFrame) -> list[str]:
    names = [s for s in S5_SCENARIOS if s in set(frame["scenario"])]
    lines = [
        "| model | " + " | ".join(f"{s} (ours) | {s} (paper)" for s in names) + " |",
        "|---|" + "---|---|" * len(names),
    ]
    paper_rows = {**PAPER_S5, **PAPER_S5_BASELINES}
    present = set(frame["model"])
    # the paper's rows are listed only for models this study ran (a baselines
    # study would otherwise show empty flow-matching rows)
    models = [*REFERENCES, *(m for m in paper_rows if m in present)]
    extra = sorted(present - set(models))
    for model in models + extra:
        cells = []
        for scenario in names:
            values = frame[(frame["scenario"] == scenario) & (frame["model"] == model)]["value"]
            paper = paper_rows.get(model, [None] * 3)[S5_SCENARIOS.index(scenario)]
            cells += [_fmt(*mean_sem(values)), _fmt(*paper) if paper else ""]
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    lines += ["", "Ordering scCBGM-FM (edit) < Vanilla-FM (edit) < scCBGM < decode variants:", ""]
    for scenario in names:
        means = frame[frame["scenario"] == scenario].groupby("model")["value"].mean()
        if not set(PAPER_S5) <= set(means.index):
            continue
        verdict_text = "holds" if s5_ordering_holds(means) else "does not hold"
        ranked = ", ".join(means.reindex(list(PAPER_S5)).sort_values().index)
        lines.append(f"* {scenario}: {verdict_text} (ranked: {ranked})")
    return lines


_LAYOUTS = {
    "fig3": _fig3,
    "table_s5": _table_s5,
    "table_s6": _table_s6,
    "table_s8": _table_s8,
    "generic": _generic,
}


def summary_markdown(study: Study, table: pd.DataFrame) -> str:
    """The study's ``summary.md``: its paper layout, the claims' tests, failed cells."""
    frame = scores(table, study.metric, study.space)
    cells = table.drop_duplicates("cell")
    n_ok = int((cells["status"] == "ok").sum())
    n_failed = int((cells["status"] == "failed").sum())
    lines = [
        f"# Study `{study.name}` ({study.variant})",
        "",
        study.description,
        "",
        f"Cells: {n_ok} ok, {n_failed} failed, {len(study.cells) - n_ok - n_failed} not run "
        f"(of {len(study.cells)}). Score: `{study.metric}` in `{study.space}` space, "
        "mean ± SEM over tasks × seeds.",
        "",
        f"## {study.layout.replace('_', ' ').replace('table', 'Table').replace('fig', 'Fig. ')}",
        "",
    ]
    lines += _LAYOUTS[study.layout](frame) if len(frame) else ["(no finished cells)"]
    if study.claims:
        lines += [
            "",
            "## Claims (paired across scenario, task, seed, corruption)",
            "",
            "| claim | pairs | mean a | mean b | a/b − 1 | d_z | Wilcoxon p | t-test p | verdict |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for claim in study.claims:
            test = check_claim(frame, claim) if len(frame) else paired_test([], [])
            # a ratio of two mean degradations near 0 says nothing: values only
            shown = claim.measure == "value" and math.isfinite(test["relative"])
            relative = f"{test['relative']:+.2%}" if shown else ""
            d_z = f"{test['d_z']:.2f}" if math.isfinite(test["d_z"]) else ""
            margin = f" (margin {claim.margin:.0%})" if claim.margin else ""
            lines.append(
                f"| {claim.text}{margin} | {test['n']} | {_g(test['mean_a'])} | "
                f"{_g(test['mean_b'])} | {relative} | {d_z} | "
                f"{_p(test['wilcoxon_p'])} | {_p(test['ttest_p'])} | {verdict(test)} |"
            )
        lines += [
            "",
            f"A claim is *supported* when its paired difference is negative with p < {ALPHA} "
            "(Wilcoxon signed-rank), *contradicted* when positive with p < "
            f"{ALPHA}; otherwise the data cannot tell. d_z: mean difference / its sd.",
        ]
    failed = cells[cells["status"] == "failed"]
    if len(failed):
        lines += ["", "## Failed cells", ""]
        lines += [f"* `{row.cell}` {row.model}: {row.error}" for row in failed.itertuples()]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- plots


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def plot_fig3(frame: pd.DataFrame, path: Path) -> None:
    """Error by noise kind × level, one line per model (the paper's Fig. 3 layout);
    below it, the increase over no corruption, paired within (task, seed)."""
    models = with_degradation(frame[~frame["model"].isin(REFERENCES)])
    kinds = sorted(set(models["corruption"]) - {"none"}) or ["none"]
    figure = _figure(3.2 * len(kinds), 5.6)
    axes = figure.subplots(2, len(kinds), sharey="row", squeeze=False)
    for column, kind in enumerate(kinds):
        for row, (measure, label) in enumerate(
            (("value", "error"), ("degradation", "error − error without noise"))
        ):
            ax = axes[row, column]
            for model, group in models.groupby("model"):
                part = group[group["corruption"].isin(["none", kind])]
                levels = sorted(part["level"].unique())
                stats = [mean_sem(part[part["level"] == level][measure]) for level in levels]
                ax.errorbar(
                    levels, [s[0] for s in stats], [s[1] for s in stats], marker="o", label=model
                )
            if row == 0:
                ax.set_title(kind)
            else:
                ax.axhline(0, color="grey", linewidth=0.5)
                ax.set_xlabel("level (columns)")
            if column == 0:
                ax.set_ylabel(label)
    axes[0, 0].legend(fontsize="small")
    figure.savefig(path, dpi=100)


def plot_s6(frame: pd.DataFrame, path: Path) -> None:
    """Error over the number of concepts (Table S6 as a line)."""
    figure = _figure(4.5, 3.2)
    ax = figure.subplots()
    models = frame[~frame["model"].isin(REFERENCES)]
    for model, group in models.groupby("model"):
        counts = sorted(group["n_concepts"].unique())
        stats = [mean_sem(group[group["n_concepts"] == c]["value"]) for c in counts]
        ax.errorbar(counts, [s[0] for s in stats], [s[1] for s in stats], marker="o", label=model)
    ax.set_xscale("log")
    ax.set_xlabel("concepts")
    ax.set_ylabel("error")
    ax.legend(fontsize="small")
    figure.savefig(path, dpi=100)


def plot_ranked(frame: pd.DataFrame, path: Path) -> None:
    """Models ranked by error, mean ± SEM (Table S8's layout; any study)."""
    models = frame[~frame["model"].isin(REFERENCES)]
    stats = sorted(
        ((model, *mean_sem(group["value"])) for model, group in models.groupby("model")),
        key=lambda s: s[1],
    )
    figure = _figure(7, 0.4 * len(stats) + 1.2)
    ax = figure.subplots()
    positions = np.arange(len(stats))
    ax.errorbar([s[1] for s in stats], positions, xerr=[s[2] for s in stats], fmt="o")
    ax.set_yticks(positions, [s[0] for s in stats], fontsize="small")
    ax.invert_yaxis()
    ax.set_xlabel("error (mean ± SEM)")
    figure.savefig(path, dpi=100)


def _plots(study: Study, frame: pd.DataFrame, folder: Path) -> None:
    if not len(frame):
        return
    folder.mkdir()
    if study.layout == "table_s6" and "n_concepts" in frame.columns:
        plot_s6(frame, folder / "table_s6.png")
    elif study.layout in ("fig3", "generic"):
        plot_fig3(frame, folder / f"{study.layout}.png")
    else:
        plot_ranked(frame, folder / f"{study.layout}.png")


# ----------------------------------------------------------------------------- the report


def write_report(study: Study, table: pd.DataFrame, folder: Path) -> Path:
    """Publish ``results.csv`` (+ ``.parquet``), ``summary.md``, ``plots/``, ``study.json``
    atomically into ``folder`` (replacing only the files a previous report wrote)."""
    with atomic_output(folder, STUDY_OWNERSHIP, overwrite=True) as staging:
        table.to_csv(staging / "results.csv", index=False)
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            pass
        else:
            table.to_parquet(staging / "results.parquet", index=False)
        (staging / "summary.md").write_text(summary_markdown(study, table))
        frame = scores(table, study.metric, study.space)
        _plots(study, frame, staging / "plots")
        about = {"name": study.name, "variant": study.variant, "source": study.source}
        (staging / "study.json").write_text(json.dumps(about, indent=2, default=str))
        written = sorted(
            path.relative_to(staging).as_posix()
            for path in staging.rglob("*")
            if path.is_file() and path.name != STAGING_MARKER
        )
        marker = {"format": _FORMAT, "simcell_version": simcell.__version__, "files": written}
        (staging / STUDY_MARKER).write_text(json.dumps(marker, indent=2))
    return folder
