"""Every file a stage reads or writes, relative to the project root.

dvc.yaml repeats these paths (DVC needs them literally); tests/test_dvc_yaml.py checks that the
two agree, so this module stays the single source of truth.
"""

from pathlib import Path

PARAMS = Path("params.yaml")

PREPARED_DIR = Path("data/prepared")
MODELS_DIR = Path("models")
MODEL_WEIGHTS = MODELS_DIR / "model.safetensors"
MODEL_CARD = MODELS_DIR / "model.json"
CHECKPOINT_DIR = MODELS_DIR / "checkpoints"
ONNX_DIR = MODELS_DIR / "onnx"
ONNX_MODEL = ONNX_DIR / "model.onnx"

METRICS_DIR = Path("metrics")
PARAMS_CHECK = METRICS_DIR / "params_check.json"
DATA_METRICS = METRICS_DIR / "data.json"
TRAIN_METRICS = METRICS_DIR / "train.json"
TRAIN_LIVE_DIR = METRICS_DIR / "train"
EVAL_METRICS = METRICS_DIR / "eval.json"
CONFUSION_PLOT = METRICS_DIR / "confusion.csv"
EXPORT_METRICS = METRICS_DIR / "export.json"
BENCHMARK_METRICS = METRICS_DIR / "benchmark.json"
BENCHMARK_TABLE = METRICS_DIR / "benchmark.csv"
BENCHMARK_REPORT = METRICS_DIR / "report.md"
BENCHMARK_CHART = METRICS_DIR / "benchmark.svg"
# The whole record of each stage (hashes, versions, policy...); metrics/*.json hold its figures.
DETAILS_DIR = METRICS_DIR / "details"
DATA_DETAILS = DETAILS_DIR / "data.json"
TRAIN_DETAILS = DETAILS_DIR / "train.json"
EVAL_DETAILS = DETAILS_DIR / "eval.json"
EXPORT_DETAILS = DETAILS_DIR / "export.json"
BENCHMARK_DETAILS = DETAILS_DIR / "benchmark.json"

# Not a stage output: TensorRT engines built by the benchmark, one folder per ONNX file's sha256
# (git-ignored; inside the project rather than a shared, world-writable temporary folder).
TENSORRT_CACHE = Path(".cache/tensorrt")
