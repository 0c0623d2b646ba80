"""``python -m simcell``: the ``simcell`` command."""

from simcell.cli import main

if __name__ == "__main__":
    main()
