"""One training setup, built once: what every later step of a run reads (params, the prepared
data and how it is read, the model spec, start weights and the initial model, what ``auto``
resolved to, the process group and the run's account)."""

from __future__ import annotations

import copy
import random
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from pipeline.core import paths
from pipeline.core.config import Params, TrainParams
from pipeline.energy import meter_from_params
from pipeline.hardware.memory import available_memory_bytes, reset_peak_memory
from pipeline.hardware.precision import Precision
from pipeline.models import ModelSpec, build_model
from pipeline.models.parts import head_parameter_names
from pipeline.models.preprocess import WithPreprocessing
from pipeline.models.pretrained import StartWeights, resolve_pretrained
from pipeline.prepared.storage import PreparedMeta, read_meta, split_shards
from pipeline.train.accounting import RunAccount
from pipeline.train.feeders import InMemory, StepSetup, Streamed, read_splits
from pipeline.train.identity import prepared_hashes
from pipeline.train.loop import Trainer
from pipeline.train.policy import Policy, resolve_policy


@dataclass(frozen=True)
class TrainSetup:
    params: Params
    root: Path
    meta: PreparedMeta
    spec: ModelSpec
    start: StartWeights | None  # model.pretrained's weights, fitted to the model
    model: nn.Module  # the initial weights (start weights loaded) with preprocessing: copied
    head: frozenset[str]  # the classifier head's parameter names in ``model``
    normalisation: tuple[tuple, tuple]  # (mean, std) of the model's input
    data: InMemory | Streamed  # where batches come from, decided once
    data_path: dict[str, str]  # memory | stream, and why
    data_hashes: dict[str, list[str]]  # every train and val shard's sha256, checked
    device: torch.device
    precision: Precision
    policy: Policy
    group: object  # pipeline.train.distributed.Group
    account: RunAccount

    @property
    def checkpoints(self) -> Path:
        return self.root / paths.CHECKPOINT_DIR

    def trainer(self, batch_size: int) -> Trainer:
        """A trainer at ``batch_size`` (the OOM back-off retries smaller): every attempt starts
        from the same initial weights and draws the same numbers."""
        seed_everything(self.params.seed)
        train = self.params.train.model_copy(update={"batch_size": batch_size})
        group, policy = self.group, self.policy
        step = StepSetup(
            self.device, self.precision, self.params.seed, policy.channels_last,
            policy.data_on_device, group.rank, group.world_size, group.all_reduce, self.head,
        )  # fmt: skip
        model = copy.deepcopy(self.model)
        return Trainer(
            model, self.data.feeder(train, step), self.data.validation(step), train, step
        )


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def normalisation(meta: PreparedMeta, start: StartWeights | None) -> tuple[tuple, tuple]:
    """torchvision weights bring their own mean/std; otherwise the train split's."""
    if start is not None and start.info.mean is not None:
        return tuple(start.info.mean), tuple(start.info.std)
    return meta.mean, meta.std


def initial_model(spec: ModelSpec, start: StartWeights | None, mean, std):
    """(the model a run starts from, its head's parameter names): random init first, so the
    head's is the same with or without start weights."""
    network = build_model(spec)
    if start is not None:
        start.load_into(network)
    head = frozenset(f"model.{name}" for name in head_parameter_names(network, spec.num_classes))
    return WithPreprocessing(network, mean, std), head


def choose_data_path(requested: str, train_bytes: int, available: int | None) -> tuple[str, str]:
    """(memory | stream, why). auto: memory while the train split takes under half of the
    memory available now (the rest is for the model, the val split and the OS)."""
    if requested != "auto":
        return requested, f"train.data_path: {requested}"
    if available is None:
        return "memory", "auto: available memory unknown; the train split is loaded whole"
    path = "memory" if train_bytes < available // 2 else "stream"
    relation = "under" if path == "memory" else "not under"
    return path, (
        f"auto: train split {train_bytes / 2**20:,.0f} MiB is {relation} half of the "
        f"{available / 2**20:,.0f} MiB available"
    )


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
    """Read the prepared data, build the initial model, resolve the policy; open the account's
    energy window on the resolved device."""
    seed_everything(params.seed)  # the initial weights: the same in every process
    prepared = root / paths.PREPARED_DIR
    meta = read_meta(prepared)
    train = rank_device(params.train, group)
    data, data_path = load_data(train, prepared, group)
    hashes = prepared_hashes(prepared)
    channels, size, _ = meta.input_shape
    spec = ModelSpec.from_params(
        params.model, in_channels=channels, image_size=size, num_classes=meta.num_classes
    )
    pretrained = params.model.pretrained
    start = resolve_pretrained(spec, pretrained) if pretrained is not None else None
    mean_std = normalisation(meta, start)
    model, head = initial_model(spec, start, *mean_std)
    device, precision, policy = resolve_policy(train, data.policy_images)
    policy = data.adjust(policy)
    if group.is_writer:
        print(
            f"train: {spec.arch} on {policy.device_name}, {policy.precision}, "
            f"world size {group.world_size}",
            file=sys.stderr,
        )
    reset_peak_memory(device)
    account.measure(meter_from_params(params.energy, str(device)), device)
    return TrainSetup(
        params, root, meta, spec, start, model, head, mean_std, data, data_path, hashes, device,
        precision, policy, group, account,
    )  # fmt: skip
