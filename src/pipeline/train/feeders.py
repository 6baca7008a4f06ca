"""Where a run's batches come from, decided once: the train and val splits in memory or read
from their shards as training goes. Each kind builds the one feeder protocol the loop iterates
and the validation it reads, so the loop never asks which kind it has."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Protocol

import torch

from pipeline.core.config import TrainParams
from pipeline.hardware.precision import Precision
from pipeline.models.inference import in_batches
from pipeline.prepared.shards import SplitShards
from pipeline.train.batches import EpochOrder, make_batches
from pipeline.train.streaming import StreamBatches, streamed_val_chunks

Batch = tuple[torch.Tensor, torch.Tensor]


def _identity(tensor: torch.Tensor) -> torch.Tensor:
    return tensor


@dataclass(frozen=True)
class StepSetup:
    """What the loop needs besides model, data and params: where and how it computes, and its
    place in the process group."""

    device: torch.device
    precision: Precision
    seed: int
    channels_last: bool = True
    data_on_device: bool = True  # the in-memory train split kept on the device
    rank: int = 0
    world_size: int = 1
    all_reduce: Callable[[torch.Tensor], torch.Tensor] = _identity
    head: frozenset[str] | None = None  # the classifier head's parameter names in the model


class Feeder(Protocol):
    """Shuffled mini-batches of (uint8 images, int64 labels) of this rank, epoch after epoch."""

    batch_size: int
    generator: torch.Generator  # the batch order's: checkpointed
    image_side: int

    def __len__(self) -> int: ...

    def __iter__(self) -> Iterator[Batch]: ...

    def skip_next_epoch(self, batches: int) -> None: ...


class Validation(Protocol):
    def chunks(self) -> Iterable[Batch]:
        """This rank's contiguous, disjoint slice of the val split, in one or more chunks."""

    def batches(self, size: int) -> Iterator[Batch]:
        """The same slice in batches of at most ``size`` images, chunk after chunk."""


@dataclass(frozen=True)
class InMemory:
    """Both splits loaded whole; batches in ``order`` (the shards they were read from)."""

    train: Batch
    val: Batch
    order: EpochOrder
    path = "memory"

    @property
    def policy_images(self) -> torch.Tensor:
        """What data_on_device: auto asks about: does the train split fit on the device."""
        return self.train[0]

    def adjust(self, policy):
        return policy

    def feeder(self, params: TrainParams, step: StepSetup) -> Feeder:
        return make_batches(
            *self.train, params.batch_size, step.device, step.seed, step.data_on_device,
            step.rank, step.world_size, params.num_workers, self.order,
        )  # fmt: skip

    def validation(self, step: StepSetup) -> Validation:
        images, labels = self.val
        low, high = (len(images) * r // step.world_size for r in (step.rank, step.rank + 1))
        return ValSlice(images[low:high].to(step.device), labels[low:high].to(step.device))


@dataclass(frozen=True)
class Streamed:
    """Both splits read from their shards as training goes."""

    train: SplitShards
    val: SplitShards
    order: EpochOrder
    path = "stream"
    policy_images = None

    def adjust(self, policy):
        """The device-resident copy does not apply: batches come from the reader."""
        return dataclasses.replace(policy, data_on_device=False)

    def feeder(self, params: TrainParams, step: StepSetup) -> Feeder:
        return StreamBatches(
            self.train, params.batch_size, step.device, step.seed, step.rank, step.world_size,
            params.stream_window_shards, params.stream_prefetch_batches,
        )  # fmt: skip

    def validation(self, step: StepSetup) -> Validation:
        return StreamedVal(self.val, step.rank, step.world_size, step.device)


def _pair(images: torch.Tensor, labels: torch.Tensor) -> Batch:
    return images, labels


class _InBatches:
    def batches(self, size: int) -> Iterator[Batch]:
        for images, labels in self.chunks():  # in memory: one; streamed: a shard each
            yield from in_batches(_pair, size, images, labels)


@dataclass(frozen=True)
class ValSlice(_InBatches):
    images: torch.Tensor
    labels: torch.Tensor

    def chunks(self) -> Iterable[Batch]:
        return [(self.images, self.labels)]


@dataclass(frozen=True)
class StreamedVal(_InBatches):
    split: SplitShards
    rank: int
    world_size: int
    device: torch.device

    def chunks(self) -> Iterable[Batch]:
        return streamed_val_chunks(self.split, self.rank, self.world_size, self.device)


def read_splits(train: SplitShards, val: SplitShards, path: str, window: int):
    """The one place memory or stream is chosen: ``path`` as train.data_path resolved."""
    order = EpochOrder(tuple(shard.count for shard in train.shards), window)
    if path == "memory":
        return InMemory(train.load_tensors(), val.load_tensors(), order)
    return Streamed(train, val, order)
