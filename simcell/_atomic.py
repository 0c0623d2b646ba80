"""The one atomic writer of output folders (bundles, reports).

Every folder simcell writes goes through :func:`atomic_output`:

* the files are written to a staging folder beside the target
  (``.NAME.tmp-PID-XXXX``, same file system) that carries simcell's own staging
  marker, and published by rename only when complete, so an interrupted run
  never leaves a half-written output;
* simcell replaces only what it can prove it wrote: an :class:`Ownership` reads
  the marker simcell writes into each output (the bundle's ``manifest.json``, the
  report's ``.simcell-report.json``) and names the files it lists. A target that
  holds any other file is refused unless ``overwrite=True``, and even then only
  simcell's own files are replaced: every other file stays (one that bears a
  name simcell writes is kept under a backup name ``NAME.~N~``);
* the current directory and its ancestors (``.``, ``..``, the filesystem root),
  the home directory and any folder in ``protect`` or above it are refused;
* staging folders left by runs that were killed (their pid is dead and they
  carry the staging marker) are removed on the next run into the same parent;
* the published folder gets the mode the umask gives a new folder
  (``0o777 & ~umask``), not the 0700 of a temporary directory.

An interrupt (SIGINT / SIGTERM, see :func:`request_stop`) always discards the
staging folder and never publishes.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import re
import secrets
import shutil
import socket
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from simcell import SimcellError

logger = logging.getLogger(__name__)

STAGING_MARKER = ".simcell-staging.json"
_STAGING_FORMAT = "simcell-staging/1"
_STAGING_NAME = re.compile(r"^\..+\.tmp-(?P<pid>\d+)-[^/]+$")

_COUNT_LIMIT = 1000
_stop = threading.Event()


# --------------------------------------------------------------------------- interrupts


def request_stop() -> None:
    """Record that the run must stop (called by the CLI's SIGINT / SIGTERM handler).

    The handler also raises :class:`KeyboardInterrupt`, but an exception raised
    inside a callback that Python runs for a library (a weakref finaliser, a
    ``__del__``) is printed as "Exception ignored" and lost; the flag is not, and
    long loops check it with :func:`raise_if_stopped`.
    """
    _stop.set()


def clear_stop() -> None:
    """Forget an earlier stop request (at the start of a command)."""
    _stop.clear()


def raise_if_stopped() -> None:
    """Raise :class:`KeyboardInterrupt` if a stop was requested."""
    if _stop.is_set():
        raise KeyboardInterrupt


# --------------------------------------------------------------------------- ownership


def safe_relative(name: object) -> str | None:
    """``name`` as a relative POSIX path inside a folder, or None if it is not one."""
    if not isinstance(name, str) or not name or "\\" in name:
        return None
    path = PurePosixPath(name)
    if path.is_absolute() or any(part in ("", ".", "..") for part in name.split("/")):
        return None
    return str(path)


def read_marker(path: Path, expected_format: str) -> dict | None:
    """A JSON marker file whose ``format`` is ``expected_format``, or None."""
    try:
        content = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(content, dict) or content.get("format") != expected_format:
        return None
    return content


@dataclass(frozen=True)
class Ownership:
    """How simcell proves it wrote an output folder.

    Attributes
    ----------
    what : str
        The kind of output, for messages ("bundle", "report").
    marker : str
        The file that proves ownership; written last when merging into a folder.
    claim : callable
        ``claim(folder) -> frozenset[str] | None``: the relative paths of the
        files simcell wrote there (the marker included), read from the marker,
        or None when the folder carries no valid marker.
    """

    what: str
    marker: str
    claim: Callable[[Path], frozenset[str] | None]


def listed_files(folder: Path, marker: str, expected_format: str) -> frozenset[str] | None:
    """The files simcell wrote into ``folder``, as listed under ``"files"`` by its
    marker file ``marker`` (``format: expected_format``), the marker included;
    None without such a marker or when an entry is not a relative path inside it."""
    content = read_marker(folder / marker, expected_format)
    listed = content.get("files") if content is not None else None
    if not isinstance(listed, list):
        return None
    names = [safe_relative(name) for name in listed]
    if None in names:
        return None
    return frozenset(names) | {marker}


def listing_ownership(what: str, marker: str, expected_format: str) -> Ownership:
    """The :class:`Ownership` of an output whose marker lists its files under
    ``"files"`` (see :func:`listed_files`)."""
    claim = functools.partial(listed_files, marker=marker, expected_format=expected_format)
    return Ownership(what=what, marker=marker, claim=claim)


def _walk(folder: Path) -> Iterator[tuple[str, bool]]:
    """``(relative path, is_folder)`` of everything under ``folder``, top down;
    symlinks count as files and are never followed."""
    for root, dirnames, filenames in os.walk(folder):
        base = Path(root).relative_to(folder)
        for name in list(dirnames):
            is_link = (Path(root) / name).is_symlink()
            if is_link:
                dirnames.remove(name)
            yield (base / name).as_posix(), not is_link
        for name in filenames:
            yield (base / name).as_posix(), False


def _files(folder: Path) -> set[str]:
    return {name for name, is_folder in _walk(folder) if not is_folder}


def _foreign(folder: Path, owned: frozenset[str], limit: int = 1000) -> list[str]:
    """What in ``folder`` simcell did not write: the files not in ``owned`` and
    the empty folders none of them needs (the first ``limit`` + 1 at most)."""
    needed = {str(parent) for name in owned for parent in PurePosixPath(name).parents}
    files, folders = [], []
    for name, is_folder in _walk(folder):
        if name in owned or (is_folder and name in needed):
            continue
        (folders if is_folder else files).append(name)
        if len(files) > limit:
            return files
    holding = {str(parent) for name in files + folders for parent in PurePosixPath(name).parents}
    return files + [name for name in folders if name not in holding]


# --------------------------------------------------------------------------- dangerous targets


def refuse_dangerous(target: Path, protect: Iterable[Path] = ()) -> Path:
    """The resolved ``target``, or a SimcellError if it must never be an output.

    Refused: the current directory and its ancestors (``.``, ``..``, the
    filesystem root), the home directory and its ancestors, and each folder of
    ``protect`` (e.g. the bundle being evaluated) and its ancestors.
    """
    resolved = Path(os.path.abspath(target)).resolve()
    here = Path.cwd().resolve()
    reasons = [
        (Path(resolved.anchor), "the filesystem root"),
        (here, "the current directory"),
        (Path(os.path.expanduser("~")).resolve(), "the home directory"),
    ]
    with contextlib.suppress(ImportError, KeyError, OSError):
        import pwd

        reasons.append((Path(pwd.getpwuid(os.getuid()).pw_dir).resolve(), "the home directory"))
    reasons += [(Path(p).resolve(), f"the input folder {p}") for p in protect]
    for place, name in reasons:
        if resolved == place:
            raise SimcellError(f"refusing to write into {target}: it is {name}")
        if resolved in place.parents:
            raise SimcellError(f"refusing to write into {target}: it contains {name}")
    if resolved.exists() and not resolved.is_dir():
        raise SimcellError(f"{target} exists and is not a folder")
    return resolved


# --------------------------------------------------------------------------- staging


def _umask() -> int:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)  # no other way to read it; set it back at once
    os.umask(mask)
    return mask


def folder_mode() -> int:
    """The mode a new folder gets under the current umask."""
    return 0o777 & ~_umask()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's live process
    except OverflowError:
        return False
    return True


def clean_stale_staging(parent: Path) -> list[Path]:
    """Remove the staging folders in ``parent`` left by simcell runs that died.

    A folder is removed only if its name is a staging name, it holds simcell's
    staging marker naming the same pid and this host, and that pid is not alive.

    Returns
    -------
    list of Path
        The folders removed.
    """
    removed = []
    host = socket.gethostname()
    try:
        candidates = list(parent.iterdir())
    except OSError:
        return removed
    for path in candidates:
        match = _STAGING_NAME.match(path.name)
        if match is None or path.is_symlink() or not path.is_dir():
            continue
        pid = int(match["pid"])
        marker = read_marker(path / STAGING_MARKER, _STAGING_FORMAT)
        if marker is None or marker.get("pid") != pid or marker.get("host") != host:
            continue
        if _pid_alive(pid):
            continue
        # proof of ownership: simcell's staging marker, and the run that wrote it is dead
        shutil.rmtree(path, ignore_errors=True)
        if not path.exists():
            removed.append(path)
            logger.info("removed %s, left by simcell run %d that was killed", path, pid)
    return removed


def _mark(folder: Path) -> None:
    """Write simcell's staging marker: ``folder`` is this run's, to be removed if it dies."""
    marker = {"format": _STAGING_FORMAT, "pid": os.getpid(), "host": socket.gethostname()}
    (folder / STAGING_MARKER).write_text(json.dumps(marker))


def _make_staging(target: Path) -> Path:
    parent = target.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        clean_stale_staging(parent)
        while True:
            staging = parent / f".{target.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
            try:
                staging.mkdir(mode=0o700)
                break
            except FileExistsError:
                continue
        _mark(staging)
        os.chmod(staging, folder_mode())
    except OSError as error:
        raise SimcellError(f"cannot write to {parent}: {error.strerror}") from None
    return staging


# --------------------------------------------------------------------------- publishing


@dataclass(frozen=True)
class _Plan:
    action: str  # "create" | "replace" | "merge"
    owned: frozenset[str]
    foreign: tuple[str, ...]


def _plan(target: Path, shown: Path, ownership: Ownership, overwrite: bool) -> _Plan:
    if not target.exists():
        return _Plan("create", frozenset(), ())
    owned = ownership.claim(target)
    if owned is not None:
        owned |= {STAGING_MARKER}  # left by a run killed just after it published
    foreign = tuple(_foreign(target, owned or frozenset(), limit=_COUNT_LIMIT))
    if owned is None and not foreign:
        return _Plan("create", frozenset(), ())  # an empty folder
    if owned is not None and not foreign:
        return _Plan("replace", owned, ())
    if not overwrite:
        n = len(foreign)
        count = f"{n} file" + "s" * (n != 1)
        if n > _COUNT_LIMIT:
            count = f"more than {_COUNT_LIMIT} files"
        if owned is None:
            raise SimcellError(
                f"{shown} is not a simcell {ownership.what} and holds {count}; refusing to "
                "write into it (--overwrite writes simcell's files beside them, deleting nothing)"
            )
        raise SimcellError(
            f"{shown} holds {count} simcell did not write; refusing to replace it "
            "(--overwrite replaces simcell's own files and keeps the others)"
        )
    return _Plan("merge", owned or frozenset(), foreign)


def _remove_owned(folder: Path, owned: Iterable[str]) -> None:
    """Delete the files of ``owned`` in ``folder``, then the folders they leave empty."""
    for name in owned:
        # proof of ownership: ``name`` is listed by simcell's own marker
        with contextlib.suppress(FileNotFoundError, IsADirectoryError):
            (folder / name).unlink()
    for name in sorted(
        {str(p) for n in owned for p in PurePosixPath(n).parents if str(p) != "."},
        key=lambda p: -p.count("/"),
    ):
        with contextlib.suppress(OSError):
            (folder / name).rmdir()  # only if empty


def _backup_name(path: Path) -> Path:
    n = 1
    while True:
        candidate = path.with_name(f"{path.name}.~{n}~")
        if not os.path.lexists(candidate):
            return candidate
        n += 1


def _keep_aside(path: Path, kept: list[str]) -> None:
    backup = _backup_name(path)
    os.replace(path, backup)
    kept.append(f"{path.name} -> {backup.name}")


def _merge(staging: Path, target: Path, plan: _Plan, ownership: Ownership) -> None:
    """Move the staged files into ``target`` one by one (marker last), replacing
    simcell's own files and keeping every other file."""
    files = _files(staging)
    files.discard(STAGING_MARKER)
    kept: list[str] = []
    for name in sorted(files, key=lambda n: (n == ownership.marker, n)):
        destination = target / name
        for parent in reversed(PurePosixPath(name).parents):
            folder = target / parent
            if str(parent) == "." or folder.is_dir() and not folder.is_symlink():
                continue
            if os.path.lexists(folder):
                _keep_aside(folder, kept)
            folder.mkdir()
        if os.path.lexists(destination) and (
            name not in plan.owned or destination.is_dir() or destination.is_symlink()
        ):
            _keep_aside(destination, kept)  # a foreign file with simcell's name
        os.replace(staging / name, destination)
    _remove_owned(target, plan.owned - files)
    if kept:
        logger.warning(
            "kept %d file(s) in %s that simcell did not write under new names: %s",
            len(kept),
            target,
            ", ".join(kept),
        )


def _publish(staging: Path, target: Path, shown: Path, ownership: Ownership, overwrite: bool):
    """Move ``staging`` to ``target`` as :func:`_plan` decides. Whenever the
    process may die, every folder it leaves beside ``target`` carries the staging
    marker, and a marker left inside ``target`` counts as simcell's own file."""
    raise_if_stopped()
    plan = _plan(target, shown, ownership, overwrite)
    if plan.action == "merge":
        _merge(staging, target, plan, ownership)
        # proof of ownership: this process created ``staging``; only its marker is left
        shutil.rmtree(staging, ignore_errors=True)
        return
    retired = target.parent / f".{target.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
    if plan.action == "replace":
        _mark(target)  # the old output, proven simcell's, becomes this run's to remove
        os.replace(target, retired)
    try:
        os.replace(staging, target)  # onto a missing or empty folder
    except BaseException:
        if plan.action == "replace" and not os.path.lexists(target):
            os.replace(retired, target)
            # proof of ownership: the staging marker this process wrote a moment ago
            (target / STAGING_MARKER).unlink(missing_ok=True)
        raise
    # proof of ownership: the staging marker this process wrote into its staging folder
    (target / STAGING_MARKER).unlink(missing_ok=True)
    if plan.action == "replace":
        _remove_owned(retired, plan.owned)
        try:
            retired.rmdir()
        except OSError:
            logger.warning("left %s: it holds files simcell did not write", retired)


@contextlib.contextmanager
def atomic_output(
    target: str | os.PathLike,
    ownership: Ownership,
    *,
    overwrite: bool = False,
    protect: Iterable[str | os.PathLike] = (),
) -> Iterator[Path]:
    """Write an output folder atomically; yields the staging folder to write into.

    Checks ``target`` first (so a refusal comes before any long computation),
    then publishes the staging folder when the ``with`` block ends normally.
    On any exception, interrupts included, the staging folder is removed and
    ``target`` is left as it was.

    Parameters
    ----------
    target : path
        The output folder.
    ownership : Ownership
        How simcell recognises the files it wrote into such a folder.
    overwrite : bool
        Write into a folder that holds files simcell did not write: simcell's
        own files are replaced, every other file is kept.
    protect : iterable of path
        Folders that must not be the target or inside it (e.g. the input bundle).

    Raises
    ------
    SimcellError
        The target is refused (see :func:`refuse_dangerous`), or holds files
        simcell did not write and ``overwrite`` is False.
    """
    shown = Path(target)
    resolved = refuse_dangerous(shown, [Path(p) for p in protect])
    _plan(resolved, shown, ownership, overwrite)
    staging = _make_staging(resolved)
    try:
        yield staging
        _publish(staging, resolved, shown, ownership, overwrite)
    except BaseException:
        # proof of ownership: this process created ``staging`` a moment ago
        shutil.rmtree(staging, ignore_errors=True)
        raise


def check_output(
    target: str | os.PathLike,
    ownership: Ownership,
    *,
    overwrite: bool = False,
    protect: Iterable[str | os.PathLike] = (),
) -> None:
    """Raise the SimcellError :func:`atomic_output` would raise for ``target``, now.

    For callers that compute for a long time before they write.
    """
    shown = Path(target)
    resolved = refuse_dangerous(shown, [Path(p) for p in protect])
    _plan(resolved, shown, ownership, overwrite)


# --------------------------------------------------------------------------- append-only logs


def append_line(path: str | os.PathLike, line: str) -> None:
    """Append one line to a log file, durably (``O_APPEND``, then ``fsync``).

    A reader (:func:`read_lines`) sees a line whole or not at all: a line cut
    short by a kill has no final newline and is ignored, then cut off by the
    next ``read_lines(..., repair=True)``. One writer per file.
    """
    if "\n" in line:
        raise ValueError("append_line writes a single line")
    data = memoryview((line + "\n").encode())
    descriptor = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        while data:
            data = data[os.write(descriptor, data) :]
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def read_lines(path: str | os.PathLike, *, repair: bool = False) -> list[str]:
    """The complete lines of a log written by :func:`append_line` ([] if absent).

    ``repair``: truncate a partial last line (left by a killed writer) so the
    next append starts on a line of its own.
    """
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return []
    complete = data.rfind(b"\n") + 1
    if repair and complete < len(data):
        os.truncate(path, complete)
    return data[:complete].decode().splitlines()
