"""Building onnxruntime sessions: only for checked models, and honest about providers."""

from __future__ import annotations

from pathlib import Path

from pipeline.export.safety import check_onnx_file

PROVIDER_NAMES = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}


def provider_chain(provider: str) -> list[str]:
    """The providers to request for one backend: the one asked for, then the fallbacks below it."""
    order = ["tensorrt", "cuda", "cpu"]
    return [PROVIDER_NAMES[name] for name in order[order.index(provider) :]]


def make_session(path: str | Path, provider: str = "cpu", threads: int = 0):
    """An InferenceSession for a model that passed :func:`check_onnx_file`.

    ``session.get_providers()`` says what really runs; a GPU provider that could not start
    leaves only CPUExecutionProvider there.
    """
    import onnxruntime as ort

    check_onnx_file(path)
    if provider != "cpu" and hasattr(ort, "preload_dlls"):
        # onnxruntime-gpu finds CUDA/cuDNN from the nvidia-* wheels that PyTorch installs.
        ort.preload_dlls()
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # errors only; fallbacks are reported by the caller
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), sess_options=options, providers=provider_chain(provider))


def session_logits(session, inputs, batch_size: int = 256):
    """Logits of an onnxruntime session over ``inputs`` (numpy, NCHW), batch by batch."""
    import numpy as np

    input_name = session.get_inputs()[0].name
    outputs = [
        session.run(None, {input_name: inputs[start : start + batch_size]})[0]
        for start in range(0, len(inputs), batch_size)
    ]
    return np.concatenate(outputs).astype(np.float32)
