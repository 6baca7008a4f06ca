"""The layer order of src/pipeline: imports run from higher ranks to lower ones, never back.

A module may import pipeline modules of a lower rank, or of its own package; never a higher
rank, nor another package of the same rank. Top-level modules of one rank may use each other
(``safetensors_header`` raises ``errors.PipelineError``) as long as no cycle forms. Function-level
(lazy) imports count; imports under ``if TYPE_CHECKING:`` do not (they never run).
"""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import ROOT
from pipeline.tools.layers import RANKS  # the one table (the params-trail tool reads it too)

PACKAGE_ROOT = ROOT / "src" / "pipeline"


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _import_nodes(node: ast.AST):
    """Every import statement under ``node``, skipping the bodies of ``if TYPE_CHECKING:``."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.Import | ast.ImportFrom):
            yield child
        elif isinstance(child, ast.If) and _is_type_checking(child.test):
            for orelse in child.orelse:
                yield from _import_nodes(ast.Module(body=[orelse], type_ignores=[]))
        else:
            yield from _import_nodes(child)


def _is_module(name: str, root: Path) -> bool:
    path = root.parent.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def imported_modules(source: str, importer: str, is_package: bool, root: Path) -> set[str]:
    """The modules ``importer`` imports (``from a import b`` gives ``a.b`` where that is a
    module, else ``a``; relative imports resolved against ``importer``)."""
    names: set[str] = set()
    for node in _import_nodes(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
            continue
        base = node.module or ""
        if node.level:
            anchor = importer.split(".")
            anchor = anchor if is_package else anchor[:-1]
            anchor = anchor[: len(anchor) - (node.level - 1)]
            base = ".".join([*anchor, *([base] if base else [])])
        for alias in node.names:
            name = f"{base}.{alias.name}"
            names.add(name if _is_module(name, root) else base)
    return names


def unit_of(name: str) -> str | None:
    """'pipeline.train.loop' -> 'train'; None outside the pipeline (or for the bare package)."""
    parts = name.split(".")
    if parts[0] != "pipeline" or len(parts) < 2:
        return None
    return parts[1]


def import_edges(root: Path) -> list[tuple[str, str]]:
    """(importer, imported) for every import between two different top-level units."""
    edges = []
    for path in sorted(root.rglob("*.py")):
        importer = module_name(path, root)
        source = path.read_text(encoding="utf-8")
        for target in sorted(imported_modules(source, importer, path.name == "__init__.py", root)):
            if unit_of(target) not in (None, unit_of(importer)):
                edges.append((importer, target))
    return edges


def _rank_problem(importer: str, target: str, root: Path, ranks: dict[str, int]) -> str | None:
    own, unit = unit_of(importer), unit_of(target)
    if unit not in ranks:
        return f"{importer} imports {target}, which has no rank in the table"
    if ranks[unit] > ranks[own]:
        return f"{importer} imports {target} (rank {ranks[unit]} > {ranks[own]})"
    if ranks[unit] == ranks[own] and ((root / own).is_dir() or (root / unit).is_dir()):
        return (
            f"{importer} imports {target} (rank {ranks[unit]} = {ranks[own]}, "
            "another package of the same rank)"
        )
    return None


def _cycles(edges: list[tuple[str, str]]) -> list[str]:
    """Units that reach themselves through ``edges`` (the allowed ones: so within one rank)."""
    graph: dict[str, set[str]] = {}
    for importer, target in edges:
        graph.setdefault(unit_of(importer), set()).add(unit_of(target))
    found = []
    for start in sorted(graph):
        seen, todo = set(), list(graph[start])
        while todo:
            unit = todo.pop()
            if unit not in seen:
                seen.add(unit)
                todo.extend(graph.get(unit, ()))
        if start in seen:
            found.append(f"pipeline.{start} imports itself through a cycle of same-rank modules")
    return found


def violations(root: Path = PACKAGE_ROOT, ranks: dict[str, int] = RANKS) -> list[str]:
    modules = sorted(module_name(path, root) for path in root.rglob("*.py"))
    problems = [
        f"{name} has no rank in the layer table"
        for name in modules
        if unit_of(name) is not None and unit_of(name) not in ranks
    ]
    edges = [(a, b) for a, b in import_edges(root) if unit_of(a) in ranks]
    ranked = [(edge, _rank_problem(*edge, root, ranks)) for edge in edges]
    problems += [problem for _, problem in ranked if problem]
    return problems + _cycles([edge for edge, problem in ranked if problem is None])


def test_imports_follow_the_layer_order():
    problems = violations()
    assert not problems, "\n".join(problems)


def _plant(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "pipeline"
    for name, text in {"__init__.py": "", **files}.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def test_checker_catches_a_planted_upward_import(tmp_path):
    root = _plant(
        tmp_path,
        {
            "hardware/__init__.py": "",
            # Lazy imports count: this one runs when the function does.
            "hardware/peak.py": "def f():\n    from pipeline.bench.peak import x\n",
            "bench/__init__.py": "",
            "bench/peak.py": "from pipeline.hardware import peak\nfrom . import other\n",
            "bench/other.py": "",
        },
    )
    assert violations(root) == ["pipeline.hardware.peak imports pipeline.bench.peak (rank 7 > 1)"]


def test_checker_catches_same_rank_packages_and_relative_imports(tmp_path):
    root = _plant(
        tmp_path,
        {
            "charts/__init__.py": "",
            "charts/pareto.py": "from ..energy import base\n",
            "energy/__init__.py": "",
            "energy/base.py": "from ..tools.pareto import Run\n",
            "tools/__init__.py": "",
            "tools/pareto.py": "",
        },
    )
    assert violations(root) == [
        "pipeline.charts.pareto imports pipeline.energy.base "
        "(rank 2 = 2, another package of the same rank)",
        "pipeline.energy.base imports pipeline.tools.pareto (rank 8 > 2)",
    ]


def test_checker_skips_type_checking_imports_but_not_their_else(tmp_path):
    root = _plant(
        tmp_path,
        {
            "core/__init__.py": "",
            "core/io.py": (
                "from typing import TYPE_CHECKING\n"
                "if TYPE_CHECKING:\n    from pipeline.tools.params_check import Check\n"
                "else:\n    import pipeline.tools.params_check\n"
            ),
            "tools/__init__.py": "",
            "tools/params_check.py": "",
        },
    )
    assert violations(root) == ["pipeline.core.io imports pipeline.tools.params_check (rank 8 > 0)"]


def test_checker_catches_a_cycle_between_same_rank_modules(tmp_path):
    """Top-level modules of one rank may use each other, but never in a circle."""
    root = _plant(
        tmp_path,
        {
            "records.py": "from pipeline.preprocess import x\n",
            "preprocess.py": "import pipeline.records\n",
        },
    )
    assert violations(root, {"records": 4, "preprocess": 4}) == [
        "pipeline.preprocess imports itself through a cycle of same-rank modules",
        "pipeline.records imports itself through a cycle of same-rank modules",
    ]


def test_checker_refuses_an_unranked_module(tmp_path):
    root = _plant(
        tmp_path,
        {
            "newthing.py": "import os\n",
            "core/__init__.py": "",
            "core/io.py": "from pipeline import newthing\n",
        },
    )
    assert violations(root) == [
        "pipeline.newthing has no rank in the layer table",
        "pipeline.core.io imports pipeline.newthing, which has no rank in the table",
    ]
