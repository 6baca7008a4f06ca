"""benchmarks/gpu_check.py: runs with torch alone (no DVC, dvclive, pydantic, PyYAML)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from conftest import ROOT

SCRIPT = ROOT / "benchmarks" / "gpu_check.py"
# Fails every import of the pipeline-only packages, as on a machine with only torch installed.
BLOCKED_RUN = """
import runpy, sys

class Blocker:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {"dvc", "dvclive", "pydantic", "yaml", *BLOCK_MORE}:
            raise ImportError(f"{name} is blocked: gpu_check must not need it")
        return None

BLOCK_MORE = set(sys.argv[1].split(",")) - {""}
sys.meta_path.insert(0, Blocker())
sys.argv = sys.argv[2:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def run_check(*args: str, block: str = "") -> subprocess.CompletedProcess:
    """Run the script with the pipeline-only packages (and ``block``, comma-separated) blocked."""
    env = {"PYTHONPATH": str(ROOT / "src"), "PATH": "/usr/bin:/bin"}
    command = [sys.executable, "-c", BLOCKED_RUN, block, str(SCRIPT), *args]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_without_a_gpu_it_says_so_and_fails():
    done = run_check("--skip-tests")
    assert done.returncode == 2, done.stderr
    assert "no CUDA GPU visible" in done.stderr and "--dry-run" in done.stderr


def test_dry_run_writes_one_json_and_markdown_report_without_pipeline_only_packages(tmp_path):
    out = tmp_path / "report"
    done = run_check(
        "--dry-run", "--skip-tests", "--skip-compile", "--out", str(out),
        "--steps", "2", "--batch-size", "8", "--images", "32", "--width", "4",
        "--batch-sizes", "2",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((out / "gpu_check.json").read_text())
    assert report["machine"]["mode"].startswith("cpu dry run") and report["machine"]["cpu_isa"]
    training = {entry["mode"]: entry for entry in report["training"]}
    assert training["tf32"]["status"] == "skipped"  # no TF32 on a CPU, and it says so
    for mode in ("fp32", "bf16"):
        assert training[mode]["status"] == "ok" and training[mode]["precision"] == mode
        assert training[mode]["images_per_s"] > 0 and training[mode]["energy_method"]
    assert report["inference"]["onnx_export"] == "ok"
    rows = report["inference"]["rows"]
    assert {(r["backend"], r["variant"]) for r in rows} >= {
        ("pytorch_eager", "fp32"),
        ("onnxruntime_cpu", "fp32"),
        ("onnxruntime_cpu", "fp16"),
    }
    assert all(r["status"] == "ok" and r["precision"] for r in rows)
    markdown = (out / "gpu_check.md").read_text()
    assert "## Training" in markdown and "onnxruntime_cpu" in markdown


def test_without_onnxscript_every_onnxruntime_row_is_missing_and_it_fails(tmp_path):
    out = tmp_path / "report"
    done = run_check(
        "--dry-run", "--skip-tests", "--skip-compile", "--out", str(out),
        "--steps", "1", "--batch-size", "8", "--images", "16", "--width", "4",
        "--batch-sizes", "2", block="onnxscript",
    )  # fmt: skip
    assert done.returncode == 1, done.stderr[-3000:]
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("gpu_check: ONNX export failed: ") and "onnxscript" in last
    assert last.endswith("; no onnxruntime row was measured")
    report = json.loads((out / "gpu_check.json").read_text())  # the evidence is still written
    assert not any(row["backend"].startswith("onnxruntime") for row in report["inference"]["rows"])


def test_bad_arguments_are_one_line_errors(tmp_path):
    done = run_check("--dry-run", "--images", "4", "--batch-size", "8", "--out", str(tmp_path))
    assert done.returncode == 2 and "--images 4 is fewer than --batch-size 8" in done.stderr
    assert not any(tmp_path.iterdir())  # nothing written
