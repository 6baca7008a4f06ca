"""What a training run has done so far: per-epoch figures and the counters a checkpoint carries."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch


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
class TrainState:
    """Progress a checkpoint must carry besides the tensors."""

    epoch: int = 0
    step: int = 0
    history: list[dict] = field(default_factory=list)
    images_seen: int = 0
    train_seconds: float = 0.0  # optimiser steps only, validation excluded
    best_val_accuracy: float = -1.0
    epochs_since_best: int = 0
    target_epoch: int | None = None
    seconds_to_target: float | None = None
    nonfinite_steps: int = 0
    skipped_steps: int = 0
    stopped_early: bool = False
    # Whole-run totals through this checkpoint, summed over every process that trained the run
    # (a killed process counts up to its last checkpoint: work lost after it is not in them).
    processes: int = 0
    wall_seconds: float = 0.0
    joules: dict[str, float] = field(default_factory=dict)  # by energy method, never summed
    energy_gaps: int = 0  # energy windows that had no figure (no meter, or a rank without one)
    # Per epoch: the images (over the group) and optimiser-step seconds of the part the epoch's
    # process trained, and whether that was the first epoch its process trained (the warm-up).
    epoch_images: list[int] = field(default_factory=list)
    epoch_seconds: list[float] = field(default_factory=list)
    warmup: list[bool] = field(default_factory=list)


@dataclass
class EpochProgress:
    """How far into an epoch a batch checkpoint is: what resuming there needs to go on exactly
    as if never stopped. ``order_rng`` is the batch order's generator as the epoch began (the
    epoch's order is drawn from it again, then ``batches`` are skipped); the sums are the
    epoch's so far, reduced over the group (rank 0 restores them, the other ranks zeros)."""

    batches: int  # micro-batches of the epoch done, on every rank
    lr: float  # the learning rate as the epoch began (the epoch's reported lr)
    order_rng: torch.Tensor
    seconds: float  # optimiser-step time of the epoch so far (whole-run total's share)
    sums: torch.Tensor  # loss_sum, correct, nonfinite, skipped, images: float64, group totals

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ProcessWork:
    """Where this process took the run up (not checkpointed): the whole-run totals of the
    checkpoint it resumed, from which its own share of the state's lists and totals follows."""

    resumed_from_epoch: int | None = None
    earlier: TrainState = field(default_factory=TrainState)  # the whole-run totals it resumed
    resumed_from_batch: int | None = None  # a batch checkpoint: batches of the next epoch done
