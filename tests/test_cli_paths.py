"""Bad paths given to pipeline-pareto and the offline-page writer: a one-line usage error
naming the path, exit 2, no traceback, no hang and nothing written."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, tool_env


def cli(cwd: Path, module: str, *args: str) -> subprocess.CompletedProcess:
    """``python -m module args`` from ``cwd``; the timeout fails a hang instead of waiting."""
    env = {**tool_env(), "PYTHONPATH": str(ROOT / "src")}
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def assert_one_line_error(result: subprocess.CompletedProcess, bad: Path, says: str) -> None:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1, result.stderr
    assert f"'{bad}'" in errors[0] and says in errors[0], result.stderr
    assert result.stdout == ""  # no report printed from a document never read


def pareto(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    return cli(tmp_path, "pipeline.tools.pareto", *args)


# --- pipeline-pareto --json / --repo ------------------------------------------------------------


def test_pareto_json_missing_file(tmp_path):
    missing = tmp_path / "missing.json"
    result = pareto(tmp_path, "--json", str(missing))
    assert_one_line_error(result, missing, "No such file")


def test_pareto_json_folder(tmp_path):
    result = pareto(tmp_path, "--json", str(tmp_path))
    assert_one_line_error(result, tmp_path, "not a regular file")


@pytest.mark.parametrize(
    ("content", "says"),
    [(b"{", "is not JSON"), (b"\xff\xfe[]", "is not JSON"), (b'{"rev": 1}', "a list of objects")],
    ids=["truncated", "not-utf8", "not-a-list"],
)
def test_pareto_json_not_exp_show(tmp_path, content, says):
    saved = tmp_path / "exp.json"
    saved.write_bytes(content)
    assert_one_line_error(pareto(tmp_path, "--json", str(saved)), saved, says)


def test_pareto_json_named_pipe_is_refused_not_waited_on(tmp_path):
    fifo = tmp_path / "exp.json"
    os.mkfifo(fifo)  # no writer ever opens it: a blocking open would wait forever
    result = pareto(tmp_path, "--json", str(fifo))
    assert_one_line_error(result, fifo, "not a regular file")


@pytest.mark.parametrize("kind", ["missing", "file"])
def test_pareto_repo_not_a_folder(tmp_path, kind):
    repo = tmp_path / "repo"
    if kind == "file":
        repo.write_text("")
    assert_one_line_error(pareto(tmp_path, "--repo", str(repo)), repo, "not a folder")


# --- python -m pipeline.charts.offline_page --output ---------------------------------------------


def test_offline_page_refuses_a_folder_as_output(tmp_path):
    folder = tmp_path / "page"
    folder.mkdir()
    result = cli(tmp_path, "pipeline.charts.offline_page", "--output", str(folder))
    assert_one_line_error(result, folder, "not a regular file")
    assert sorted(tmp_path.rglob("*")) == [folder]  # nothing written, no temporary left


def test_offline_page_unwritable_output_is_one_line(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("kept")
    output = blocker / "offline.html"  # its folder is a file: the write fails
    result = cli(tmp_path, "pipeline.charts.offline_page", "--output", str(output))
    assert_one_line_error(result, output, "cannot be written")
    assert sorted(tmp_path.rglob("*")) == [blocker] and blocker.read_text() == "kept"
