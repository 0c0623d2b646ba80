"""The ``simcell`` click group."""

from __future__ import annotations

import logging
import signal
import sys
import threading

import click

import simcell
from simcell._atomic import clear_stop, request_stop
from simcell.cli.evaluate import evaluate
from simcell.cli.export import export
from simcell.cli.fit import fit
from simcell.cli.generate import generate, scenarios
from simcell.cli.study import study


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(simcell.__version__, prog_name="simcell")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
def main(verbose: int) -> None:
    """simcell: simulate scRNA-seq with exact counterfactuals and score models on it."""
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    _stop_on_signals(click.get_current_context())


def _on_signal(signum: int, frame) -> None:
    request_stop()  # survives even if the KeyboardInterrupt below is swallowed
    raise KeyboardInterrupt


def _quiet_interrupts(unraisable) -> None:
    """A signal that lands in a finaliser or weakref callback cannot propagate:
    Python would print its traceback and go on. The stop flag is already set, so
    the command stops at its next check; print nothing."""
    if not isinstance(unraisable.exc_value, KeyboardInterrupt):
        sys.__unraisablehook__(unraisable)


def _stop_on_signals(ctx: click.Context) -> None:
    """Ctrl-C and SIGTERM stop the command: staging folders are removed, nothing
    is published, the exit status is non-zero. Restored when the command ends."""
    if threading.current_thread() is not threading.main_thread():
        return
    clear_stop()
    previous_hook = sys.unraisablehook
    sys.unraisablehook = _quiet_interrupts
    ctx.call_on_close(lambda: setattr(sys, "unraisablehook", previous_hook))
    for signum in (signal.SIGINT, signal.SIGTERM):
        previous = signal.signal(signum, _on_signal)
        ctx.call_on_close(lambda signum=signum, previous=previous: signal.signal(signum, previous))


main.add_command(generate)
main.add_command(scenarios)
main.add_command(evaluate)
main.add_command(export)
main.add_command(study)
main.add_command(fit)
