"""Stage train: prepared data -> models/model.safetensors, model card and metrics/train.json."""

from pipeline.stage import run_stage
from pipeline.train.run import run_training

if __name__ == "__main__":
    run_stage("train", run_training)
