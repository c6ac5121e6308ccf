"""Progress and warnings on stderr, so stdout stays clean for ``--json``; ``--quiet`` silences both.

Every step is one line. On a terminal, a line that ends in ``...`` (a step under way) also gets a spinner with the
elapsed time under it until the next line, so a long export, calibration or parity run never looks hung; in a log
file the lines alone are written. The CLI and the library report through :func:`say` and :func:`warn`; a library
user silences them with ``set_quiet(True)``.
"""

from __future__ import annotations

import atexit
import threading

_STATE = {"quiet": False, "spinner": None}
_LOCK = threading.Lock()


def set_quiet(quiet: bool) -> None:
    """``True``: no progress lines, spinners or warnings (errors are the caller's and still show)."""
    _STATE["quiet"] = bool(quiet)


def is_quiet() -> bool:
    return _STATE["quiet"]


def say(line: str) -> None:
    """One progress line on stderr (nothing under ``--quiet``); a spinner follows a ``...`` line on a terminal."""
    if _STATE["quiet"]:
        return
    with _LOCK:
        _stop_spinner()
        console = _console()
        console.print(line, markup=False, highlight=False, soft_wrap=True)
        if line.rstrip().endswith("...") and console.is_terminal:
            _start_spinner(console, line.rstrip().rstrip(".").strip())


def warn(text: str) -> None:
    """A warning line on stderr (nothing under ``--quiet``)."""
    if _STATE["quiet"]:
        return
    with _LOCK:
        _stop_spinner()
        _console().print(f"[bold yellow]warning:[/] {text}", highlight=False, soft_wrap=True)


def stop() -> None:
    """End a running spinner (before an error line, at exit)."""
    with _LOCK:
        _stop_spinner()


def _console():
    from rich.console import Console

    return Console(stderr=True)


def _start_spinner(console, text: str) -> None:
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    spinner = Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=console,
                       transient=True)
    spinner.add_task(text, total=None)
    spinner.start()
    _STATE["spinner"] = spinner


def _stop_spinner() -> None:
    spinner = _STATE["spinner"]
    if spinner is not None:
        _STATE["spinner"] = None
        spinner.stop()


atexit.register(stop)
