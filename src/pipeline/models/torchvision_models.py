"""torchvision classification models by name, adapted to the data's channels and classes."""

from __future__ import annotations

from torch import nn


def _replace_first_conv(model: nn.Module, in_channels: int) -> None:
    for parent in model.modules():
        for name, child in parent.named_children():
            if isinstance(child, nn.Conv2d):
                if child.in_channels != in_channels:
                    setattr(
                        parent,
                        name,
                        nn.Conv2d(
                            in_channels,
                            child.out_channels,
                            child.kernel_size,
                            child.stride,
                            child.padding,
                            child.dilation,
                            child.groups,
                            child.bias is not None,
                        ),
                    )
                return


def build_torchvision(name: str, in_channels: int, num_classes: int) -> nn.Module:
    """Random init only: weights are never downloaded (pipelines must run offline)."""
    from torchvision import models

    if name not in models.list_models(module=models):
        raise KeyError(name)
    model = models.get_model(name, weights=None, num_classes=num_classes)
    _replace_first_conv(model, in_channels)
    return model
