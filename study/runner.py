"""Running a study: bundles once, every cell once, on one of three engines.

The study folder holds:

* ``bundles/<bundle key>/`` — one bundle per (scenario, overrides, data seed),
  generated once and reused by every cell that needs it (corruption is applied
  at task time by :func:`simcell.evaluation.evaluate`, never to the counts);
* ``cells.jsonl`` — the study's table: one line per finished cell (its key, its
  resolved configuration, ``ok`` or ``failed`` with the error, its rows),
  appended by the driver alone with :func:`simcell._atomic.append_line`; a rerun
  skips the cells whose last line is ``ok``;
* ``report/`` — published atomically: ``results.csv`` (and ``results.parquet``
  when pyarrow is installed), ``summary.md``, ``plots/*.png``, ``study.json``.

A cell's result depends on its configuration alone: its seeds come from the
cell, torch and BLAS run one thread inside it, and the table is sorted by cell
key, so every engine writes the same table bit for bit.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pandas as pd

from simcell import SimcellError
from simcell._atomic import append_line, read_lines, refuse_dangerous
from simcell.study.spec import Cell, Study

Engine = Literal["sequential", "processes", "dask"]
ENGINES: tuple[str, ...] = ("sequential", "processes", "dask")
LOG_NAME = "cells.jsonl"
BUNDLES = "bundles"
REPORT = "report"
#: the study's columns in front of the harness's (see ``ResultRow``)
STUDY_COLUMNS = ["cell", "status", "error", "model", "base_model", "options", "overrides", "preset"]
#: reference rows kept beside a model's (cell-level errors only)
KEPT_REFERENCES = ("identity", "oracle")
_RECORD_FORMAT = "simcell-study-cell/1"


# ----------------------------------------------------------------------------- one cell


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """One torch thread and one BLAS thread: results independent of the engine.

    The limit reaches only the native libraries loaded when it is entered, so
    everything a cell loads (the harness, the models and their BLAS / OpenMP
    runtimes) is imported first: otherwise a process's first cell would run some
    BLAS calls on every core, and round differently from its later cells.
    """
    import numba
    import torch
    from threadpoolctl import threadpool_limits

    import simcell.evaluation.harness  # noqa: F401
    import simcell.models  # noqa: F401
    import simcell.simulator  # noqa: F401

    numba_before = numba.get_num_threads()
    numba.set_num_threads(1)  # starts numba's threading layer: its OpenMP is now loaded

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(limits=1):
            yield
    finally:
        torch.set_num_threads(before)
        numba.set_num_threads(numba_before)


@contextlib.contextmanager
def _quiet_harness() -> Iterator[None]:
    """The harness's per-metric notes (small populations, undefined ratios) are
    logged at WARNING; hundreds of cells would bury the progress bar in them."""
    import logging

    logger = logging.getLogger("simcell.evaluation")
    before = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(before)


@contextlib.contextmanager
def _model_variant(cell: Cell) -> Iterator[str]:
    """The name ``evaluate`` knows the cell's model by: a registered subclass whose
    presets carry the cell's options, removed again afterwards."""
    if not cell.model.options:
        yield cell.model.name
        return
    from simcell.models import _registry, get_model_class, register_model

    base = get_model_class(cell.model.name)
    label = cell.model.label
    options = dict(cell.model.options)
    presets = {name: config.replace(**options) for name, config in base.presets.items()}
    variant = type(base.__name__, (base,), {"name": label, "presets": presets})
    register_model(variant, replace=True)
    try:
        yield label
    finally:
        _registry._REGISTRY.pop(label, None)  # the registry holds no study's leftovers


def generate_cell_bundle(cell: Cell, folder: str) -> str:
    """Generate the bundle of ``cell`` into ``folder`` (one thread; atomic)."""
    from simcell import scenarios
    from simcell.simulator import generate_bundle

    params = scenarios.load(cell.scenario, **dict(cell.overrides))
    with _one_thread():
        generate_bundle(params, cell.data_seed, folder, scenario=cell.scenario, n_threads=1)
    return cell.bundle_key


def run_cell(cell: Cell, bundle: str, device: str = "cpu") -> dict:
    """Train and score one cell's model on its bundle; never raises for a bad cell.

    Returns
    -------
    dict
        The cell's record: ``key``, ``status`` (``ok`` / ``failed``), ``error``
        (one line), ``config``, ``rows`` (the model's rows and the identity and
        oracle rows of its tasks), ``seconds``.
    """
    from simcell.evaluation import evaluate

    started = time.perf_counter()
    rows: list[dict] = []
    try:
        with _one_thread(), _quiet_harness(), _model_variant(cell) as name:
            table = evaluate(
                bundle,
                [name],
                preset=cell.preset,
                device=device,
                seed=cell.model_seed,
                corruptions=[cell.corruption],
                tasks=None if cell.tasks is None else list(cell.tasks),
                **dict(cell.evaluation),
            )
        kept = table["model"].eq(name) | (
            table["model"].isin(KEPT_REFERENCES) & table["ci_low"].notna()
        )
        rows = table[kept].to_dict(orient="records")
        status, error = "ok", ""
    except Exception as exception:  # a failing cell is recorded; the study goes on
        status = "failed"
        text = " ".join(str(exception).split())
        error = f"{type(exception).__name__}: {text}"[:500]
    return {
        "format": _RECORD_FORMAT,
        "key": cell.key,
        "status": status,
        "error": error,
        "config": cell.config(),
        "rows": rows,
        "seconds": round(time.perf_counter() - started, 3),
    }


# ----------------------------------------------------------------------------- engines


class _Runner:
    """Submit jobs and collect their results as they finish, on one engine."""

    def __init__(self, engine: Engine, workers: int, scheduler: str | None) -> None:
        self.engine, self.workers, self.scheduler = engine, workers, scheduler
        self._pool = self._client = self._cluster = None

    def __enter__(self) -> _Runner:
        if self.engine == "processes":
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            self._pool = ProcessPoolExecutor(
                self.workers, mp_context=multiprocessing.get_context("spawn")
            )
        elif self.engine == "dask":
            try:
                from distributed import Client, LocalCluster
            except ImportError:
                raise SimcellError(
                    "--engine dask needs dask and distributed: pip install 'simcell[dask]'"
                ) from None
            if self.scheduler:
                self._client = Client(self.scheduler)
            else:
                self._cluster = LocalCluster(
                    n_workers=self.workers,
                    threads_per_worker=1,
                    processes=True,
                    dashboard_address=None,
                )
                self._client = Client(self._cluster)
        return self

    def __exit__(self, *exc) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
        if self._client is not None:
            self._client.close()
        if self._cluster is not None:
            self._cluster.close()

    def map_unordered(self, fn: Callable, jobs: Sequence[tuple]) -> Iterator[Any]:
        """``fn(*job)`` for every job, yielded as each finishes."""
        if self.engine == "sequential":
            for job in jobs:
                yield fn(*job)
        elif self.engine == "processes":
            from concurrent.futures import as_completed

            futures = [self._pool.submit(fn, *job) for job in jobs]
            for future in as_completed(futures):
                yield future.result()
        else:
            from distributed import as_completed

            futures = [self._client.submit(fn, *job, pure=False) for job in jobs]
            for future in as_completed(futures):
                yield future.result()


# ----------------------------------------------------------------------------- the table


def read_log(folder: str | os.PathLike, *, repair: bool = False) -> dict[str, dict]:
    """The last record of every cell in a study folder's ``cells.jsonl``."""
    records = {}
    for line in read_lines(Path(folder) / LOG_NAME, repair=repair):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and record.get("format") == _RECORD_FORMAT:
            records[record["key"]] = record
    return records


def results_table(study: Study, records: dict[str, dict]) -> pd.DataFrame:
    """The tidy table of a study's cells (rows sorted by cell key, then as produced).

    A failed cell has one row: its error, NaN value.
    """
    from simcell.evaluation.harness import RESULT_COLUMNS

    frames = []
    for cell in sorted(study.cells, key=lambda c: c.key):  # whatever order they ran in
        record = records.get(cell.key)
        if record is None:
            continue
        labels = {**cell.labels(), "status": record["status"], "error": record["error"]}
        if record["status"] == "ok":
            frame = pd.DataFrame(record["rows"], columns=RESULT_COLUMNS)
            produced = frame["model"].copy()
            for column, value in labels.items():
                frame[column] = value
            # the identity and oracle rows beside the model's keep their names
            reference = produced.isin(KEPT_REFERENCES) & (produced != cell.model.label)
            frame.loc[reference, "model"] = produced[reference]
            frame.loc[reference, "base_model"] = produced[reference]
        else:
            kind, _, level = cell.corruption.partition(":")
            frame = pd.DataFrame(
                [
                    {
                        **labels,
                        "task": "",
                        "seed": cell.model_seed,
                        "space": "",
                        "metric": "",
                        "value": math.nan,
                        "scenario": cell.scenario,
                        "data_seed": cell.data_seed,
                        "corruption": kind,
                        "level": int(level or 0),
                    }
                ]
            )
        frames.append(frame)
    columns = STUDY_COLUMNS + [c for c in RESULT_COLUMNS if c != "model"]
    if not frames:
        return pd.DataFrame(columns=columns)
    return pd.concat(frames, ignore_index=True).reindex(columns=columns)


# ----------------------------------------------------------------------------- a study


@dataclass(frozen=True)
class StudyPlan:
    """A study resolved with its variant, device and folder, before any work."""

    study: Study
    device: str
    out: Path


def plan_study(
    name_or_path: str | os.PathLike,
    *,
    variant: Literal["auto", "fast", "full"] = "auto",
    device: str = "auto",
    out: str | os.PathLike | None = None,
) -> StudyPlan:
    """Resolve what ``simcell study`` was given, refusing bad input before any work.

    ``variant="auto"`` is ``full`` on a CUDA device and ``fast`` on the CPU; the
    folder defaults to ``./<name>-<variant>``.

    Raises
    ------
    SimcellError
        A bad study file (see :func:`~simcell.study.load_study`), an unavailable
        device, a refused folder.
    """
    from simcell._device import resolve_device
    from simcell.study.spec import load_study

    resolved = resolve_device(device)
    if variant == "auto":
        variant = "full" if resolved.startswith("cuda") else "fast"
    study = load_study(name_or_path, variant)
    folder = Path(out) if out is not None else Path(f"{study.name}-{variant}")
    check_study_dir(folder)
    return StudyPlan(study=study, device=resolved, out=folder)


@dataclass(frozen=True)
class StudyRun:
    """What :func:`run_study` did.

    Attributes
    ----------
    table : DataFrame
        The study's results (every cell that has a record).
    report : Path
        The published report folder.
    ran, failed, skipped : int
        Cells run now, of which failed; cells skipped as already done.
    bundles_generated : int
    seconds : float
    """

    table: pd.DataFrame
    report: Path
    ran: int
    failed: int
    skipped: int
    bundles_generated: int
    seconds: float


def check_study_dir(out: str | os.PathLike) -> Path:
    """Refuse a folder that is dangerous or holds something else than a study."""
    resolved = refuse_dangerous(Path(out))
    if resolved.is_dir() and any(resolved.iterdir()):
        known = {LOG_NAME, BUNDLES, REPORT}
        if not (resolved / LOG_NAME).is_file() and not (set(os.listdir(resolved)) <= known):
            raise SimcellError(f"{out} holds files that are not a simcell study; choose another -o")
    return resolved


def run_study(
    study: Study,
    out: str | os.PathLike,
    *,
    engine: Engine = "sequential",
    workers: int | None = None,
    scheduler: str | None = None,
    device: str = "cpu",
    force: bool = False,
    progress_bar: bool = True,
) -> StudyRun:
    """Run every cell of ``study`` not yet done in ``out``, then write its report.

    Parameters
    ----------
    study : Study
        See :func:`simcell.study.load_study`.
    out : path
        The study folder (created; reused by a rerun).
    engine : {"sequential", "processes", "dask"}
        ``processes``: a local process pool; ``dask``: a
        ``distributed.LocalCluster`` (or the scheduler at ``scheduler``).
    workers : int, optional
        Worker processes (default: the CPU count).
    scheduler : str, optional
        Address of a running Dask scheduler (``--engine dask`` only).
    device : str
        Torch device of the models (resolved, e.g. ``"cpu"``).
    force : bool
        Run every cell again, finished or not (bundles are still reused).
    progress_bar : bool
        A tqdm bar on stderr: done / failed / remaining and an ETA.

    Returns
    -------
    StudyRun

    Raises
    ------
    SimcellError
        Unknown engine, a scheduler without ``--engine dask``, a refused folder,
        a model whose extra is not installed.
    """
    if engine not in ENGINES:
        raise SimcellError(f"engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    if scheduler and engine != "dask":
        raise SimcellError("--scheduler needs --engine dask")
    if workers is not None and workers < 1:
        raise SimcellError(f"workers must be >= 1, got {workers}")
    workers = workers or os.cpu_count() or 1
    from simcell.models._registry import check_available

    for name in dict.fromkeys(cell.model.name for cell in study.cells):
        check_available(name)  # one line naming the extra, before anything is written
    started = time.perf_counter()
    folder = check_study_dir(out)
    if engine == "dask":
        try:
            import distributed  # noqa: F401
        except ImportError:
            raise SimcellError(
                "--engine dask needs dask and distributed: pip install 'simcell[dask]'"
            ) from None
    (folder / BUNDLES).mkdir(parents=True, exist_ok=True)
    records = read_log(folder, repair=True)
    done = {key for key, record in records.items() if record["status"] == "ok"}
    todo = [cell for cell in study.cells if force or cell.key not in done]
    bundles = {}
    for cell in todo:
        path = folder / BUNDLES / cell.bundle_key
        if not (path / "manifest.json").is_file():
            bundles.setdefault(cell.bundle_key, (cell, str(path)))
    ran = failed = 0
    with _Runner(engine, workers, scheduler) as runner:
        for _ in runner.map_unordered(generate_cell_bundle, list(bundles.values())):
            pass
        jobs = [(cell, str(folder / BUNDLES / cell.bundle_key), device) for cell in todo]
        bar = _bar(len(todo), len(study.cells) - len(todo)) if progress_bar else None
        try:
            for record in runner.map_unordered(run_cell, jobs):
                append_line(folder / LOG_NAME, json.dumps(record, separators=(",", ":")))
                records[record["key"]] = record
                ran += 1
                failed += record["status"] != "ok"
                if bar is not None:
                    bar.set_postfix(done=ran - failed, failed=failed, remaining=len(todo) - ran)
                    bar.update(1)
        finally:
            if bar is not None:
                bar.close()
    table = results_table(study, records)
    from simcell.study.summary import write_report

    report = write_report(study, table, folder / REPORT)
    return StudyRun(
        table=table,
        report=report,
        ran=ran,
        failed=failed,
        skipped=len(study.cells) - len(todo),
        bundles_generated=len(bundles),
        seconds=time.perf_counter() - started,
    )


def _bar(total: int, skipped: int):
    from tqdm.auto import tqdm

    bar = tqdm(total=total, unit="cell", dynamic_ncols=True, desc="study")
    bar.set_postfix(done=0, failed=0, remaining=total, skipped=skipped)
    return bar
