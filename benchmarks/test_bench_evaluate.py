"""Wall time and peak memory of ``simcell evaluate`` with the default models.

The README's first command is a newcomer's first experience; the target (issue
10) on full-size synthetic2 is <= 10 minutes and <= 4 GiB on a 2-core, 24 GiB
machine. Run it on a full-size bundle with::

    simcell generate --scenario synthetic2 -o /tmp/s2
    SIMCELL_BENCH_BUNDLE=/tmp/s2 pytest benchmarks/test_bench_evaluate.py -m slow \\
        --benchmark-enable -s

Without ``SIMCELL_BENCH_BUNDLE`` it runs on a reduced synthetic2 (4,000 cells x
1,000 genes) generated for the run. Either way the reference measured in the
same run is the identity-only evaluation (``--models identity``): the
harness's own floor (preprocessing, oracle, metrics of one prediction per
task), so ``ratio_to_identity`` says what the default models cost on top of
it, whatever the machine's speed. The time of each step (``<task>: <step>``
progress messages, summed over tasks) goes to ``extra_info`` and the printout.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import pytest

TARGET_S, TARGET_GIB = 600.0, 4.0
STEP = re.compile(r"^(task_\w+): (.+?)\s*$")


def _run_evaluate(bundle: Path, out: Path, *extra: str) -> dict:
    """Run ``simcell evaluate`` in a child process; wall time, its own peak RSS, step times."""
    command = [sys.executable, "-m", "simcell", "evaluate", str(bundle), "-o", str(out), *extra]
    start = time.perf_counter()
    child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    steps: dict[str, float] = defaultdict(float)
    # before the first message: start-up and reading the bundle; the last step
    # also holds writing the report
    current, since, tail = "start-up", start, []
    assert child.stderr is not None
    for line in child.stderr:  # progress messages arrive as each step starts
        now = time.perf_counter()
        tail = (tail + [line])[-20:]
        match = STEP.match(line)
        if match:
            steps[current] += now - since
            current, since = match.group(2), now
    # wait4 gives this child's own rusage (RUSAGE_CHILDREN would be the max over children)
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    elapsed = time.perf_counter() - start
    steps[current] += elapsed - (since - start)
    assert child.returncode == 0, "".join(tail)
    return {"wall_s": elapsed, "peak_rss_gib": usage.ru_maxrss / 2**20, "steps_s": dict(steps)}


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    given = os.environ.get("SIMCELL_BENCH_BUNDLE")
    if given:
        return Path(given)
    path = tmp_path_factory.mktemp("bench-evaluate") / "synthetic2-reduced"
    command = [sys.executable, "-m", "simcell", "generate", "--scenario", "synthetic2"]
    command += ["--n-cells", "4000", "--set", "n_genes=1000", "-o", str(path), "--quiet"]
    subprocess.run(command, check=True)
    return path


@pytest.mark.slow
def test_default_evaluate_time_and_memory(benchmark, bundle, tmp_path) -> None:
    # the default run first, while this process is small (see test_bench_simulator.py)
    measured = benchmark.pedantic(
        lambda: _run_evaluate(bundle, tmp_path / "default"), rounds=1, iterations=1
    )
    reference = _run_evaluate(bundle, tmp_path / "identity", "--models", "identity")
    ratio = measured["wall_s"] / reference["wall_s"]
    benchmark.extra_info.update(
        {
            "bundle": str(bundle),
            **measured,
            "identity_only_wall_s": reference["wall_s"],
            "identity_only_peak_rss_gib": reference["peak_rss_gib"],
            "ratio_to_identity": ratio,
        }
    )
    steps = ", ".join(f"{name} {seconds:.0f} s" for name, seconds in measured["steps_s"].items())
    met = measured["wall_s"] <= TARGET_S and measured["peak_rss_gib"] <= TARGET_GIB
    print(
        f"\nsimcell evaluate {bundle}: {measured['wall_s']:.0f} s, peak "
        f"{measured['peak_rss_gib']:.2f} GiB (target {TARGET_S:.0f} s, {TARGET_GIB:.0f} GiB: "
        f"{'met' if met else 'not met'}); identity only {reference['wall_s']:.0f} s, "
        f"{reference['peak_rss_gib']:.2f} GiB; ratio {ratio:.1f}\nper step: {steps}"
    )
    assert ratio >= 1.0  # a sanity bound only: the targets are read from the report
