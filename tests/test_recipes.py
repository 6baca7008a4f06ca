"""docs/architecture.md's "how to add" recipes, followed literally in a copy of the project.

The blocks are read from the doc itself, so a recipe that drifts from the code fails here.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from conftest import FAST_PARAMS, ROOT, dvc, make_project_copy, run, tool_env

DOC = ROOT / "docs" / "architecture.md"


def recipe_blocks() -> list[tuple[str, str | None, str, str]]:
    """(kind, registry, path, body) of every python block in the recipes section."""
    text = DOC.read_text()
    section = text[text.index("## How to add") : text.index("## Layers")]
    blocks = []
    for match in re.finditer(r"```python\n# ([^\n]+)\n(.*?)```", section, re.S):
        head, body = match.groups()
        if new := re.fullmatch(r"new file: (\S+)", head):
            blocks.append(("new", None, new[1], body))
        elif add := re.fullmatch(r"add to (\w+) in (\S+)", head):
            blocks.append(("add", add[1], add[2], body))
        else:
            raise AssertionError(f"a recipe block must say where it goes, got {head!r}")
    return blocks


def apply(root: Path, kind: str, registry: str | None, path: str, body: str) -> None:
    target = root / path
    if kind == "new":
        assert not target.exists(), f"{path} already exists: the recipe would overwrite it"
        target.write_text(body)
        return
    lines = target.read_text().splitlines(keepends=True)
    opening = [i for i, line in enumerate(lines) if line.startswith(f"{registry}: Registry[")]
    assert len(opening) == 1, f"no single {registry} registry in {path}"
    closing = next(i for i in range(opening[0], len(lines)) if lines[i].startswith("])"))
    lines[closing:closing] = [body]  # the new entry goes last in its registry
    target.write_text("".join(lines))


def with_copy_src(root: Path) -> dict[str, str]:
    """The copy's own package first on the path, as a clone with the recipe applied would have."""
    env = tool_env()
    env["PYTHONPATH"] = os.pathsep.join([str(root / "src"), env.get("PYTHONPATH", "")])
    return env


def test_every_recipe_block_names_its_file():
    kinds = [(kind, registry) for kind, registry, _, _ in recipe_blocks()]
    assert kinds == [
        ("new", None), ("add", "ARCHS"), ("new", None), ("add", "SOURCES"), ("add", "PROVIDERS"),
        ("new", None), ("add", "VARIANTS"), ("new", None), ("add", "PROVIDERS"),
    ]  # fmt: skip


@pytest.fixture(scope="module")
def followed(tmp_path_factory):
    root = make_project_copy(tmp_path_factory.mktemp("recipes") / "project", FAST_PARAMS)
    for name in ("docs", "tests"):
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, root / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, root / name)
    for block in recipe_blocks():
        apply(root, *block)
    env = with_copy_src(root)
    refresh = [sys.executable, "-m", "pipeline.tools.params_table", "docs/params.md"]
    subprocess.run(refresh, cwd=root, env=env, check=True)
    digits = load_digits()
    images = np.rint(digits.images * (255 / 16)).astype(np.uint8)[:, None]
    np.savez(root / "data" / "raw" / "dataset.npz", images=images, labels=digits.target)
    run(root, "git", "add", "-A")
    run(root, "git", "commit", "-qm", "follow the recipes")
    return root, env


def test_the_params_reference_lists_the_new_choices(followed):
    root, _ = followed
    table = (root / "docs/params.md").read_text()
    assert "`tiny_mlp`" in table and "`npz`" in table and "`dnnl`" in table
    assert "`cuda_tf32`" in table
    assert "`int8_dynamic`" in table and "`export.gates.int8_dynamic.min_top1_agreement`" in table


def test_the_project_checks_pass_with_the_recipes_applied(followed):
    """Layers, registries, per-stage deps, and every-arch tests, run on the copy's own code."""
    root, env = followed
    checks = [
        sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
        "tests/test_layers.py", "tests/test_catalog.py", "tests/test_dvc_yaml.py",
        "tests/test_archs.py", "-k", "tiny_mlp or not test_archs",
    ]  # fmt: skip
    result = subprocess.run(checks, cwd=root, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:]
    assert "tiny_mlp" in subprocess.run(
        [*checks[:4], "--collect-only", "tests/test_archs.py"],
        cwd=root, env=env, capture_output=True, text=True,
    ).stdout  # fmt: skip


def test_dvc_runs_the_new_model_source_provider_and_variant(followed):
    root, env = followed
    command = [
        sys.executable, "-m", "dvc", "exp", "run",
        "-S", "model.arch=tiny_mlp", "-S", "data.source=npz",
        "-S", "benchmark.providers=[cpu,dnnl,cuda_tf32]",
        "-S", "export.variants=[fp16,int8,int8_dynamic]",
    ]  # fmt: skip
    result = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    data = json.loads((root / "metrics/details/data.json").read_text())
    train = json.loads((root / "metrics/details/train.json").read_text())
    card = json.loads((root / "models/model.json").read_text())
    assert data["source"] == "npz" and data["counts"]["train"] > 1000
    assert card["arch"] == "tiny_mlp"
    assert train["val_accuracy"] > 0.5
    rows = list(csv.DictReader((root / "metrics/benchmark.csv").open()))
    dnnl = [row for row in rows if row["provider_requested"] == "dnnl"]
    assert dnnl and all(row["status"] == "fallback" for row in dnnl)
    assert all(row["providers_used"] == "CPUExecutionProvider" for row in dnnl)
    tf32 = [row for row in rows if row["provider_requested"] == "cuda_tf32"]
    assert tf32 and all(row["backend"] == "onnxruntime_cuda_tf32" for row in tf32)
    if not torch.cuda.is_available():  # no GPU: a CPU fallback, never labelled tf32
        assert all(row["status"] == "fallback" and row["precision"] != "tf32" for row in tf32)
        assert {row["precision"] for row in tf32 if row["variant"] == "fp32"} == {"fp32"}
    export = json.loads((root / "metrics/details/export.json").read_text())
    dynamic = export["variants"]["int8_dynamic"]
    assert dynamic["passed"] and dynamic["gate"]["min_top1_agreement"] == 0.97
    assert (
        dynamic["file"].endswith("model.int8_dynamic.onnx") and (root / dynamic["file"]).is_file()
    )
    assert dynamic["quantization"]["format"] == "dynamic"
    # onnxruntime runs its int8 kernels; OpenVINO says what its compiled layers run in.
    timed = [r for r in rows if r["variant"] == "int8_dynamic" and r["backend"].startswith("onnx")]
    assert timed and {row["precision"] for row in timed} == {"int8"}
    assert dvc(root, "status").stdout.strip().endswith("up to date.")


def test_the_gpu_providers_options_reach_its_sessions(followed):
    """The recipe's options, asked for itself and wherever it sits in a chain."""
    root, env = followed
    code = (
        "from pathlib import Path\n"
        "from pipeline.bench.providers import ModelFile, SessionTarget, chain_options\n"
        "target = SessionTarget(ModelFile(Path('m.onnx')), 'fp32', 1, (1, 8, 8), (1, 1, 1))\n"
        "print(chain_options('cuda_tf32', target))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=root, env=env, capture_output=True,
                          text=True)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "{'cuda_tf32': {'device_id': 1, 'use_tf32': 1}}"
