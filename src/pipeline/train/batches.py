"""Feeding shuffled mini-batches of (uint8 images, int64 labels) to the training device.

``DeviceBatches`` keeps the whole uint8 dataset on the device: prepared datasets are uint8, so
even large ones fit in GPU memory, and a step then has no host->device copy and no DataLoader.
``HostBatches`` is the fallback for data that does not fit: pinned host memory, DataLoader
workers and asynchronous copies.

Both shard every epoch across processes: all ranks draw the same permutation from the same
seeded generator, and rank r takes positions r, r + world, r + 2 * world, ...
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader, Dataset


def epoch_shard(order: torch.Tensor, rank: int, world_size: int) -> torch.Tensor:
    """This rank's disjoint share of a permutation; equal shares, the remainder dropped."""
    usable = len(order) - len(order) % world_size
    return order[:usable][rank::world_size]


class SkipOnce:
    """A feeder's next epoch can start ``n`` batches in (a resume mid-epoch): the order is the
    same, the first ``n`` batches are not produced."""

    _skip = 0

    def skip_next_epoch(self, batches: int) -> None:
        self._skip = batches

    def take_skip(self) -> int:
        skip, self._skip = self._skip, 0
        return skip


class ShardedOrder(SkipOnce):
    """The seeded, per-rank shuffle both feeders share: which samples, in which batches."""

    def __init__(self, count: int, batch_size: int, seed: int, rank: int, world_size: int):
        self.count = count
        self.rank, self.world_size = rank, world_size
        self.shard_size = count // world_size
        self.batch_size = min(batch_size, self.shard_size)
        # The shuffle generator lives on the CPU: same order on every device, cheap to save.
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return self.shard_size // self.batch_size  # full batches only: steady shapes, no recompiles

    def epoch_indices(self) -> torch.Tensor:
        order = torch.randperm(self.count, generator=self.generator)
        return epoch_shard(order, self.rank, self.world_size)


class DeviceBatches(ShardedOrder):
    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        batch_size: int,
        device: torch.device,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        super().__init__(len(images), batch_size, seed, rank, world_size)
        self.images = images.to(device)
        self.labels = labels.to(device)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        skip = self.take_skip()
        shard = self.epoch_indices().to(self.images.device)
        for step in range(skip, len(self)):
            index = shard[step * self.batch_size : (step + 1) * self.batch_size]
            yield self.images[index], self.labels[index]


class _Indexed(Dataset):
    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        return self.images[index], self.labels[index]


class _ShardSampler(torch.utils.data.Sampler):
    def __init__(self, batches: HostBatches) -> None:
        self.batches = batches

    def __len__(self) -> int:
        return len(self.batches) * self.batches.batch_size

    def __iter__(self):
        skip = self.batches.take_skip() * self.batches.batch_size
        shard = self.batches.epoch_indices()[: len(self)]
        return iter(shard[skip:].tolist())


class HostBatches(ShardedOrder):
    """Same order as DeviceBatches, fed by DataLoader workers from pinned host memory."""

    def __init__(self, images, labels, batch_size, device, seed, rank=0, world_size=1, workers=2):
        super().__init__(len(images), batch_size, seed, rank, world_size)
        self.device = device
        self.images, self.labels = images, labels
        self.loader = DataLoader(
            _Indexed(images, labels),
            batch_size=self.batch_size,
            sampler=_ShardSampler(self),
            num_workers=workers,
            pin_memory=device.type == "cuda",
            persistent_workers=workers > 0,
            drop_last=True,
        )

    def __iter__(self):
        for images, labels in self.loader:
            # non_blocking copies from pinned memory overlap with the previous step's compute.
            yield (
                images.to(self.device, non_blocking=True),
                labels.to(self.device, non_blocking=True),
            )


def dataset_fits_on_device(images: torch.Tensor, device: torch.device) -> bool:
    """CPU: the tensors are already in memory. CUDA: under half the free memory."""
    if device.type != "cuda":
        return True
    free, _total = torch.cuda.mem_get_info(device)
    return images.numel() * images.element_size() < free // 2


def make_batches(
    images, labels, batch_size, device, seed, on_device, rank=0, world_size=1, workers=2
) -> ShardedOrder:
    if on_device:
        return DeviceBatches(images, labels, batch_size, device, seed, rank, world_size)
    return HostBatches(images, labels, batch_size, device, seed, rank, world_size, workers)
