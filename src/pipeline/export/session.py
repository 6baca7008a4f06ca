"""Building onnxruntime sessions: only for checked models, and honest about providers."""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from pipeline.core.catalog import fallback_chain
from pipeline.export.safety import check_onnx_file

RECORD_PLACEMENT = "session.record_ep_graph_assignment_info"
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
# What onnxruntime logs when a provider cannot start, most specific first.
_FAILURE_PATTERNS = [
    re.compile(r"with error: (?P<why>[^\n]+)"),
    re.compile(r"(?P<why>Please install TensorRT libraries[^.\n]*)"),
    re.compile(r"(?P<why>Failed to create \w+ExecutionProvider[^.\n]*)"),
    re.compile(r"(?P<why>CUDA failure \d+:[^\n]+)"),
]


def provider_chain(
    provider: str, options: Mapping[str, Mapping[str, Any]] | None = None
) -> list[Any]:
    """The providers to request for one backend: the one asked for, then its fallbacks, each
    with its options (by registry name) wherever it sits in the chain."""
    options = options or {}
    return [
        (entry.ort_name, dict(options[entry.name])) if options.get(entry.name) else entry.ort_name
        for entry in fallback_chain(provider)
    ]


@contextlib.contextmanager
def native_output_captured() -> Iterator[list[str]]:
    """Collect what native code writes to file descriptors 1 and 2 meanwhile.

    onnxruntime reports why a provider could not start only on its own log (stderr), while the
    session quietly falls back to the CPU; capturing it turns that into a reason in the report.
    """
    lines: list[str] = []
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    saved = {fd: os.dup(fd) for fd in (1, 2)}
    with tempfile.TemporaryFile(mode="w+b") as sink:
        try:
            for fd in saved:
                os.dup2(sink.fileno(), fd)
            yield lines
        finally:
            for stream in (sys.stdout, sys.stderr):
                stream.flush()
            for fd, copy in saved.items():
                os.dup2(copy, fd)
                os.close(copy)
            sink.seek(0)
            text = _ANSI.sub("", sink.read().decode("utf-8", "replace"))
            lines.extend(line.strip() for line in text.splitlines() if line.strip())


def failure_reason(lines: list[str]) -> str:
    """The most telling line onnxruntime logged about a provider that did not start."""
    text = "\n".join(lines)
    for pattern in _FAILURE_PATTERNS:
        if match := pattern.search(text):
            return match.group("why").strip()
    return ""


def make_session(
    path: str | Path,
    provider: str = "cpu",
    threads: int = 0,
    provider_options: Mapping[str, Mapping[str, Any]] | None = None,
    log: list[str] | None = None,
):
    """An InferenceSession for a model that passed :func:`check_onnx_file`.

    ``provider_options`` maps registry names (``cuda``) to their onnxruntime options; each
    provider of the chain gets its own, fallbacks included.

    ``session.get_providers()`` says what really runs; a GPU provider that could not start
    leaves only CPUExecutionProvider there. With ``log``, onnxruntime's own messages from
    building the session are appended to it instead of going to the terminal.
    """
    import onnxruntime as ort

    check_onnx_file(path)
    if provider != "cpu" and hasattr(ort, "preload_dlls"):
        # onnxruntime-gpu finds CUDA/cuDNN from the nvidia-* wheels that PyTorch installs.
        with contextlib.suppress(Exception):
            ort.preload_dlls()
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # errors only; fallbacks are reported by the caller
    # get_providers() lists the providers registered, not where nodes run: record placement.
    options.add_session_config_entry(RECORD_PLACEMENT, "1")
    if threads:
        options.intra_op_num_threads = threads
    chain = provider_chain(provider, provider_options)
    if log is None:
        return ort.InferenceSession(str(path), sess_options=options, providers=chain)
    captured: list[str] = []
    try:
        with native_output_captured() as captured:
            return ort.InferenceSession(str(path), sess_options=options, providers=chain)
    finally:
        log.extend(captured)  # filled when the capture ends, success or not


def node_placement(session) -> dict[str, list[str]] | None:
    """The op types of the nodes each execution provider really runs, in the session's provider
    order; None when this onnxruntime cannot tell (it has no assignment info)."""
    if not hasattr(session, "get_provider_graph_assignment_info"):
        return None
    try:
        subgraphs = session.get_provider_graph_assignment_info()
    except Exception:  # recording was refused: no placement rather than a guess
        return None
    placed: dict[str, list[str]] = {provider: [] for provider in session.get_providers()}
    for subgraph in subgraphs:
        ops = [node.op_type for node in subgraph.get_nodes()]
        placed.setdefault(subgraph.ep_name, []).extend(ops)
    return {provider: ops for provider, ops in placed.items() if ops} or None


def session_logits(session, inputs, batch_size: int):
    """Logits of an onnxruntime session over ``inputs`` (numpy, NCHW), batch by batch."""
    import numpy as np

    from pipeline.models.inference import (
        in_batches,  # here: it loads torch, which sessions don't need
    )

    input_name = session.get_inputs()[0].name

    def forward(batch):
        return session.run(None, {input_name: batch})[0]

    return np.concatenate(list(in_batches(forward, batch_size, inputs))).astype(np.float32)
