"""``simcell study``."""

from __future__ import annotations

from pathlib import Path

import click

from simcell.cli._errors import user_errors


@click.command()
@click.argument("study_file", metavar="STUDY.toml|NAME", required=False)
@click.option(
    "-o",
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Study folder (reused by a rerun)  [default: ./<name>-<variant>]",
)
@click.option(
    "--variant",
    type=click.Choice(["auto", "fast", "full"]),
    default="auto",
    show_default=True,
    help="fast: sized for a 2-core CPU; full: the paper's grid; auto: full on CUDA.",
)
@click.option(
    "--engine",
    type=click.Choice(["sequential", "processes", "dask"]),
    default="sequential",
    show_default=True,
)
@click.option("--workers", type=click.IntRange(min=1), default=None, help="[default: CPU count]")
@click.option("--scheduler", default=None, help="Address of a running Dask scheduler.")
@click.option(
    "--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True
)
@click.option("--force", is_flag=True, help="Run finished cells again.")
@click.option("--list", "list_studies", is_flag=True, help="List the shipped studies.")
def study(study_file, out, variant, engine, workers, scheduler, device, force, list_studies):
    """Run a robustness study: a resumable grid of models x corruptions x seeds."""
    from simcell.study import describe_study, plan_study, run_study
    from simcell.study import list_studies as shipped

    with user_errors():
        if list_studies:
            for name in shipped():
                click.echo(f"{name}: {describe_study(name)}")
            return
        if study_file is None:
            raise click.UsageError("give a study file or name (see --list)")
        plan = plan_study(study_file, variant=variant, device=device, out=out)
        run = run_study(
            plan.study,
            plan.out,
            engine=engine,
            workers=workers,
            scheduler=scheduler,
            device=plan.device,
            force=force,
        )
    click.echo((run.report / "summary.md").read_text())
    click.echo(
        f"{run.ran} cell(s) run ({run.failed} failed), {run.skipped} already done, "
        f"{run.bundles_generated} bundle(s) generated in {run.seconds:.0f} s; "
        f"report in {run.report}."
    )
