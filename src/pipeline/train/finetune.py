"""Fine-tuning controls: a frozen backbone, its own learning rate, and SyncBatchNorm under DDP.

The backbone is every parameter outside the classifier head (``pipeline.models.parts``). With
the defaults (no freezing, factor 1) nothing here changes the model or the optimiser: one param
group, as before, so default runs stay bit-identical.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from pipeline.core.config import TrainParams
from pipeline.core.errors import PipelineError


def param_groups(
    model: nn.Module, params: TrainParams, head: set[str] | None
) -> Iterable[torch.nn.Parameter] | list[dict]:
    """What AdamW optimises: all parameters in one group, or with ``backbone_lr_factor`` < 1 a
    backbone group at lr x factor and a head group at lr (schedules scale both alike)."""
    if params.backbone_lr_factor == 1.0:
        return model.parameters()
    head, named = require_head(head), list(model.named_parameters())
    return [
        {
            "params": [p for name, p in named if name not in head],
            "lr": params.lr * params.backbone_lr_factor,
            "name": "backbone",
        },
        {"params": [p for name, p in named if name in head], "lr": params.lr, "name": "head"},
    ]


def require_head(head: set[str] | None) -> set[str]:
    if not head:
        raise PipelineError("fine-tuning controls need the classifier head's parameter names")
    return head


def set_backbone_trainable(model: nn.Module, head: set[str] | None, trainable: bool) -> None:
    """Frozen parameters get no gradient, so AdamW leaves them (and their moments) untouched.
    BatchNorm running statistics still update in train mode, as in most fine-tuning recipes."""
    head = require_head(head)
    for name, parameter in model.named_parameters():
        if name not in head:
            parameter.requires_grad_(trainable)


def sync_batchnorm(model: nn.Module, enabled: bool, world_size: int, device) -> bool:
    """Convert BatchNorm layers in place to SyncBatchNorm under DDP; whether it did."""
    if not enabled or world_size == 1 or not torch.distributed.is_initialized():
        return False
    if device.type != "cuda":
        raise PipelineError(
            "train.distributed.sync_batchnorm: SyncBatchNorm runs on GPUs only (torch refuses "
            f"{device.type} tensors); set it false for CPU training"
        )
    converted = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if converted is not model:  # only a bare BatchNorm module is returned anew
        raise PipelineError("train.distributed.sync_batchnorm: the model is a single BatchNorm")
    return True
