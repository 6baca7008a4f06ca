"""One training setup, built once: what every later step of a run reads (params, the prepared
data and how it is read, the model spec and start weights, what ``auto`` resolved to, the
process group and the run's account)."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from pipeline.core import paths
from pipeline.core.config import Params, TrainParams
from pipeline.energy import meter_from_params
from pipeline.hardware.memory import reset_peak_memory
from pipeline.hardware.precision import Precision
from pipeline.models import ModelSpec
from pipeline.models.pretrained import StartWeights, resolve_pretrained
from pipeline.prepared.storage import PreparedMeta, read_meta, split_shards
from pipeline.train.accounting import RunAccount
from pipeline.train.feeders import InMemory, Streamed, read_splits
from pipeline.train.policy import Policy, resolve_policy
from pipeline.train.streaming import available_memory_bytes, choose_data_path


@dataclass(frozen=True)
class TrainSetup:
    params: Params
    root: Path
    meta: PreparedMeta
    spec: ModelSpec
    start: StartWeights | None  # model.pretrained's weights, fitted to the model
    data: InMemory | Streamed  # where batches come from, decided once
    data_path: dict[str, str]  # memory | stream, and why
    device: torch.device
    precision: Precision
    policy: Policy
    group: object  # pipeline.train.distributed.Group
    account: RunAccount

    @property
    def checkpoints(self) -> Path:
        return self.root / paths.CHECKPOINT_DIR

    def normalisation(self) -> tuple[tuple, tuple]:
        """torchvision weights bring their own mean/std; otherwise the train split's."""
        if self.start is not None and self.start.info.mean is not None:
            return tuple(self.start.info.mean), tuple(self.start.info.std)
        return self.meta.mean, self.meta.std


def load_data(params: TrainParams, prepared: Path, group) -> tuple[InMemory | Streamed, dict]:
    """The train and val splits: whole tensors (memory path) or their shards (stream path),
    which both follow the train split's shard order (the same batches); and why."""
    splits = {name: split_shards(prepared, name, verify=False) for name in ("train", "val")}
    train = splits["train"]
    path, why = choose_data_path(
        params.data_path, train.count * train.image_bytes, available_memory_bytes()
    )
    if not group.same_everywhere(int(path == "stream")):  # auto read each rank's free memory
        path, why = "stream", f"{why}; other ranks chose otherwise: every rank streams"
    data = read_splits(train, splits["val"], path, params.stream_window_shards)
    return data, {"data_path": path, "reason": why}


def rank_device(train: TrainParams, group) -> TrainParams:
    """Several processes on GPUs: each uses the GPU of its local rank."""
    if group.world_size > 1 and train.device in ("auto", "cuda") and torch.cuda.is_available():
        return train.model_copy(update={"device": f"cuda:{group.local_rank}"})
    return train


def build_setup(params: Params, root: Path, group, account: RunAccount) -> TrainSetup:
    """Read the prepared data, resolve the policy, check the start weights; open the account's
    energy window on the resolved device."""
    meta = read_meta(root / paths.PREPARED_DIR)
    data, data_path = load_data(params.train, root / paths.PREPARED_DIR, group)
    device, precision, policy = resolve_policy(rank_device(params.train, group), data.policy_images)
    policy = data.adjust(policy)
    channels, size, _ = meta.input_shape
    spec = ModelSpec.from_params(
        params.model, in_channels=channels, image_size=size, num_classes=meta.num_classes
    )
    pretrained = params.model.pretrained
    start = resolve_pretrained(spec, pretrained) if pretrained is not None else None
    if group.is_writer:
        print(
            f"train: {spec.arch} on {policy.device_name}, {policy.precision}, "
            f"world size {group.world_size}",
            file=sys.stderr,
        )
    reset_peak_memory(device)
    account.measure(meter_from_params(params.energy, str(device)), device)
    return TrainSetup(
        params, root, meta, spec, start, data, data_path, device, precision, policy, group, account
    )
