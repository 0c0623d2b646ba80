"""Named simulation presets and the loader that turns a name or a TOML file into parameters.

A scenario file holds :class:`~simcell.simulator.SimulationParams` fields as
top-level keys, an optional ``description`` and an optional ``extends`` naming
another scenario (a shipped name or a path relative to the file) whose keys it
overrides.
"""

from simcell.scenarios.loader import available, describe, load, load_with_name, parse_override

__all__ = ["available", "describe", "load", "load_with_name", "parse_override"]
