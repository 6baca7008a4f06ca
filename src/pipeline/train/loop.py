"""The training loop: one precision path, no host sync inside an epoch."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from pipeline.config import TrainParams
from pipeline.train.batches import DeviceBatches
from pipeline.train.policy import Precision


@dataclass(frozen=True)
class EpochStats:
    epoch: int
    train_loss: float
    train_accuracy: float
    val_loss: float
    val_accuracy: float
    lr: float
    seconds: float
    images_per_s: float

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class TrainResult:
    history: list[EpochStats] = field(default_factory=list)
    images_seen: int = 0
    train_seconds: float = 0.0  # optimiser steps only, validation excluded


def make_optimizer(model: nn.Module, params: TrainParams, device: torch.device):
    # The fused kernel does one launch for all parameters on CUDA; foreach is the CPU equivalent.
    fast = {"fused": True} if device.type == "cuda" else {"foreach": True}
    return torch.optim.AdamW(
        model.parameters(), lr=params.lr, weight_decay=params.weight_decay, **fast
    )


def make_scheduler(optimizer, params: TrainParams, steps_per_epoch: int):
    return torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=params.lr, total_steps=params.epochs * steps_per_epoch, pct_start=0.25
    )


def _autocast(device: torch.device, precision: Precision):
    return torch.autocast(
        device_type=device.type,
        dtype=precision.autocast_dtype or torch.float32,
        enabled=precision.autocast_enabled,
    )


def _as_input(images: torch.Tensor, channels_last: bool) -> torch.Tensor:
    return images.contiguous(memory_format=torch.channels_last) if channels_last else images


def train_one_epoch(
    model, batches, optimizer, scheduler, scaler, loss_fn, device, precision, channels_last
):
    """Returns (mean loss, accuracy, images) for the epoch."""
    model.train()
    # Running sums stay on the device: reading them every step would stall the GPU queue.
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    seen = 0
    for images, labels in batches:
        with _autocast(device, precision):
            logits = model(_as_input(images, channels_last))
            loss = loss_fn(logits, labels)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        loss_sum += loss.detach() * len(labels)
        correct += (logits.argmax(1) == labels).sum()
        seen += len(labels)
    # One host sync per epoch.
    return loss_sum.item() / max(seen, 1), correct.item() / max(seen, 1), seen


@torch.inference_mode()
def evaluate_split(model, images, labels, batch_size, device, precision, channels_last):
    """(mean loss, accuracy) of ``model`` over uint8 images already on ``device``."""
    model.eval()
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    for start in range(0, len(images), batch_size):
        batch, target = images[start : start + batch_size], labels[start : start + batch_size]
        with _autocast(device, precision):
            logits = model(_as_input(batch, channels_last)).float()
        loss_sum += nn.functional.cross_entropy(logits, target, reduction="sum")
        correct += (logits.argmax(1) == target).sum()
    return loss_sum.item() / len(images), correct.item() / len(images)


def fit(
    model: nn.Module,
    train: tuple[torch.Tensor, torch.Tensor],
    val: tuple[torch.Tensor, torch.Tensor],
    params: TrainParams,
    device: torch.device,
    precision: Precision,
    seed: int,
    channels_last: bool = True,
    on_epoch: Callable[[EpochStats], None] | None = None,
) -> TrainResult:
    batches = DeviceBatches(*train, batch_size=params.batch_size, device=device, seed=seed)
    val_images, val_labels = val[0].to(device), val[1].to(device)
    model.to(
        device, memory_format=torch.channels_last if channels_last else torch.contiguous_format
    )
    optimizer = make_optimizer(model, params, device)
    scheduler = make_scheduler(optimizer, params, len(batches))
    scaler = torch.amp.GradScaler(device.type, enabled=precision.use_grad_scaler)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=params.label_smoothing)
    result = TrainResult()
    for epoch in range(1, params.epochs + 1):
        started = time.perf_counter()
        lr = scheduler.get_last_lr()[0]
        train_loss, train_acc, seen = train_one_epoch(
            model, batches, optimizer, scheduler, scaler, loss_fn, device, precision, channels_last
        )
        step_seconds = time.perf_counter() - started
        val_loss, val_acc = evaluate_split(
            model, val_images, val_labels, params.batch_size * 4, device, precision, channels_last
        )
        stats = EpochStats(
            epoch,
            train_loss,
            train_acc,
            val_loss,
            val_acc,
            lr,
            time.perf_counter() - started,
            seen / step_seconds,
        )
        result.history.append(stats)
        result.images_seen += seen
        result.train_seconds += step_seconds
        if on_epoch is not None:
            on_epoch(stats)
    return result
