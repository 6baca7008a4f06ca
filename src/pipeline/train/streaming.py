"""The streaming path: mini-batches read from the prepared shards (by a background thread
while a GPU computes; in line on the CPU).

Memory stays at ``stream_window_shards`` shards plus ``stream_prefetch_batches`` batches,
whatever the size of the split (README: memory budget).

Order, per epoch: the main thread draws one epoch seed from the checkpointed generator (so a
resumed run continues the same sequence); from it the reader draws the order of the shards,
takes them ``window`` at a time, and shuffles the rows of each window
(:class:`pipeline.train.batches.EpochOrder`, which the in-memory feeders follow too). Along that
epoch order, position p belongs to rank ``p % world_size`` (the tail that would give ranks
unequal shares is dropped), so ranks see disjoint images, and every rank's batches are full.
Same seed, same shards: same batches, on any machine, streamed or in memory.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator

import numpy as np
import torch

from pipeline.prepared.shards import SplitShards
from pipeline.train.batches import EpochOrder, SkipOnce, draw_epoch_seed

_DONE = object()


class StreamBatches(SkipOnce):
    """Same interface as the in-memory feeders (len, iteration, ``generator``, ``batch_size``,
    ``skip_next_epoch``)."""

    def __init__(
        self,
        split: SplitShards,
        batch_size: int,
        device: torch.device,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        window_shards: int = 2,
        prefetch_batches: int = 4,
        background: bool | None = None,
    ) -> None:
        """``background``: read in a thread while the device computes; default on GPUs only.
        On the CPU the step already keeps every core busy and a reader thread would preempt
        its threads (measured: 0.8x of in-memory images/s), so batches are read in line."""
        self.split, self.device = split, device
        self.image_side = split.image_shape[-1]
        self.rank, self.world_size = rank, world_size
        self.count = split.count
        self.shard_size = self.count // world_size
        self.batch_size = min(batch_size, self.shard_size)
        self.window_shards, self.prefetch_batches = window_shards, prefetch_batches
        self.order = EpochOrder(tuple(shard.count for shard in split.shards), window_shards)
        self.generator = torch.Generator().manual_seed(seed)
        self.pinned = device.type == "cuda"
        self.background = device.type != "cpu" if background is None else background

    def __len__(self) -> int:
        return self.shard_size // self.batch_size

    def next_epoch_seed(self) -> int:
        return draw_epoch_seed(self.generator)

    def window_orders(self, epoch_seed: int) -> Iterator[tuple[list[int], torch.Tensor, int]]:
        return self.order.windows(epoch_seed)

    def rank_rows(self, permutation: torch.Tensor, position: int) -> torch.Tensor:
        """The window rows this rank takes: its epoch positions, in epoch order."""
        usable = self.count - self.count % self.world_size
        positions = torch.arange(position, position + len(permutation))
        mine = (positions % self.world_size == self.rank) & (positions < usable)
        return permutation[mine]

    def epoch_batches(
        self, epoch_seed: int, skip: int = 0
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """This rank's batches of one epoch, read and assembled on the calling thread; the
        first ``skip`` batches are left out, and windows that only they use are never read."""
        shape = self.split.image_shape
        largest = sorted((s.count for s in self.split.shards), reverse=True)[: self.window_shards]
        window_images = np.empty((sum(largest), *shape), np.uint8)
        window_labels = np.empty(sum(largest), np.int64)
        (images, labels), filled, produced = self._new_batch(), 0, skip
        skip_rows = skip * self.batch_size
        if produced >= len(self):
            return
        for numbers, permutation, position in self.window_orders(epoch_seed):
            take = self.rank_rows(permutation, position)
            if skip_rows >= len(take):
                skip_rows -= len(take)
                continue
            take, skip_rows = take[skip_rows:], 0
            row = 0
            for number in numbers:
                self.split.read_into(number, window_images[row:], window_labels[row:])
                row += self.split.shards[number].count
            take, done = take.numpy(), 0
            while done < len(take):
                n = min(self.batch_size - filled, len(take) - done)
                index = take[done : done + n]
                # numpy's gather runs on this thread alone: a torch op here would start a
                # parallel region that competes with the training step's threads for the cores.
                np.take(window_images[:row], index, axis=0, out=images.numpy()[filled : filled + n])
                np.take(window_labels[:row], index, out=labels.numpy()[filled : filled + n])
                filled, done = filled + n, done + n
                if filled == self.batch_size:
                    yield images, labels
                    produced += 1
                    if produced == len(self):
                        return
                    (images, labels), filled = self._new_batch(), 0

    def _new_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        # Fresh buffers per batch (the caching host allocator recycles them); pinned
        # (page-locked) only on CUDA, so the copy to the GPU runs asynchronously.
        shape = (self.batch_size, *self.split.image_shape)
        return (
            torch.empty(shape, dtype=torch.uint8, pin_memory=self.pinned),
            torch.empty(self.batch_size, dtype=torch.int64, pin_memory=self.pinned),
        )

    def _produce(self, epoch_seed: int, skip: int, out: queue.Queue, stop: threading.Event) -> None:
        try:
            for batch in self.epoch_batches(epoch_seed, skip):
                while not stop.is_set():
                    try:
                        out.put(batch, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            out.put(_DONE)
        except BaseException as error:  # handed to the training thread, which raises it
            out.put(error)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        skip = self.take_skip()
        epoch_seed = self.next_epoch_seed()  # drawn here: the checkpointed state moves per epoch
        if not self.background:
            yield from self.epoch_batches(epoch_seed, skip)  # already on the CPU device
            return
        batches: queue.Queue = queue.Queue(maxsize=self.prefetch_batches)
        stop = threading.Event()
        reader = threading.Thread(
            target=self._produce, args=(epoch_seed, skip, batches, stop), daemon=True
        )
        reader.start()
        try:
            while (item := batches.get()) is not _DONE:
                if isinstance(item, BaseException):
                    raise item
                images, labels = item
                yield (
                    images.to(self.device, non_blocking=True),
                    labels.to(self.device, non_blocking=True),
                )
        finally:
            stop.set()
            reader.join()


def streamed_val_chunks(
    split: SplitShards, rank: int, world_size: int, device: torch.device
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """This rank's contiguous slice of the split (as Trainer's in-memory validation), one
    shard at a time."""
    low = split.count * rank // world_size
    high = split.count * (rank + 1) // world_size
    start = 0
    for number, shard in enumerate(split.shards):
        end = start + shard.count
        a, b = max(low, start) - start, min(high, end) - start
        if a < b:  # only the shards that hold part of this rank's slice are read
            images = np.empty((shard.count, *split.image_shape), np.uint8)
            labels = np.empty(shard.count, np.int64)
            split.read_into(number, images, labels)
            yield (
                torch.from_numpy(images[a:b]).to(device),
                torch.from_numpy(labels[a:b]).to(device),
            )
        start = end
