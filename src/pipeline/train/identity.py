"""What a run is, for its checkpoints: the math of the run, the data it saw, the code that ran it
and what ``auto`` resolved to. A checkpoint is resumed only by the run with its fingerprint."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from pipeline.core.config import Params
from pipeline.core.io import sha256_json
from pipeline.core.versioning import code_version
from pipeline.prepared.storage import split_shards

# Train params that never change the batches or the math: left out of the fingerprint.
NOT_THE_MATH = {
    "device",
    "precision",
    "data_path",  # memory and stream give the same batches
    "data_on_device",
    "checkpoint_every",
    "num_workers",
    "auto_batch_size",
    "distributed",
    "stream_prefetch_batches",
}


@dataclass(frozen=True)
class RunIdentity:
    """What a checkpoint must match to be resumed (``fingerprint``: params, data, code and what
    ``auto`` resolved to), and the same without the resolved choices (``base``), so that a
    checkpoint of this run made under other choices is recognised and the log says why."""

    fingerprint: str
    base: str
    resolved: dict[str, str]  # device kind, precision, CPU profile

    def stamp(self) -> dict[str, Any]:
        """What every checkpoint of this run carries besides its state."""
        return {"fingerprint": self.fingerprint, "base": self.base, "resolved": self.resolved}


def prepared_hashes(prepared: Path) -> dict[str, list[str]]:
    """Every train and val shard's sha256, checked against meta.json's index (one read pass)."""
    return {name: split_shards(prepared, name).verify() for name in ("train", "val")}


def resolved_choices(device: torch.device, policy) -> dict[str, str]:
    """What ``auto`` resolved to on this machine, which a resumed run must share: the device
    kind, the precision (``tf32`` where fp32 runs on TF32 units) and the CPU profile."""
    return {"device": device.type, "precision": policy.precision, "cpu": policy.cpu}


def fingerprint(
    params: Params,
    batch_size: int,
    data: dict[str, str],
    world_size: int = 1,
    resolved: dict[str, str] | None = None,
) -> str:
    """What a checkpoint must match to be resumed: the math of the run, the data it saw
    (``data``: :func:`prepared_hashes`), the code that ran it (docs/architecture.md says
    why the code is in) and what ``auto`` resolved to (``resolved``: the params' ``device``
    and ``precision`` as written are left out, ``cuda:1`` and ``auto`` alike)."""
    train = params.train.model_dump(exclude=NOT_THE_MATH)
    train["batch_size"] = batch_size
    train["effective_batch_size"] = batch_size * params.train.grad_accumulation * world_size
    if params.train.distributed.sync_batchnorm:
        train["sync_batchnorm"] = True
    if world_size > 1:  # shards and global batch; absent for one process, so old checkpoints match
        train["world_size"] = world_size
    payload = {
        "seed": params.seed,
        "train": train,
        "model": params.model.model_dump(),
        "data": data,
        "code": code_version(),
    }
    if resolved is not None:
        payload["resolved"] = resolved
    return sha256_json(payload)


class RunIdentities:
    """The identity of this setup's run at any batch size (the OOM back-off changes it)."""

    def __init__(self, setup) -> None:
        self.params, self.world_size = setup.params, setup.group.world_size
        self.data: dict = dict(setup.data_hashes)
        if setup.start is not None:  # the same path may later hold other weights: resume on these
            self.data["pretrained"] = setup.start.info.sha256
        self.resolved = resolved_choices(setup.device, setup.policy)

    def at(self, batch_size: int) -> RunIdentity:
        def of(resolved):
            return fingerprint(self.params, batch_size, self.data, self.world_size, resolved)

        return RunIdentity(of(self.resolved), of(None), self.resolved)
