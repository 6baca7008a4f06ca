"""Feeding batches from uint8 tensors that already sit on the training device.

The datasets this pipeline prepares are stored as uint8, so even large ones fit in GPU memory;
keeping them there removes the host->device copy and the DataLoader from every step.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch


class DeviceBatches:
    """Shuffled mini-batches of (uint8 images, int64 labels) on ``device``."""

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        batch_size: int,
        device: torch.device,
        seed: int,
        drop_last: bool = True,
    ) -> None:
        self.images = images.to(device)
        self.labels = labels.to(device)
        self.batch_size = min(batch_size, len(images))
        self.drop_last = drop_last
        # A generator on the CPU keeps the shuffle order identical on every device.
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        full, rest = divmod(len(self.images), self.batch_size)
        return full + (1 if rest and not self.drop_last else 0)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = torch.randperm(len(self.images), generator=self.generator).to(self.images.device)
        for step in range(len(self)):
            index = order[step * self.batch_size : (step + 1) * self.batch_size]
            yield self.images[index], self.labels[index]
