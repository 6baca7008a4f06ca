"""Tier 3: the pipeline with DVC's cache outside the project (`dvc cache dir`), as on a cluster
with a big disk: symlink and hardlink cache types, and a virtual-memory limit (`ulimit -v`)."""

import resource
import subprocess
import sys

import pytest

from conftest import FAST_PARAMS, dvc, make_project_copy, tool_env

# Every stage still runs; fewer epochs, variants and batch sizes than FAST_PARAMS.
CHEAP = {"train.epochs": 1, "export.variants": [], "benchmark.batch_sizes": [8]}
LIMIT = 8_000_000 * 1024  # `ulimit -v 8000000` (kB), as a cluster node set it


def repro_benchmark_under_a_memory_limit(root) -> subprocess.CompletedProcess:
    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (LIMIT, LIMIT))

    command = [sys.executable, "-m", "dvc", "repro", "-f", "-s", "benchmark"]
    return subprocess.run(command, cwd=root, env=tool_env(), preexec_fn=limit,
                          capture_output=True, text=True)  # fmt: skip


@pytest.mark.slow
def test_repro_with_the_cache_outside_the_project_symlinked_then_hardlinked(tmp_path):
    root = make_project_copy(tmp_path / "project", FAST_PARAMS | CHEAP)
    dvc(root, "cache", "dir", "../outside-cache")  # relative: DVC writes it relative to .dvc/
    dvc(root, "config", "cache.type", "symlink")
    cache = (tmp_path / "outside-cache").resolve()
    result = dvc(root, "repro")
    assert "Running stage 'benchmark'" in result.stdout
    for name in ("data/prepared/test-00000.safetensors", "models/onnx/model.onnx"):
        assert (root / name).is_symlink() and (root / name).resolve().is_relative_to(cache)
    assert (root / "metrics/benchmark.svg").read_text().startswith("<svg")

    dvc(root, "config", "cache.type", "hardlink")
    dvc(root, "checkout", "--relink")
    shard = root / "data/prepared/test-00000.safetensors"
    assert not shard.is_symlink() and shard.stat().st_nlink > 1
    before = (root / "metrics/benchmark.json").read_bytes()
    # The benchmark reads the hard-linked shards and ONNX files, its chart killed by the limit.
    limited = repro_benchmark_under_a_memory_limit(root)
    assert limited.returncode == 0, limited.stderr[-3000:]
    assert "benchmark: chart metrics/benchmark.svg not drawn: vl-convert's V8" in limited.stderr
    assert "lift it (ulimit -v unlimited)" in (root / "metrics/benchmark.svg").read_text()
    assert (root / "metrics/benchmark.json").read_bytes() != before  # figures written anew
