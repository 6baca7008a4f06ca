"""Stage train: prepared data -> models/model.safetensors, model card and metrics/train.json.

One process, or a DDP group of them when train.distributed asks (see pipeline.train.launch).
"""

import sys
from pathlib import Path

# This checkout's src/ before any installed copy (docs/architecture.md, "Every stage runs ...").
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from pipeline.core import paths
from pipeline.core.config import Params
from pipeline.core.records import TRAIN_FIGURES, write_record
from pipeline.core.stage import run_stage
from pipeline.train.launch import train as train_model


def train(params: Params) -> None:
    record = train_model(params)
    if record is not None:  # None where global rank 0 ran on another node or process
        write_record(paths.TRAIN_METRICS, record, TRAIN_FIGURES)


if __name__ == "__main__":
    run_stage("train", train)
