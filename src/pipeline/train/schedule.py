"""Learning-rate schedules, stepped once per optimiser step."""

from __future__ import annotations

import math

import torch

from pipeline.core.config import TrainParams

MIN_ONECYCLE_STEPS = 8


def warmup_cosine(step: int, total: int, warmup: int) -> float:
    """Multiplier of the peak LR: linear warm-up from ~0, then cosine decay to 0."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def make_scheduler(optimizer, params: TrainParams, steps_per_epoch: int):
    total = params.epochs * steps_per_epoch
    # OneCycleLR divides by its phase lengths, which are zero for a handful of steps.
    if params.schedule == "onecycle" and total >= MIN_ONECYCLE_STEPS:
        # One peak per param group: the backbone's is lr x backbone_lr_factor.
        peaks = [group["lr"] for group in optimizer.param_groups]
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer,
            max_lr=peaks if len(peaks) > 1 else params.lr,
            total_steps=total,
            pct_start=0.25,
        )
    warmup = (
        int(round(params.warmup_epochs * steps_per_epoch)) if params.schedule == "cosine" else 0
    )
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: warmup_cosine(step, total, warmup)
    )
