"""The things being timed: PyTorch (eager, and with the engine's settings) and onnxruntime.

:class:`Backend` declares what a benchmark row needs of one; each backend states its own
memory counter and peak, so bench/run.py never guesses them from a provider string.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple, Protocol

import numpy as np
import torch

from pipeline import paths
from pipeline.catalog import PROVIDERS, VARIANTS, provider_running
from pipeline.export.onnx_export import INPUT_NAME
from pipeline.export.session import (
    failure_reason,
    make_session,
    node_placement,
    session_logits,
)
from pipeline.hardware.precision import choose_precision
from pipeline.hardware.tf32 import TF32_CAPABILITY, fp32_math
from pipeline.inference import in_batches, predict_logits
from pipeline.io import sha256_file
from pipeline.preprocess import Normalize

GPU_PROVIDERS = {provider.ort_name for provider in PROVIDERS if provider.on_gpu}
CPU_PROVIDER = PROVIDERS["cpu"].ort_name


class Planned(NamedTuple):
    """What a backend will be, known before it is built (its memory counter starts first)."""

    name: str
    variant: str
    provider: str
    memory_kind: str


class Backend(Protocol):
    """What one benchmark row needs of the thing it times."""

    name: str  # the row's backend column: pytorch_eager, onnxruntime_cuda, ...
    variant: str  # the model file or settings timed: fp32, fp16, int8, bf16 (engine autocast)
    provider: str  # what was asked for: a torch device type or a registered onnxruntime provider
    precision: str  # the arithmetic it really computes in (tf32 where TensorRT picks it)
    providers_used: list[str]  # what really runs, as the framework names it
    status: str  # ok | partial | fallback
    reason: str  # why not ok
    note: str
    on_gpu: bool  # where it really runs
    memory_kind: str  # host | torch_cuda | ort_cuda: the counter that sees its memory
    peak_key: str  # the key of hardware/peak.py's peaks it is measured against

    def bind(self, images: np.ndarray) -> Callable[[], object]:
        """A call that runs one batch of ``images``; it may return before the work is done."""
        ...

    def sync(self) -> None:
        """Wait until the work of every call made so far is done."""
        ...

    def logits(self, images: np.ndarray, batch_size: int) -> np.ndarray:
        """float32 logits of every image, ``batch_size`` at a time, for the accuracy pass."""
        ...


def engine_precision(device: torch.device):
    """The training engine's precision policy for inference: bf16/fp16 autocast on GPUs only."""
    capability = torch.cuda.get_device_capability(device) if device.type == "cuda" else None
    return choose_precision("auto", device.type, capability)


class TorchBackend:
    """PyTorch eager fp32 (the baseline of every ratio), or with the engine's inference settings:
    channels_last and the precision policy's autocast (bf16/fp16 on GPUs, none on CPUs)."""

    @staticmethod
    def planned(device: torch.device, engine: bool = False) -> Planned:
        variant = engine_precision(device).name if engine else "fp32"
        memory = "torch_cuda" if device.type == "cuda" else "host"
        name = "pytorch_engine" if engine else "pytorch_eager"
        return Planned(name, variant, device.type, memory)

    def __init__(self, model: torch.nn.Module, device: torch.device, engine: bool = False) -> None:
        self.name, _, self.provider, self.memory_kind = self.planned(device, engine)
        precision = engine_precision(device) if engine else None
        self.autocast_dtype = precision.autocast_dtype if precision else None
        self.variant = precision.name if precision else "fp32"
        self.precision = self.variant
        self.channels_last = engine
        self.providers_used = [str(device)]
        self.on_gpu = device.type == "cuda"
        self.peak_key = f"cuda_{self.precision}" if self.on_gpu else "cpu"
        self.status, self.reason = "ok", ""
        autocast = f", autocast {self.variant}" if self.autocast_dtype else ""
        self.note = f"channels_last{autocast}" if engine else ""
        memory_format = torch.channels_last if engine else torch.preserve_format
        self.model = copy.deepcopy(model).to(device, memory_format=memory_format).eval()
        self.device = device

    def _input(self, images: np.ndarray) -> torch.Tensor:
        batch = torch.from_numpy(images).to(self.device)
        return batch.contiguous(memory_format=torch.channels_last) if self.channels_last else batch

    @torch.inference_mode()
    def _forward(self, batch: torch.Tensor) -> torch.Tensor:
        # The fp32 baseline is IEEE fp32 on CUDA too (cuDNN would otherwise convolve in TF32).
        fp32_only = self.autocast_dtype is None and self.device.type == "cuda"
        with (
            fp32_math(tf32=False) if fp32_only else contextlib.nullcontext(),
            torch.autocast(
                self.device.type,
                dtype=self.autocast_dtype or torch.bfloat16,
                enabled=self.autocast_dtype is not None,
            ),
        ):
            return self.model(batch)

    def bind(self, images: np.ndarray):
        batch = self._input(images)
        return lambda: self._forward(batch)

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)  # CUDA calls return before the work is done

    def logits(self, images: np.ndarray, batch_size: int) -> np.ndarray:
        if not self.channels_last and self.autocast_dtype is None:
            tensor = torch.from_numpy(images)
            return predict_logits(self.model, tensor, batch_size, self.device).numpy()

        def forward(batch: np.ndarray) -> torch.Tensor:
            return self._forward(self._input(batch)).float().cpu()

        return torch.cat(list(in_batches(forward, batch_size, images))).numpy()


def tensorrt_cache_dir(model_sha256: str, precision: str, profile: tuple[int, int, int]) -> Path:
    """Engines of one ONNX file (by content), precision and batch profile, inside the project.

    onnxruntime names cached engines after the model path and node names, not the weights: a
    shared folder would serve the first model's engine to every later model of the same graph.
    """
    folder = (
        paths.TENSORRT_CACHE.resolve()
        / model_sha256
        / f"{precision}-b{'-'.join(map(str, profile))}"
    )
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def tensorrt_options(
    model_sha256: str, variant: str, image_shape, profile: tuple[int, int, int]
) -> dict[str, object]:
    """fp16 kernels only for an fp16 variant; one (min, opt, max) batch profile per session."""
    dims = "x".join(str(d) for d in image_shape)
    low, opt, high = profile
    precision = VARIANTS[variant].precision
    timing = paths.TENSORRT_CACHE.resolve()  # kernel timings: valid for any model on this GPU
    timing.mkdir(parents=True, exist_ok=True)
    return {
        "trt_fp16_enable": precision == "fp16",
        "trt_engine_cache_enable": True,
        "trt_engine_cache_path": str(tensorrt_cache_dir(model_sha256, precision, profile)),
        "trt_timing_cache_enable": True,
        "trt_timing_cache_path": str(timing),
        "trt_profile_min_shapes": f"{INPUT_NAME}:{low}x{dims}",
        "trt_profile_opt_shapes": f"{INPUT_NAME}:{opt}x{dims}",
        "trt_profile_max_shapes": f"{INPUT_NAME}:{high}x{dims}",
    }


def ort_precision(variant: str, runs_on: str, capability: tuple[int, int] | None) -> str:
    """The arithmetic a session computes in. TensorRT builds fp32 layers with TF32 tactics on
    Ampere and newer (its default; onnxruntime has no switch for it); the CUDA provider is asked
    for IEEE fp32 (use_tf32=0), and CPUs have no TF32."""
    tf32_gpu = capability is not None and tuple(capability) >= TF32_CAPABILITY
    precision = VARIANTS[variant].precision
    if precision == "fp32" and runs_on == PROVIDERS["tensorrt"].ort_name and tf32_gpu:
        return "tf32"
    return precision


def placement_status(
    wanted: str, registered: list[str], placed: dict[str, list[str]] | None, log: list[str]
) -> tuple[str, str, list[str]]:
    """(status, reason, providers that run nodes) of a session asked to run on ``wanted``.

    ok: the provider started and no node runs on the CPU (unless the CPU was asked for);
    partial: it started but the CPU runs some nodes; fallback: it did not start, or took no node.
    """
    used = list(placed) if placed else registered[:1]
    if wanted not in registered:
        why = failure_reason(log) or "onnxruntime logged no reason"
        return "fallback", f"{wanted} unavailable ({why}); session runs on {registered[0]}", used
    if placed is None:
        return "ok", "", used
    if wanted not in placed:
        return "fallback", f"{wanted} started but runs no node; session runs on {used[0]}", used
    on_cpu = placed.get(CPU_PROVIDER, []) if wanted != CPU_PROVIDER else []
    if on_cpu:
        total = sum(len(ops) for ops in placed.values())
        kinds = ", ".join(sorted(set(on_cpu)))
        reason = f"{len(on_cpu)} of {total} nodes run on {CPU_PROVIDER} ({kinds})"
        return "partial", reason, used
    return "ok", "", used


class OrtBackend:
    """One onnxruntime session for one model variant and one requested provider.

    TensorRT gets one engine per batch size (profile min = opt = max = that size), built when
    that size is bound, besides the session for the accuracy pass (batches of 1..max_batch).
    """

    @staticmethod
    def planned(variant: str, provider: str) -> Planned:
        memory = PROVIDERS[provider].memory_kind
        return Planned(f"onnxruntime_{provider}", variant, provider, memory)

    def __init__(
        self,
        path: Path,
        variant: str,
        provider: str,
        threads: int,
        mean,
        std,
        image_shape=None,
        max_batch: int = 256,
        device_index: int = 0,
        capability: tuple[int, int] | None = None,
    ) -> None:
        self.name, self.variant, self.provider, self.memory_kind = self.planned(variant, provider)
        self.path, self.threads = Path(path), threads
        self.device_index, self.image_shape = device_index, image_shape
        self._sha256 = sha256_file(path) if provider == "tensorrt" else ""
        log: list[str] = []
        self.session = self._session((1, max_batch, max_batch), log)
        wanted = PROVIDERS[provider].ort_name
        self.status, self.reason, self.providers_used = placement_status(
            wanted, self.session.get_providers(), node_placement(self.session), log
        )
        # What really runs decides where the row counts, never what was asked for.
        running = provider_running(self.providers_used[0]) or PROVIDERS["cpu"]
        self.on_gpu = running.on_gpu
        self.precision = ort_precision(variant, self.providers_used[0], capability)
        self.peak_key = running.peak_key(self.precision)
        self.note = "" if self.on_gpu else VARIANTS[variant].cpu_note
        self.input_name = self.session.get_inputs()[0].name
        self.output_name = self.session.get_outputs()[0].name
        self.takes_uint8 = self.session.get_inputs()[0].type == "tensor(uint8)"
        self.normalize = Normalize(mean, std)
        self._binding = None

    def _options(self, profile: tuple[int, int, int]) -> dict[str, object] | None:
        if self.provider == "cuda":
            # IEEE fp32 like the PyTorch baseline; TF32 would make the "fp32" row a TF32 row.
            return {"device_id": self.device_index, "use_tf32": 0}
        if self.provider == "tensorrt":
            options = tensorrt_options(self._sha256, self.variant, self.image_shape, profile)
            return {**options, "device_id": self.device_index}
        return None

    def _session(self, profile: tuple[int, int, int], log: list[str] | None = None):
        options = self._options(profile)
        return make_session(self.path, self.provider, self.threads, options, log=log)

    def _timed_session(self, batch_size: int):
        """TensorRT: a session whose engine is built for exactly this batch size."""
        if self.provider != "tensorrt" or not self.on_gpu:
            return self.session
        return self._session((batch_size, batch_size, batch_size), [])

    def _feed(self, images: np.ndarray) -> np.ndarray:
        if self.takes_uint8:
            return images
        return np.ascontiguousarray(self.normalize(torch.from_numpy(images)).numpy())

    def bind(self, images: np.ndarray):
        feed = self._feed(images)
        session = self._timed_session(len(images))
        if not self.on_gpu:
            inputs = {self.input_name: feed}
            return lambda: session.run(None, inputs)
        import onnxruntime as ort

        # IOBinding: the batch is copied to the GPU once and the logits stay there, so the timed
        # call is the model, not host<->device copies.
        binding = session.io_binding()
        self._input_value = ort.OrtValue.ortvalue_from_numpy(feed, "cuda", self.device_index)
        binding.bind_ortvalue_input(self.input_name, self._input_value)
        binding.bind_output(self.output_name, "cuda", self.device_index)
        self._binding = binding
        return lambda: session.run_with_iobinding(binding)

    def sync(self) -> None:
        """CPU runs return finished; GPU runs are waited for on the session's stream."""
        if self._binding is not None:
            self._binding.synchronize_outputs()

    def logits(self, images: np.ndarray, batch_size: int) -> np.ndarray:
        return session_logits(self.session, self._feed(images), batch_size)
