"""Turning library errors into one-line CLI errors."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import click

from simcell import SimcellError


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Re-raise bad-input errors as click errors: one line, exit status 1."""
    try:
        yield
    except SimcellError as error:
        raise click.ClickException(str(error)) from None
    except OSError as error:
        where = f": {error.filename}" if error.filename else ""
        raise click.ClickException(f"{error.strerror or error}{where}") from None
