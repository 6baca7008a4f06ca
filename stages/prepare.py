"""Stage prepare: a data source -> uint8 train/val/test safetensors + meta.json, and
metrics/data.json (figures) with metrics/details/data.json (the whole record)."""

import sys
from pathlib import Path

# This checkout's src/ before any installed copy (docs/architecture.md, "Every stage runs ...").
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from pipeline.core import paths
from pipeline.core.config import Params
from pipeline.core.records import DATA_FIGURES, write_record
from pipeline.core.stage import run_stage
from pipeline.sources.prepare import prepare_data


def prepare(params: Params) -> None:
    report = prepare_data(params)
    write_record(paths.DATA_METRICS, report, DATA_FIGURES)


if __name__ == "__main__":
    run_stage("prepare", prepare)
