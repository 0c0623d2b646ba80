"""The one atomic writer: ownership proofs, refusals, stale staging, modes, interrupts."""

from __future__ import annotations

import json
import os
import socket
import subprocess
from pathlib import Path

import pytest

from simcell import SimcellError
from simcell._atomic import (
    STAGING_MARKER,
    Ownership,
    atomic_output,
    check_output,
    clean_stale_staging,
    clear_stop,
    request_stop,
)

MARKER = "own.json"


def _claim(path: Path) -> frozenset[str] | None:
    from simcell._atomic import read_marker, safe_relative

    marker = read_marker(path / MARKER, "toy/1")
    if marker is None:
        return None
    names = [safe_relative(name) for name in marker["files"]]
    return None if None in names else frozenset(names) | {MARKER}


TOY = Ownership(what="toy output", marker=MARKER, claim=_claim)


def _write(staging: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        (staging / name).parent.mkdir(parents=True, exist_ok=True)
        (staging / name).write_text(text)
    (staging / MARKER).write_text(json.dumps({"format": "toy/1", "files": sorted(files)}))


def _publish(target: Path, files: dict[str, str], **kwargs) -> None:
    with atomic_output(target, TOY, **kwargs) as staging:
        _write(staging, files)


def _snapshot(folder: Path) -> dict[str, str]:
    return {
        path.relative_to(folder).as_posix(): path.read_text()
        for path in folder.rglob("*")
        if path.is_file()
    }


def _staging_left(parent: Path) -> list[str]:
    return [path.name for path in parent.iterdir() if ".tmp-" in path.name]


def _dead_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def test_create_then_replace_own_output(tmp_path):
    target = tmp_path / "out"
    _publish(target, {"a.txt": "1", "sub/b.txt": "2"})
    assert _snapshot(target) == {
        "a.txt": "1",
        "sub/b.txt": "2",
        MARKER: json.dumps({"format": "toy/1", "files": ["a.txt", "sub/b.txt"]}),
    }
    # a re-run replaces a folder that holds only its own files, old names included
    _publish(target, {"a.txt": "3"})
    assert _snapshot(target) == {
        "a.txt": "3",
        MARKER: json.dumps({"format": "toy/1", "files": ["a.txt"]}),
    }
    assert _staging_left(tmp_path) == []


def test_an_empty_folder_is_filled(tmp_path):
    (tmp_path / "out").mkdir()
    _publish(tmp_path / "out", {"a.txt": "1"})
    assert (tmp_path / "out" / "a.txt").read_text() == "1"


def test_own_output_with_a_foreign_file_is_refused(tmp_path):
    target = tmp_path / "out"
    _publish(target, {"a.txt": "1"})
    (target / "precious.txt").write_text("mine")
    before = _snapshot(target)
    with pytest.raises(SimcellError, match=r"holds 1 file simcell did not write.*--overwrite"):
        _publish(target, {"a.txt": "2"})
    assert _snapshot(target) == before
    assert _staging_left(tmp_path) == []


def test_foreign_folder_is_refused_before_any_work(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "precious.txt").write_text("mine")
    (target / "a.txt").write_text("theirs")
    with pytest.raises(SimcellError, match=r"not a simcell toy output and holds 2 files"):
        check_output(target, TOY)
    entered = False
    with pytest.raises(SimcellError, match="--overwrite"):
        with atomic_output(target, TOY):
            entered = True
    assert not entered and _staging_left(tmp_path) == []
    assert _snapshot(target) == {"precious.txt": "mine", "a.txt": "theirs"}


def test_a_marker_listing_paths_outside_proves_nothing(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (tmp_path / "outside.txt").write_text("mine")
    (target / MARKER).write_text(json.dumps({"format": "toy/1", "files": ["../outside.txt"]}))
    assert _claim(target) is None
    with pytest.raises(SimcellError, match="not a simcell toy output"):
        _publish(target, {"a.txt": "1"})
    _publish(target, {"a.txt": "1"}, overwrite=True)
    assert (tmp_path / "outside.txt").read_text() == "mine"


def test_overwrite_keeps_every_foreign_file(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "precious.txt").write_text("mine")
    (target / "a.txt").write_text("theirs, same name")
    (target / "sub").write_text("a file where simcell wants a folder")
    _publish(target, {"a.txt": "new", "sub/b.txt": "new b"}, overwrite=True)
    files = _snapshot(target)
    assert files["precious.txt"] == "mine"
    assert files["a.txt.~1~"] == "theirs, same name"
    assert files["sub.~1~"] == "a file where simcell wants a folder"
    assert files["a.txt"] == "new" and files["sub/b.txt"] == "new b"
    # now simcell's files are proven; a second overwrite replaces them, keeps the rest
    _publish(target, {"a.txt": "newer"}, overwrite=True)
    files = _snapshot(target)
    assert files["a.txt"] == "newer" and "sub/b.txt" not in files
    assert files["precious.txt"] == "mine" and files["a.txt.~1~"] == "theirs, same name"
    assert "a.txt.~2~" not in files
    assert _staging_left(tmp_path) == []


@pytest.mark.parametrize("where", [".", "..", "cwd", "root", "home", "home_parent"])
def test_dangerous_targets_are_refused(where, tmp_path, monkeypatch):
    home = tmp_path / "home" / "me"
    work = home / "work"
    work.mkdir(parents=True)
    (work / "precious.txt").write_text("mine")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(work)
    target = {
        ".": Path("."),
        "..": Path(".."),
        "cwd": work,
        "root": Path("/"),
        "home": home,
        "home_parent": home.parent,
    }[where]
    with pytest.raises(SimcellError, match=r"^refusing to write into"):
        _publish(target, {"a.txt": "1"}, overwrite=True)
    assert _snapshot(tmp_path) == {"home/me/work/precious.txt": "mine"}
    assert not list(tmp_path.rglob("*.tmp-*"))


def test_protected_folder_and_its_ancestors_are_refused(tmp_path):
    bundle = tmp_path / "data" / "bundle"
    bundle.mkdir(parents=True)
    (bundle / "factual.h5ad").write_text("x")
    for target in (bundle, bundle.parent, tmp_path):
        with pytest.raises(SimcellError, match="input folder"):
            _publish(target, {"a.txt": "1"}, overwrite=True, protect=[bundle])
    _publish(bundle / "inside", {"a.txt": "1"}, protect=[bundle])
    assert _snapshot(bundle) == {
        "factual.h5ad": "x",
        "inside/a.txt": "1",
        f"inside/{MARKER}": json.dumps({"format": "toy/1", "files": ["a.txt"]}),
    }


def test_a_file_is_not_a_target(tmp_path):
    (tmp_path / "out").write_text("mine")
    with pytest.raises(SimcellError, match="not a folder"):
        _publish(tmp_path / "out", {"a.txt": "1"}, overwrite=True)
    assert (tmp_path / "out").read_text() == "mine"


def test_failure_inside_leaves_target_as_it_was(tmp_path):
    target = tmp_path / "out"
    _publish(target, {"a.txt": "1"})
    before = _snapshot(target)
    with pytest.raises(RuntimeError):
        with atomic_output(target, TOY) as staging:
            _write(staging, {"a.txt": "2"})
            raise RuntimeError("disk full")
    assert _snapshot(target) == before and _staging_left(tmp_path) == []


def test_a_stop_request_publishes_nothing(tmp_path):
    try:
        with pytest.raises(KeyboardInterrupt):
            with atomic_output(tmp_path / "out", TOY) as staging:
                _write(staging, {"a.txt": "1"})
                request_stop()  # as the signal handler does when its exception is lost
    finally:
        clear_stop()
    assert list(tmp_path.iterdir()) == []


def _staging_folder(parent: Path, name: str, marker: dict | None) -> Path:
    folder = parent / name
    folder.mkdir()
    (folder / "factual.h5ad").write_text("partial")
    if marker is not None:
        (folder / STAGING_MARKER).write_text(json.dumps(marker))
    return folder


def test_stale_staging_of_dead_runs_only_is_removed(tmp_path):
    dead, host = _dead_pid(), socket.gethostname()
    mark = {"format": "simcell-staging/1", "host": host}
    stale = _staging_folder(tmp_path, f".out.tmp-{dead}-ab12", {**mark, "pid": dead})
    other_target = _staging_folder(tmp_path, f".x.tmp-{dead}-cd34", {**mark, "pid": dead})
    kept = [
        _staging_folder(tmp_path, ".out.tmp-foo", None),
        _staging_folder(tmp_path, f".out.tmp-{dead}-nomark", None),
        _staging_folder(tmp_path, f".out.tmp-{os.getpid()}-live", {**mark, "pid": os.getpid()}),
        _staging_folder(tmp_path, f".out.tmp-{dead}-host", {**mark, "pid": dead, "host": "x"}),
        _staging_folder(tmp_path, f".out.tmp-{dead}-pid", {**mark, "pid": dead + 1}),
        _staging_folder(tmp_path, f".out.tmp-{dead}-fmt", {"pid": dead, "host": host}),
    ]
    assert sorted(clean_stale_staging(tmp_path)) == sorted([stale, other_target])
    assert not stale.exists() and not other_target.exists()
    for folder in kept:
        assert (folder / "factual.h5ad").read_text() == "partial", folder.name


def test_next_run_cleans_stale_staging(tmp_path):
    dead = _dead_pid()
    mark = {"format": "simcell-staging/1", "host": socket.gethostname(), "pid": dead}
    stale = _staging_folder(tmp_path, f".out.tmp-{dead}-ab12", mark)
    foreign = _staging_folder(tmp_path, ".out.tmp-foo", None)
    _publish(tmp_path / "out", {"a.txt": "1"})
    assert not stale.exists() and (foreign / "factual.h5ad").read_text() == "partial"


def test_published_folder_gets_the_umask_mode(tmp_path):
    previous = os.umask(0o022)
    try:
        _publish(tmp_path / "a", {"x.txt": "1", "sub/y.txt": "2"})
        os.umask(0o027)
        _publish(tmp_path / "b", {"x.txt": "1"})
    finally:
        os.umask(previous)
    assert (tmp_path / "a").stat().st_mode & 0o777 == 0o755
    assert (tmp_path / "a" / "sub").stat().st_mode & 0o777 == 0o755
    assert (tmp_path / "a" / "x.txt").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "b").stat().st_mode & 0o777 == 0o750


def test_a_staging_marker_left_in_an_own_output_is_not_foreign(tmp_path):
    # a run killed between publishing and removing its marker leaves the marker inside
    target = tmp_path / "out"
    _publish(target, {"a.txt": "1"})
    (target / STAGING_MARKER).write_text("{}")
    _publish(target, {"a.txt": "2"})
    assert sorted(p.name for p in target.iterdir()) == ["a.txt", MARKER]
    # in a folder simcell cannot prove it wrote, it proves nothing
    other = tmp_path / "other"
    other.mkdir()
    (other / STAGING_MARKER).write_text("{}")
    with pytest.raises(SimcellError, match="holds 1 file"):
        _publish(other, {"a.txt": "1"})
