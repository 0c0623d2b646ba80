"""``simcell fit``."""

from __future__ import annotations

from pathlib import Path

import click

from simcell.cli._errors import user_errors


@click.command()
@click.argument("counts", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "-o",
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="Scenario TOML to write (QC plots go beside it as <name>.qc.png).",
)
@click.option(
    "--capture-mean",
    type=click.FloatRange(0, 1, min_open=True),
    default=0.1,
    show_default=True,
    help="Assumed mean capture efficiency (not identifiable from counts alone).",
)
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--no-plots", is_flag=True, help="Skip the QC simulation and plots.")
def fit(counts, out, capture_mean, seed, no_plots):
    """Estimate a realistic scenario from a raw count matrix (.h5ad, X = counts)."""
    from simcell.simulator.fit import fit_scenario_file

    with user_errors():
        toml, plot = fit_scenario_file(
            counts, out, capture_mean=capture_mean, seed=seed, plots=not no_plots
        )
    click.echo(f"Wrote {toml}" + (f" and {plot}" if plot else ""))
