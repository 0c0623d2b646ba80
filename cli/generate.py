"""``simcell generate`` and ``simcell scenarios``."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import click

from simcell import scenarios as scenario_presets
from simcell.cli._errors import user_errors
from simcell.cli._options import out_option, overwrite_option, seed_option
from simcell.simulator import generate_bundle
from simcell.simulator.bundle import DATA_ROOT
from simcell.simulator.linear_sde import LinearSDEParams, write_linear_sde_bundle
from simcell.simulator.real import REAL_SCENARIOS, generate_real


@click.command()
@click.option(
    "--scenario",
    "scenario",
    default="synthetic2",
    show_default=True,
    help="A shipped scenario name or a TOML file.",
)
@out_option("Bundle directory  [default: simcell-data/<scenario>]")
@seed_option()
@click.option("--n-cells", type=click.IntRange(min=1), default=None, help="Override n_cells.")
@click.option("--n-genes", type=click.IntRange(min=1), default=None, help="Override n_genes.")
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override any scenario parameter (TOML value syntax); repeatable.",
)
@click.option(
    "--chunk-size",
    type=click.IntRange(min=1),
    default=1024,
    show_default=True,
    help="Cells evaluated together (does not change the result).",
)
@click.option(
    "--threads",
    type=click.IntRange(min=1),
    default=None,
    help="Worker threads  [default: all cores] (does not change the result).",
)
@click.option(
    "--device",
    type=click.Choice(["cpu", "cuda", "auto"]),
    default="cpu",
    show_default=True,
    help="Where counts are computed (same result everywhere).",
)
@click.option(
    "--engine",
    type=click.Choice(["threads", "dask"]),
    default="threads",
    show_default=True,
    help="Run cell blocks on threads or on Dask (same result).",
)
@click.option(
    "--scheduler",
    default=None,
    metavar="ADDRESS",
    help="Dask scheduler address  [default: a local cluster]",
)
@overwrite_option
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.option(
    "--input",
    "input_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Real data: the h5ad file of a real-data scenario "
    f"({', '.join(REAL_SCENARIOS)}); writes a bundle without true counterfactuals.",
)
@click.option("--condition-key", default=None, help="Real data: obs column of the condition.")
@click.option("--control", default=None, help="Real data: the condition's control value.")
@click.option("--cell-type-key", default=None, help="Real data: obs column of the cell type.")
@click.option("--layer", default=None, help="Real data: layer holding raw counts [default: X].")
@click.option(
    "--subtype-key",
    default=None,
    help="Real data: obs column of granular subtypes (held out; the cell type is the concept).",
)
@click.option(
    "--subtypes",
    type=click.Choice(["none", "plain", "scanpy"]),
    default=None,
    help="Real data: subtype discovery [default: plain for kang2017, else none].",
)
@click.option(
    "--min-cells",
    type=click.IntRange(min=2),
    default=20,
    show_default=True,
    help="Real data: smallest held-out population of a proxy task (and half its controls).",
)
def generate(
    scenario,
    out,
    seed,
    n_cells,
    n_genes,
    overrides,
    chunk_size,
    threads,
    device,
    engine,
    scheduler,
    overwrite,
    quiet,
    input_file,
    condition_key,
    control,
    cell_type_key,
    layer,
    subtype_key,
    subtypes,
    min_cells,
):
    """Simulate a scenario and write its dataset bundle.

    Cells are streamed to disk block by block, so memory stays bounded whatever
    --n-cells is; the counts depend only on the scenario and the seed.

    With --input FILE.h5ad and a real-data scenario (kang2017, norman2019,
    nault2023, cui2024, or perturbation with --condition-key, --control and
    --cell-type-key) the real cells become a bundle without true counterfactuals.
    """
    started = time.perf_counter()
    if input_file is not None or scenario in REAL_SCENARIOS:
        if n_cells is not None or n_genes is not None or overrides:
            raise click.UsageError("--n-cells, --n-genes and --set apply to simulated scenarios")
        with user_errors():
            data, out = generate_real(
                scenario,
                input_file,
                out,
                seed=seed,
                overwrite=overwrite,
                condition_key=condition_key,
                control=control,
                cell_type_key=cell_type_key,
                layer=layer,
                subtype_key=subtype_key,
                subtypes=subtypes,
                min_cells=min_cells,
            )
        click.echo(
            f"Read {input_file} as {scenario!r}: {data.factual.n_obs:,} cells x "
            f"{data.factual.n_vars:,} genes, {len(data.tasks)} proxy tasks, in "
            f"{time.perf_counter() - started:.1f} s. Bundle written to {out}."
        )
        return
    with user_errors():
        values = dict(scenario_presets.parse_override(text) for text in overrides)
        if n_cells is not None:
            values["n_cells"] = n_cells
        if n_genes is not None:
            values["n_genes"] = n_genes
        params, name = scenario_presets.load_with_name(scenario, **values)
        out = out or DATA_ROOT / name
        if isinstance(params, LinearSDEParams):  # its own process: small, no cell blocks
            dataset = write_linear_sde_bundle(params, seed, out, scenario=name, overwrite=overwrite)
        else:
            with click.progressbar(
                length=params.n_cells,
                label="simulating cells",
                hidden=quiet,
                file=sys.stderr,
            ) as bar:
                dataset = generate_bundle(
                    params,
                    seed,
                    out,
                    scenario=name,
                    chunk_size=chunk_size,
                    n_threads=threads,
                    device=device,
                    engine=engine,
                    scheduler=scheduler,
                    progress=bar.update,
                    overwrite=overwrite,
                )
    elapsed = time.perf_counter() - started
    n_rows = dataset.counterfactuals.n_obs
    click.echo(
        f"Simulated scenario {name!r} (seed {seed}): {params.n_cells:,} cells x "
        f"{params.n_genes:,} genes, {len(dataset.tasks)} intervention tasks with "
        f"{n_rows:,} counterfactual cells, in {elapsed:.1f} s. Bundle written to {out}."
    )


@click.command()
def scenarios():
    """List the shipped scenarios."""
    with user_errors():
        for name in scenario_presets.available():
            click.echo(f"{name:<12} {scenario_presets.describe(name)}")
