"""No function over 40 lines in src/, stages/ and benchmarks/, except where a comment says why.

A function's length counts from its ``def`` line to its last line, docstring included
(``end_lineno - lineno + 1`` from ``ast``); methods, async and nested functions count alike.
The escape hatch the rule allows: a comment containing the words "long because" on the line
directly above the ``def``, or directly above its first decorator, e.g.

    # long because: one flat table of every setting reads better split nowhere
    def settings_table(...):

Nothing else excuses a function: a comment further up, or one that gives no reason, does not.
"""

from __future__ import annotations

import ast

from conftest import ROOT

MAX_LINES = 40
FOLDERS = ("src", "stages", "benchmarks")
ESCAPE = "long because"


def excused(node: ast.FunctionDef | ast.AsyncFunctionDef, lines: list[str]) -> bool:
    """Whether the line above the ``def``, or above its first decorator, is an escape comment."""
    starts = [node.lineno, *(decorator.lineno for decorator in node.decorator_list[:1])]
    for start in starts:
        above = lines[start - 2].strip() if start >= 2 else ""
        if above.startswith("#") and ESCAPE in above.lower():
            return True
    return False


def long_functions(source: str, path: str) -> list[str]:
    """``path:line name (N lines)`` for every function of ``source`` over MAX_LINES, unexcused."""
    lines = source.splitlines()
    found = []
    for node in ast.walk(ast.parse(source, filename=path)):
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        length = node.end_lineno - node.lineno + 1
        if length > MAX_LINES and not excused(node, lines):
            found.append((node.lineno, f"{path}:{node.lineno} {node.name} ({length} lines)"))
    return [entry for _, entry in sorted(found)]


def test_no_function_is_over_40_lines_without_saying_why():
    found = []
    for folder in FOLDERS:
        for path in sorted((ROOT / folder).rglob("*.py")):
            source = path.read_text(encoding="utf-8")
            found += long_functions(source, path.relative_to(ROOT).as_posix())
    assert not found, (
        f"functions over {MAX_LINES} lines: split them, or put a '# long because ...' comment "
        "directly above the def saying why\n" + "\n".join(found)
    )


def test_the_check_flags_41_lines_and_accepts_a_long_because_comment():
    body = "".join(f"    x{i} = {i}\n" for i in range(40))
    long = "def long():\n" + body  # 41 lines
    assert long_functions(long, "x.py") == ["x.py:1 long (41 lines)"]
    assert long_functions("def short():\n" + body[: -len("    x39 = 39\n")], "x.py") == []
    assert long_functions("# Long because: one flat table\n" + long, "x.py") == []
    decorated = "# long because: one flat table\n@cache\n@other\n" + long
    assert long_functions(decorated, "x.py") == []
    assert long_functions("# long because: one flat table\n\n" + long, "x.py") != []  # not above
    assert long_functions("# long, sorry\n" + long, "x.py") == ["x.py:2 long (41 lines)"]
    nested = "class C:\n    async def outer(self):\n        def inner():\n" + body.replace(
        "    ", "            "
    )
    assert long_functions(nested, "x.py") == [
        "x.py:2 outer (42 lines)",
        "x.py:3 inner (41 lines)",
    ]
