"""The package list in pyproject.toml matches the packages on disk."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_packages_match_init_files():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    mapping = config["package-dir"]
    assert set(mapping) == listed
    for package, folder in mapping.items():
        assert (ROOT / folder / "__init__.py").is_file(), package
    on_disk = {
        "simcell." + path.parent.relative_to(ROOT).as_posix().replace("/", ".")
        for path in ROOT.glob("*/**/__init__.py")
        # hidden folders (a local .venv) and tests hold no package of simcell's
        if path.parent.name != "simcell"
        and not any(part.startswith((".", "tests")) for part in path.parent.relative_to(ROOT).parts)
    }
    on_disk = {name.replace("simcell.simcell", "simcell") for name in on_disk}
    assert on_disk <= listed, sorted(on_disk - listed)


def test_scenarios_ship_as_package_data():
    from simcell import scenarios

    assert {"synthetic1", "synthetic2", "synthetic3", "causal"} <= set(scenarios.available())
