"""A benchmark on a busy machine: a fresh copy's `dvc repro` with a CPU-bound process running
beside its benchmark stage still reports a headline, with its spread, for every batch size.
(~3 min on 2 shared cores: prepare..export quiet, then the benchmark under load.)"""

from __future__ import annotations

import json
import subprocess
import sys

import yaml

from conftest import FAST_PARAMS, dvc, make_project_copy

SPIN = "while True: pass"  # one core kept busy for as long as it runs


def test_a_busy_machine_still_gives_a_headline_for_every_batch_size(tmp_path):
    root = make_project_copy(tmp_path / "project", {**FAST_PARAMS, "benchmark.extra_seconds": 30.0})
    dvc(root, "repro", "export")  # quiet up to the benchmark: the load is for its timing
    spinner = subprocess.Popen([sys.executable, "-c", SPIN])
    try:
        done = dvc(root, "repro", check=False)  # the benchmark stage, beside the spinner
    finally:
        spinner.kill()
        spinner.wait()
    assert done.returncode == 0, done.stderr[-3000:]
    record = json.loads((root / "metrics/details/benchmark.json").read_text())
    metrics = json.loads((root / "metrics/benchmark.json").read_text())
    params = yaml.safe_load((root / "params.yaml").read_text())["benchmark"]
    sizes = {f"batch_{size}" for size in params["batch_sizes"]}
    assert set(record["headline"]) == sizes
    for key, entry in record["headline"].items():
        assert entry["best_backend"], (key, entry, done.stderr[-3000:])
        assert entry["best_repeats"] >= 2
        assert entry["best_spread"] is not None and entry["best_spread"] <= 0.125
        assert metrics["headline"][key]["best_spread"] == entry["best_spread"]
