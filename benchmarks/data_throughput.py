"""In-memory vs streamed training: images/s and peak RSS, for a dataset and one 4x its size.

    python benchmarks/data_throughput.py [--images 16384] [--side 32] [--steps 100]

Writes two synthetic prepared folders (uint8 shards, as prepare writes them) in a temporary
folder, then trains the same small model on each through the train stage's Trainer: once with
the split loaded whole (train.data_path: memory) and once streamed from the shards
(train.data_path: stream). Every measurement runs in a fresh child process, which reports its
own peak RSS (VmHWM since exec; see peak_rss_of_this_process). Timing covers ``--steps``
optimiser steps after ``--warmup`` untimed ones, the data path's own reading included. Then
the real train stage (``stages/train.py``: one epoch, validation, checkpoint, dvclive, energy)
runs once per folder and path, for its peak RSS. Prints both tables with the ratios:
stream/memory images/s, and 4x/1x peak RSS per path.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

CLASSES = 10


def write_dataset(folder: Path, images: int, side: int, shard_images: int, seed: int) -> None:
    """A prepared folder like prepare's: train shards of random images, a small val split."""
    from pipeline.prepared.storage import write_prepared
    from pipeline.prepared.types import LabelledImages, SourceData

    rng = np.random.default_rng(seed)
    parts = {}
    for name, count in (("train", images), ("val", 256), ("test", 256)):
        pixels = rng.integers(0, 256, (count, 3, side, side), dtype=np.uint8)
        parts[name] = LabelledImages(pixels, rng.integers(0, CLASSES, count).astype(np.int64))
    source = SourceData("synthetic", {}, [str(c) for c in range(CLASSES)])
    write_prepared(folder, source, parts, shard_images, seed)


def child(args: argparse.Namespace) -> None:
    """One measurement: print images/s as JSON (the parent reads the peak RSS)."""
    import torch

    from pipeline.core.config import TrainParams
    from pipeline.models import ModelSpec, build_model
    from pipeline.models.preprocess import WithPreprocessing
    from pipeline.prepared.storage import split_shards
    from pipeline.train.feeders import StepSetup, read_splits
    from pipeline.train.loop import Trainer
    from pipeline.train.policy import resolve_policy

    torch.set_num_threads(args.threads) if args.threads else None
    params = TrainParams(
        epochs=1000, batch_size=args.batch, precision="fp32", data_path=args.path, lr=1e-3
    )
    train, val = split_shards(args.child, "train"), split_shards(args.child, "val")
    data = read_splits(train, val, args.path, params.stream_window_shards)
    device, precision, policy = resolve_policy(params, None)
    torch.manual_seed(0)
    model = build_model(ModelSpec("small_cnn", 3, args.side, CLASSES, width=args.width))
    step = StepSetup(device, precision, seed=0, channels_last=policy.channels_last)
    trainer = Trainer(
        WithPreprocessing(model, [0.5] * 3, [0.29] * 3), data.feeder(params, step),
        data.validation(step), params, step,
    )  # fmt: skip
    trainer.model.train()
    batches = (batch for _ in range(1_000_000) for batch in trainer.batches)  # epoch after epoch
    for _ in range(args.warmup):
        trainer.train_step(*next(batches))
    started = time.perf_counter()
    for _ in range(args.steps):
        trainer.train_step(*next(batches))
    trainer.loss_sum.item()
    seconds = time.perf_counter() - started
    rate = args.steps * trainer.batches.batch_size / seconds
    print(json.dumps({"images_per_s": rate, "peak_rss": peak_rss_of_this_process()}))


def peak_rss_of_this_process() -> int:
    """VmHWM: the high-water RSS of this program since exec. ru_maxrss is not used here: on
    Linux a child's ru_maxrss starts at its parent's RSS at fork, which would hide the data."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def stage_child(folder: Path, path: str, work: Path) -> None:
    """The train stage itself, in a project folder whose data/prepared is ``folder``."""
    import runpy

    import yaml

    work.mkdir(parents=True)
    (work / "data").mkdir()
    (work / "data" / "prepared").symlink_to(folder)
    train = {"epochs": 1, "batch_size": 128, "precision": "fp32", "data_path": path}
    params = {"model": {"width": 16}, "train": train}
    (work / "params.yaml").write_text(yaml.safe_dump(params))
    os.chdir(work)
    sys.argv = ["stages/train.py"]
    runpy.run_path(str(Path(__file__).parents[1] / "stages" / "train.py"), run_name="__main__")
    print(json.dumps({"peak_rss": peak_rss_of_this_process()}))


def measure_stage(folder: Path, path: str, work: Path) -> int:
    """Peak RSS in bytes of one fresh train-stage process."""
    command = [sys.executable, __file__, "--stage-child", str(folder), "--path", path,
               "--work", str(work)]  # fmt: skip
    result = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    if result.returncode != 0:
        raise SystemExit(f"train stage {path} on {folder.name} failed ({result.returncode})")
    return json.loads(result.stdout.splitlines()[-1])["peak_rss"]


def measure(folder: Path, path: str, args: argparse.Namespace) -> tuple[float, int]:
    """(images/s, peak RSS in bytes) of one fresh child process."""
    command = [sys.executable, __file__, "--child", str(folder), "--path", path]
    for key in ("side", "batch", "steps", "warmup", "width", "threads"):
        command += [f"--{key}", str(getattr(args, key))]
    result = subprocess.run(command, stdout=subprocess.PIPE, text=True)
    if result.returncode != 0:
        raise SystemExit(f"child {path} on {folder.name} failed ({result.returncode})")
    found = json.loads(result.stdout.splitlines()[-1])
    return found["images_per_s"], found["peak_rss"]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=16384, help="train images, smaller set")
    parser.add_argument("--side", type=int, default=32, help="image side, pixels (3 channels)")
    parser.add_argument("--shard-images", type=int, default=2048, help="data.shard_images")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=100, help="timed steps per run")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--width", type=int, default=16, help="small_cnn width")
    parser.add_argument("--threads", type=int, default=0, help="torch threads; 0 = default")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--stage-child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--path", choices=["memory", "stream"], help=argparse.SUPPRESS)
    return parser.parse_args()


def measure_all(args: argparse.Namespace) -> tuple[dict, dict]:
    """Per (scale, path): (images/s, peak RSS) of the Trainer loop, and the train stage's peak
    RSS, on a dataset of 1x and one of 4x ``--images``."""
    rows, stage = {}, {}
    with tempfile.TemporaryDirectory(prefix="data_throughput-") as tmp:
        for scale in (1, 4):
            folder = Path(tmp) / f"x{scale}"
            write_dataset(folder, args.images * scale, args.side, args.shard_images, seed=scale)
            for path in ("memory", "stream"):
                rows[scale, path] = measure(folder, path, args)
                stage[scale, path] = measure_stage(
                    folder, path, Path(tmp) / f"stage-{scale}-{path}"
                )
    return rows, stage


def print_loop_table(rows: dict, images: int) -> None:
    print("| train images | path | images/s | peak RSS MiB |\n|---|---|---|---|")
    for (scale, path), (rate, rss) in rows.items():
        print(f"| {images * scale} | {path} | {rate:,.0f} | {rss / 2**20:,.0f} |")
    for scale in (1, 4):
        ratio = rows[scale, "stream"][0] / rows[scale, "memory"][0]
        print(f"stream / memory images/s at {images * scale} images: {ratio:.2f}")
    for path in ("memory", "stream"):
        growth = rows[4, path][1] / rows[1, path][1] - 1
        print(f"peak RSS growth 1x -> 4x, {path}: {growth:+.1%}")


def print_stage_table(stage: dict, images: int) -> None:
    print("\nThe train stage (stages/train.py, 1 epoch, fp32), peak RSS MiB:")
    print("| train images | memory | stream |\n|---|---|---|")
    for scale in (1, 4):
        memory, stream = stage[scale, "memory"], stage[scale, "stream"]
        print(f"| {images * scale} | {memory / 2**20:,.0f} | {stream / 2**20:,.0f} |")
    for path in ("memory", "stream"):
        growth = stage[4, path] / stage[1, path] - 1
        print(f"train stage peak RSS growth 1x -> 4x, {path}: {growth:+.1%}")


def main() -> None:
    args = parse_args()
    if args.child is not None:
        child(args)
        return
    if args.stage_child is not None:
        stage_child(args.stage_child, args.path, args.work)
        return
    from pipeline.hardware.cpu import detect

    rows, stage = measure_all(args)
    print(f"CPU profile: {detect().profile}; {os.cpu_count()} logical CPUs; small_cnn width "
          f"{args.width}, batch {args.batch}, {args.steps} timed steps, 3x{args.side}x{args.side}"
          f" images, shards of {args.shard_images}")  # fmt: skip
    print_loop_table(rows, args.images)
    print_stage_table(stage, args.images)


if __name__ == "__main__":
    main()
