"""Runtimes other than onnxruntime that run the exported ONNX files (``benchmark.runtimes``).

A runtime is one catalog entry (pipeline.core.catalog.RUNTIMES) and one backend class in this
package: instances have every member of bench/backends.py's ``Backend`` protocol, and the class
the two below; the matrix, timing rounds, memory, energy and report take it from there.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

from pipeline.bench.backends import OrtSetup, Plan
from pipeline.core.catalog import Runtime, resolve


class RuntimeBackend(Protocol):
    """The class of a runtime's backend: the settings each file is timed in, and its plans."""

    @staticmethod
    def settings() -> list[str]:
        """The settings (e.g. precision hints) each exported file is timed in."""
        ...

    @staticmethod
    def plan(path: Path, variant: str, setting: str, setup: OrtSetup) -> Plan:
        """Who the backend is (the row's identity) and how to build it."""
        ...


def runtime_plans(runtime: Runtime, variants: dict[str, Path], setup: OrtSetup) -> Iterator[Plan]:
    """A plan for every setting x exported file of ``runtime``; ``setup`` is the onnxruntime
    backends' (same threads, same normalisation for files that take float input)."""
    backend: RuntimeBackend = resolve(runtime.target, "pipeline.bench")
    for setting in backend.settings():
        for variant, path in variants.items():
            yield backend.plan(path, variant, setting, setup)
