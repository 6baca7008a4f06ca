"""Throughput of the imagefolder loader: one process (workers=1) against the pool (workers=0).

Generates 5,000 random 64x64 RGB JPEGs in 10 class folders in a temporary directory, warms
the page cache with one untimed load, then times ``load_source`` N times per setting and
reports the median images/s with the min-max spread, and the pool/single ratio. Both settings
must return byte-identical arrays (checked). A control line gives the speed-up of pure CPU work
on the same number of processes: the ceiling any pool can reach on this machine right now.

    python benchmarks/prepare_throughput.py [--images 5000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from pipeline.core.config import DataParams  # noqa: E402
from pipeline.sources.load import load_source  # noqa: E402
from pipeline.sources.parallel import resolve_workers  # noqa: E402


def make_images(root: Path, n: int, classes: int = 10, side: int = 64) -> None:
    rng = np.random.default_rng(0)
    for i in range(n):
        folder = root / f"class_{i % classes:02d}"
        folder.mkdir(exist_ok=True)
        # Smooth random images (JPEG of pure noise is unrealistically slow to decode).
        small = rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
        image = Image.fromarray(small).resize((side, side), Image.BILINEAR)
        image.save(folder / f"{i:05d}.jpg", quality=90)


def _spin(n: int) -> int:
    total = 0
    for i in range(n):
        total += i
    return total


def cpu_scaling(workers: int, n: int = 5_000_000) -> float:
    """Control: speed-up of pure-Python CPU work on ``workers`` forked processes. Near 1.0
    means the cores are busy with something else and no pool can scale on this machine now."""
    start = time.perf_counter()
    for _ in range(workers):
        _spin(n)
    serial = time.perf_counter() - start
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        start = time.perf_counter()
        pool.map(_spin, [n] * workers)
        parallel = time.perf_counter() - start
    return serial / parallel


def timed_load(params: DataParams) -> tuple[float, np.ndarray]:
    with contextlib.redirect_stderr(io.StringIO()):  # keep the progress lines out of the table
        start = time.perf_counter()
        data = load_source(params)
        elapsed = time.perf_counter() - start
    return elapsed, data.pools["all"].images


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        make_images(root, args.images)
        results = {}
        outputs = {}
        for workers in (1, 0):
            params = DataParams(source="imagefolder", root=str(root), workers=workers)
            timed_load(params)  # warm-up: page cache, imports, first pool start
            runs = [timed_load(params) for _ in range(args.repeats)]
            rates = [args.images / seconds for seconds, _ in runs]
            results[workers] = rates
            outputs[workers] = runs[0][1]
            label = (
                "workers=1 (in-process)"
                if workers == 1
                else (f"workers=0 (pool of {resolve_workers(0)})")
            )
            print(
                f"{label:28s} median {statistics.median(rates):8.0f} images/s  "
                f"(min {min(rates):.0f}, max {max(rates):.0f}, {args.repeats} runs)"
            )
        assert outputs[1].tobytes() == outputs[0].tobytes(), "pool and single process differ"
        control = cpu_scaling(resolve_workers(0))
        ratio = statistics.median(results[0]) / statistics.median(results[1])
        print(
            f"pool / single-process: {ratio:.2f}x  ({args.images} JPEGs 64x64, "
            f"{os.cpu_count()} CPUs, identical output checked)"
        )
        print(
            f"control, pure-CPU work on the same {resolve_workers(0)} processes: {control:.2f}x "
            f"(load average {os.getloadavg()[0]:.1f})"
        )


if __name__ == "__main__":
    main()
