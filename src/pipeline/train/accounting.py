"""The run's account: one clock and one energy window, carried across checkpoints, so that the
figures at the top of the train record describe the whole run.

A resumed run is trained by several processes. Each checkpoint carries the whole run's totals
so far (processes, wall seconds, joules per energy method, per-epoch images and seconds); the
process that finishes adds its own. The record's top level covers the whole run (what
metrics/train.json, `dvc exp show` and pipeline-pareto compare); ``process`` holds this
process's share (metrics/details/train.json only). Joules of different scopes (GPU board, CPU
package, estimate) are kept apart and never added.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch

from pipeline.energy import ENERGY_SCOPES, EnergyReading
from pipeline.energy.window import EnergyWindow
from pipeline.train.loop import Trainer
from pipeline.train.state import TrainState

RESUMED_NOTE = (
    "the record's top level sums the {processes} process(es) that trained this run; each earlier "
    "one counts up to its last checkpoint (work a kill lost after it is not counted)"
)


def group_joules(reading: EnergyReading, group, device: torch.device) -> float | None:
    """The whole group's joules of one window. NVML and the CPU-time estimate measure this
    rank's own device or process, so ranks add up; RAPL measures the CPU package that every
    process of a node shares, so only local rank 0 counts it. None when any rank has none."""
    if group.world_size == 1:
        return reading.joules
    own = reading.joules
    if reading.method == "rapl" and group.local_rank != 0:
        own = 0.0
    mine = torch.tensor(float("nan") if own is None else own, device=device, dtype=torch.float64)
    total = group.all_reduce(mine).item()  # sync; NaN anywhere makes the sum NaN
    return None if total != total else total


def energy_record(
    joules: dict[str, float], gaps: int, images: int, note: str | None = None
) -> dict[str, Any]:
    """Joules per image from one scope's total; None (and why) when a window had no figure or
    the windows measured different scopes, which are never added."""
    by_scope: dict[str, float] = {}
    for method, value in joules.items():
        scope = ENERGY_SCOPES[method]
        by_scope[scope] = by_scope.get(scope, 0.0) + value
    total, why = None, None
    if gaps:
        why = f"{gaps} energy window(s) of this run had no figure"
    elif len(by_scope) > 1:
        parts = ", ".join(f"{scope} {value:.6g} J" for scope, value in sorted(by_scope.items()))
        why = f"measured in different scopes ({parts}); they are never added"
    elif by_scope:
        total = next(iter(by_scope.values()))
    return {
        "joules": total,
        "joules_per_image": total / images if total is not None and images else None,
        "method": "+".join(sorted(joules)) if total is not None else "unavailable",
        "scope": next(iter(by_scope)) if total is not None else None,
        "by_scope": by_scope,
        "images": images,
        "reason": "; ".join(filter(None, [why, note])) or None,
    }


def rates(images: list[int], seconds: list[float], warmup: list[bool]) -> dict[str, Any]:
    """images/s over the epochs given, and in steady state: without each process's warm-up
    epoch (allocator, autotuning, compilation). None where there is no epoch to measure."""
    total = sum(seconds)
    steady = [(i, s) for i, s, w in zip(images, seconds, warmup, strict=True) if not w]
    steady_seconds = sum(s for _, s in steady)
    return {
        "images_per_s": sum(images) / total if total > 0 else None,
        "steady_state_images_per_s": (
            sum(i for i, _ in steady) / steady_seconds if steady_seconds > 0 else None
        ),
        "steady_state_spread": spread([i / s for i, s in steady if s > 0]),
        "seconds_per_epoch": total / len(images) if images else None,
    }


def spread(rates: list[float]) -> float | None:
    """(max - min) / median of per-epoch images/s: how far a busy neighbour or throttling moved
    the rate. None with fewer than 2 rates."""
    if len(rates) < 2:
        return None
    rates = sorted(rates)
    middle = len(rates) // 2
    median = rates[middle] if len(rates) % 2 else (rates[middle - 1] + rates[middle]) / 2
    return (rates[-1] - rates[0]) / median


def _merged(earlier: dict[str, float], mine: dict[str, float]) -> dict[str, float]:
    return {m: earlier.get(m, 0.0) + mine.get(m, 0.0) for m in sorted({*earlier, *mine})}


class RunAccount:
    """This process's clock (from its start) and its energy window, restarted at every
    checkpoint so that each checkpoint carries the whole run's seconds and joules so far."""

    def __init__(self, group, clock: Callable[[], float] = time.perf_counter) -> None:
        self.clock, self.started, self.group = clock, clock(), group
        self.window: EnergyWindow | None = None
        self.device = torch.device("cpu")
        self.joules: dict[str, float] = {}  # this process's, per method, through the last window
        self.gaps = 0
        self.note: str | None = None  # the last window's meter note (estimate formula, fallbacks)

    def measure(self, window: EnergyWindow, device: torch.device) -> None:
        """Open the energy window once the device is known."""
        self.window, self.device = window.start(), device

    def wall_seconds(self) -> float:
        return self.clock() - self.started

    def _close_window(self) -> None:
        """A collective under DDP (every rank calls it)."""
        reading = self.window.stop()
        joules = group_joules(reading, self.group, self.device)
        if joules is None:
            self.gaps += 1
        else:
            self.joules[reading.method] = self.joules.get(reading.method, 0.0) + joules
        world = self.group.world_size
        summed = f"summed over {world} processes" if world > 1 else None
        self.note = "; ".join(filter(None, [reading.reason, summed])) or None

    def _carry(self, state: TrainState, earlier: TrainState) -> None:
        state.processes = earlier.processes + 1
        state.wall_seconds = earlier.wall_seconds + self.wall_seconds()
        state.joules = _merged(earlier.joules, self.joules)
        state.energy_gaps = earlier.energy_gaps + self.gaps

    def stamp(self, trainer: Trainer) -> None:
        """Before a checkpoint is written: the whole run's totals so far into its state."""
        self._close_window()
        self.window.start()
        self._carry(trainer.state, trainer.work.earlier)

    def close(self, trainer: Trainer) -> dict[str, Any]:
        """Stop measuring; the run's figures (whole run at the top, this process's apart)."""
        self._close_window()
        self._carry(trainer.state, trainer.work.earlier)
        return {
            **whole_run_figures(trainer.state, self.note),
            "resumed": self._resumed(trainer),
            "process": self.process_figures(trainer),
        }

    def _resumed(self, trainer: Trainer) -> dict[str, Any]:
        work = trainer.work
        processes = trainer.state.processes
        return {
            "processes": processes,
            "from_epoch": work.resumed_from_epoch,
            "from_batch": work.resumed_from_batch,  # of the epoch after it (batch checkpoint)
            "note": RESUMED_NOTE.format(processes=processes),
        }

    def process_figures(self, trainer: Trainer) -> dict[str, Any]:
        """This process's share: the epochs (or part of one) it trained, its clock, its joules."""
        state, done = trainer.state, len(trainer.work.earlier.epoch_images)
        images, seconds = state.epoch_images[done:], state.epoch_seconds[done:]
        figures = {
            "epochs_trained": len(images),
            "images": sum(images),  # all ranks: each epoch's count is all-reduced
            "train_seconds": sum(seconds),
            **rates(images, seconds, state.warmup[done:]),
            "wall_seconds": self.wall_seconds(),
            "energy": energy_record(self.joules, self.gaps, sum(images), self.note),
        }
        if figures["steady_state_images_per_s"] is None:
            figures["steady_state_reason"] = (
                f"needs 2 epochs trained in this process (the first warms up); it trained "
                f"{len(images)}"
            )
        return figures


def whole_run_figures(state: TrainState, note: str | None = None) -> dict[str, Any]:
    """Time, images, rates and energy of every process that trained the run."""
    figures = {
        "images": state.images_seen,  # all ranks, every epoch (also the part before a resume)
        "train_seconds": state.train_seconds,  # optimiser steps only, validation excluded
        **rates(state.epoch_images, state.epoch_seconds, state.warmup),
        "images_per_s": state.images_seen / state.train_seconds if state.train_seconds else None,
        "seconds_per_epoch": state.train_seconds / state.epoch if state.epoch else None,
        "wall_seconds": state.wall_seconds,
        "energy": energy_record(state.joules, state.energy_gaps, state.images_seen, note),
    }
    if figures["steady_state_images_per_s"] is None:
        figures["steady_state_reason"] = (
            "needs an epoch after the first of a process (each process's first warms up)"
        )
    return figures


def epochs_line(trainer: Trainer) -> str:
    """What this process trained, for the log: a re-run says whether it trained anything."""
    work, total = trainer.work, trainer.state.epoch
    trained = total - (work.resumed_from_epoch or 0)
    start = (work.resumed_from_epoch or 0) + 1
    if trained == 0:
        return f"trained no epoch in this process: resumed a run already at epoch {total}"
    resumed = f" (resumed from epoch {work.resumed_from_epoch})" if work.resumed_from_epoch else ""
    if work.resumed_from_batch:
        resumed = (
            f" (resumed after batch {work.resumed_from_batch} of epoch {start}: the epoch's "
            "earlier batches were trained before)"
        )
    return f"trained epochs {start}-{total} ({trained}) in this process{resumed}"
