"""One experiment as a Ray task, in a scratch clone on whichever node Ray picked.

Standard library only: the driver ships this module to the workers by value, so a worker needs
Python, git and DVC but not this package; the stage code that runs is the clone's own (each
stage script puts the src/ beside it first on sys.path).

Steps: clone the git remote at the baseline commit; ``dvc exp run --pull --allow-missing -n
<name> -S ...``; ``dvc push`` (the experiment's outputs); ``dvc exp push --no-cache`` (its git
ref). The ref goes last: ``dvc exp push`` alone pushes the ref before the data, so a push cut
short would show an experiment whose outputs nobody can pull. A non-zero exit is a result
(``failed``, with its error line), not an exception: Ray retries only tasks whose worker or node
died, and a retry whose experiment an earlier attempt already pushed reports it, not a second run.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

LOG_TAIL_LINES = 20
# Lines DVC itself prints around a stage's output.
DVC_CHATTER = ("Running stage", "> ", "Reproducing experiment", "WARNING", "Updating lock file",
               "Use `dvc push`", "Ran experiment", "Verifying", "Applying changes")  # fmt: skip


@dataclass(frozen=True)
class TaskSpec:
    """What a worker needs: the experiment, the baseline and where to push."""

    name: str
    set_params: tuple[str, ...]
    git_url: str
    commit: str
    author: tuple[str, str] = ("pipeline-sweep", "pipeline-sweep@localhost")
    scratch_root: str | None = None  # None: the node's temporary folder
    no_gpu: bool = False  # asked for no GPU: hide them all (Ray leaves CUDA_VISIBLE_DEVICES)


@dataclass(frozen=True)
class Result:
    """How one experiment went, where it ran and for how long."""

    name: str
    status: str  # success, failed, or cancelled (the driver's, after Ctrl-C)
    node: str = ""
    gpus: str = ""  # CUDA_VISIBLE_DEVICES as Ray set it for this task
    wall_s: float = 0.0
    started: float = 0.0  # epoch seconds, for spotting tasks that ran at the same time
    error: str = ""
    log_tail: str = ""
    step_s: tuple[tuple[str, float], ...] = ()  # seconds per step: clone, dvc exp run, ...
    notes: tuple[str, ...] = field(default_factory=tuple)


class Board:
    """Which experiment started where: the driver's progress lines read it (a Ray actor)."""

    def __init__(self) -> None:
        self.started: dict[str, tuple[str, str]] = {}

    def start(self, name: str, node: str, gpus: str) -> None:
        self.started[name] = (node, gpus)  # a retry on another node overwrites

    def snapshot(self) -> dict[str, tuple[str, str]]:
        return dict(self.started)


def node_label() -> str:
    """Host name and Ray's node id: two nodes on one host stay apart."""
    try:
        import ray

        node_id = ray.get_runtime_context().get_node_id()[:8]
    except Exception:  # outside Ray (unit tests)
        node_id = ""
    return f"{socket.gethostname()}/{node_id}" if node_id else socket.gethostname()


def _stop(process: subprocess.Popen) -> None:
    """End a step's whole process group (a stage's children too), SIGTERM then SIGKILL."""
    for sig, wait_s in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(wait_s)
            return


def run_step(args: Sequence[str], cwd: Path, log: Path, env: dict[str, str]) -> tuple[int, str]:
    """Run one command, its output appended to ``log``; (exit code, this step's output)."""
    with log.open("a+", encoding="utf-8", errors="replace") as out:
        out.write(f"$ {' '.join(args)}\n")
        out.flush()
        start = out.tell()
        process = subprocess.Popen(
            list(args), cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,  # its own group: a cancel ends the stage's children too
        )  # fmt: skip
        try:
            code = process.wait()
        except BaseException:  # Ray's cancel (KeyboardInterrupt) or the worker shutting down
            _stop(process)
            raise
        out.seek(start)
        return code, out.read()


def error_line(output: str) -> str:
    """The line that says what went wrong: DVC's last ``ERROR`` line, else the last line.

    Where DVC only says a stage failed, the stage's own last line says why.
    """
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    errors = [i for i, line in enumerate(lines) if line.startswith(("ERROR", "error:", "fatal:"))]
    if not errors:
        return lines[-1] if lines else ""
    last = lines[errors[-1]]
    stage = re.match(r"ERROR: failed to reproduce '([^']+)'", last)
    own = [line for line in lines[: errors[-1]] if not line.startswith(DVC_CHATTER)]
    return f"stage '{stage.group(1)}' failed: {own[-1]}" if stage and own else last


def already_pushed(spec: TaskSpec, env: dict[str, str]) -> bool:
    """An earlier attempt of this task (on a node that died since) pushed it."""
    listing = subprocess.run(
        ["git", "ls-remote", spec.git_url, "refs/exps/*"],
        env=env, capture_output=True, text=True, check=False,
    )  # fmt: skip
    return any(line.endswith(f"/{spec.name}") for line in listing.stdout.splitlines())


def steps(spec: TaskSpec, clone: Path) -> list[tuple[str, list[str], Path]]:
    dvc = [sys.executable, "-m", "dvc"]
    sets = [arg for value in spec.set_params for arg in ("-S", value)]
    run = ["exp", "run", "--pull", "--allow-missing", "-n", spec.name, *sets]
    name, email = spec.author
    cloning = ["git", "clone", "--quiet", "--no-checkout", spec.git_url, str(clone)]
    return [
        ("clone", cloning, clone.parent),
        ("checkout", ["git", "checkout", "--quiet", "--detach", spec.commit], clone),
        ("git config", ["git", "config", "user.name", name], clone),
        ("git config", ["git", "config", "user.email", email], clone),
        ("dvc exp run", [*dvc, *run], clone),
        ("dvc push", [*dvc, "push"], clone),
        ("dvc exp push", [*dvc, "exp", "push", "--no-cache", "origin", spec.name], clone),
    ]  # fmt: skip


def task_env(no_gpu: bool) -> dict[str, str]:
    """The worker's environment, this Python first on PATH (dvc.yaml's ``python stages/...``).

    Ray sets CUDA_VISIBLE_DEVICES for a task that asks for GPUs and leaves it alone for one that
    asks for none: an empty value keeps such an experiment (``device: auto``) off the GPUs that
    other tasks were given.
    """
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    if no_gpu:
        env["CUDA_VISIBLE_DEVICES"] = ""
    return env


def run_experiment(spec: TaskSpec, board=None) -> Result:
    """The Ray task: one experiment from clone to push; never raises for a failed experiment."""
    began, node, env = time.time(), node_label(), task_env(spec.no_gpu)
    gpus = env.get("CUDA_VISIBLE_DEVICES", "")
    if board is not None:
        board.start.remote(spec.name, node, gpus)
    done = {"name": spec.name, "node": node, "gpus": gpus, "started": began}
    if already_pushed(spec, env):
        notes = ("pushed by an earlier attempt of this task",)
        return Result(status="success", wall_s=time.time() - began, notes=notes, **done)
    scratch = Path(tempfile.mkdtemp(prefix=f"pipeline-sweep-{spec.name}-", dir=spec.scratch_root))
    log = scratch / "log.txt"
    timings: list[tuple[str, float]] = []
    try:
        for what, args, cwd in steps(spec, scratch / "clone"):
            step_began = time.monotonic()
            code, output = run_step(args, cwd, log, env)
            timings.append((what, time.monotonic() - step_began))
            if code != 0:
                done["error"] = f"{what}: {error_line(output) or f'exit {code}'}"
                break
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-LOG_TAIL_LINES:])
        status = "failed" if "error" in done else "success"
        return Result(
            status=status, wall_s=time.time() - began, log_tail=tail, step_s=tuple(timings), **done
        )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
