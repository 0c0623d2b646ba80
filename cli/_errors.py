"""Turning library errors and warnings into one-line CLI messages."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator

import click

from simcell import SimcellError


def _one_line(message, category, filename, lineno, file=None, line=None) -> None:
    """``warnings.showwarning`` for a CLI user: the message alone, no source line."""
    text = " ".join(str(message).split())
    click.echo(f"Warning: {text}", err=True)


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Run a command's body with one-line errors and warnings.

    Bad-input errors become click errors (one line, exit status 1); warnings
    are printed as ``Warning: <message>`` on stderr (restored on exit).
    """
    with warnings.catch_warnings():
        warnings.showwarning = _one_line
        try:
            yield
        except SimcellError as error:
            raise click.ClickException(str(error)) from None
        except OSError as error:
            where = f": {error.filename}" if error.filename else ""
            raise click.ClickException(f"{error.strerror or error}{where}") from None
