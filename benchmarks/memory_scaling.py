"""Peak memory of the export and benchmark stages against the size of the test split.

Builds two throwaway projects that differ only in their test split (``--images`` CIFAR-shaped
3x32x32 images, then 4x as many; random pixels, 10 classes, written through the prepare
stage's own shard writer, ``data.shard_images`` 4096), each with the same untrained small_cnn,
and runs ``stages/export.py`` then ``stages/benchmark.py`` of this checkout in each. The peak
resident memory of each stage process (``ru_maxrss`` of the waited child, from ``os.wait4``)
is printed with the growth from the small split to the large one. A stage that reads the test
split a shard at a time stays flat; one that loads it whole grows with it.

Gates are loosened (an untrained model's int8 logits do not agree) and timing is cut to the
minimum: only memory is measured here, not speed.

    python benchmarks/memory_scaling.py [--images 8192] [--factor 4] [--stages export benchmark]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from pipeline.models import build_model  # noqa: E402
from pipeline.models.files import ModelCard, Normalisation, save_trained  # noqa: E402
from pipeline.prepared.storage import write_prepared  # noqa: E402
from pipeline.prepared.types import LabelledImages, SourceData  # noqa: E402

SHAPE = (3, 32, 32)
CLASSES = 10
OVERRIDES = {
    "benchmark": {"warmup": 1, "min_iterations": 3, "min_seconds": 0.0, "repeats": 2},
    "energy": {"min_window_s": 0.05},
}
LOOSE_GATE = {"max_abs_logit_diff": None, "min_top1_agreement": 0.01, "max_accuracy_drop": 1.0}


def split(count: int, seed: int) -> LabelledImages:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (count, *SHAPE), dtype=np.uint8)
    return LabelledImages(images, rng.integers(0, CLASSES, count).astype(np.int64))


def make_project(folder: Path, test_images: int) -> None:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for section, values in OVERRIDES.items():
        params[section].update(values)
    params["export"]["gates"] = dict.fromkeys(("fp32", "fp16", "int8"), LOOSE_GATE)
    folder.mkdir(parents=True)
    (folder / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    names = [f"class_{i}" for i in range(CLASSES)]
    source = SourceData(name="synthetic", pools={"all": split(16, 9)}, class_names=names)
    splits = {"train": split(1024, 1), "val": split(256, 2), "test": split(test_images, 3)}
    write_prepared(folder / "data" / "prepared", source, splits, 4096, seed=0)
    card = ModelCard(
        arch="small_cnn", model_params={"width": 16, "dropout": 0.0}, class_names=tuple(names),
        num_classes=CLASSES, input_shape=SHAPE,
        normalisation=Normalisation(mean=(0.5,) * 3, std=(0.25,) * 3),
    )  # fmt: skip
    save_trained(folder / "models", build_model(card.model_spec()), card)


def peak_rss_mb(folder: Path, stage: str) -> float:
    """Run one stage script of this checkout in ``folder``; its peak RSS in MiB."""
    log = folder / f"{stage}.log"
    with open(log, "w") as out:
        process = subprocess.Popen(
            [sys.executable, str(ROOT / "stages" / f"{stage}.py")], cwd=folder, stdout=out,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        tail = log.read_text().strip().splitlines()[-3:]
        raise SystemExit(f"{stage} failed in {folder}:\n" + "\n".join(tail))
    return usage.ru_maxrss / 1024  # Linux: kB


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=8192, help="test images of the small split")
    parser.add_argument("--factor", type=int, default=4, help="the large split is this many times")
    parser.add_argument("--keep", type=Path, help="build the projects here and keep them")
    parser.add_argument("--stages", nargs="+", default=["export", "benchmark"],
                        choices=["export", "benchmark"], help="the stages to measure")  # fmt: skip
    args = parser.parse_args()
    base = args.keep or Path(tempfile.mkdtemp(prefix="memory_scaling."))
    sizes = [args.images, args.images * args.factor]
    peaks: dict[str, list[float]] = {stage: [] for stage in args.stages}
    try:
        for size in sizes:
            folder = base / f"test-{size}"
            make_project(folder, size)
            for stage in peaks:
                peaks[stage].append(peak := peak_rss_mb(folder, stage))
                print(f"{stage:<9} test split {size:>7,} images: peak RSS {peak:7.1f} MiB")
    finally:
        if args.keep is None:
            shutil.rmtree(base, ignore_errors=True)
    test_mb = [size * int(np.prod(SHAPE)) / 2**20 for size in sizes]
    print(f"\ntest split: {test_mb[0]:.0f} MiB -> {test_mb[1]:.0f} MiB of uint8 pixels")
    for stage, (small, large) in peaks.items():
        print(f"{stage:<9} {small:7.1f} -> {large:7.1f} MiB: {100 * (large / small - 1):+.1f}%")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
