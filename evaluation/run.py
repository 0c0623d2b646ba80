"""``simcell evaluate`` as a library: resolve a run up front, then run it.

:func:`plan_evaluation` turns what a user typed (model list, preset, device,
tasks, verification) into an :class:`EvaluationPlan`, refusing bad input
before anything is trained: a CUDA device that is not there, a bundle that
fails verification, an unknown preset. :func:`run_evaluation` scores the plan
and writes its report.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from numbers import Integral
from pathlib import Path
from typing import Literal

import pandas as pd

from simcell import SimcellError, SimcellWarning
from simcell._device import resolve_device
from simcell.simulator import Bundle, read_bundle
from simcell.simulator.bundle import DATA_ROOT

PresetChoice = Literal["fast", "synthetic", "paper", "auto"]
_PRESETS = ("fast", "synthetic", "paper", "auto")


def latest_bundle(root: str | os.PathLike = DATA_ROOT) -> Path:
    """The bundle most recently written under ``root``.

    Raises
    ------
    SimcellError
        When ``root`` holds no bundle.
    """
    root = Path(root)
    manifests = sorted(root.glob("*/manifest.json"), key=lambda p: p.stat().st_mtime)
    if not manifests:
        raise SimcellError(f"no bundle under {root}/; run 'simcell generate' or pass BUNDLE")
    return manifests[-1].parent


def parse_names(text: str | Sequence[str] | None, what: str = "model") -> tuple[str, ...] | None:
    """A comma-separated list (or a sequence) of names, stripped, without duplicates.

    ``None`` (not given) stays ``None``, meaning "the default"; an empty string
    (or only commas) is the empty list. A name given twice is kept once, with a
    :class:`~simcell.SimcellWarning`.

    Examples
    --------
    >>> parse_names("mean_shift, cvae")
    ('mean_shift', 'cvae')
    >>> parse_names("")
    ()
    """
    if text is None:
        return None
    items = text.split(",") if isinstance(text, str) else list(text)
    names = [str(item).strip() for item in items if str(item).strip()]
    unique = tuple(dict.fromkeys(names))
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        warnings.warn(
            f"{what}(s) {', '.join(repeated)} listed more than once; each is run once",
            SimcellWarning,
            stacklevel=2,
        )
    return unique


def resolve_preset(preset: PresetChoice, device: str) -> str:
    """``auto`` is ``paper`` on a CUDA device and ``fast`` on the CPU."""
    if preset not in _PRESETS:
        raise SimcellError(f"preset must be one of {', '.join(_PRESETS)}, got {preset!r}")
    if preset == "auto":
        return "paper" if device.startswith("cuda") else "fast"
    return preset


@dataclass(frozen=True, eq=False)
class EvaluationPlan:
    """A resolved evaluation run: everything decided, nothing trained yet.

    Attributes
    ----------
    bundle : Bundle
        Read (and verified unless asked not to).
    models : tuple of str
        Models to train, without duplicates (empty: none).
    predictions : Path or None
    preset : {"fast", "synthetic", "paper"}
    device : str
        The device models run on (``"cpu"``, ``"cuda"``, ``"cuda:<i>"``).
    seed : int
    tasks : tuple of str or None
        ``None``: every task of the bundle.
    out : Path
        Report directory.
    verified : bool
    overwrite : bool
        Write into a report folder that holds foreign files (kept untouched).
    corruptions : tuple of Corruption
        Corruption conditions of the annotations models see (empty: the scenario's own).
    oracle_samples : int
        Posterior draws behind the oracle's mean (two halves; see
        :func:`simcell.evaluation.evaluate`).
    """

    bundle: Bundle
    models: tuple[str, ...]
    predictions: Path | None
    preset: str
    device: str
    seed: int
    tasks: tuple[str, ...] | None
    out: Path
    verified: bool
    overwrite: bool = False
    corruptions: tuple = ()
    oracle_samples: int = 32

    @property
    def title(self) -> str:
        return f"simcell evaluation of {self.bundle.path}"

    def config(self) -> dict:
        """What ``config.json`` records: the run as it ran (resolved preset and device)."""
        from simcell.models import get_preset

        return {
            "bundle": str(self.bundle.path),
            "bundle_identity": self.bundle.identity,
            "verified": self.verified,
            "models": list(self.models),
            # the hyperparameters every model was trained with, next to its scores
            "model_configs": {
                name: get_preset(name, self.preset).to_dict() for name in self.models
            },
            "predictions": str(self.predictions or ""),
            "preset": self.preset,
            "device": self.device,
            "seed": self.seed,
            "tasks": None if self.tasks is None else list(self.tasks),
            "corruptions": [f"{c.kind}:{c.level}" for c in self.corruptions],
            "oracle_samples": self.oracle_samples,
        }


def plan_evaluation(
    bundle: str | os.PathLike | None = None,
    *,
    models: str | Sequence[str] | None = None,
    predictions: str | os.PathLike | None = None,
    preset: PresetChoice = "auto",
    device: str = "auto",
    seed: int = 0,
    tasks: str | Sequence[str] | None = None,
    out: str | os.PathLike | None = None,
    verify: bool = True,
    overwrite: bool = False,
    corruptions: Sequence[str | tuple] = (),
    oracle_samples: int = 32,
    data_root: str | os.PathLike = DATA_ROOT,
) -> EvaluationPlan:
    """Resolve an evaluation run, refusing bad input before anything is trained.

    Parameters
    ----------
    bundle : path, optional
        The bundle; default: the latest under ``data_root``.
    models : str or sequence of str, optional
        Comma-separated names; ``None``: ``simcell.models.DEFAULT_MODELS``;
        ``""``: no models (predictions alone, or only the reference rows).
    predictions : path, optional
    preset : {"fast", "synthetic", "paper", "auto"}
        ``auto``: ``paper`` on CUDA, ``fast`` on the CPU.
    device : {"auto", "cpu", "cuda", "cuda:<index>"}
        Resolved now: CUDA that torch cannot see is an error, not a CPU run.
    seed : int
    tasks : str or sequence of str, optional
        A subset of the bundle's tasks (comma-separated or a sequence).
    out : path, optional
        Report directory; default ``<bundle>-evaluation`` beside the bundle.
    verify : bool
        Verify the bundle (see :func:`simcell.simulator.read_bundle`).
    overwrite : bool
        Write into a report folder holding files simcell did not write,
        replacing only simcell's own (see :func:`~simcell.evaluation.report.write_report`).
    corruptions : sequence of str or tuple
        ``"KIND:LEVEL"`` (or ``(kind, level)``) conditions applied per task to
        the annotations models see; parsed (and refused) now.
    oracle_samples : int
        Posterior draws behind the oracle's mean, split in two halves (>= 2): the
        oracle's MSE stays unbiased with fewer draws, only noisier. Each draw costs
        one pass over the task's cells; on a ``realistic`` bundle that is minutes.
    data_root : path
        Where to look for the latest bundle.

    Returns
    -------
    EvaluationPlan

    Raises
    ------
    SimcellError
        Unknown model or preset, unavailable device, no or unverifiable bundle.
    """
    from simcell.evaluation.report import check_report_dir
    from simcell.evaluation.tasks import Corruption
    from simcell.models import DEFAULT_MODELS, get_model_class

    conditions = tuple(Corruption.parse(value) for value in corruptions)
    if isinstance(oracle_samples, bool) or not isinstance(oracle_samples, Integral):
        raise SimcellError(f"oracle_samples must be an integer, got {oracle_samples!r}")
    if oracle_samples < 2:
        raise SimcellError(f"oracle_samples must be >= 2 (two halves), got {oracle_samples}")
    resolved_device = resolve_device(device)
    resolved_preset = resolve_preset(preset, resolved_device)
    names = parse_names(models)
    names = tuple(DEFAULT_MODELS) if names is None else names
    for name in names:
        get_model_class(name)  # unknown names fail here, before the bundle is read
    path = Path(bundle) if bundle is not None else latest_bundle(data_root)
    # the report folder is refused before anything is read or trained
    report = (
        Path(out)
        if out is not None
        else path.resolve().with_name(path.resolve().name + "-evaluation")
    )
    check_report_dir(report, overwrite=overwrite, protect=[path])
    read = read_bundle(path, verify=verify, truth_backed=True)  # truth rows read per task
    task_names = parse_names(tasks, "task")
    return EvaluationPlan(
        bundle=read,
        models=names,
        predictions=Path(predictions) if predictions is not None else None,
        preset=resolved_preset,
        device=resolved_device,
        seed=seed,
        tasks=task_names or None,
        out=report,
        verified=verify,
        overwrite=overwrite,
        corruptions=conditions,
        oracle_samples=int(oracle_samples),
    )


def run_evaluation(
    plan: EvaluationPlan, *, progress: Callable[[str], None] | None = None
) -> pd.DataFrame:
    """Score a plan (see :func:`simcell.evaluation.evaluate`) and write its report.

    Returns
    -------
    DataFrame
        The tidy results also written to ``plan.out / "results.csv"``.
    """
    from simcell.evaluation.harness import evaluate
    from simcell.evaluation.report import write_report

    results = evaluate(
        plan.bundle,
        list(plan.models),
        plan.predictions,
        preset=plan.preset,
        device=plan.device,
        seed=plan.seed,
        tasks=None if plan.tasks is None else list(plan.tasks),
        corruptions=list(plan.corruptions) or None,
        oracle_samples=plan.oracle_samples,
        progress=progress,
        progress_bar=progress is None,
    )
    config = {**plan.config(), "timings_s": results.attrs.get("timings", {})}
    write_report(
        results,
        config,
        plan.out,
        plan.title,
        overwrite=plan.overwrite,
        protect=[plan.bundle.path],
    )
    return results
