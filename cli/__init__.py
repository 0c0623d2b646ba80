"""The ``simcell`` command line: thin click commands over library functions."""

from simcell.cli.main import main

__all__ = ["main"]
