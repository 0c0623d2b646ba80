"""``simcell export``."""

from __future__ import annotations

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
@bundle_argument()
@out_option("Export directory.", required=True)
@click.option(
    "--space",
    type=click.Choice(["counts", "lognorm", "pca"]),
    default="counts",
    show_default=True,
    help="Space of X in every file and of the predictions the template asks for.",
)
@corrupt_option(
    "Corrupt the annotations a model sees, per task, as evaluate does (one condition "
    "per export)  [default: the scenario's own]"
)
@seed_option("Harness seed; evaluate with the same one.")
@tasks_option
@overwrite_option
@no_verify_option
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
