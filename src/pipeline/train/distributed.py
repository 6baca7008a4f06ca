"""Who this process is in a (possibly one-process) training group, and how a worker joins one.

A worker is any process started by torch's elastic agent: by ``pipeline.train.launch`` (what
``python stages/train.py`` does when ``train.distributed`` asks for more than one process) or by
``torchrun`` by hand. The agent puts RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE,
MASTER_ADDR/PORT and TORCHELASTIC_RESTART_COUNT in each worker's environment.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from pipeline.core.errors import PipelineError

# Testing hook, not a feature: PIPELINE_FAULT_INJECT="rank=1,epoch=2" makes rank 1 die with
# os._exit(1) right after epoch 2's checkpoint is on disk ("rank=1,epoch=2,batch=5": after
# batch 5 of epoch 2, and its batch checkpoint if there is one), on the group's first attempt
# only (TORCHELASTIC_RESTART_COUNT == 0), so a restarted group can show that it resumes.
FAULT_ENV = "PIPELINE_FAULT_INJECT"


@dataclass(frozen=True)
class Group:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_writer(self) -> bool:
        """Only rank 0 writes outputs and checkpoints."""
        return self.rank == 0

    def all_reduce(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.world_size > 1:
            torch.distributed.all_reduce(tensor)
        return tensor

    def barrier(self) -> None:
        if self.world_size > 1:
            torch.distributed.barrier()

    def same_everywhere(self, value: int) -> bool:
        """Whether every rank holds the same ``value`` (one small all-reduce)."""
        if self.world_size == 1:
            return True
        device = "cuda" if torch.distributed.get_backend() == "nccl" else "cpu"  # NCCL: GPU only
        both = torch.tensor([value, -value], dtype=torch.long, device=device)
        torch.distributed.all_reduce(both, op=torch.distributed.ReduceOp.MAX)
        return int(both[0]) == -int(both[1])

    def all_gather(self, tensor: torch.Tensor) -> list[torch.Tensor]:
        """Every rank's ``tensor`` (the same shape on all ranks), in rank order, on the CPU."""
        if self.world_size == 1:
            return [tensor]
        device = "cuda" if torch.distributed.get_backend() == "nccl" else "cpu"  # NCCL: GPU only
        mine = tensor.to(device)
        parts = [torch.empty_like(mine) for _ in range(self.world_size)]
        torch.distributed.all_gather(parts, mine)
        return [part.cpu() for part in parts]

    def gather_rng_states(self, local: dict[str, torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        """Every rank's RNG states (uint8 tensors), in rank order: what a checkpoint stores so
        that each rank resumes with its own generators. A collective: every rank must call it."""
        keys = sorted(local)
        sizes = [local[key].numel() for key in keys]
        flat = torch.cat([local[key].reshape(-1) for key in keys])
        if not self.same_everywhere(len(flat)):
            raise PipelineError(
                "ranks hold RNG states of different sizes; are their devices alike?"
            )
        return [
            {key: part.clone() for key, part in zip(keys, row.split(sizes), strict=True)}
            for row in self.all_gather(flat)
        ]


SINGLE = Group()


def is_worker(environ: Mapping[str, str] = os.environ) -> bool:
    """True inside a process started by torchrun or the elastic agent."""
    return all(key in environ for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))


# What a process that merely inherited a launcher's variables should do instead.
_STRAY_HINT = "set by a launcher? unset RANK, WORLD_SIZE and LOCAL_RANK to train in one process"
_MAX_INT_DIGITS = 9  # far above any group; keeps torch's C++ int from overflowing


def _env_int(environ: Mapping[str, str], name: str, low: int, high: int | None = None) -> int:
    """``environ[name]`` as an integer in [low, high), or a one-line error naming it."""
    text = environ.get(name, "")
    # ASCII digits only: int() also reads ' 1', '+1', '1_0' and full-width digits.
    if text.isascii() and text.isdigit() and len(text) <= _MAX_INT_DIGITS:
        value = int(text)
        if value >= low and (high is None or value < high):
            return value
    bound = f"from {low} to {high - 1}" if high is not None else f"{low} or more"
    shown = f"{name}={text[:40] + ('...' if len(text) > 40 else '')!r}"
    if name not in environ:
        shown = f"{name} is not set"
    raise PipelineError(f"{shown}: expected an integer {bound}; {_STRAY_HINT}")


def worker_identity(environ: Mapping[str, str] = os.environ) -> Group:
    """The group a worker's environment describes, checked before torch reads it: stray or
    garbled variables give a one-line error instead of a traceback from deep in torch."""
    world_size = _env_int(environ, "WORLD_SIZE", 1)
    rank = _env_int(environ, "RANK", 0, world_size)
    local_rank = _env_int(environ, "LOCAL_RANK", 0, world_size)
    if "LOCAL_WORLD_SIZE" in environ:  # optional: join_group reads it for CPU threads
        _env_int(environ, "LOCAL_WORLD_SIZE", 1)
    if not environ.get("MASTER_ADDR", "").strip():
        raise PipelineError(
            f"RANK={environ['RANK']!r} is set but MASTER_ADDR is not; {_STRAY_HINT}"
        )
    _env_int(environ, "MASTER_PORT", 1, 65536)
    return Group(rank, world_size, local_rank)


def threads_per_process(local_world_size: int, cores: int | None = None) -> int:
    """CPU threads each worker may use so that the workers of one node share its cores."""
    cores = cores or len(os.sched_getaffinity(0))
    return max(1, cores // max(1, local_world_size))


def join_group(device_type: str, environ: Mapping[str, str] = os.environ) -> Group:
    """Initialise the default process group from the agent's environment: NCCL on GPUs, gloo
    on CPU. Each process owns one GPU (its local rank); CPU workers split the cores."""
    group = worker_identity(environ)
    if device_type == "cuda":
        if group.local_rank >= torch.cuda.device_count():
            raise PipelineError(
                f"local rank {group.local_rank} has no GPU: only {torch.cuda.device_count()} "
                "visible; lower train.distributed.nproc_per_node"
            )
        torch.cuda.set_device(group.local_rank)  # before NCCL starts, so it binds this GPU
        backend, bound = "nccl", {"device_id": torch.device("cuda", group.local_rank)}
    else:
        torch.set_num_threads(threads_per_process(int(environ.get("LOCAL_WORLD_SIZE", "1"))))
        backend, bound = "gloo", {}
    torch.distributed.init_process_group(
        backend,
        store=attempt_store(environ),
        rank=group.rank,
        world_size=group.world_size,
        **bound,
    )
    return group


def attempt_store(environ: Mapping[str, str] = os.environ) -> torch.distributed.Store:
    """The rendezvous store, under a prefix of its own for each restart of the group.

    torch 2.14's agent keeps one TCP store for every restart and env:// adds no per-attempt
    prefix, so a restarted worker can read the address a dead worker published and fail to
    connect (seen here about one restart in three). A fresh namespace per attempt avoids it.
    """
    store, _rank, _world = next(torch.distributed.rendezvous("env://"))
    attempt = environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    return torch.distributed.PrefixStore(f"/pipeline/attempt_{attempt}", store)


def leave_group() -> None:
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def parse_fault(text: str) -> tuple[int, int, int | None]:
    """``rank=R,epoch=E[,batch=B]`` -> (R, E, B or None)."""
    try:
        fields = dict(part.split("=", 1) for part in text.split(","))
        batch = int(fields["batch"]) if "batch" in fields else None
        return int(fields["rank"]), int(fields["epoch"]), batch
    except (KeyError, ValueError) as error:
        raise PipelineError(f"{FAULT_ENV}={text!r}: expected rank=R,epoch=E[,batch=B]") from error


def maybe_inject_fault(
    group: Group, epoch: int, batch: int | None = None, environ: Mapping[str, str] = os.environ
) -> None:
    """The testing hook described at FAULT_ENV; does nothing unless that variable is set."""
    text = environ.get(FAULT_ENV)
    if not text or environ.get("TORCHELASTIC_RESTART_COUNT", "0") != "0":
        return
    if parse_fault(text) == (group.rank, epoch, batch):
        where = f"batch {batch} of epoch {epoch}" if batch is not None else f"epoch {epoch}"
        print(f"train: {FAULT_ENV}: rank {group.rank} exits after {where}", file=sys.stderr)
        sys.stderr.flush()
        os._exit(1)
