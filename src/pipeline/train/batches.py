"""Feeding shuffled mini-batches of (uint8 images, int64 labels) to the training device.

``DeviceBatches`` keeps the whole uint8 dataset on the device: prepared datasets are uint8, so
even large ones fit in GPU memory, and a step then has no host->device copy and no DataLoader.
``HostBatches`` is the fallback for data that does not fit: pinned host memory, DataLoader
workers and asynchronous copies.

Both shard every epoch across processes: all ranks draw the same permutation from the same
seeded generator, and rank r takes positions r, r + world, r + 2 * world, ...

The permutation is :class:`EpochOrder`'s, which the streaming feeder draws too (shards in a
seeded order, ``window`` at a time, rows shuffled within each window), so ``train.data_path``
never changes the batches: memory and stream give the same ones for the same seed.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader, Dataset


def epoch_shard(order: torch.Tensor, rank: int, world_size: int) -> torch.Tensor:
    """This rank's disjoint share of a permutation; equal shares, the remainder dropped."""
    usable = len(order) - len(order) % world_size
    return order[:usable][rank::world_size]


SEED_RANGE = 2**62


@dataclass(frozen=True)
class EpochOrder:
    """One epoch's order from one seed: the shards in a seeded order, taken ``window`` at a
    time, the rows of each window shuffled. Rows are numbered as the shards concatenated."""

    shard_counts: tuple[int, ...]
    window: int = 2

    @classmethod
    def whole(cls, count: int) -> EpochOrder:
        """One shard of ``count`` rows: a plain permutation (tensors that came unsharded)."""
        return cls((count,), 1)

    @property
    def count(self) -> int:
        return sum(self.shard_counts)

    def windows(self, epoch_seed: int) -> Iterator[tuple[list[int], torch.Tensor, int]]:
        """(shard numbers, row permutation of their concatenation, epoch position of its first
        row) for each window of the epoch."""
        generator = torch.Generator().manual_seed(epoch_seed)
        order = torch.randperm(len(self.shard_counts), generator=generator).tolist()
        position = 0
        for start in range(0, len(order), self.window):
            numbers = order[start : start + self.window]
            rows = sum(self.shard_counts[n] for n in numbers)
            yield numbers, torch.randperm(rows, generator=generator), position
            position += rows

    def indices(self, epoch_seed: int) -> torch.Tensor:
        """The epoch's whole order as row numbers of the concatenated shards."""
        offsets = [0]
        for count in self.shard_counts:
            offsets.append(offsets[-1] + count)
        parts = []
        for numbers, permutation, _ in self.windows(epoch_seed):
            rows = torch.cat([torch.arange(offsets[n], offsets[n + 1]) for n in numbers])
            parts.append(rows[permutation])
        return torch.cat(parts)


def draw_epoch_seed(generator: torch.Generator) -> int:
    """One draw per epoch from the checkpointed generator: a resume continues the sequence."""
    return int(torch.randint(SEED_RANGE, (1,), generator=generator).item())


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

    def __init__(
        self, order: EpochOrder, batch_size: int, seed: int, rank: int, world_size: int
    ) -> None:
        self.order, self.count = order, order.count
        self.rank, self.world_size = rank, world_size
        self.shard_size = self.count // world_size
        self.batch_size = min(batch_size, self.shard_size)
        # The shuffle generator lives on the CPU: same order on every device, cheap to save.
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return self.shard_size // self.batch_size  # full batches only: steady shapes, no recompiles

    def epoch_indices(self) -> torch.Tensor:
        order = self.order.indices(draw_epoch_seed(self.generator))
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
        order: EpochOrder | None = None,
    ) -> None:
        """``order``: the shards the tensors were read from (default: one, a plain shuffle)."""
        super().__init__(order or EpochOrder.whole(len(images)), batch_size, seed, rank, world_size)
        self.image_side = images.shape[-1]
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

    def __init__(
        self, images, labels, batch_size, device, seed, rank=0, world_size=1, workers=2, order=None
    ):
        super().__init__(order or EpochOrder.whole(len(images)), batch_size, seed, rank, world_size)
        self.image_side = images.shape[-1]
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
            # Its own generator: otherwise each new iterator (the first epoch of every process)
            # draws the workers' base seed from torch's global one, and a resumed run diverges.
            generator=torch.Generator().manual_seed(seed),
        )

    def __iter__(self):
        for images, labels in self.loader:
            # non_blocking copies from pinned memory overlap with the previous step's compute.
            yield (
                images.to(self.device, non_blocking=True),
                labels.to(self.device, non_blocking=True),
            )


def make_batches(
    images, labels, batch_size, device, seed, on_device, rank=0, world_size=1, workers=2,
    order: EpochOrder | None = None,
) -> ShardedOrder:  # fmt: skip
    if on_device:
        return DeviceBatches(images, labels, batch_size, device, seed, rank, world_size, order)
    return HostBatches(images, labels, batch_size, device, seed, rank, world_size, workers, order)
