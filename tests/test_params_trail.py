"""pipeline.tools.params_trail: the trail a parameter takes through the calls that pass it on."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import ROOT
from pipeline.tools.code_index import CodeIndex
from pipeline.tools.params_trail import trail

# A small package in the real layout: train (rank 5) calls down into models (4) and core (0).
PLANTED = {
    "train/run.py": """
        from pipeline.core.io import write
        from pipeline.models.card import Card
        from pipeline.train.setup import Setup, build_setup

        def run(params, root):
            setup = build_setup(params)
            unrelated(root)              # root is not params: not followed
            card = Card(setup.name)      # a constructor: Card.__init__
            card.save(root)              # a method of a known class, on a carried object
            write(setup.name)            # core, then back up to train: a climb
            finish(setup)
            finish(setup)                # read once

        def unrelated(root):
            write(root)

        def finish(setup: Setup):
            setup.describe()
    """,
    "train/setup.py": """
        from dataclasses import dataclass

        @dataclass
        class Setup:
            name: str

            def describe(self):
                return self.name

        def build_setup(params) -> Setup:
            return Setup(params["name"])
    """,
    "models/card.py": """
        from pipeline.core import io

        class Card:
            def __init__(self, name):
                self.name = name

            def save(self, folder):
                io.write(self.name)
    """,
    "core/io.py": """
        def write(value):
            return value
    """,
}


def plant(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    for name in ["__init__.py", "train/__init__.py", "models/__init__.py", "core/__init__.py"]:
        (src / "pipeline" / name).parent.mkdir(parents=True, exist_ok=True)
        (src / "pipeline" / name).write_text("")
    for name, text in PLANTED.items():
        (src / "pipeline" / name).write_text(textwrap.dedent(text))
    return src


def test_a_planted_trail_follows_only_what_carries_the_parameter(tmp_path):
    src = plant(tmp_path)
    found = trail(CodeIndex(src), src / "pipeline/train/run.py", "run", "params")
    assert [(stop.module, stop.functions) for stop in found.stops] == [
        ("pipeline.train.run", ["run"]),
        ("pipeline.train.setup", ["build_setup"]),
        ("pipeline.models.card", ["Card.__init__", "Card.save"]),
        ("pipeline.core.io", ["write"]),
        ("pipeline.train.run", ["finish"]),
        ("pipeline.train.setup", ["Setup.describe"]),
    ]
    assert (len(found.stops), found.files, found.climbs) == (6, 4, 1)
    assert found.summary() == "6 stops in 4 files, 1 climbs back up"


def test_the_training_trail_does_not_grow_unnoticed():
    """The trail of ``params`` from the training entry point, measured on this code. Shrinking
    it is welcome (lower the bound); growing it needs a reason in the same commit."""
    found = trail(
        CodeIndex(ROOT / "src"), ROOT / "src/pipeline/train/run.py", "run_training", "params"
    )
    assert len(found.stops) <= 65 and found.climbs <= 9, "\n".join(found.lines())
    assert found.stops[0].functions == ["run_training"]


@pytest.mark.parametrize(
    "start, message",
    [
        ("src/pipeline/train/run.py:no_such_function:params", "no function 'no_such_function'"),
        ("src/pipeline/train/run.py:run_training:nope", "run_training has no parameter 'nope'"),
        ("src/pipeline/train/missing.py:f:x", "'src/pipeline/train/missing.py': no such file"),
        ("src/pipeline/train/run.py", "expected FILE:FUNCTION:PARAM"),
        ("stages/train.py:main:x", "stages/train.py is not a module of src/pipeline"),
        ("README.md:a:b", "README.md is not a module of src/pipeline"),
    ],
)
def test_a_bad_start_is_one_clear_line(start, message):
    done = subprocess.run(
        [sys.executable, "-m", "pipeline.tools.params_trail", start],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode != 0 and message in done.stderr, done.stderr
    assert not done.stdout
