"""Checkpoints that finish an interrupted run, survive a kill at any moment, and never run code.

Files are ``epoch-NNNN-<run>.pt`` in one folder (``epoch-NNNN+BBBBBB-<run>.pt`` for a checkpoint
``B`` batches into the epoch after epoch ``N``), ``<run>`` being the first 12 hex digits of the
run's fingerprint, written atomically (temporary file, fsync, ``os.replace``). Each run keeps
its own newest ``keep`` and never touches another run's files, so a sweep over params cannot
delete the checkpoint a killed run needs. A run that completes removes its own checkpoints: a
finished run is never resumed. Temporary files left by a kill during a write are removed at
start. Loads use ``torch.load(..., weights_only=True)`` with no fallback to full unpickling,
through a descriptor opened with ``O_NOFOLLOW``; a link (or anything but a regular file) where
a checkpoint belongs is refused in one line.
"""

from __future__ import annotations

import re
import stat
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from pipeline.core.errors import PipelineError, describe, message_lines
from pipeline.core.io import atomic_open
from pipeline.core.reading import LinkRefusedError, NotRegularFileError, open_regular
from pipeline.train.distributed import maybe_inject_fault
from pipeline.train.identity import RunIdentity

NAME = re.compile(r"^epoch-(\d{4,})(?:\+(\d{6,}))?-([0-9a-f]{12})\.pt$")
# What pipeline.core.io.atomic_open leaves behind when killed mid-write: ".<name>.<random>.tmp".
TEMPORARY = re.compile(r"^\.epoch-\d{4,}(?:\+\d{6,})?-[0-9a-f]{12}\.pt\.[^/]*\.tmp$")
LEGACY = re.compile(r"^epoch-\d{4,}\.pt$")  # before runs were tagged; never resumed


@dataclass(frozen=True)
class Resume:
    """What the train stage found: a checkpoint to resume from, or why it starts fresh."""

    state: dict[str, Any] | None
    message: str
    path: Path | None = None  # the checkpoint ``state`` was read from


def run_tag(fingerprint: str) -> str:
    return fingerprint[:12]


def checkpoint_path(folder: Path, epoch: int, fingerprint: str, batch: int = 0) -> Path:
    """``batch``: micro-batches into the epoch after ``epoch`` (0: at the end of ``epoch``)."""
    within = f"+{batch:06d}" if batch else ""
    return folder / f"epoch-{epoch:04d}{within}-{run_tag(fingerprint)}.pt"


def check_folder(folder: Path) -> None:
    """Refuse a linked folder, and links or special files where checkpoints belong."""
    if folder.is_symlink():
        raise PipelineError(f"{folder} is a symbolic link; checkpoints must be a real folder")
    if not folder.is_dir():
        if folder.exists():  # found now, not at the first checkpoint write an epoch later
            raise PipelineError(f"{folder} is not a folder; checkpoints go there: remove it")
        return
    for entry in sorted(folder.iterdir()):
        if not (NAME.match(entry.name) or TEMPORARY.match(entry.name)):
            continue
        mode = entry.lstat().st_mode
        if stat.S_ISLNK(mode):
            raise PipelineError(
                f"{entry} is a symbolic link; checkpoints are never read through links: remove it"
            )
        if not stat.S_ISREG(mode):
            raise PipelineError(f"{entry} is not a regular file: remove it")


def remove_temporary(folder: Path) -> list[str]:
    """Delete what killed writes left behind (after check_folder: regular files, this folder)."""
    if not folder.is_dir():
        return []
    removed = sorted(p.name for p in folder.iterdir() if TEMPORARY.match(p.name))
    for name in removed:
        (folder / name).unlink(missing_ok=True)
    return removed


def checkpoint_files(folder: Path, fingerprint: str | None = None) -> list[Path]:
    """Newest first; only this run's when ``fingerprint`` is given."""
    if not folder.is_dir():
        return []
    found = [
        ((int(m.group(1)), int(m.group(2) or 0)), p)
        for p in folder.iterdir()
        if (m := NAME.match(p.name)) and (fingerprint is None or m.group(3) == run_tag(fingerprint))
    ]
    return [path for _, path in sorted(found, reverse=True)]


def save_checkpoint(
    folder: Path, epoch: int, state: dict[str, Any], fingerprint: str, batch: int = 0,
    keep: int = 2,
) -> Path:  # fmt: skip
    """Write this run's checkpoint, then drop its own older ones beyond ``keep``. A file of this
    run numbered past the one written is older than it: one whose content was unreadable when
    the run started (a readable one would have been resumed), never counted among the newest."""
    path = checkpoint_path(folder, epoch, fingerprint, batch)
    with atomic_open(path, "wb") as handle:
        torch.save({**state, "fingerprint": fingerprint}, handle)
    mine = checkpoint_files(folder, fingerprint)
    place = mine.index(path)
    for old in mine[:place] + mine[place + keep :]:
        old.unlink(missing_ok=True)
    return path


def remove_run(folder: Path, fingerprint: str) -> int:
    """A finished run's checkpoints go: nothing is left that could resume it."""
    mine = checkpoint_files(folder, fingerprint)
    for path in mine:
        path.unlink(missing_ok=True)
    return len(mine)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """weights_only=True: tensors, numbers, strings and containers only; never arbitrary code.
    O_NOFOLLOW: a link put in the checkpoint's place is refused, not followed."""
    try:
        handle = open_regular(path, follow_links=False)
    except LinkRefusedError:
        raise PipelineError(
            f"{path} is a symbolic link; checkpoints are never read through links: remove it"
        ) from None
    except NotRegularFileError:
        raise PipelineError(f"{path} is not a regular file: remove it") from None
    with handle:
        return torch.load(handle, map_location="cpu", weights_only=True)


def _try_load(
    path: Path, fingerprint: str, last_epoch: int | None = None
) -> tuple[dict[str, Any] | None, str | None]:
    """(state, None), or (None, why it cannot be resumed). The file system refusing a read
    (permission, I/O error) stops the run: starting over would throw its epochs away."""
    try:
        state = load_checkpoint(path)
    except PipelineError:
        raise
    except FileNotFoundError:
        return None, f"{path.name} gone"
    except OSError as error:
        raise PipelineError(
            f"{path}: cannot read this run's checkpoint ({describe(error)[:160]}); fix the "
            "file's access and re-run to resume, or delete it to train from scratch"
        ) from None
    except Exception as error:  # truncated, corrupt or hostile: try the previous one
        return None, f"{path.name} unreadable ({describe(error)[:160]})"
    if not isinstance(state, dict) or state.get("fingerprint") != fingerprint:
        return None, f"{path.name} belongs to another run"
    problem = content_problem(state, last_epoch)
    if problem:
        return None, f"{path.name} {problem}"
    return state, None


# What Trainer.state_dict and Checkpoints._write put in every checkpoint.
KEYS = ("model", "optimizer", "scheduler", "scaler", "ema", "best_weights", "rng", "state")


def content_problem(state: dict[str, Any], last_epoch: int | None) -> str | None:
    """Why a checkpoint stamped with this run's fingerprint still cannot be resumed, as the
    rest of a sentence naming the file; None when it can. The stamp is only a string in the
    file: an edited or damaged epoch count would be resumed as the finished run's (10**9
    epochs recorded for 3 trained), and NaN weights blamed on train.lr an epoch later."""
    missing = [key for key in (*KEYS, "epoch") if key not in state]
    if missing:
        return f"lacks {', '.join(missing)}"
    epoch, inner = state["epoch"], state["state"]
    inner = inner.get("epoch") if isinstance(inner, dict) else None
    if type(epoch) is not int or type(inner) is not int or inner != epoch:
        return f"says epoch {str(epoch)[:20]} outside and {str(inner)[:20]} inside"
    if not 0 <= epoch <= (epoch if last_epoch is None else last_epoch):
        return f"is at epoch {epoch}, outside this run's 0..{last_epoch}"
    progress = state.get("progress")
    batches = progress.get("batches") if isinstance(progress, dict) else None
    if progress is not None and (type(batches) is not int or batches < 1):
        return f"is {str(batches)[:20]} batches into an epoch"
    return _weights_problem(state["model"])


def _weights_problem(model: object) -> str | None:
    if not isinstance(model, dict) or not all(
        isinstance(value, torch.Tensor) for value in model.values()
    ):
        return "holds no model state dict (name -> tensor)"
    for name, tensor in model.items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            return f"holds NaN or infinite values in {str(name)[:80]!r}"
    return None


def other_resolution(folder: Path, run: RunIdentity) -> str | None:
    """Why the newest checkpoint of this run made under other resolved choices (another device
    kind, precision or CPU profile) is not resumed; None when there is none. Reads only the
    newest file of each other run, memory-mapped (its tensors are not read)."""
    newest: dict[str, Path] = {}
    for path in checkpoint_files(folder):
        newest.setdefault(NAME.match(path.name).group(3), path)
    newest.pop(run_tag(run.fingerprint), None)
    for path in newest.values():
        try:
            state = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
        except Exception:  # unreadable: nothing to explain from it  # noqa: S112
            state = None
        if isinstance(state, dict) and state.get("base") == run.base:
            theirs = ", ".join(f"{k} {v}" for k, v in state.get("resolved", {}).items())
            ours = ", ".join(f"{k} {v}" for k, v in run.resolved.items())
            return f"{path.name} was trained under {theirs}; this process resolved {ours}"
    return None


def find_resume(
    folder: Path, fingerprint: str, run: RunIdentity | None = None, last_epoch: int | None = None
) -> Resume:
    """The newest readable checkpoint of this run (same fingerprint, sane content, at most
    ``last_epoch``), else a fresh start and why. Other runs' checkpoints are looked past and
    left alone; with ``run``, one of this run made under other resolved choices is named as the
    reason."""
    check_folder(folder)
    notes = [f"removed {name} (a killed write)" for name in remove_temporary(folder)]
    others = len(checkpoint_files(folder)) - len(checkpoint_files(folder, fingerprint))
    others += sum(1 for p in folder.iterdir() if LEGACY.match(p.name)) if folder.is_dir() else 0
    if others:
        notes.append(f"left alone {others} checkpoint(s) of other runs")
    problems = []
    for path in checkpoint_files(folder, fingerprint):
        state, problem = _try_load(path, fingerprint, last_epoch)
        if state is None:
            problems.append(problem)
            continue
        skipped = [f"skipped {', '.join(problems)}"] if problems else []
        note = "; ".join(skipped + notes)
        progress = state.get("progress")
        within = f" + {progress['batches']} batches" if progress else ""
        message = f"resuming from {path.name} (epoch {state['epoch']}{within})"
        return Resume(state, f"{message}; {note}" if note else message, path)
    why = "; ".join(problems) or "no checkpoint of this run (params, data, code, resolved choices)"
    if run is not None and (elsewhere := other_resolution(folder, run)) is not None:
        why = f"{why}; not resumed: {elsewhere}"
    return Resume(None, "; ".join([f"starting fresh: {why}", *notes]))


def report(message: str) -> None:
    print(f"train: {message}", file=sys.stderr, flush=True)


class Checkpoints:
    """This run's checkpoints: resumed from at start, written as it trains (every
    train.checkpoint_every epochs and train.checkpoint_every_batches micro-batches, each carrying
    the account's whole-run totals so far), removed once its model is saved."""

    def __init__(self, folder: Path, run: RunIdentity, group, account, train) -> None:
        self.folder, self.run, self.group, self.account = folder, run, group, account
        self.every, self.every_batches = train.checkpoint_every, train.checkpoint_every_batches
        self.epochs = train.epochs

    def resume(self, trainer) -> None:
        """Load the newest checkpoint of this run into ``trainer``, if there is one; every rank
        must have found the same."""
        found = find_resume(self.folder, self.run.fingerprint, self.run, self.epochs)
        if self.group.is_writer:
            report(found.message)
        epoch = found.state["epoch"] if found.state is not None else 0
        progress = found.state.get("progress") if found.state is not None else None
        batch = progress["batches"] if progress is not None else 0
        if not (self.group.same_everywhere(epoch) and self.group.same_everywhere(batch)):
            raise PipelineError(
                f"ranks found different checkpoints in {self.folder}; is it shared?"
            )
        if found.state is not None:
            load_into(trainer, found)

    def after_epoch(self, trainer) -> None:
        epoch = trainer.state.epoch
        if self.every and (epoch % self.every == 0 or epoch == trainer.params.epochs):
            self._write(trainer, epoch)
        maybe_inject_fault(self.group, epoch)

    def after_batch(self, trainer, index: int) -> None:
        """A checkpoint inside the epoch, after every ``every_batches``-th micro-batch (the
        epoch's own checkpoint covers its last batch)."""
        every = self.every_batches
        if every and index % every == 0 and index < trainer.usable_batches:
            self._write(trainer, trainer.state.epoch, index)
        maybe_inject_fault(self.group, trainer.state.epoch + 1, index)

    def _write(self, trainer, epoch: int, batch: int = 0) -> None:
        """Collectives under DDP: every rank calls it; rank 0 writes."""
        self.account.stamp(trainer)  # whole-run totals so far
        progress = trainer.epoch_progress(batch) if batch else None  # the epoch's sums so far
        rng = self.group.gather_rng_states(trainer.rng_state())  # every rank's own
        if self.group.is_writer:
            state = {**trainer.state_dict(rng, progress), "epoch": epoch, **self.run.stamp()}
            save_checkpoint(self.folder, epoch, state, self.run.fingerprint, batch)
        self.group.barrier()  # rank 0 has finished writing before any rank can go on (or die)

    def finish(self) -> None:
        """The run is complete and its model saved: it is never resumed."""
        removed = remove_run(self.folder, self.run.fingerprint)
        if removed:
            report(f"run finished: removed its {removed} checkpoint(s), it is never resumed")


def load_into(trainer, found: Resume) -> None:
    """The checkpoint's state into ``trainer``; a state this trainer cannot take (a tensor of
    another shape, an optimiser of other groups) is one line naming the file."""
    try:
        trainer.load_state_dict(found.state)
    except (KeyError, TypeError, ValueError, RuntimeError, IndexError) as error:
        raise PipelineError(
            f"{found.path}: cannot be resumed ({'; '.join(message_lines(error))[:240]}); "
            "delete it to train from scratch"
        ) from None
