"""``simcell evaluate``."""

from __future__ import annotations

import time
from pathlib import Path

import click

from simcell.cli._errors import user_errors
from simcell.cli._options import (
    bundle_argument,
    corrupt_option,
    no_verify_option,
    out_option,
    overwrite_option,
    seed_option,
    tasks_option,
)


@click.command()
@bundle_argument(required=False)
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
@seed_option()
@tasks_option
@no_verify_option
@corrupt_option(
    "Corrupt the annotations models see, per task (missing, irrelevant, incorrect, "
    "duplicate); repeat for a grid  [default: the scenario's own]"
)
@click.option(
    "--oracle-samples",
    type=click.IntRange(min=2),
    default=32,
    show_default=True,
    help="Posterior draws behind the oracle's mean (two halves). Fewer draws leave its "
    "MSE unbiased, only noisier; each draw is a pass over the task's cells (about 3 "
    "CPU-seconds on a default-size realistic task).",
)
@out_option("Report directory  [default: <bundle>-evaluation]")
@overwrite_option
def evaluate(
    bundle,
    models,
    predictions,
    preset,
    device,
    seed,
    tasks,
    no_verify,
    corruptions,
    oracle_samples,
    out,
    overwrite,
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
            oracle_samples=oracle_samples,
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
