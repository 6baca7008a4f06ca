"""The things being timed: PyTorch (eager, and with the engine's settings) and onnxruntime.

:class:`Backend` declares what a benchmark row needs of one and :class:`Plan` who it is; each
backend reports what really ran (:class:`RunFacts`), so bench/run.py never guesses it from a
provider string. onnxruntime providers are catalog entries: nothing here names one.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from pipeline.bench.providers import ModelFile, SessionTarget, chain_options
from pipeline.core.catalog import PROVIDERS, VARIANTS, Provider, fallback_chain
from pipeline.export.session import failure_reason, make_session, node_placement, session_logits
from pipeline.hardware.precision import choose_precision
from pipeline.hardware.tf32 import TF32_CAPABILITY, fp32_math
from pipeline.models.inference import in_batches, predict_logits
from pipeline.models.preprocess import Normalize

CPU_PROVIDER = PROVIDERS["cpu"].ort_name


@dataclass(frozen=True)
class RunFacts:
    """What really ran a backend's calls, as its framework reports it."""

    status: str  # ok | partial | fallback | unknown (node placement not reported)
    reason: str  # why not ok
    providers_used: tuple[str, ...]  # what runs nodes, as the framework names it
    precision: str  # the arithmetic it really computes in (tf32 where TensorRT picks it)
    on_gpu: bool  # where it really runs
    peak_key: str  # the key of hardware/peak.py's peaks it is measured against
    note: str = ""

    def same_run(self, other: RunFacts) -> bool:
        """Whether two sessions ran the same way: a round that did not is another row's."""
        ran = (self.status, self.providers_used, self.precision)
        return ran == (other.status, other.providers_used, other.precision)

    def describe(self) -> str:
        return f"{self.status} on {'+'.join(self.providers_used)} ({self.precision})"


class Backend(Protocol):
    """What one benchmark row needs of the thing it times; who it is lives in its :class:`Plan`."""

    facts: RunFacts  # what runs the calls of the latest bind (before any: the accuracy pass)

    def bind(self, images: np.ndarray) -> Callable[[], object]:
        """A call that runs one batch of ``images``; it may return before the work is done."""
        ...

    def sync(self) -> None:
        """Wait until the work of every call made so far is done."""
        ...

    def logits(self, images: np.ndarray, batch_size: int) -> np.ndarray:
        """float32 logits of every image, ``batch_size`` at a time, for the accuracy pass."""
        ...


@dataclass(frozen=True)
class Plan:
    """A backend not built yet: one session alive at a time, so idle thread pools don't compete.
    The row's identity is said here once; ``memory_kind`` lets its memory counter start first."""

    name: str  # the row's backend column: pytorch_eager, onnxruntime_cuda, ...
    variant: str  # the model file or settings timed: fp32, fp16, int8, bf16 (engine autocast)
    provider: str  # what was asked for: a torch device type or a benchmark.providers name
    memory_kind: str  # host | torch_cuda | ort_cuda: the counter that sees its memory
    build: Callable[[], Backend]


def engine_precision(device: torch.device):
    """The training engine's precision policy for inference: bf16/fp16 autocast on GPUs only."""
    capability = torch.cuda.get_device_capability(device) if device.type == "cuda" else None
    return choose_precision("auto", device.type, capability)


class TorchBackend:
    """PyTorch eager fp32 (the baseline of every ratio), or with the engine's inference settings:
    channels_last and the precision policy's autocast (bf16/fp16 on GPUs, none on CPUs)."""

    @staticmethod
    def plan(model: torch.nn.Module, device: torch.device, engine: bool = False) -> Plan:
        return Plan(
            name="pytorch_engine" if engine else "pytorch_eager",
            variant=engine_precision(device).name if engine else "fp32",
            provider=device.type,
            memory_kind="torch_cuda" if device.type == "cuda" else "host",
            build=lambda: TorchBackend(model, device, engine),
        )

    def __init__(self, model: torch.nn.Module, device: torch.device, engine: bool = False) -> None:
        precision = engine_precision(device) if engine else None
        self.autocast_dtype = precision.autocast_dtype if precision else None
        name = precision.name if precision else "fp32"
        self.channels_last = engine
        on_gpu = device.type == "cuda"
        autocast = f", autocast {name}" if self.autocast_dtype else ""
        self.facts = RunFacts(
            status="ok",
            reason="",
            providers_used=(str(device),),
            precision=name,
            on_gpu=on_gpu,
            peak_key=f"cuda_{name}" if on_gpu else "cpu",
            note=f"channels_last{autocast}" if engine else "",
        )
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


def ort_precision(variant: str, runs: Provider, capability: tuple[int, int] | None) -> str:
    """The arithmetic a session computes in: fp32 is TF32 where the provider that runs it
    computes fp32 layers in TF32 on Ampere and newer with no switch (``fp32_as_tf32``); other
    providers are asked for IEEE fp32 by their options, and CPUs have no TF32."""
    tf32_gpu = capability is not None and tuple(capability) >= TF32_CAPABILITY
    precision = VARIANTS[variant].precision
    return "tf32" if precision == "fp32" and runs.fp32_as_tf32 and tf32_gpu else precision


def placement_status(
    wanted: str, registered: list[str], placed: dict[str, list[str]] | None, log: list[str]
) -> tuple[str, str, list[str]]:
    """(status, reason, providers that run nodes) of a session asked to run on ``wanted``.

    ok: the provider started and no node runs on the CPU (unless the CPU was asked for);
    partial: it started but the CPU runs some nodes; fallback: it did not start, or took no node;
    unknown: it started beside others and this onnxruntime cannot say which nodes it runs.
    """
    used = list(placed) if placed else registered[:1]
    if wanted not in registered:
        why = failure_reason(log) or "onnxruntime logged no reason"
        return "fallback", f"{wanted} unavailable ({why}); session runs on {registered[0]}", used
    if placed is None:
        if registered == [wanted]:
            return "ok", "", used  # nothing else registered: every node runs on it
        others = ", ".join(name for name in registered if name != wanted)
        reason = f"placement unknown: this onnxruntime does not report it ({others} may run nodes)"
        return "unknown", reason, registered
    if wanted not in placed:
        return "fallback", f"{wanted} started but runs no node; session runs on {used[0]}", used
    on_cpu = placed.get(CPU_PROVIDER, []) if wanted != CPU_PROVIDER else []
    if on_cpu:
        total = sum(len(ops) for ops in placed.values())
        kinds = ", ".join(sorted(set(on_cpu)))
        reason = f"{len(on_cpu)} of {total} nodes run on {CPU_PROVIDER} ({kinds})"
        return "partial", reason, used
    return "ok", "", used


@dataclass(frozen=True)
class OrtSetup:
    """What every onnxruntime backend of one run shares; built once."""

    threads: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    image_shape: tuple[int, ...] | None = None
    max_batch: int = 256  # the accuracy pass's batches: its session serves 1..max_batch
    device_index: int = 0  # benchmark.device's GPU: the sessions' and IOBinding's
    capability: tuple[int, int] | None = None


class OrtBackend:
    """One onnxruntime session for one model variant and one requested provider.

    A provider that builds an engine per batch size (``engine_per_batch``) gets one session per
    size bound (profile min = opt = max = that size) besides the accuracy pass's session.
    """

    @staticmethod
    def plan(path: Path, variant: str, provider: str, setup: OrtSetup) -> Plan:
        return Plan(
            name=f"onnxruntime_{provider}",
            variant=variant,
            provider=provider,
            memory_kind=PROVIDERS[provider].memory_kind,
            build=lambda: OrtBackend(path, variant, provider, setup),
        )

    def __init__(self, path: Path, variant: str, provider: str, setup: OrtSetup) -> None:
        self.model, self.variant, self.setup = ModelFile(Path(path)), variant, setup
        self.chain = fallback_chain(provider)
        self.session, self.facts = self._session((1, setup.max_batch, setup.max_batch))
        self.input_name = self.session.get_inputs()[0].name
        self.output_name = self.session.get_outputs()[0].name
        self.takes_uint8 = self.session.get_inputs()[0].type == "tensor(uint8)"
        self.normalize = Normalize(setup.mean, setup.std)
        self._binding = None

    def _session(self, profile: tuple[int, int, int]):
        """A session and what it really runs on: read from every session built, never assumed."""
        target = SessionTarget(
            self.model, self.variant, self.setup.device_index, self.setup.image_shape, profile
        )
        options = chain_options(self.chain[0].name, target)
        log: list[str] = []
        session = make_session(
            self.model.path, self.chain[0].name, self.setup.threads, options, log
        )
        status, reason, used = placement_status(
            self.chain[0].ort_name, session.get_providers(), node_placement(session), log
        )
        # What really runs decides where the row counts, never what was asked for.
        runs = next((p for p in self.chain if p.ort_name == used[0]), PROVIDERS["cpu"])
        precision = ort_precision(self.variant, runs, self.setup.capability)
        note = "" if runs.on_gpu else VARIANTS[self.variant].cpu_note
        facts = RunFacts(
            status, reason, tuple(used), precision, runs.on_gpu, runs.peak_key(precision), note
        )
        return session, facts

    def _timed_session(self, batch_size: int):
        """A session whose engine is built for exactly this batch size, where the provider
        builds engines per size and runs here; otherwise the one session."""
        if not (self.chain[0].engine_per_batch and self.facts.on_gpu):
            return self.session, self.facts
        return self._session((batch_size, batch_size, batch_size))

    def _feed(self, images: np.ndarray) -> np.ndarray:
        if self.takes_uint8:
            return images
        return np.ascontiguousarray(self.normalize(torch.from_numpy(images)).numpy())

    def bind(self, images: np.ndarray):
        feed = self._feed(images)
        session, self.facts = self._timed_session(len(images))
        self._binding = None
        if not self.facts.on_gpu:
            inputs = {self.input_name: feed}
            return lambda: session.run(None, inputs)
        import onnxruntime as ort

        # IOBinding on the session's own GPU: the batch is copied there once and the logits stay
        # there, so the timed call is the model, not host<->device copies.
        device = next(p.device for p in self.chain if p.ort_name == self.facts.providers_used[0])
        index = self.setup.device_index
        binding = session.io_binding()
        self._input_value = ort.OrtValue.ortvalue_from_numpy(feed, device, index)
        binding.bind_ortvalue_input(self.input_name, self._input_value)
        binding.bind_output(self.output_name, device, index)
        self._binding = binding
        return lambda: session.run_with_iobinding(binding)

    def sync(self) -> None:
        """CPU runs return finished; GPU runs are waited for on the session's stream."""
        if self._binding is not None:
            self._binding.synchronize_outputs()

    def logits(self, images: np.ndarray, batch_size: int) -> np.ndarray:
        return session_logits(self.session, self._feed(images), batch_size)
