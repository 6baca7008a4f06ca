"""Checkpoints that survive a kill at any moment, and that can never run code when loaded.

Files are ``epoch-NNNN.pt`` in one folder, written atomically (temporary file, fsync,
``os.replace``); the newest ``keep`` are kept, so a corrupt newest file falls back to the one
before. They are loaded only with ``torch.load(..., weights_only=True)``, with no fallback to
full unpickling: a file holding anything but tensors and plain containers is refused.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from pipeline.io import atomic_open

NAME = re.compile(r"^epoch-(\d{4,})\.pt$")


@dataclass(frozen=True)
class Resume:
    """What the train stage found: a checkpoint to resume from, or why it starts fresh."""

    state: dict[str, Any] | None
    message: str


def checkpoint_files(folder: Path) -> list[Path]:
    """Newest first."""
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := NAME.match(p.name))]
    return [path for _, path in sorted(found, reverse=True)]


def save_checkpoint(folder: Path, epoch: int, state: dict[str, Any], keep: int = 2) -> Path:
    path = folder / f"epoch-{epoch:04d}.pt"
    with atomic_open(path, "wb") as handle:
        torch.save(state, handle)
    for old in checkpoint_files(folder)[keep:]:
        old.unlink(missing_ok=True)
    return path


def load_checkpoint(path: Path) -> dict[str, Any]:
    """weights_only=True: tensors, numbers, strings and containers only; never arbitrary code."""
    return torch.load(path, map_location="cpu", weights_only=True)


def find_resume(folder: Path, fingerprint: str) -> Resume:
    """The newest readable checkpoint whose fingerprint matches, else a fresh start and why."""
    problems = []
    for path in checkpoint_files(folder):
        try:
            state = load_checkpoint(path)
        except Exception as error:  # truncated, corrupt or hostile: try the previous one
            first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
            problems.append(f"{path.name} unreadable ({type(error).__name__}: {first_line[:120]})")
            continue
        if state.get("fingerprint") != fingerprint:
            return Resume(None, f"starting fresh: {path.name} was made with other params or data")
        note = f"; skipped {', '.join(problems)}" if problems else ""
        return Resume(state, f"resuming from {path.name} (epoch {state['epoch']}){note}")
    if problems:
        return Resume(None, f"starting fresh: {'; '.join(problems)}")
    return Resume(None, "starting fresh: no checkpoint")


def report(message: str) -> None:
    print(f"train: {message}", file=sys.stderr, flush=True)
