"""``simcell evaluate``."""

from __future__ import annotations

import time
from pathlib import Path

import click

from simcell.cli._errors import user_errors


@click.command()
@click.argument(
    "bundle", required=False, type=click.Path(exists=True, file_okay=False, path_type=Path)
)
@click.option(
    "--models",
    default=None,
    help='Comma-separated model names; "" for none  [default: the default set]',
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
    "--no-verify",
    is_flag=True,
    help="Read the bundle without checking its manifest, checksums and metadata.",
)
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
@click.option(
    "--overwrite",
    is_flag=True,
    help="Write into a folder holding other files: replace simcell's own, keep the rest.",
)
def evaluate(
    bundle, models, predictions, preset, device, seed, tasks, no_verify, corruptions, out, overwrite
):
    """Train and score models (and/or predictions) on a bundle's tasks."""
    from simcell.evaluation import summary_markdown
    from simcell.evaluation.run import plan_evaluation, run_evaluation

    started = time.perf_counter()
    with user_errors():
        plan = plan_evaluation(
            bundle,
            models=models,
            predictions=predictions,
            preset=preset,
            device=device,
            seed=seed,
            tasks=tasks,
            out=out,
            verify=not no_verify,
            overwrite=overwrite,
            corruptions=corruptions,
        )
        if plan.preset == "fast" and plan.device == "cpu":
            import torch

            # small networks: one thread avoids the oversubscription that makes
            # them 10x slower on a busy 2-core machine (the only global state
            # simcell touches, and only here, in the command's entry point)
            torch.set_num_threads(1)
        results = run_evaluation(plan)  # with a progress bar on stderr
    click.echo(summary_markdown(results, plan.title))
    click.echo(f"Evaluated in {time.perf_counter() - started:.0f} s; report written to {plan.out}.")
