"""Stage export: the trained model -> checked fp32/fp16/int8 ONNX files that match PyTorch."""

import sys
from pathlib import Path

# This checkout's src/ before any installed copy (docs/architecture.md, "Every stage runs ...").
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import torch

from pipeline.core import paths
from pipeline.core.config import Params
from pipeline.core.records import export_figures, write_record
from pipeline.core.stage import run_stage
from pipeline.export.run import enforce_gates, export_all
from pipeline.export.variants import calibration_rows
from pipeline.models.files import load_trained
from pipeline.prepared.storage import read_meta, split_shards


def export(params: Params) -> None:
    model, card = load_trained(paths.MODELS_DIR, read_meta(paths.PREPARED_DIR))
    test = split_shards(paths.PREPARED_DIR, "test")  # read a shard at a time, never whole
    # Only the calibration sample is read from the train shards, never the whole split.
    train = split_shards(paths.PREPARED_DIR, "train")
    rows = calibration_rows(train.count, params.export.int8.calibration_images, params.seed)
    train_images = torch.from_numpy(train.rows(rows))
    metrics = export_all(params, model, card, test, train_images, paths.ONNX_DIR)
    # Metrics first: a failed gate still leaves its evidence for the person reading the error.
    write_record(paths.EXPORT_METRICS, metrics, export_figures(metrics))
    enforce_gates(metrics)


if __name__ == "__main__":
    run_stage("export", export)
