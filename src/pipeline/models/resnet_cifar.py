"""A residual net for 32x32 inputs, after the fast CIFAR-10 training work (ResNet-9 / airbench).

Conv layers carry no bias (BatchNorm follows), GELU activations, max-pool downsampling, and a
scaled linear head; with width 64 it is the classic 64-128-256-512 ResNet-9 layout.
"""

from __future__ import annotations

import torch
from torch import nn


def conv_bn(in_channels: int, out_channels: int, pool: bool = False) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)]
    if pool:
        layers.append(nn.MaxPool2d(2))
    layers += [nn.BatchNorm2d(out_channels), nn.GELU()]
    return nn.Sequential(*layers)


class GlobalMaxPool(nn.Module):
    """Max over each channel's whole map: (N, C, H, W) -> (N, C).

    The same as AdaptiveMaxPool2d(1) + Flatten, but through ``amax``, whose backward is
    elementwise: AdaptiveMaxPool2d has no deterministic CUDA backward, so it made
    ``train.deterministic: true`` fail on GPUs. (Where several values tie for the maximum,
    amax shares the gradient between them instead of giving it to one.)
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.amax(dim=(2, 3))


class Residual(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(conv_bn(channels, channels), conv_bn(channels, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class ResNetCifar(nn.Module):
    def __init__(self, in_channels: int, num_classes: int, width: int = 64, dropout: float = 0.0):
        super().__init__()
        w = width
        self.features = nn.Sequential(
            conv_bn(in_channels, w),
            conv_bn(w, 2 * w, pool=True),
            Residual(2 * w),
            conv_bn(2 * w, 4 * w, pool=True),
            conv_bn(4 * w, 8 * w, pool=True),
            Residual(8 * w),
            GlobalMaxPool(),
        )
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(8 * w, num_classes, bias=False))
        # Small logits at the start keep early steps stable without a warm-up (as in airbench).
        self.logit_scale = 0.125

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x)) * self.logit_scale
