"""pipeline.tools.stage_deps: each stage's code deps derived from its imports, and dvc.yaml edited
as text (only the src/pipeline lines of each stage's deps), on a tiny made-up project."""

from pathlib import Path

import pytest

from pipeline.tools import stage_deps

SOURCES = {
    "src/pipeline/__init__.py": "",
    "src/pipeline/config.py": "from pipeline.errors import PipelineError\n",
    "src/pipeline/errors.py": "class PipelineError(Exception): ...\n",
    "src/pipeline/io.py": "import json\n",
    "src/pipeline/paths.py": "",
    "src/pipeline/typing_only.py": "",
    "src/pipeline/records.py": "",
    # A package reached through one module counts whole: registry.py loads small.py by name.
    "src/pipeline/models/__init__.py": "",
    "src/pipeline/models/registry.py": "TARGETS = {'small': 'pipeline.models.small:Small'}\n",
    "src/pipeline/models/small.py": "from . import registry\nfrom ..io import json\n",
    "src/pipeline/bench/__init__.py": "",
    "src/pipeline/bench/run.py": (
        "from typing import TYPE_CHECKING\n"
        "import typing\n"
        "if TYPE_CHECKING:\n    from pipeline.typing_only import Hint\n"
        "if typing.TYPE_CHECKING:\n    import pipeline.typing_only\n"
        "else:\n    import pipeline.records\n"
        "def run():\n    from pipeline.models.registry import TARGETS  # lazy: still a dep\n"
    ),
    "stages/prepare.py": "from pipeline import paths\nfrom pipeline.config import Params\n",
    "stages/benchmark.py": "import pipeline.bench.run\n",
}

DVC_YAML = """\
# a comment the tool must keep
stages:
  prepare:
    cmd: python stages/prepare.py
    deps:
      - stages/prepare.py
      - src/pipeline/paths.py   # kept with its comment
      - src/pipeline
      - params.yaml
    params:
      - seed
    outs:
      - data/prepared

  benchmark:
    cmd: python stages/benchmark.py
    deps:   # no code listed yet
      - stages/benchmark.py
      - models/onnx
    metrics:
      - metrics/benchmark.json:
          cache: false

plots:
  - metrics/benchmark.csv
"""

PREPARE = [
    "src/pipeline/__init__.py",
    "src/pipeline/config.py",
    "src/pipeline/errors.py",
    "src/pipeline/paths.py",
]
BENCHMARK = [
    "src/pipeline/__init__.py",
    "src/pipeline/bench",
    "src/pipeline/io.py",
    "src/pipeline/models",
    "src/pipeline/records.py",
]


@pytest.fixture
def project(tmp_path: Path) -> Path:
    for name, text in SOURCES.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    (tmp_path / "dvc.yaml").write_text(DVC_YAML)
    return tmp_path


def test_deps_follow_imports_at_package_granularity(project):
    # prepare: parents of what it imports run too (pipeline/__init__.py); config -> errors.
    assert stage_deps.derived_deps(project, "prepare") == PREPARE
    # benchmark: a lazy import counts; TYPE_CHECKING blocks do not (their else branch does);
    # models/small.py is reached only as a member of its package, and its relative import of
    # ..io is followed.
    assert stage_deps.derived_deps(project, "benchmark") == BENCHMARK


def test_a_stage_without_its_script_is_refused(project):
    with pytest.raises(SystemExit, match="stage 'train' has no script"):
        stage_deps.derived_deps(project, "train")


def test_write_changes_only_the_code_lines_of_each_stage(project):
    assert stage_deps.main(["--root", str(project), "--write"]) == 0
    text = (project / "dvc.yaml").read_text()
    assert stage_deps.declared_code_deps(text) == {"prepare": PREPARE, "benchmark": BENCHMARK}
    kept = "      - src/pipeline/paths.py   # kept with its comment\n"
    assert kept in text
    # Every line that is not a code dep is byte-identical and in its order.
    others = [line for line in text.splitlines() if "src/pipeline" not in line]
    assert others == [line for line in DVC_YAML.splitlines() if "src/pipeline" not in line]
    # Placed where the old code deps stood; appended after the last dep where there were none.
    lines = text.splitlines()
    assert lines[lines.index("      - stages/prepare.py") + 1] == "      - src/pipeline/__init__.py"
    assert lines[lines.index("      - models/onnx") + 1] == "      - src/pipeline/__init__.py"
    assert stage_deps.main(["--root", str(project), "--check"]) == 0
    before = (project / "dvc.yaml").stat().st_mtime_ns
    assert stage_deps.main(["--root", str(project), "--write"]) == 0
    assert (project / "dvc.yaml").stat().st_mtime_ns == before  # nothing to change: untouched


def test_write_keeps_windows_line_endings(project):
    (project / "dvc.yaml").write_bytes(DVC_YAML.replace("\n", "\r\n").encode())
    stage_deps.main(["--root", str(project), "--write"])
    data = (project / "dvc.yaml").read_bytes()
    assert data.count(b"\n") == data.count(b"\r\n") and b"src/pipeline/bench\r\n" in data


def test_check_names_the_stage_and_each_missing_or_extra_dep(project, capsys):
    assert stage_deps.main(["--root", str(project), "--check"]) == 1
    out = capsys.readouterr().out.splitlines()
    assert any("'prepare' lists code it does not import: ['src/pipeline']" in line for line in out)
    missing = [line for line in out if "'benchmark' imports code dvc.yaml does not list" in line]
    assert len(missing) == 1 and "'src/pipeline/bench'" in missing[0]
    assert all(line.endswith("run `python -m pipeline.tools.stage_deps --write`") for line in out)


def test_print_lists_each_stage_and_its_deps(project, capsys):
    assert stage_deps.main(["--root", str(project)]) == 0
    out = capsys.readouterr().out
    assert out == "".join(
        f"{stage}:\n" + "".join(f"  - {dep}\n" for dep in deps)
        for stage, deps in (("prepare", PREPARE), ("benchmark", BENCHMARK))
    )


def test_a_folder_without_dvc_yaml_is_refused(tmp_path):
    with pytest.raises(SystemExit, match="no dvc.yaml in"):
        stage_deps.main(["--root", str(tmp_path), "--check"])
