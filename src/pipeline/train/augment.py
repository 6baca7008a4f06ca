"""Augmentation on the device, on uint8 batches: random crop with padding and horizontal flip.

Working on whole batches with tensor ops keeps the GPU busy and the CPU out of the loop.
Randomness comes from a generator on the same device, so a seed reproduces it exactly.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def crop_padding(size: int) -> int:
    """Translate by up to an eighth of the side: 4 px at 32x32, 1 px at 8x8 (as in ResNet/CIFAR)."""
    return max(1, size // 8)


def random_crop(images: torch.Tensor, pad: int, generator: torch.Generator) -> torch.Tensor:
    """Each image shifted by its own random offset in [-pad, pad]^2, zeros filling the border."""
    n, _, height, width = images.shape
    padded = F.pad(images, (pad, pad, pad, pad))
    offsets = torch.randint(0, 2 * pad + 1, (2, n), device=images.device, generator=generator)
    rows = offsets[0, :, None] + torch.arange(height, device=images.device)  # n x H
    cols = offsets[1, :, None] + torch.arange(width, device=images.device)  # n x W
    batch = torch.arange(n, device=images.device)[:, None, None]
    # Advanced indexing puts the indexed dims first: result is n x H x W x C.
    cropped = padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]]
    return cropped.permute(0, 3, 1, 2)


def random_flip(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    flip = torch.rand(len(images), device=images.device, generator=generator) < 0.5
    return torch.where(flip[:, None, None, None], images.flip(3), images)


class Augment:
    """Callable applying ``mode`` (none | flip | crop | crop_flip) to a uint8 NCHW batch."""

    def __init__(self, mode: str, image_size: int, device: torch.device, seed: int) -> None:
        self.crop = "crop" in mode
        self.flip = "flip" in mode
        self.pad = crop_padding(image_size)
        self.generator = torch.Generator(device=device).manual_seed(seed)

    @property
    def active(self) -> bool:
        return self.crop or self.flip

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if self.crop:
            images = random_crop(images, self.pad, self.generator)
        if self.flip:
            images = random_flip(images, self.generator)
        return images
