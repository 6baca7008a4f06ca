"""The things being timed: PyTorch (eager, and with the engine's settings) and onnxruntime."""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path

import numpy as np
import torch

from pipeline.export.onnx_export import INPUT_NAME
from pipeline.export.session import PROVIDER_NAMES, failure_reason, make_session, session_logits
from pipeline.inference import predict_logits
from pipeline.preprocess import Normalize
from pipeline.train.policy import choose_precision

GPU_PROVIDERS = {PROVIDER_NAMES["cuda"], PROVIDER_NAMES["tensorrt"]}
# Outside models/onnx, which is the export stage's output: writing there would dirty DVC.
TENSORRT_CACHE = Path(tempfile.gettempdir()) / "pipeline-tensorrt-cache"
CPU_FP16_NOTE = "CPU provider runs fp16 nodes through casts to fp32"


def engine_precision(device: torch.device):
    """The training engine's precision policy for inference: bf16/fp16 autocast on GPUs only."""
    capability = torch.cuda.get_device_capability(device) if device.type == "cuda" else None
    return choose_precision("auto", device.type, capability)


class TorchBackend:
    """PyTorch eager fp32 (the baseline of every ratio), or with the engine's inference settings:
    channels_last and the precision policy's autocast (bf16/fp16 on GPUs, none on CPUs)."""

    def __init__(self, model: torch.nn.Module, device: torch.device, engine: bool = False) -> None:
        self.name = "pytorch_engine" if engine else "pytorch_eager"
        precision = engine_precision(device) if engine else None
        self.autocast_dtype = precision.autocast_dtype if precision else None
        self.variant = precision.name if precision else "fp32"
        self.channels_last = engine
        self.provider = device.type
        self.providers_used = [str(device)]
        self.on_gpu = device.type == "cuda"
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
        with torch.autocast(
            self.device.type,
            dtype=self.autocast_dtype or torch.bfloat16,
            enabled=self.autocast_dtype is not None,
        ):
            return self.model(batch)

    def bind(self, images: np.ndarray):
        batch = self._input(images)
        return lambda: self._forward(batch)

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)  # CUDA calls return before the work is done

    def logits(self, images: np.ndarray) -> np.ndarray:
        if not self.channels_last and self.autocast_dtype is None:
            return predict_logits(self.model, torch.from_numpy(images), 256, self.device).numpy()
        parts = [
            self._forward(self._input(images[start : start + 256])).float().cpu()
            for start in range(0, len(images), 256)
        ]
        return torch.cat(parts).numpy()


def tensorrt_options(input_name: str, image_shape, max_batch: int) -> dict[str, object]:
    """fp16 engines, cached between runs, with one optimisation profile covering every batch."""
    dims = "x".join(str(d) for d in image_shape)
    TENSORRT_CACHE.mkdir(parents=True, exist_ok=True)
    return {
        "trt_fp16_enable": True,
        "trt_engine_cache_enable": True,
        "trt_engine_cache_path": str(TENSORRT_CACHE),
        "trt_timing_cache_enable": True,
        "trt_timing_cache_path": str(TENSORRT_CACHE),
        "trt_profile_min_shapes": f"{input_name}:1x{dims}",
        "trt_profile_opt_shapes": f"{input_name}:{max_batch}x{dims}",
        "trt_profile_max_shapes": f"{input_name}:{max_batch}x{dims}",
    }


class OrtBackend:
    """One onnxruntime session for one model variant and one requested provider."""

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
    ) -> None:
        self.name = f"onnxruntime_{provider}"
        self.variant = variant
        self.provider = provider
        self.device_index = device_index
        options = None
        if provider == "cuda":
            options = {"device_id": device_index}
        elif provider == "tensorrt":
            options = tensorrt_options(INPUT_NAME, image_shape, max_batch)
            options["device_id"] = device_index
        log: list[str] = []
        self.session = make_session(path, provider, threads, options, log=log)
        self.providers_used = self.session.get_providers()
        wanted = PROVIDER_NAMES[provider]
        # A GPU provider that failed to start leaves the session on the CPU: say so, and why.
        if self.providers_used[0] == wanted:
            self.status, self.reason = "ok", ""
        else:
            why = failure_reason(log) or "onnxruntime logged no reason"
            self.status = "fallback"
            self.reason = f"{wanted} unavailable ({why}); session runs on {self.providers_used[0]}"
        self.on_gpu = self.providers_used[0] in GPU_PROVIDERS
        on_cpu_fp16 = variant == "fp16" and not self.on_gpu
        self.note = CPU_FP16_NOTE if on_cpu_fp16 else ""
        self.input_name = self.session.get_inputs()[0].name
        self.output_name = self.session.get_outputs()[0].name
        self.takes_uint8 = self.session.get_inputs()[0].type == "tensor(uint8)"
        self.normalize = Normalize(mean, std)
        self._binding = None

    def _feed(self, images: np.ndarray) -> np.ndarray:
        if self.takes_uint8:
            return images
        return np.ascontiguousarray(self.normalize(torch.from_numpy(images)).numpy())

    def bind(self, images: np.ndarray):
        feed = self._feed(images)
        if not self.on_gpu:
            inputs = {self.input_name: feed}
            return lambda: self.session.run(None, inputs)
        import onnxruntime as ort

        # IOBinding: the batch is copied to the GPU once and the logits stay there, so the timed
        # call is the model, not host<->device copies.
        binding = self.session.io_binding()
        self._input_value = ort.OrtValue.ortvalue_from_numpy(feed, "cuda", self.device_index)
        binding.bind_ortvalue_input(self.input_name, self._input_value)
        binding.bind_output(self.output_name, "cuda", self.device_index)
        self._binding = binding
        return lambda: self.session.run_with_iobinding(binding)

    def sync(self) -> None:
        """CPU runs return finished; GPU runs are waited for on the session's stream."""
        if self._binding is not None:
            self._binding.synchronize_outputs()

    def logits(self, images: np.ndarray) -> np.ndarray:
        return session_logits(self.session, self._feed(images))
