"""Does a model fit its input size? Traced on the meta device: no weights, no data, no time.

An architecture built for large images (a torchvision ResNet expects 224x224) halves its
feature map five times; on 8x8 digits the map is 1x1 after the second halving, and the later
stages look at a single pixel. That trains (slowly, to a poor model) and may fail only at export,
so check_params refuses it before anything runs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from pipeline.core.errors import first_line
from pipeline.models.build import ModelSpec, build_model

DOWNSAMPLING = (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)
# What a forward pass raises on an input size the model cannot take: RuntimeError from an op's
# shape check (a map shrunk to 0, a reshape that does not divide), ValueError from torch.nn's
# argument checks, AssertionError from torch._assert (torchvision's ViT: "Wrong image height!").
# Not Exception: a TypeError or AttributeError there is a bug in the model, not a size problem.
SIZE_ERRORS = (RuntimeError, ValueError, AssertionError)


@dataclass(frozen=True)
class Fit:
    downsampling_layers: int  # layers with a stride above 1
    starved_layers: list[str]  # of those, the ones whose input is already 1 pixel high or wide
    error: str | None  # the forward pass itself failed at this size (e.g. a map shrank to 0)


def _stride(module: nn.Module) -> int:
    stride = module.stride if module.stride is not None else module.kernel_size
    return max(stride) if isinstance(stride, tuple) else int(stride)


def trace_fit(spec: ModelSpec) -> Fit:
    """Forward one ``spec.image_size`` square image on the meta device, watching every
    downsampling layer's input size."""
    with torch.device("meta"):
        model = build_model(spec).eval()
    strided = {
        name: module
        for name, module in model.named_modules()
        if isinstance(module, DOWNSAMPLING) and _stride(module) > 1
    }
    starved: list[str] = []

    def watch(name: str):
        def hook(_module, inputs):
            if min(inputs[0].shape[-2:]) <= 1:
                starved.append(name)

        return hook

    handles = [module.register_forward_pre_hook(watch(name)) for name, module in strided.items()]
    image = torch.empty(1, spec.in_channels, spec.image_size, spec.image_size, device="meta")
    try:
        with torch.no_grad():
            model(image)
        error = None
    except SIZE_ERRORS as failure:
        error = first_line(failure)
    finally:
        for handle in handles:
            handle.remove()
    return Fit(len(strided), starved, error)
