"""OpenVINO on the CPU: the exported ONNX files compiled at OpenVINO's default precision and
with ``INFERENCE_PRECISION_HINT: f32``.

OpenVINO's CPU default computes in bf16 where the CPU has bf16 units (AVX512-BF16, AMX) and in
f32 elsewhere, so each row's precision is read back from the compiled model, never assumed from
the CPU: its ``INFERENCE_PRECISION_HINT`` property, and int8 when its convolution or matmul
layers run on 8-bit integers (the QDQ file). OpenVINO is an optional extra; without it, or when
a file does not compile, the backend cannot be built and the benchmark's rows say why.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.bench.backends import OrtSetup, Plan, RunFacts
from pipeline.core.errors import message_lines
from pipeline.export.safety import check_onnx_file
from pipeline.models.inference import in_batches
from pipeline.models.preprocess import Normalize

DEFAULT = "default"  # OpenVINO's own precision for the CPU: bf16 with bf16 units, else f32
F32 = "f32"
MISSING = "openvino is not installed (pip install '.[openvino]')"
# OpenVINO's element types as the rest of the benchmark names precisions.
PRECISION_NAMES = {"f32": "fp32", "bf16": "bf16", "f16": "fp16"}
# Layer types (runtime model) whose arithmetic the row's precision is about.
COMPUTE_LAYERS = {"Convolution", "GroupConvolution", "Deconvolution", "FullyConnected", "MatMul"}
INT8_TYPES = {"u8", "i8"}
# Lines of an OpenVINO error that say where in its sources it was raised, not what failed.
WHERE_RAISED = ("Exception from ", "Check '", "FrontEnd API failed", "Summary:")


class OpenVinoCompileError(RuntimeError):
    """OpenVINO could not read or compile a file; the message is what it said was wrong."""


def compile_reason(path: Path, error: Exception) -> str:
    """OpenVINO's error without the source locations it starts with, on one line."""
    lines = [line.strip(" -") for line in message_lines(error)]
    said = [line.rstrip(".") for line in lines if line and not line.startswith(WHERE_RAISED)]
    return f"OpenVINO cannot compile {Path(path).name}: {'; '.join(said) or type(error).__name__}"


def load_openvino():
    """The openvino module, or an ImportError whose message is the row's reason."""
    try:
        import openvino
    except ImportError:
        raise ImportError(MISSING) from None
    return openvino


def openvino_version() -> str:
    """The installed OpenVINO's version, for the report's context."""
    try:
        return load_openvino().get_version()
    except ImportError:
        return "not installed"


def device_default_precision() -> str | None:
    """What OpenVINO's CPU plugin computes in without a hint (f32, bf16, f16); None without
    OpenVINO. Only decides whether a separate f32 row is worth timing."""
    try:
        openvino = load_openvino()
    except ImportError:
        return None
    return openvino.Core().get_property("CPU", "INFERENCE_PRECISION_HINT").to_string()


def layer_precisions(runtime_model) -> dict[str, str]:
    """Compute layer type -> the precisions it runs in, from the compiled (runtime) model."""
    found: dict[str, set[str]] = {}
    for op in runtime_model.get_ordered_ops():
        info = op.get_rt_info()
        if "layerType" not in info or "runtimePrecision" not in info:
            continue
        layer = info["layerType"].astype(str)
        if layer in COMPUTE_LAYERS:
            found.setdefault(layer, set()).add(info["runtimePrecision"].astype(str))
    return {layer: "+".join(sorted(kinds)) for layer, kinds in sorted(found.items())}


def compiled_precision(compiled) -> tuple[str, str]:
    """(precision, how it was read) of a compiled model: int8 when a compute layer runs 8-bit
    integers, else its INFERENCE_PRECISION_HINT property (fp32, bf16, fp16)."""
    hint = compiled.get_property("INFERENCE_PRECISION_HINT").to_string()
    layers = layer_precisions(compiled.get_runtime_model())
    shown = ", ".join(f"{layer} {kinds}" for layer, kinds in layers.items()) or "none reported"
    how = f"compiled INFERENCE_PRECISION_HINT {hint}; compute layers: {shown}"
    if any(set(kinds.split("+")) & INT8_TYPES for kinds in layers.values()):
        return "int8", how
    return PRECISION_NAMES.get(hint, hint), how


class OpenVinoBackend:
    """One exported ONNX file compiled for OpenVINO's CPU plugin at one precision setting:
    ``default`` (no hint) or ``f32``; latency mode, one stream, ``threads`` inference threads
    (the thread count every other backend gets)."""

    @staticmethod
    def settings() -> list[str]:
        """The precision settings to time. Where OpenVINO's default already is f32 an f32 row
        would compile the same model again, so the default row is the f32 one."""
        default = device_default_precision()
        return [DEFAULT] if default in (None, F32) else [DEFAULT, F32]

    @staticmethod
    def plan(path: Path, variant: str, setting: str, setup: OrtSetup) -> Plan:
        return Plan(
            name=f"openvino_{setting}",
            variant=variant,
            provider="cpu",  # the OpenVINO device asked for, named like a torch device type
            memory_kind="host",
            build=lambda: OpenVinoBackend(path, variant, setting, setup),
        )

    def __init__(self, path: Path, variant: str, setting: str, setup: OrtSetup) -> None:
        openvino = load_openvino()
        config: dict[str, Any] = {
            "PERFORMANCE_HINT": "LATENCY",
            "NUM_STREAMS": 1,
            "INFERENCE_NUM_THREADS": setup.threads,
            # Pinned workers hold their cores between calls: the other backends timed beside
            # them in the same rounds went noisy (onnxruntime batch 1 spread 38% against 11%).
            "ENABLE_CPU_PINNING": False,
        }
        if setting == F32:
            config["INFERENCE_PRECISION_HINT"] = openvino.Type.f32
        elif setting != DEFAULT:
            raise ValueError(f"OpenVINO precision setting {setting!r}; choose {DEFAULT} or {F32}")
        check_onnx_file(path)  # the same checks as before onnxruntime opens a file
        try:
            self.compiled = openvino.Core().compile_model(str(path), "CPU", config)
        except RuntimeError as error:
            raise OpenVinoCompileError(compile_reason(path, error)) from None
        self.facts = self._facts(setting)
        self.takes_uint8 = self.compiled.input(0).get_element_type() == openvino.Type.u8
        self.normalize = Normalize(setup.mean, setup.std)
        self.request = self.compiled.create_infer_request()

    def _facts(self, setting: str) -> RunFacts:
        """What the compiled model says it runs: its device and its precision."""
        precision, how = compiled_precision(self.compiled)
        devices = tuple(self.compiled.get_property("EXECUTION_DEVICES"))
        same = setting == DEFAULT and F32 not in self.settings()
        only = "; OpenVINO's CPU default is f32 here, so this is also the f32 row" if same else ""
        return RunFacts(
            status="ok" if "CPU" in devices else "fallback",
            reason="" if "CPU" in devices else f"asked for CPU, runs on {'+'.join(devices)}",
            providers_used=tuple(f"openvino:{device}" for device in devices),
            precision=precision,
            on_gpu=False,
            peak_key="cpu",
            note=f"{how}{only}",
        )

    def _feed(self, images: np.ndarray) -> np.ndarray:
        if self.takes_uint8:
            return np.ascontiguousarray(images)
        return np.ascontiguousarray(self.normalize(torch.from_numpy(images)).numpy())

    def _run(self, feed: np.ndarray) -> np.ndarray:
        return self.request.infer({0: feed}, share_inputs=True)[0]

    def bind(self, images: np.ndarray):
        feed = self._feed(images)
        # Like onnxruntime's session.run: the input is shared, the logits are copied out.
        return lambda: self.request.infer({0: feed}, share_inputs=True)

    def sync(self) -> None:
        """infer() is synchronous: it returns with the work done."""

    def logits(self, images: np.ndarray, batch_size: int) -> np.ndarray:
        batches = in_batches(lambda batch: self._run(self._feed(batch)), batch_size, images)
        return np.concatenate(list(batches)).astype(np.float32, copy=False)
