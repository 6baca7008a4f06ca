"""What a training run has done so far: per-epoch figures and the counters a checkpoint carries."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


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
