"""What a training run shows while it runs: one line per epoch, a step bar on a terminal, and
dvclive's per-epoch curves."""

from __future__ import annotations

import contextlib
import sys
import time
from pathlib import Path

from pipeline.train.loop import Trainer
from pipeline.train.state import EpochStats


def progress_line(total_epochs: int, first_epoch: int):
    started = time.perf_counter()

    def line(stats: EpochStats) -> str:
        elapsed = time.perf_counter() - started  # this process's epochs only, also when resumed
        eta = elapsed / max(stats.epoch - first_epoch + 1, 1) * (total_epochs - stats.epoch)
        return (
            f"epoch {stats.epoch:>3}/{total_epochs}  loss {stats.train_loss:.4f}  "
            f"acc {stats.train_accuracy:.4f}  val_loss {stats.val_loss:.4f}  "
            f"val_acc {stats.val_accuracy:.4f}  {stats.images_per_s:,.0f} img/s  ETA {eta:.0f}s"
        )

    return line


class StepBar:
    """One progress display: a bar over each epoch's steps on a terminal, with each epoch's line
    printed above it; plain lines only when stderr is not a terminal (DVC queue, CI logs)."""

    def __init__(self, trainer: Trainer, enabled: bool) -> None:
        self.trainer, self.bar, self.last = trainer, None, 2**62
        if enabled:
            from tqdm import tqdm

            steps = len(trainer.batches)
            self.bar = tqdm(total=steps, unit="step", leave=False, file=sys.stderr)
        self.advance = self._advance if self.bar is not None else None

    def _advance(self, index: int) -> None:
        if index <= self.last:  # a new epoch (which a resume can start part-way through)
            self.bar.reset(total=len(self.trainer.batches))
            self.bar.update(index - 1)
            epoch = self.trainer.state.epoch + 1
            self.bar.set_description(f"epoch {epoch}/{self.trainer.params.epochs}")
        self.last = index
        self.bar.update(1)

    def write(self, line: str) -> None:
        if self.bar is None:
            print(line, file=sys.stderr, flush=True)
            return
        self.bar.refresh()  # tqdm skips redraws closer than 0.1 s: show the finished epoch
        self.bar.write(line, file=sys.stderr)  # clears the bar, prints the line, redraws

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


@contextlib.contextmanager
def step_bar(trainer: Trainer, enabled: bool):
    bar = StepBar(trainer, enabled)
    try:
        yield bar
    finally:
        bar.close()


def log_live(live, stats: dict) -> None:
    live.step = stats["epoch"]  # dvclive's step is the x axis of the curves: epochs count from 1
    for name in ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr"):
        live.log_metric(name, stats[name])
    live.next_step()


class Progress:
    """Everything a run shows while it trains, on the writing rank only: the epoch line, the
    step bar on a terminal and dvclive's curves (earlier epochs replayed after a resume, so the
    curves stay whole). Other ranks show nothing."""

    def __init__(self, trainer: Trainer, live_dir: Path, writer: bool) -> None:
        self.trainer, self.live_dir, self.writer = trainer, live_dir, writer
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> Progress:
        self.live = self.bar = None
        if self.writer:
            from dvclive import Live  # heavy import; only the train stage needs it

            # Live clears its folder on start: one process owns it.
            live = Live(str(self.live_dir), dvcyaml=False, save_dvc_exp=False, resume=False)
            self.live = self._stack.enter_context(live)
            for past in self.trainer.state.history:
                log_live(self.live, past)
        self.bar = self._stack.enter_context(step_bar(self.trainer, self.writer and _tty()))
        self.line = progress_line(self.trainer.params.epochs, self.trainer.state.epoch + 1)
        return self

    def __exit__(self, *exc) -> bool | None:
        return self._stack.__exit__(*exc)

    def epoch(self, stats: EpochStats) -> None:
        if self.writer:
            self.bar.write(self.line(stats))
            log_live(self.live, stats.as_dict())

    def batch(self, index: int) -> None:
        if self.bar.advance is not None:
            self.bar.advance(index)


def _tty() -> bool:
    return sys.stderr.isatty()
