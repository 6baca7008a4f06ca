"""Stage benchmark: PyTorch eager against onnxruntime -> metrics/benchmark.{json,csv,md}."""

import platform

import onnxruntime
import torch

from pipeline import paths
from pipeline.bench.report import write_report
from pipeline.bench.run import run_benchmark
from pipeline.config import Params
from pipeline.data.storage import read_split
from pipeline.model_io import load_trained
from pipeline.stage import run_stage


def benchmark(params: Params) -> None:
    model, card = load_trained(paths.MODELS_DIR)
    test = read_split(paths.PREPARED_DIR, "test")
    rows = run_benchmark(params.benchmark, model, card, paths.ONNX_MODEL, test.images, test.labels)
    context = {
        "machine": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
        "threads": torch.get_num_threads(),
    }
    write_report(
        rows, context, paths.BENCHMARK_METRICS, paths.BENCHMARK_TABLE, paths.BENCHMARK_REPORT
    )


if __name__ == "__main__":
    run_stage("benchmark", benchmark)
