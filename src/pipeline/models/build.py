"""``model.arch`` -> a built model, through the archs registered in pipeline.core.catalog.

Every model takes normalised float NCHW input and returns logits."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.nn.modules.module import (
    register_module_buffer_registration_hook,
    register_module_parameter_registration_hook,
)

from pipeline.core.catalog import ARCHS, arch_family, arch_names, resolve
from pipeline.core.errors import PipelineError

if TYPE_CHECKING:
    from pipeline.core.config import ModelParams


# ModelParams fields that choose the start weights, not the architecture: a spec (what to build)
# and a card's model_params leave them out.
START_WEIGHT_FIELDS = frozenset({"pretrained"})


@dataclass(frozen=True)
class ModelSpec:
    """What build_model needs: the model section of params.yaml plus what the data decides."""

    arch: str
    in_channels: int
    image_size: int
    num_classes: int
    width: int = 32
    dropout: float = 0.1

    @classmethod
    def from_params(
        cls, model_params: ModelParams, *, in_channels: int, image_size: int, num_classes: int
    ) -> ModelSpec:
        """The one place a ``model`` section's fields become spec fields (a test checks that
        every field of ModelParams arrives here)."""
        return cls(
            arch=model_params.arch,
            in_channels=in_channels,
            image_size=image_size,
            num_classes=num_classes,
            width=model_params.width,
            dropout=model_params.dropout,
        )


class UnknownModelError(PipelineError):
    pass


# About 4 GB of fp32 weights (16 GB with AdamW's state): beyond that a width or arch is a typo.
MAX_PARAMETERS = 1_000_000_000


def available_archs() -> list[str]:
    return arch_names()


def build_model(spec: ModelSpec) -> nn.Module:
    """The model ``spec`` describes, on the default device (see ``torch.device``).

    On the meta device (a skeleton: names and shapes, nothing allocated), a builder that reads
    the values of tensors it computes (torchvision's RegNets take their stage widths from
    ``.tolist()``) fails; it is built again with those tensors on the CPU and only its weights on
    meta: no weights allocated (regnet_y_128gf, 637M parameters, in 0.2 s)."""
    try:
        return _construct(spec)
    except RuntimeError:  # NotImplementedError ("Cannot copy out of meta tensor") included
        if torch.get_default_device().type != "meta":
            raise
    with _weights_on_meta():
        return _construct(spec)


@contextmanager
def _weights_on_meta() -> Iterator[None]:
    """Compute on the CPU, but move every parameter and buffer to the meta device as a module
    registers it: its initialisation then runs on meta, and the CPU holds one uninitialised
    tensor at a time. (The hooks are global while they last: builds are not threaded.)"""

    def parameter(_module: nn.Module, _name: str, value: nn.Parameter | None):
        return None if value is None else nn.Parameter(value.to("meta"), value.requires_grad)

    def buffer(_module: nn.Module, _name: str, value: torch.Tensor | None):
        return None if value is None else value.to("meta")

    handles = [
        register_module_parameter_registration_hook(parameter),
        register_module_buffer_registration_hook(buffer),
    ]
    try:
        with torch.device("cpu"):
            yield
    finally:
        for handle in handles:
            handle.remove()


def _construct(spec: ModelSpec) -> nn.Module:
    if member := arch_family(spec.arch):
        family, name = member
        try:
            return resolve(family.target, __package__)(name, spec.in_channels, spec.num_classes)
        except KeyError:
            raise UnknownModelError(
                f"model.arch {spec.arch!r}: {family.missing.format(name=name)}"
            ) from None
    if spec.arch not in ARCHS:
        raise UnknownModelError(
            f"model.arch {spec.arch!r} is unknown; choose one of {', '.join(available_archs())}"
        )
    constructor = resolve(ARCHS[spec.arch].target, __package__)
    return constructor(
        in_channels=spec.in_channels,
        num_classes=spec.num_classes,
        width=spec.width,
        dropout=spec.dropout,
    )


def parameter_count(spec: ModelSpec) -> int:
    """Parameters of the model ``spec`` describes, built on the meta device (nothing allocated)."""
    with torch.device("meta"):
        model = build_model(spec)
    return sum(parameter.numel() for parameter in model.parameters())


def check_model_size(spec: ModelSpec) -> int:
    """Refuse a model over MAX_PARAMETERS before anything allocates its weights."""
    count = parameter_count(spec)
    if count > MAX_PARAMETERS:
        raise UnknownModelError(
            f"model.arch {spec.arch!r} with model.width {spec.width} has {count:,} parameters, "
            f"over the limit of {MAX_PARAMETERS:,}; choose a smaller width or arch"
        )
    return count
