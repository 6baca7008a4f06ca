"""pipeline-queue-gpus: one ``dvc queue start`` worker per visible GPU, each pinned to its GPU.

Why it works this way (the ``dvc queue start`` docs, and the source of dvc 3.67):

* ``dvc queue start -j N`` treats N as the number of workers wanted: it starts those of workers
  1..N that are not running and stops none. So ``-j 1``, ``-j 2``, ... ``-j k`` add one each.
* The docs do not say which environment a worker gets; the source does. A worker
  (``dvc exp queue-worker``) is spawned from the ``dvc queue start`` process with no environment
  override (dvc_task ``ManagedProcess``, ``env=None``), and it runs each experiment
  (``dvc exp exec-run``) the same way. So ``CUDA_VISIBLE_DEVICES=i`` in the environment of the
  i-th ``dvc queue start`` pins every experiment that worker runs to GPU i.
* A worker counts as running only once celery hears from it: asking for ``-j i+1`` before worker
  i is seen would start a second worker i. So after each start we wait until
  ``dvc queue status`` counts the new worker.
* Workers already running have an unknown pinning, so we refuse to add to them
  (``dvc queue stop`` first).
* A worker exits ~10 s after the queue empties, so queue experiments first
  (``dvc exp run --queue -S ...``); with nothing queued this command starts nothing.

GPUs: the entries of CUDA_VISIBLE_DEVICES when it is set (to use a subset), else NVML's count
(indices 0..n-1 cover every GPU whatever order CUDA numbers them in). With no GPU, one unpinned
worker is started and the command says so.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

Runner = Callable[..., subprocess.CompletedProcess[str]]
_WORKERS = re.compile(r"Worker status: (\d+) active, (\d+) idle")
_STARTED = re.compile(r"Started '(\d+)' new")
_QUEUED_TASK = re.compile(r"\sQueued\s*$", re.MULTILINE)


def nvml_gpu_count(nvml: Any = None) -> int:
    """GPUs NVML sees; 0 without the library or a driver."""
    try:
        if nvml is None:
            import pynvml as nvml  # from the nvidia-ml-py package
        nvml.nvmlInit()
    except Exception:  # ImportError, or NVMLError when there is no driver
        return 0
    try:
        return int(nvml.nvmlDeviceGetCount())
    finally:
        nvml.nvmlShutdown()


def gpu_ids(
    environ: Mapping[str, str] = os.environ, count: Callable[[], int] = nvml_gpu_count
) -> list[str]:
    """What each worker's CUDA_VISIBLE_DEVICES will be: one entry per GPU."""
    visible = environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [entry.strip() for entry in visible.split(",") if entry.strip()]
    return [str(index) for index in range(count())]


def dvc(
    args: Sequence[str],
    repo: Path | None,
    env: Mapping[str, str] | None = None,
    run: Runner = subprocess.run,
) -> str:
    """Run this interpreter's DVC (no shell); its stdout, or SystemExit with its stderr."""
    command = [sys.executable, "-m", "dvc", *args]
    # Files, not pipes: the worker daemon that `queue start` forks inherits them, and reading a
    # pipe to its end would wait until that worker exits.
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        done = run(command, cwd=repo, env=env, stdout=out, stderr=err, text=True, check=False)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if done.returncode != 0:
        raise SystemExit(f"dvc {' '.join(args)} failed ({done.returncode}): {stderr.strip()}")
    return stdout


def worker_count(status: str) -> int:
    """Active + idle workers from ``dvc queue status`` output."""
    match = _WORKERS.search(status)
    if match is None:
        raise SystemExit(f"cannot read the worker count from dvc queue status:\n{status}")
    return int(match.group(1)) + int(match.group(2))


def _started(output: str) -> int:
    """How many workers ``dvc queue start`` says it started."""
    match = _STARTED.search(output)
    return int(match.group(1)) if match else 0


def _wait_for_workers(
    wanted: int, repo: Path | None, run: Runner, wait_s: float, poll_s: float
) -> None:
    deadline = time.monotonic() + wait_s
    while worker_count(dvc(["queue", "status"], repo, run=run)) < wanted:
        if time.monotonic() > deadline:
            raise SystemExit(f"worker {wanted} did not register within {wait_s:g} s")
        time.sleep(poll_s)


def start_gpu_workers(
    gpus: Sequence[str],
    repo: Path | None = None,
    run: Runner = subprocess.run,
    wait_s: float = 60.0,
    poll_s: float = 0.5,
) -> list[str]:
    """Start worker i with CUDA_VISIBLE_DEVICES=gpus[i-1]; one unpinned worker when no GPU."""
    status = dvc(["queue", "status"], repo, run=run)
    if worker_count(status) > 0:
        raise SystemExit("queue workers are already running: `dvc queue stop` them first")
    if not _QUEUED_TASK.search(status):
        return ["nothing queued: add experiments with `dvc exp run --queue` first"]
    if not gpus:
        dvc(["queue", "start", "-j", "1"], repo, run=run)
        return ["no GPU visible: started a single worker (experiments run on CPU)"]
    messages = []
    for number, gpu in enumerate(gpus, start=1):
        env = {**os.environ, "CUDA_VISIBLE_DEVICES": gpu}
        started = _started(dvc(["queue", "start", "-j", str(number)], repo, env=env, run=run))
        _wait_for_workers(number, repo, run, wait_s, poll_s)
        messages.append(f"worker {number}: CUDA_VISIBLE_DEVICES={gpu}")
        if started > 1:  # an earlier worker had already exited (queue ran dry) and was restarted
            messages.append(f"warning: {started} workers now share CUDA_VISIBLE_DEVICES={gpu}")
    return messages


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="pipeline-queue-gpus", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--repo", type=Path, help="DVC project folder (default: here)")
    parser.add_argument("--wait-s", type=float, default=60.0, help="wait per worker to register")
    args = parser.parse_args(argv)
    for message in start_gpu_workers(gpu_ids(), args.repo, wait_s=args.wait_s):
        print(message)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
