"""The style gate runs with the tests, so CI enforces it too."""

import shutil
import subprocess

import pytest

from conftest import ROOT

TARGETS = ["src", "tests", "stages", "benchmarks"]


@pytest.mark.skipif(shutil.which("ruff") is None, reason="ruff comes with the test extra")
@pytest.mark.parametrize("command", [["ruff", "check"], ["ruff", "format", "--check"]])
def test_ruff_is_clean(command):
    result = subprocess.run([*command, *TARGETS], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
