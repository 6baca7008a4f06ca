"""The train stage's entry point: one process, or a DDP group started by torch's elastic agent.

``python stages/train.py`` (what ``dvc repro`` and ``dvc exp run`` run) reads
``train.distributed``. With one process in total it trains in place. With more, it becomes the
node's elastic agent, the machinery behind ``torchrun``: it starts ``nproc_per_node`` workers,
meets the other nodes at the c10d rendezvous, restarts the whole group up to ``max_restarts``
times when a worker dies (training resumes from the last checkpoint), and turns a final failure
into the stage's one-line error. A process that is already a worker (``torchrun ...
stages/train.py`` by hand) just joins its group and trains.
"""

from __future__ import annotations

import logging
import re
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from pipeline.core.config import DistributedParams, Params
from pipeline.core.errors import PipelineError, describe, first_line
from pipeline.hardware.device import resolve_device
from pipeline.train.distributed import is_worker, join_group, leave_group
from pipeline.train.run import run_training

RUN_ID = "pipeline-train"  # the rendezvous id; every node of one run must use the same
# A worker that loses a peer fails too (gloo: "Connection reset by peer"; NCCL: "remote process
# exited or there was a network error"); such failures are consequences, not the cause.
_LOST_PEER = re.compile(r"by peer|remote process|network error|communicator was aborted", re.I)
LOST_PEER_GRACE_S = 5.0


def _drop_exit_traceback(record: logging.LogRecord) -> bool:
    """The agent logs a worker that simply exited (os._exit, a signal, our one-line errors) with
    the agent's own traceback, which says nothing; keep its first line. A worker's exception
    keeps its traceback: it is the only place that traceback is printed."""
    error = record.exc_info[1] if record.exc_info else None
    if type(error).__name__ == "ProcessExitedException":
        record.exc_info, record.exc_text = None, None
    return True


def processes_per_node(dist: DistributedParams, device: str) -> int:
    """nproc_per_node, with auto = every visible GPU when training on CUDA, else 1."""
    if dist.nproc_per_node != "auto":
        return dist.nproc_per_node
    if device.startswith("cuda:") or resolve_device(device).type != "cuda":
        return 1
    return torch.cuda.device_count()


def check_devices(device: str, nproc: int) -> None:
    """Each worker takes the GPU of its local rank, so one pinned GPU cannot be shared out."""
    if device.startswith("cuda:"):
        raise PipelineError(
            f"train.device {device!r} pins one GPU, but train.distributed asks for {nproc} "
            "processes per node; use device auto or cuda (process i takes GPU i)"
        )
    if resolve_device(device).type == "cuda" and nproc > torch.cuda.device_count():
        raise PipelineError(
            f"train.distributed.nproc_per_node={nproc} but only {torch.cuda.device_count()} "
            "GPU(s) are visible; use auto"
        )


def train(params: Params, root: Path = Path(".")) -> dict[str, Any] | None:
    """What stages/train.py runs: the train record of global rank 0 when it ran on this node
    (this process or one of its workers), else None (another node, or a worker other than 0)."""
    if is_worker():
        return run_worker(params, root)
    dist = params.train.distributed
    nproc = processes_per_node(dist, params.train.device)
    if nproc * dist.nnodes == 1:
        return run_training(params, root)
    check_devices(params.train.device, nproc)
    return launch(params, root, nproc)


def run_worker(params: Params, root: Path) -> dict[str, Any] | None:
    group = join_group(resolve_device(params.train.device).type)
    try:
        return run_training(params, root, group)
    finally:
        leave_group()


def _elastic_worker(raw: dict, root: str) -> dict[str, Any] | None:
    """A worker's body under the agent (module level: spawn pickles it by name). Its return
    value travels back to the launcher, which hands rank 0's record to the stage script."""
    from torch.distributed.elastic.multiprocessing.errors import get_error_handler

    try:
        return run_worker(Params.model_validate(raw), Path(root))
    except PipelineError as error:
        # The agent's error file carries the message to the launcher's one-line error; no
        # traceback for a user error.
        get_error_handler().record_exception(error)
        sys.exit(1)
    except RuntimeError as error:
        if _LOST_PEER.search(str(error)):
            # A peer died first. The agent names the lowest failed local rank, so give it time
            # to see that worker's exit (it stops this one meanwhile) before failing as well.
            time.sleep(LOST_PEER_GRACE_S)
        raise


def launch(params: Params, root: Path, nproc: int) -> dict[str, Any] | None:
    """Start this node's workers; rank 0's train record if it ran here (keys: global ranks)."""
    from torch.distributed.elastic.multiprocessing import DefaultLogsSpecs
    from torch.distributed.launcher.api import LaunchConfig

    dist = params.train.distributed
    # Like torchrun --standalone: port 0 lets the c10d store pick a free port on this node.
    endpoint = dist.rdzv_endpoint or "localhost:0"
    logging.getLogger("torch.distributed.elastic.multiprocessing.api").addFilter(
        _drop_exit_traceback
    )
    # CUDA cannot be used in forked children; on CPU, fork skips each worker's ~4 s of imports.
    start_method = "spawn" if resolve_device(params.train.device).type == "cuda" else "fork"
    with tempfile.TemporaryDirectory(prefix="train-workers-") as logs:
        config = LaunchConfig(
            min_nodes=dist.nnodes,
            max_nodes=dist.nnodes,
            nproc_per_node=nproc,
            run_id=RUN_ID,
            rdzv_backend="c10d",
            rdzv_endpoint=endpoint,
            max_restarts=dist.max_restarts,
            logs_specs=DefaultLogsSpecs(log_dir=logs),  # error files only; output goes to stderr
            start_method=start_method,
        )
        results = run_agent(config, params, root)
    return results.get(0)


def run_agent(config, params: Params, root: Path) -> dict[int, Any]:
    """Run the elastic agent with ``config``; its failures become one-line PipelineErrors."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.elastic.rendezvous.api import RendezvousError
    from torch.distributed.launcher.api import elastic_launch

    endpoint = config.rdzv_endpoint
    try:
        return elastic_launch(config, _elastic_worker)(params.model_dump(mode="json"), str(root))
    except ChildFailedError as error:
        raise PipelineError(failure_message(error, config.max_restarts)) from None
    except RendezvousError as error:  # e.g. another node never came, or is unreachable
        raise PipelineError(
            f"rendezvous at {endpoint} failed ({describe(error)}); check "
            "train.distributed.rdzv_endpoint and that all nnodes nodes started"
        ) from None
    except ValueError as error:
        # torch's endpoint parser: params validation stops these first, this is the backstop.
        # Its message quotes the endpoint, newlines and all, so say it in our own words.
        if "rendezvous endpoint" not in str(error):
            raise
        part = "port" if "port number" in str(error) else "host"
        raise PipelineError(
            f"train.distributed.rdzv_endpoint {endpoint!r}: torch refused its {part}; use "
            "host:port, e.g. node0.example.com:29400 or [::1]:29400"
        ) from None


def _recorded(failure) -> str:
    """The worker's own recorded error, first line; empty when it left none."""
    message = failure.message
    if isinstance(message, dict):
        message = message.get("message", "")
    if failure.error_file == "<N/A>" or not message:
        return ""
    return first_line(str(message))


def root_cause(failures: dict) -> tuple[int, Any]:
    """The failure that started it: a recorded error other than a lost peer, else a worker that
    died without one (os._exit, a crash; not the agent's SIGTERM), else the earliest."""

    def order(item):
        rank, failure = item
        recorded = _recorded(failure)
        if recorded and not _LOST_PEER.search(recorded):
            kind = 0
        elif not recorded and failure.exitcode != -signal.SIGTERM:
            kind = 1
        else:
            kind = 2
        return kind, failure.timestamp, rank

    return min(failures.items(), key=order)


def failure_message(error, max_restarts: int) -> str:
    """One line: the worker whose failure started it, how it ended, and its recorded error."""
    rank, failure = root_cause(error.failures)
    how = (
        f"was killed by {failure.signal_name()}"
        if failure.exitcode < 0
        else f"exited with code {failure.exitcode}"
    )
    text = f"training worker rank {rank} {how}"
    if max_restarts:
        text += f" (after {max_restarts} restart(s))"
    recorded = _recorded(failure)
    return text + (f": {recorded}" if recorded else "; its output is above")
