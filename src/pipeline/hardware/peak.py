"""The physical limit beside each result: model FLOPs, and this machine's measured matmul peak."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from pipeline.hardware.tf32 import TF32_CAPABILITY, fp32_math, fp32_name

CPU_MATMUL_SIZES = (1024, 2048)  # 2-17 GFLOP a product: compute-bound on any CPU
GPU_MATMUL_SIZE = 8192


def flops_per_image(model: torch.nn.Module, example: torch.Tensor) -> int:
    """Forward FLOPs of ``model`` for one image as PyTorch counts them (a multiply-add is 2),
    counted on the device the model's weights are on (a trained model may be on a GPU)."""
    weights = next(iter(model.parameters()), None)
    device = weights.device if weights is not None else torch.device("cpu")
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        model.eval()(example[:1].to(device))
    return int(counter.get_total_flops())


@dataclass(frozen=True)
class Peak:
    gflops: float
    method: str
    candidates: dict[str, float]

    def as_dict(self) -> dict:
        return asdict(self)


def _best_gflops(run: Callable[[], object], flops: float, repeats: int, sync=lambda: None) -> float:
    run()
    sync()
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        sync()
        best = min(best, time.perf_counter() - started)
    # A peak is a maximum: the fastest repeat is the least disturbed by other work on the machine.
    return flops / best / 1e9


def _ort_matmul(size: int, threads: int) -> Callable[[], object]:
    import onnxruntime as ort
    from onnx import TensorProto, helper

    value = helper.make_tensor_value_info
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["a", "b"], ["c"])],
        "peak",
        [value(n, TensorProto.FLOAT, [size, size]) for n in ("a", "b")],
        [value("c", TensorProto.FLOAT, [size, size])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    # Built in memory from the three nodes above: no file to vet.
    session = ort.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    rng = np.random.default_rng(0)
    feed = {n: rng.standard_normal((size, size), dtype=np.float32) for n in ("a", "b")}
    return lambda: session.run(None, feed)


def cpu_peak(threads: int, sizes: tuple[int, ...] = CPU_MATMUL_SIZES) -> Peak:
    """fp32 matmul GFLOP/s with ``threads`` threads: the best of PyTorch and onnxruntime (MLAS)
    over a few sizes, each the fastest of several repeats.

    Taking the best keeps the figure a measured lower bound of the machine's limit, not one
    library's or one size's shortfall, nor the moment another process took a core.
    """
    torch.set_num_threads(threads)
    candidates = {}
    for size in sizes:
        flops = 2.0 * size**3
        repeats = max(5, int(4e9 // flops))  # about 4 GFLOP of work per candidate
        a, b = torch.randn(size, size), torch.randn(size, size)
        candidates[f"torch.matmul fp32 {size}x{size}"] = _best_gflops(
            lambda a=a, b=b: a @ b, flops, repeats
        )
        candidates[f"onnxruntime MatMul fp32 {size}x{size}"] = _best_gflops(
            _ort_matmul(size, threads), flops, repeats
        )
    method = max(candidates, key=candidates.get)
    return Peak(candidates[method], f"{method}, {threads} threads", candidates)


# The arithmetic of a row or a training run -> the dtype of the matmul that bounds it, and whether
# fp32 matmuls may use TF32 tensor cores meanwhile.
CUDA_MATH = {
    "fp32": (torch.float32, False),
    "tf32": (torch.float32, True),
    "bf16": (torch.bfloat16, False),
    "fp16": (torch.float16, False),
}


def cuda_peak(device: torch.device, math: str, size: int = GPU_MATMUL_SIZE) -> Peak:
    """Matmul GFLOP/s on ``device`` in ``math`` (fp32 is true IEEE fp32, tf32 is fp32 on TF32
    tensor cores); timed with device synchronisation. The process's TF32 setting is restored."""
    dtype, tf32 = CUDA_MATH[math]
    flops = 2.0 * size**3
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    with fp32_math(tf32):
        gflops = _best_gflops(lambda: a @ b, flops, 10, lambda: torch.cuda.synchronize(device))
    method = f"torch.matmul {math} {size}x{size} on {device}"
    return Peak(gflops, method, {method: gflops})


def peaks_for(device: torch.device, threads: int) -> dict[str, Peak]:
    """Peaks keyed by where a row runs and its arithmetic: 'cpu', 'cuda_fp32', 'cuda_tf32'..."""
    peaks = {"cpu": cpu_peak(threads)}
    if device.type == "cuda":
        maths = ["fp32", "fp16"]
        maths += ["tf32"] if torch.cuda.get_device_capability(device) >= TF32_CAPABILITY else []
        maths += ["bf16"] if torch.cuda.is_bf16_supported() else []
        peaks.update({f"cuda_{math}": cuda_peak(device, math) for math in maths})
    return peaks


# A training step is one forward and a backward that costs about two forwards.
TRAIN_FLOPS_PER_FORWARD = 3
PEAK_MATH = {torch.bfloat16: "bf16", torch.float16: "fp16"}


def compute_report(
    forward_flops: int,
    images_per_s: float,
    device: torch.device,
    precision_dtype: torch.dtype | None,
) -> dict[str, float | str | None]:
    """Achieved training FLOP/s, and on CUDA its share of a matmul peak measured right now."""
    achieved = TRAIN_FLOPS_PER_FORWARD * forward_flops * images_per_s
    report: dict[str, float | str | None] = {
        "forward_flops_per_image": forward_flops,
        "achieved_gflops": achieved / 1e9,
        "method": "3 x forward FLOPs (torch.utils.flop_counter) x images/s",
        "device_peak_gflops": None,
        "fraction_of_peak": None,
    }
    if device.type == "cuda":
        # The peak in the arithmetic of the work: fp32 work under TF32 is bounded by TF32's peak.
        math = PEAK_MATH.get(precision_dtype) or fp32_name(device)
        measured = cuda_peak(device, math)
        report.update(
            device_peak_gflops=measured.gflops,
            peak_method=measured.method,
            fraction_of_peak=achieved / 1e9 / measured.gflops,
        )
    else:
        report["peak_note"] = "device peak is measured on CUDA only; see the benchmark for CPU"
    return report
