"""git and DVC as the driver runs them: no shell, output captured, one line on failure."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from pipeline.cluster.grid import SweepError
from pipeline.cluster.task import error_line
from pipeline.core.errors import first_line

Runner = Callable[[Sequence[str], Path], subprocess.CompletedProcess]


def run_command(args: Sequence[str], cwd: Path) -> subprocess.CompletedProcess:
    """Run ``args`` in ``cwd``; a missing program is a ``SweepError`` naming it."""
    try:
        return subprocess.run(list(args), cwd=cwd, capture_output=True, text=True, check=False)
    except OSError as error:
        raise SweepError(f"cannot run {args[0]}: {first_line(error)}") from None


def dvc_args(*args: str) -> list[str]:
    """This interpreter's DVC, so a sweep never runs another environment's copy."""
    return [sys.executable, "-m", "dvc", *args]


def checked(run: Runner, args: Sequence[str], cwd: Path, what: str) -> str:
    """stdout of a command that must succeed; else ``SweepError``: what failed and why."""
    done = run(args, cwd)
    if done.returncode != 0:
        reason = error_line(f"{done.stdout}\n{done.stderr}") or f"exit {done.returncode}"
        raise SweepError(f"{what} failed: {reason}")
    return done.stdout
