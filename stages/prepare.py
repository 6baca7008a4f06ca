"""Stage prepare: a data source -> uint8 train/val/test safetensors + meta.json."""

from pipeline.prepare import prepare
from pipeline.stage import run_stage

if __name__ == "__main__":
    run_stage("prepare", prepare)
