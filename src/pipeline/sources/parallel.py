"""Chunked work over a forked process pool, and output memory the workers fill in place.

``ChunkRunner.map`` calls ``fn(start, items[start:start + chunk])`` and yields results as
chunks complete, with at most ``2 x workers`` chunks in flight. Callers put each result at its
start index, so the output never depends on completion order. Decoded pixels do not travel
back through pipes: the output array is anonymous shared memory (``shared_empty``), created
before the pool forks, and each worker writes its rows straight into it.
"""

from __future__ import annotations

import math
import mmap
import multiprocessing
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Any, TypeVar

import numpy as np

from pipeline.sources.errors import DataSourceError

T = TypeVar("T")
R = TypeVar("R")


def can_fork() -> bool:
    """Workers need fork (Linux, macOS) to inherit the shared output; elsewhere one process."""
    return "fork" in multiprocessing.get_all_start_methods()


def resolve_workers(workers: int) -> int:
    """``data.workers``: 0 means one process per CPU core this process may run on."""
    if workers > 0:
        return workers
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def chunk_size_for(n_items: int, workers: int, largest: int = 256) -> int:
    """About 8 chunks per worker (load balance) but no more than ``largest`` items each."""
    return max(1, min(largest, -(-n_items // (workers * 8))))


def shared_empty(shape: tuple[int, ...], shared: bool) -> np.ndarray:
    """An uninitialised uint8 array; with ``shared``, in MAP_SHARED anonymous memory that
    processes forked afterwards write into directly (no pickling, no pipe, no second copy)."""
    size = math.prod(shape)
    if not shared or size == 0:
        return np.empty(shape, dtype=np.uint8)
    return np.frombuffer(mmap.mmap(-1, size), dtype=np.uint8).reshape(shape)


class ChunkRunner:
    """Runs chunks in-process (1 worker) or in a pool of forked processes started on entry."""

    def __init__(self, workers: int):
        self.workers = workers if can_fork() else 1
        self._pool: ProcessPoolExecutor | None = None

    @property
    def pooled(self) -> bool:
        return self.workers > 1

    def __enter__(self) -> ChunkRunner:
        if self.pooled:
            # Fork: workers start in milliseconds and inherit the modules and the shared
            # output. All of them start here, on the first submit, before the executor's
            # manager thread or any progress-bar thread exists, so no thread is forked.
            context = multiprocessing.get_context("fork")
            self._pool = ProcessPoolExecutor(max_workers=self.workers, mp_context=context)
            self._pool.submit(int).result()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def map(
        self, fn: Callable[[int, Sequence[T]], R], items: Sequence[T], chunk_size: int
    ) -> Iterator[tuple[int, R]]:
        """Yield ``(start, fn(start, items[start:start + chunk_size]))`` as chunks complete."""
        starts = iter(range(0, len(items), chunk_size))
        if self._pool is None:
            for start in starts:
                yield start, fn(start, items[start : start + chunk_size])
            return
        pending: dict[Future[Any], int] = {}

        def submit_next() -> None:
            start = next(starts, None)
            if start is not None:
                chunk = items[start : start + chunk_size]
                pending[self._pool.submit(fn, start, chunk)] = start  # type: ignore[union-attr]

        for _ in range(2 * self.workers):
            submit_next()
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                start = pending.pop(future)
                try:
                    result = future.result()
                except BrokenProcessPool:
                    # A worker was killed (out of memory) or a native decoder crashed.
                    raise DataSourceError(
                        f"a worker process died with the chunk from {items[start]!r} in flight "
                        "(out of memory, or a decoder crashed on a file); data.workers: 1 "
                        "runs in one process and shows where"
                    ) from None
                submit_next()
                yield start, result
