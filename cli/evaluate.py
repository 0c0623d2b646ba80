"""``simcell evaluate``."""

from __future__ import annotations

import time
from pathlib import Path

import click

from simcell import SimcellError
from simcell.cli._errors import user_errors
from simcell.cli.generate import DATA_ROOT


def latest_bundle(root: Path = DATA_ROOT) -> Path:
    """The bundle most recently written under ``root``."""
    manifests = sorted(root.glob("*/manifest.json"), key=lambda p: p.stat().st_mtime)
    if not manifests:
        raise SimcellError(f"no bundle under {root}/; run 'simcell generate' or pass BUNDLE")
    return manifests[-1].parent


@click.command()
@click.argument(
    "bundle", required=False, type=click.Path(exists=True, file_okay=False, path_type=Path)
)
@click.option(
    "--models", default=None, help="Comma-separated model names  [default: the default set]"
)
@click.option(
    "--predictions",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Score predictions from an h5ad file too.",
)
@click.option(
    "--preset",
    type=click.Choice(["fast", "synthetic", "paper", "auto"]),
    default="auto",
    show_default=True,
    help="Model preset; auto = paper on CUDA, fast on CPU.",
)
@click.option(
    "--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True
)
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--tasks", default=None, help="Comma-separated subset of tasks.")
@click.option(
    "--corrupt",
    "corruptions",
    multiple=True,
    metavar="KIND:LEVEL",
    help="Corrupt the annotations models see, per task (missing, irrelevant, incorrect, "
    "duplicate); repeat for a grid  [default: the scenario's own]",
)
@click.option(
    "-o",
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Report directory  [default: <bundle>-evaluation]",
)
def evaluate(bundle, models, predictions, preset, device, seed, tasks, corruptions, out):
    """Train and score models (and/or predictions) on a bundle's tasks."""
    from simcell.evaluation import evaluate as run_evaluation
    from simcell.evaluation import summary_markdown, write_report

    started = time.perf_counter()
    with user_errors():
        bundle = bundle or latest_bundle()
        names = [m.strip() for m in models.split(",") if m.strip()] if models else None
        if preset == "auto":
            import torch

            on_gpu = device == "cuda" or (device == "auto" and torch.cuda.is_available())
            preset = "paper" if on_gpu else "fast"
        if preset == "fast" and device != "cuda":
            import torch

            # small networks: one thread avoids the oversubscription that makes
            # them 10x slower on a busy 2-core machine (the only global state
            # simcell touches, and only here, in the command's entry point)
            torch.set_num_threads(1)
        task_list = [t.strip() for t in tasks.split(",")] if tasks else None
        from simcell.evaluation import Corruption

        corruptions = [Corruption.parse(text) for text in corruptions] or None
        results = run_evaluation(
            bundle,
            names,
            predictions,
            preset=preset,
            device=device,
            seed=seed,
            tasks=task_list,
            corruptions=corruptions,
            progress_bar=True,
        )
        out = out or bundle.with_name(bundle.name + "-evaluation")
        from simcell.models import DEFAULT_MODELS, get_preset

        trained = list(DEFAULT_MODELS if names is None else names)
        config = {
            "bundle": str(bundle),
            "models": names,
            # the hyperparameters every model was trained with, next to its scores
            "model_configs": {name: get_preset(name, preset).to_dict() for name in trained},
            "predictions": str(predictions or ""),
            "preset": preset,
            "device": device,
            "seed": seed,
            "tasks": task_list,
            "corruptions": [f"{c.kind}:{c.level}" for c in corruptions or []],
            "timings_s": results.attrs.get("timings", {}),
        }
        title = f"simcell evaluation of {bundle}"
        write_report(results, config, out, title)
    click.echo(summary_markdown(results, title))
    click.echo(f"Evaluated in {time.perf_counter() - started:.0f} s; report written to {out}.")
