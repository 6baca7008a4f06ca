"""Data-parallel scaling of the train stage: images/s with 1 and 2 processes, and efficiency.

Runs the real train stage (``python stages/train.py``, which starts its DDP workers itself) in a
temporary folder on freshly prepared data (the project's params.yaml: digits by default), with
``train.distributed.nproc_per_node`` set to each process count in turn. The figure for one run is
the global training throughput that rank 0 prints per epoch (optimiser steps only, validation
excluded), median over epochs 2.. (epoch 1 warms up); each setting is run ``--repeats`` times
and reported as median with min-max. Settings alternate between repeats, so a burst of load
from other processes on the machine hits all of them alike.

Weak scaling, as DDP is used: every process keeps ``train.batch_size``, so the global batch grows
with the processes. Efficiency = images/s with N processes / (N x images/s with 1). On CPU the
processes split the cores (threads per process = cores // N), so on a 2-core machine two
processes share the cores one process already had: there is no hardware to scale onto, and the
figure only shows what DDP's all-reduce and the extra process cost (digits on this 2-core CPU:
about 0.4). On a machine with N GPUs each process gets its own GPU: that is the figure that
matters, and the one to report whenever a GPU node is available.

    python benchmarks/scaling.py [--processes 1 2] [--epochs 6] [--repeats 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from pipeline.core.config import load_params  # noqa: E402
from pipeline.hardware.device import resolve_device  # noqa: E402
from pipeline.sources.prepare import prepare_data  # noqa: E402
from pipeline.train.distributed import threads_per_process  # noqa: E402

EPOCH_LINE = re.compile(r"^epoch\s+(\d+)/\d+ .*?([\d,]+) img/s", re.MULTILINE)


def train_once(root: Path, raw: dict, processes: int, epochs: int) -> float:
    """Median global images/s over epochs 2.. of one train-stage run in ``root``."""
    raw = json.loads(json.dumps(raw))
    raw["train"].update(epochs=epochs, checkpoint_every=0)
    raw["train"]["distributed"] = {"nproc_per_node": processes, "max_restarts": 0}
    (root / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    result = subprocess.run(
        [sys.executable, str(REPO / "stages/train.py")],
        cwd=root,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO / "src")},
    )
    if result.returncode != 0:
        raise SystemExit(f"train stage failed with {processes} process(es):\n{result.stderr}")
    rates = [float(rate.replace(",", "")) for epoch, rate in EPOCH_LINE.findall(result.stderr)]
    return statistics.median(rates[1:] or rates)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    return parser.parse_args()


def process_counts(requested: list[int], device: torch.device) -> list[int]:
    """1 first (efficiency is measured against it), then the others; on CUDA, only as many
    processes as there are GPUs visible."""
    counts = [1] + [n for n in requested if n != 1]
    if device.type == "cuda":
        skipped = [n for n in counts if n > torch.cuda.device_count()]
        counts = [n for n in counts if n <= torch.cuda.device_count()]
        for n in skipped:
            print(f"skipping {n} processes: only {torch.cuda.device_count()} GPU(s) visible")
    return counts


def measure_rates(params, raw: dict, counts: list[int], epochs: int, repeats: int) -> dict:
    """images/s of every run, per process count, on data prepared once in a temporary folder."""
    rates: dict[int, list[float]] = {n: [] for n in counts}
    with tempfile.TemporaryDirectory(prefix="scaling-") as tmp:
        root = Path(tmp)
        with contextlib.redirect_stderr(io.StringIO()):  # keep prepare's line out of the table
            prepare_data(params, root)
        for _ in range(repeats):  # settings alternate, so a burst of load hits all alike
            for n in counts:
                rates[n].append(train_once(root, raw, n, epochs))
    return rates


def table_rows(rates: dict, counts: list[int], batch: int, cores: int, device) -> list[dict]:
    """One row per process count: median images/s, its min-max, and efficiency against 1."""
    single = statistics.median(rates[1])
    rows = []
    for n in counts:
        runs = rates[n]
        median = statistics.median(runs)
        threads = threads_per_process(n, cores) if device.type == "cpu" else "-"
        rows.append(
            {
                "processes": n,
                "threads_per_process": threads,
                "global_batch": batch * n,
                "images_per_s": median,
                "min": min(runs),
                "max": max(runs),
                "efficiency": median / (n * single),
            }
        )
    return rows


def print_table(rows: list[dict]) -> None:
    print("processes  threads/proc  global batch  images/s  (min-max)        efficiency")
    for row in rows:
        spread = f"({row['min']:,.0f}-{row['max']:,.0f})"
        print(
            f"{row['processes']:>9}  {row['threads_per_process']!s:>12}  "
            f"{row['global_batch']:>12}  {row['images_per_s']:>8,.0f}  {spread:<17}"
            f"{row['efficiency']:>10.2f}"
        )


def main() -> None:
    args = parse_args()
    params = load_params(REPO / "params.yaml")
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    device = resolve_device(params.train.device)
    cores = len(os.sched_getaffinity(0))
    counts = process_counts(args.processes, device)
    rates = measure_rates(params, raw, counts, args.epochs, args.repeats)

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {cores} cores"
    print(
        f"train stage, {params.data.source} / {params.model.arch}, {args.epochs} epochs, "
        f"{args.repeats} runs each, on {name} (load average {os.getloadavg()[0]:.1f})"
    )
    rows = table_rows(rates, counts, params.train.batch_size, cores, device)
    print_table(rows)
    if device.type == "cpu":
        print(
            f"note: CPU only; every setting shares the same {cores} cores, so no speed-up is "
            "possible here: efficiency below 1 is DDP's all-reduce and per-process overhead. "
            "Run on a multi-GPU node for the figure that matters."
        )
    if args.json:
        args.json.write_text(json.dumps({"device": name, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
