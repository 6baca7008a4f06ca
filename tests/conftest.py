"""Shared fixtures: the project's root, and throwaway git+DVC copies of it for end-to-end runs."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
# What a fresh clone holds: everything git tracks or would track, without outputs or caches.
COPIED = [
    "src",
    "stages",
    ".dvc/config",
    ".dvcignore",
    ".gitignore",
    "dvc.yaml",
    "params.yaml",
    "data/raw/.gitkeep",
    "pyproject.toml",
]


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@contextlib.contextmanager
def fails_within(seconds: int):
    """A call that would block forever (a read from a named pipe) fails the test instead."""

    def expire(signum, frame):
        raise TimeoutError(f"still running after {seconds} s: it would hang")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def tool_env() -> dict[str, str]:
    """Put this interpreter first on PATH, so `python stages/...` in dvc.yaml finds the package."""
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env.setdefault("GIT_AUTHOR_NAME", "test")
    env.setdefault("GIT_AUTHOR_EMAIL", "test@example.com")
    env.setdefault("GIT_COMMITTER_NAME", "test")
    env.setdefault("GIT_COMMITTER_EMAIL", "test@example.com")
    env["DVC_NO_ANALYTICS"] = "1"
    return env


def run(cwd: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(args, cwd=cwd, env=tool_env(), capture_output=True, text=True)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({result.returncode}):\n{result.stderr}")
    return result


def dvc(cwd: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return run(cwd, sys.executable, "-m", "dvc", *args, check=check)


def make_project_copy(dest: Path, params_overrides: dict | None = None) -> Path:
    """Copy the project into ``dest``, git init + DVC, commit; optionally tweak params first."""
    import yaml

    dest.mkdir(parents=True, exist_ok=True)
    for name in COPIED:
        source = ROOT / name
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(source, target)
    if (ROOT / ".dvc" / "plots").is_dir():
        shutil.copytree(ROOT / ".dvc" / "plots", dest / ".dvc" / "plots")
    if params_overrides:
        params = yaml.safe_load((dest / "params.yaml").read_text())
        for dotted, value in params_overrides.items():
            section, key = dotted.split(".", 1) if "." in dotted else (None, dotted)
            (params[section] if section else params)[key] = value
        (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(dest, "git", "init", "-q", "-b", "main")
    run(dest, "git", "add", "-A")
    run(dest, "git", "commit", "-qm", "initial")
    return dest


# Small enough that a whole `dvc repro` stays within seconds on two cores.
FAST_PARAMS = {
    "train.epochs": 4,
    "benchmark.min_iterations": 5,
    "benchmark.min_seconds": 0.0,
    "benchmark.warmup": 2,
    "benchmark.repeats": 2,
    "benchmark.extra_seconds": 0.0,  # no extra rounds for noisy rows (the busy-machine test has)
    "benchmark.runtimes": [],  # OpenVINO rows: test_bench_openvino, and test_e2e_dvc's project
    "energy.min_window_s": 0.1,
}


@pytest.fixture(autouse=True)
def _restore_torch_determinism():
    """A deterministic training run switches a process-wide flag; keep tests independent."""
    before = torch.are_deterministic_algorithms_enabled()
    yield
    torch.use_deterministic_algorithms(before)


@pytest.fixture(scope="session")
def tiny_exported(tmp_path_factory):
    """(model, card, {fp32, int8: ONNX path}, test split) of the tiny trained small_cnn,
    exported once per session for every benchmark test module."""
    from test_export_variants import tiny_trained_model

    from pipeline.core.config import parse_params
    from pipeline.export.run import export_all
    from pipeline.export.variants import variant_path
    from pipeline.prepared.types import LabelledImages

    model, card, train, test = tiny_trained_model()
    params = parse_params({"export": {"variants": ["int8"], "int8": {"calibration_images": 64}}})
    folder = tmp_path_factory.mktemp("onnx")
    export_all(params, model, card, LabelledImages(*test), torch.from_numpy(train[0]), folder)
    variants = {name: variant_path(folder, name) for name in ("fp32", "int8")}
    return model, card, variants, test
