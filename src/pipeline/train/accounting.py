"""Time, images and energy in metrics/train.json: this process's work, and the whole run's.

A resumed run is trained by several processes. Every figure at the top level of
metrics/train.json covers the work of the process that wrote it; ``whole_run`` sums it with the
totals the resumed checkpoint carried (earlier processes up to their last checkpoint).
"""

from __future__ import annotations

import math
import time
from dataclasses import replace
from typing import Any

import torch

from pipeline.energy import EnergyReading
from pipeline.energy.window import EnergyWindow
from pipeline.train.loop import Trainer

WHOLE_RUN_NOTE = (
    "sums over the {processes} process(es) that trained this run; each earlier one counts up to "
    "its last checkpoint (work a kill lost after it is not counted)"
)


def group_energy(reading: EnergyReading, group, device: torch.device, images: int) -> dict:
    """The whole group's energy per image. NVML and the CPU-time estimate measure this rank's
    own device or process, so ranks add up; RAPL measures the CPU package that every process
    of a node shares, so only local rank 0 counts it."""
    if group.world_size == 1:
        return reading.to_dict(images=images)
    own = reading.joules
    if reading.method == "rapl" and group.local_rank != 0:
        own = 0.0
    mine = torch.tensor(float("nan") if own is None else own, device=device, dtype=torch.float64)
    total = group.all_reduce(mine).item()  # sync; NaN anywhere makes the sum NaN
    note = f"summed over {group.world_size} processes"
    summed = replace(
        reading,
        joules=None if math.isnan(total) else total,
        reason="; ".join(filter(None, [reading.reason, note])),
    )
    return summed.to_dict(images=images)


def _add(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a + b


class RunAccount:
    """This process's clock, and an energy window restarted at every checkpoint, so that each
    checkpoint carries the whole run's wall seconds and joules so far."""

    def __init__(self, tally: EnergyWindow, group, device: torch.device) -> None:
        self.started = time.perf_counter()
        self.group, self.device = group, device
        self.tally = tally.start()
        self.joules: float | None = 0.0  # this process's, through the last checkpoint

    def wall_seconds(self) -> float:
        return time.perf_counter() - self.started

    def stamp(self, trainer: Trainer) -> None:
        """Before a checkpoint is written; a collective under DDP (every rank calls it)."""
        reading = self.tally.stop()
        self.tally.start()
        own = group_energy(reading, self.group, self.device, images=0)["joules"]
        self.joules = _add(self.joules, own)
        earlier, state = trainer.work.earlier, trainer.state
        state.processes = earlier.processes + 1
        state.wall_seconds = earlier.wall_seconds + self.wall_seconds()
        state.joules = _add(earlier.joules, self.joules)

    def close(self) -> None:
        self.tally.stop()


def process_figures(trainer: Trainer, wall_seconds: float) -> dict[str, Any]:
    work = trainer.work
    steady = work.images_per_s(skip_first=True)
    figures = {
        "resumed_from_epoch": work.resumed_from_epoch,
        "resumed_from_batch": work.resumed_from_batch,  # of the epoch after it (batch checkpoint)
        "epochs_trained": work.epochs,
        "images": sum(work.images),  # all ranks: each epoch's count is all-reduced
        "train_seconds": sum(work.seconds),
        "images_per_s": work.images_per_s(),
        "steady_state_images_per_s": steady,
        "steady_state_spread": work.steady_spread(),  # pipeline-pareto's noise test reads it
        "seconds_per_epoch": sum(work.seconds) / work.epochs if work.epochs else None,
        "wall_seconds": wall_seconds,
    }
    if steady is None:
        figures["steady_state_reason"] = (
            f"needs 2 epochs trained in this process (the first warms up); it trained {work.epochs}"
        )
    return figures


def whole_run(trainer: Trainer, wall_seconds: float, joules: float | None) -> dict[str, Any]:
    state, earlier = trainer.state, trainer.work.earlier
    processes = earlier.processes + 1
    total_joules = _add(earlier.joules, joules)
    return {
        "processes": processes,
        "epochs": state.epoch,
        "images": state.images_seen,
        "train_seconds": state.train_seconds,
        "images_per_s": state.images_seen / state.train_seconds if state.train_seconds else None,
        "wall_seconds": earlier.wall_seconds + wall_seconds,
        "joules": total_joules,
        "joules_per_image": total_joules / state.images_seen
        if total_joules is not None and state.images_seen
        else None,
        "note": WHOLE_RUN_NOTE.format(processes=processes),
    }


def epochs_line(trainer: Trainer) -> str:
    """What this process trained, for the log: a re-run says whether it trained anything."""
    work, total = trainer.work, trainer.state.epoch
    start = (work.resumed_from_epoch or 0) + 1
    if work.epochs == 0:
        return f"trained no epoch in this process: resumed a run already at epoch {total}"
    resumed = f" (resumed from epoch {work.resumed_from_epoch})" if work.resumed_from_epoch else ""
    if work.resumed_from_batch:
        resumed = (
            f" (resumed after batch {work.resumed_from_batch} of epoch {start}: the epoch's "
            "earlier batches were trained before)"
        )
    return f"trained epochs {start}-{total} ({work.epochs}) in this process{resumed}"
