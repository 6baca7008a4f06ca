"""The one first-line-of-an-error helper (pipeline.core.errors.first_line / describe)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from pipeline.core.errors import describe, first_line

SRC = Path(__file__).resolve().parents[1] / "src" / "pipeline"


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        ("one line", "one line"),
        ("first\nsecond\nthird", "first"),
        ("  padded  \n  second", "padded"),
        ("\n\n   \n  after blank lines\nmore", "after blank lines"),
        ("windows\r\nline end", "windows"),
    ],
)
def test_first_line_is_the_first_non_blank_line_stripped(message, expected):
    assert first_line(ValueError(message)) == expected
    assert first_line(message) == expected


@pytest.mark.parametrize("message", ["", "   ", "\n \n\t"])
def test_a_blank_message_gives_the_type_name_for_an_error_and_nothing_for_text(message):
    assert first_line(KeyboardInterrupt(message)) == "KeyboardInterrupt"
    assert first_line(OSError(message)) == "OSError"
    assert first_line(message) == ""


def test_an_error_without_arguments_gives_its_type_name():
    class CustomFailure(Exception):
        pass

    assert first_line(CustomFailure()) == "CustomFailure"
    assert describe(CustomFailure()) == "CustomFailure"


def test_describe_prefixes_the_type_name_once():
    assert describe(RuntimeError("bad header\nTraceback follows")) == "RuntimeError: bad header"
    assert describe(RuntimeError("  \n  ")) == "RuntimeError"
    assert describe(KeyError("weights")) == "KeyError: 'weights'"


def test_no_module_writes_its_own_first_line_of_an_error():
    # str(error).strip().splitlines()[0] and friends: each one crashed or differed on blank text.
    hand_written = re.compile(r"str\(\w+\)(\.strip\(\))?\.splitlines\(\)")
    found = [
        f"{path.relative_to(SRC)}:{number}"
        for path in sorted(SRC.rglob("*.py"))
        if path.name != "errors.py"
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if hand_written.search(line)
    ]
    assert found == []
