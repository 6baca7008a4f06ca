"""Shard hashes verified once per prepared dataset, not by every process, rank and resume.

Hashing every shard costs minutes at millions of images. The first reader that verifies a
prepared folder records, beside it (``.<folder>.verified.json``, git- and DVC-ignored), each
shard's sha256 with the file's identity: size, inode, device, mtime and ctime (ctime changes
on any write and cannot be set back). A later reader hashes only the shards whose identity
differs from the record (a changed, replaced or relinked file), so a changed file is still
caught. Readers take a lock while they check, so the ranks of one run that start together
hash once between them, not once each. A folder where no record can be written (read-only)
is hashed every time.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path

from pipeline.core.io import write_json

RECORD_VERSION = 1


def record_path(folder: Path) -> Path:
    return folder.parent / f".{folder.name}.verified.json"


def identity(path: Path, sha256: str) -> dict:
    """What must be unchanged for an earlier hash of ``path`` to still hold (follows a link)."""
    found = os.stat(path)
    return {
        "sha256": sha256,
        "target": str(path.resolve()),
        "size": found.st_size,
        "inode": found.st_ino,
        "device": found.st_dev,
        "mtime_ns": found.st_mtime_ns,
        "ctime_ns": found.st_ctime_ns,
    }


def _read(path: Path) -> dict:
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    ok = isinstance(record, dict) and record.get("version") == RECORD_VERSION
    return record.get("files", {}) if ok and isinstance(record.get("files"), dict) else {}


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[bool]:
    """An exclusive lock on the folder's record (True), or False where none can be taken."""
    try:
        handle = open(folder.parent / f".{folder.name}.verified.lock", "a")  # noqa: SIM115
    except OSError:
        yield False
        return
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # released when the file closes
        yield True


def verify_once(folder: Path, shards: list[tuple[Path, str]], check: Callable[[Path, str], None]):
    """Run ``check(path, sha256)`` (hash and compare; raises on a mismatch) on each shard whose
    file differs from the record of an earlier check; then record them all."""
    with _locked(folder) as locked:
        record = _read(record_path(folder)) if locked else {}
        changed = False
        for path, sha256 in shards:
            before = identity(path, sha256)  # taken first: a write while hashing shows later
            if record.get(path.name) != before:
                check(path, sha256)
                record[path.name], changed = before, True
        if locked and changed:
            with contextlib.suppress(OSError):
                write_json(record_path(folder), {"version": RECORD_VERSION, "files": record})
