"""Click options shared by several subcommands, declared once."""

from __future__ import annotations

from pathlib import Path

import click

#: replace simcell's own files in a folder that holds others, keep the rest
overwrite_option = click.option(
    "--overwrite",
    is_flag=True,
    help="Write into a folder holding other files: replace simcell's own, keep the rest.",
)

#: read a bundle without checking its manifest, checksums and metadata
no_verify_option = click.option(
    "--no-verify",
    is_flag=True,
    help="Read the bundle without checking its manifest, checksums and metadata.",
)

#: restrict a command to some of a bundle's tasks
tasks_option = click.option("--tasks", default=None, help="Comma-separated subset of tasks.")


def bundle_argument(*, required: bool = True):
    """The ``BUNDLE`` argument: an existing bundle folder."""
    return click.argument(
        "bundle",
        required=required,
        type=click.Path(exists=True, file_okay=False, path_type=Path),
    )


def seed_option(help: str | None = None):
    """``--seed``: a non-negative integer, 0 by default."""
    return click.option(
        "--seed", type=click.IntRange(min=0), default=0, show_default=True, help=help
    )


def out_option(help: str, *, required: bool = False):
    """``-o/--out``: the output folder (None when not given and not required)."""
    default = {} if required else {"default": None}
    return click.option(
        "-o",
        "--out",
        type=click.Path(file_okay=False, path_type=Path),
        required=required,
        help=help,
        **default,
    )


def corrupt_option(help: str):
    """``--corrupt KIND:LEVEL``, repeatable, passed on as ``corruptions``."""
    return click.option("--corrupt", "corruptions", multiple=True, metavar="KIND:LEVEL", help=help)
