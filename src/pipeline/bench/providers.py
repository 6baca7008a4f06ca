"""onnxruntime provider options, one function per catalog entry that has options.

A catalog ``Provider`` names its function in ``options``; :func:`chain_options` calls it for
every provider of a chain, so a fallback runs with the same device and arithmetic settings as
when it is asked for itself (the TensorRT chain's CUDA fallback is IEEE fp32 on the same GPU).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from pipeline.core import paths
from pipeline.core.catalog import VARIANTS, Provider, fallback_chain, resolve
from pipeline.core.io import sha256_file
from pipeline.export.onnx_export import INPUT_NAME

Options = dict[str, Any]


@dataclass(frozen=True)
class ModelFile:
    """One ONNX file; its hash is read once, and only by a provider that needs it."""

    path: Path

    @cached_property
    def sha256(self) -> str:
        return sha256_file(self.path)


@dataclass(frozen=True)
class SessionTarget:
    """What a provider's options may depend on: one model variant, one GPU, one batch profile."""

    model: ModelFile
    variant: str
    device_index: int  # the GPU of benchmark.device (cuda:N); IOBinding uses the same one
    image_shape: tuple[int, ...] | None
    profile: tuple[int, int, int]  # (min, opt, max) batch size the session serves


def options_of(provider: Provider) -> Callable[[SessionTarget], Options] | None:
    return resolve(provider.options, "pipeline.bench") if provider.options else None


def chain_options(provider: str, target: SessionTarget) -> dict[str, Options]:
    """Options by registry name for every provider of ``provider``'s chain that has any."""
    chain = {entry.name: options_of(entry) for entry in fallback_chain(provider)}
    return {name: make(target) for name, make in chain.items() if make is not None}


def cuda_options(target: SessionTarget) -> Options:
    """IEEE fp32 like the PyTorch baseline; TF32 would make the "fp32" row a TF32 row."""
    return {"device_id": target.device_index, "use_tf32": 0}


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


def tensorrt_options(target: SessionTarget) -> Options:
    """fp16 kernels only for the fp16 variant; one (min, opt, max) batch profile per session."""
    dims = "x".join(str(d) for d in target.image_shape or ())
    low, opt, high = target.profile
    timing = paths.TENSORRT_CACHE.resolve()  # kernel timings: valid for any model on this GPU
    timing.mkdir(parents=True, exist_ok=True)
    cache = tensorrt_cache_dir(target.model.sha256, target.variant, target.profile)
    return {
        "device_id": target.device_index,
        "trt_fp16_enable": VARIANTS[target.variant].precision == "fp16",
        "trt_engine_cache_enable": True,
        "trt_engine_cache_path": str(cache),
        "trt_timing_cache_enable": True,
        "trt_timing_cache_path": str(timing),
        "trt_profile_min_shapes": f"{INPUT_NAME}:{low}x{dims}",
        "trt_profile_opt_shapes": f"{INPUT_NAME}:{opt}x{dims}",
        "trt_profile_max_shapes": f"{INPUT_NAME}:{high}x{dims}",
    }
