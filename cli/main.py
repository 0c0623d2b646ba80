"""The ``simcell`` click group."""

from __future__ import annotations

import logging

import click

import simcell
from simcell.cli.evaluate import evaluate
from simcell.cli.generate import generate, scenarios


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(simcell.__version__, prog_name="simcell")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
def main(verbose: int) -> None:
    """simcell: simulate scRNA-seq with exact counterfactuals and score models on it."""
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")


main.add_command(generate)
main.add_command(scenarios)
main.add_command(evaluate)
