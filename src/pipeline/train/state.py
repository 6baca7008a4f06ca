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
    joules: float | None = 0.0  # None once any process had no energy figure


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
    """What this process trained (not checkpointed): the figures metrics/train.json reports,
    beside the whole-run totals when the run was resumed."""

    resumed_from_epoch: int | None = None
    earlier: TrainState = field(default_factory=TrainState)  # the whole-run totals it resumed
    resumed_from_batch: int | None = None  # a batch checkpoint: batches of the next epoch done
    images: list[int] = field(default_factory=list)  # per epoch trained here, all ranks
    seconds: list[float] = field(default_factory=list)  # optimiser steps only, per epoch

    def add(self, images: int, seconds: float) -> None:
        self.images.append(images)
        self.seconds.append(seconds)

    @property
    def epochs(self) -> int:
        return len(self.images)

    def images_per_s(self, skip_first: bool = False) -> float | None:
        """Over this process's epochs; ``skip_first``: steady state, without the warm-up epoch
        (allocator, autotuning, compilation). None when there is no epoch to measure."""
        start = 1 if skip_first else 0
        seconds = sum(self.seconds[start:])
        return sum(self.images[start:]) / seconds if seconds > 0 else None

    def steady_spread(self) -> float | None:
        """(max - min) / median of the per-epoch images/s after the first epoch: how far a busy
        neighbour or throttling moved the rate. None with fewer than 2 such epochs."""
        pairs = zip(self.images[1:], self.seconds[1:], strict=True)
        rates = sorted(images / seconds for images, seconds in pairs if seconds > 0)
        if len(rates) < 2:
            return None
        middle = len(rates) // 2
        median = rates[middle] if len(rates) % 2 else (rates[middle - 1] + rates[middle]) / 2
        return (rates[-1] - rates[0]) / median
