"""Stage benchmark: PyTorch against onnxruntime, every exported variant and provider asked for
-> metrics/benchmark.{json,csv,svg} and metrics/report.md."""

import sys
from pathlib import Path

# This checkout's src/ before any installed copy (docs/architecture.md, "Every stage runs ...").
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from pipeline.bench.report import write_report, write_report_chart
from pipeline.bench.run import machine_context, run_benchmark
from pipeline.core import paths
from pipeline.core.catalog import exported_variants
from pipeline.core.config import Params
from pipeline.core.records import benchmark_figures, write_record
from pipeline.core.stage import run_stage
from pipeline.export.variants import exported_files
from pipeline.models.files import load_trained
from pipeline.prepared.storage import read_meta, split_shards


def benchmark(params: Params) -> None:
    model, card = load_trained(paths.MODELS_DIR, read_meta(paths.PREPARED_DIR))
    test = split_shards(paths.PREPARED_DIR, "test")  # read a shard at a time, never whole
    variants = exported_files(paths.ONNX_DIR, exported_variants(params.export.variants))
    rows, context = run_benchmark(params.benchmark, model, card, variants, test, params.energy)
    summary = write_report(
        rows,
        machine_context() | context,
        params.benchmark.max_accuracy_drop,
        paths.BENCHMARK_TABLE,
        paths.BENCHMARK_REPORT,
        paths.BENCHMARK_CHART,
    )
    write_record(paths.BENCHMARK_METRICS, summary, benchmark_figures(summary))
    # Last, once every figure is written: a chart that cannot be drawn never costs them.
    write_report_chart(rows, summary["context"], paths.BENCHMARK_CHART)


if __name__ == "__main__":
    run_stage("benchmark", benchmark)
