"""Stage train: prepared data -> models/model.safetensors, model card and metrics/train.json.

One process, or a DDP group of them when train.distributed asks (see pipeline.train.launch).
"""

from pipeline.stage import run_stage
from pipeline.train.launch import train

if __name__ == "__main__":
    run_stage("train", train)
