"""Runtimes other than onnxruntime that run the exported ONNX files (``benchmark.runtimes``).

A runtime is one catalog entry (pipeline.catalog.RUNTIMES) and one backend class in this
package that has every member of bench/backends.py's ``Backend`` protocol plus the three
below; the matrix, timing rounds, memory, energy and report take it from there.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Protocol

from pipeline.bench.backends import Backend, Planned
from pipeline.catalog import Runtime, resolve


class RuntimeBackend(Protocol):
    """The class of a runtime's backend: which settings it is timed in, and one per file."""

    @staticmethod
    def settings() -> list[str]:
        """The settings (e.g. precision hints) each exported file is timed in."""
        ...

    @staticmethod
    def planned(variant: str, setting: str) -> Planned: ...

    def __call__(
        self, path: Path, variant: str, setting: str, threads: int, mean, std
    ) -> Backend: ...


def runtime_plans(
    runtime: Runtime, variants: dict[str, Path], threads: int, mean, std
) -> Iterator[tuple[Planned, Callable[[], Backend]]]:
    """(what it will be, how to build it) for every exported file x setting of ``runtime``."""
    backend: RuntimeBackend = resolve(runtime.target, "pipeline.bench")
    for setting in backend.settings():
        for variant, path in variants.items():

            def build(path=path, variant=variant, setting=setting) -> Backend:
                return backend(path, variant, setting, threads, mean, std)

            yield backend.planned(variant, setting), build
