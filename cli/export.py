"""``simcell export``."""

from __future__ import annotations

from pathlib import Path

import click

from simcell.cli._errors import user_errors


@click.command()
@click.argument("bundle", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option(
    "-o",
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="Export directory.",
)
@click.option(
    "--space",
    type=click.Choice(["counts", "lognorm", "pca"]),
    default="counts",
    show_default=True,
    help="Space of X in every file and of the predictions the template asks for.",
)
@click.option(
    "--corrupt",
    "corruptions",
    multiple=True,
    metavar="KIND:LEVEL",
    help="Corrupt the annotations a model sees, per task, as evaluate does (one condition "
    "per export)  [default: the scenario's own]",
)
@click.option(
    "--seed",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Harness seed; evaluate with the same one.",
)
@click.option("--tasks", default=None, help="Comma-separated subset of tasks.")
@click.option(
    "--overwrite",
    is_flag=True,
    help="Write into a folder holding other files: replace simcell's own, keep the rest.",
)
@click.option(
    "--no-verify",
    is_flag=True,
    help="Read the bundle without checking its manifest, checksums and metadata.",
)
def export(bundle, out, space, corruptions, seed, tasks, overwrite, no_verify):
    """Write a bundle's tasks, preprocessing and a predictions template for your own model."""
    from simcell.evaluation.export import export_tasks
    from simcell.evaluation.run import parse_names

    with user_errors():
        written = export_tasks(
            bundle,
            out,
            space=space,
            corruptions=corruptions,
            seed=seed,
            tasks=parse_names(tasks, "task") or None,
            overwrite=overwrite,
            verify=not no_verify,
        )
    click.echo(
        f"Exported to {written}; fill X of {written / 'predictions_template.h5ad'} and run "
        f"simcell evaluate {bundle} --models '' --seed {seed} --predictions <file>."
    )
