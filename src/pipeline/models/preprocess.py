"""Preprocessing, defined once and shared by training, evaluation and the exported graph."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class Normalize(nn.Module):
    """uint8 (or 0..255 float) NCHW images -> standardised float32, per channel.

    Lives inside the exported ONNX graph when export.include_preprocessing is on, so a deployer
    feeds raw pixels and needs no Python.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        scale = torch.tensor([1.0 / (255.0 * s) for s in std]).view(1, -1, 1, 1)
        shift = torch.tensor([m / s for m, s in zip(mean, std, strict=True)]).view(1, -1, 1, 1)
        # (x/255 - mean)/std == x * scale - shift: one multiply-add per pixel.
        self.register_buffer("scale", scale, persistent=False)
        self.register_buffer("shift", shift, persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return images.to(self.scale.dtype) * self.scale - self.shift


class WithPreprocessing(nn.Module):
    """A classifier that takes raw uint8 images."""

    def __init__(self, model: nn.Module, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.normalize = Normalize(mean, std)
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(self.normalize(images))
