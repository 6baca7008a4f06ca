"""Each stage's code dependencies in dvc.yaml, derived from what its script imports.

A stage depends on the pipeline modules its script imports, followed transitively: imports
inside functions count (they run), imports under ``if TYPE_CHECKING:`` do not (they never run).
Importing ``pipeline.a.b`` also runs ``pipeline/__init__.py`` and ``pipeline/a/__init__.py``.
DVC gets them at package granularity: any module of ``src/pipeline/<pkg>/`` becomes the folder
``src/pipeline/<pkg>``, a top-level module the file ``src/pipeline/<mod>.py``. A package counts
whole, so every module in it is followed too: the folder is what DVC hashes, and a registry may
load a module of its own package by name (importlib) where no import statement shows it.

    python -m pipeline.tools.stage_deps            # print each stage's derived deps
    python -m pipeline.tools.stage_deps --check    # exit 1 naming each stage whose deps differ
    python -m pipeline.tools.stage_deps --write    # rewrite only the src/pipeline lines of dvc.yaml

Standard library only: a tool that reads source text has no reason to import torch.
"""

from __future__ import annotations

import argparse
import ast
import os
import re
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

from pipeline.tools.code_index import absolute_module

PACKAGE = "pipeline"
CODE_DIR = f"src/{PACKAGE}"  # as dvc.yaml spells it, relative to the project root


# ---- what a stage imports ---------------------------------------------------------------------


def module_source(src: Path, name: str) -> Path | None:
    """The file that runs when ``name`` is imported (``x.py`` or ``x/__init__.py``), if any."""
    base = src.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _is_type_checking(test: ast.expr) -> bool:
    name = test.attr if isinstance(test, ast.Attribute) else getattr(test, "id", None)
    return name == "TYPE_CHECKING"


def _run_nodes(tree: ast.AST) -> Iterator[ast.AST]:
    """Every node of ``tree`` except the bodies of ``if TYPE_CHECKING:``."""
    todo = [tree]
    while todo:
        node = todo.pop()
        yield node
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            todo.extend(node.orelse)
        else:
            todo.extend(ast.iter_child_nodes(node))


def imported_names(tree: ast.AST, module: str = "", is_package: bool = False) -> set[str]:
    """Dotted names a module's code imports (``from a import b`` gives ``a`` and ``a.b``)."""
    names = set()
    for node in _run_nodes(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            source = absolute_module(node, module, is_package)
            names |= {source} | {f"{source}.{alias.name}" for alias in node.names}
    return names


def pipeline_modules(names: set[str], src: Path) -> set[str]:
    """The pipeline modules that importing ``names`` runs: each name's parent packages too."""
    found = set()
    for name in names:
        parts = name.split(".")
        if parts[0] != PACKAGE:
            continue
        prefixes = {".".join(parts[:k]) for k in range(1, len(parts) + 1)}
        found |= {prefix for prefix in prefixes if module_source(src, prefix)}
    return found


def package_modules(src: Path, package: str) -> set[str]:
    folder = src.joinpath(*package.split("."))
    return {
        ".".join(path.relative_to(src).with_suffix("").parts).removesuffix(".__init__")
        for path in folder.rglob("*.py")
        if "__pycache__" not in path.parts
    }


def reached_modules(script: Path, src: Path) -> set[str]:
    """Every pipeline module the script's run can import, each reached package whole."""
    todo = pipeline_modules(imported_names(ast.parse(script.read_text())), src)
    seen: set[str] = set()
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        path = module_source(src, module)
        tree = ast.parse(path.read_text(), filename=str(path))
        todo |= pipeline_modules(imported_names(tree, module, path.name == "__init__.py"), src)
        parts = module.split(".")
        if len(parts) > 1 and (src / PACKAGE / parts[1]).is_dir():
            todo |= package_modules(src, ".".join(parts[:2]))
    return seen


def dep_path(module: str, src: Path) -> str:
    """``pipeline`` -> its ``__init__.py``; a module of a package -> the package folder."""
    parts = module.split(".")
    if len(parts) == 1:
        return f"{CODE_DIR}/__init__.py"
    if (src / PACKAGE / parts[1]).is_dir():
        return f"{CODE_DIR}/{parts[1]}"
    return f"{CODE_DIR}/{parts[1]}.py"


def derived_deps(root: Path, stage: str) -> list[str]:
    script = root / "stages" / f"{stage}.py"
    if not script.is_file():
        raise SystemExit(f"stage_deps: error: stage {stage!r} has no script {script}")
    src = root / "src"
    return sorted({dep_path(module, src) for module in reached_modules(script, src)})


# ---- dvc.yaml as text: only the src/pipeline lines of each stage's deps change ----------------

KEY = re.compile(r"^(\s*)([A-Za-z0-9_.-]+):\s*(#.*)?$")
ITEM = re.compile(r"^(\s*)- ([^\s#]+)\s*(#.*)?$")


def is_code_dep(path: str) -> bool:
    return path == CODE_DIR or path.startswith(f"{CODE_DIR}/")


def deps_items(lines: list[str]) -> dict[str, list[tuple[int, str, str]]]:
    """Per stage, each deps list item as (line index, indentation, path)."""
    found: dict[str, list[tuple[int, str, str]]] = {}
    top = stage = field = None
    stage_indent = field_indent = None
    for index, line in enumerate(lines):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        indent = len(line) - len(line.lstrip())
        key = KEY.match(line)
        if indent == 0:
            top, stage, field, stage_indent = (key.group(2) if key else None), None, None, None
        elif top == "stages" and key and indent == (stage_indent or indent):
            stage, stage_indent, field, field_indent = key.group(2), indent, None, None
            found[stage] = []
        elif stage and key and indent > stage_indent and indent == (field_indent or indent):
            field, field_indent = key.group(2), indent
        elif field == "deps" and (item := ITEM.match(line)) and indent > field_indent:
            found[stage].append((index, item.group(1), item.group(2)))
    return found


def declared_code_deps(text: str) -> dict[str, list[str]]:
    items = deps_items(text.splitlines())
    return {stage: [path for _, _, path in entries if is_code_dep(path)]
            for stage, entries in items.items()}  # fmt: skip


def rewrite(text: str, wanted: dict[str, list[str]]) -> str:
    """``text`` with each stage's src/pipeline deps replaced by ``wanted[stage]`` in place (where
    the first one stood, else after the last dep); a kept path keeps its line and comment."""
    lines = text.splitlines(keepends=True)
    newline = "\r\n" if text.endswith("\r\n") else "\n"
    items = deps_items([line.rstrip("\r\n") for line in lines])
    replacements: dict[int, list[str]] = {}
    for stage, deps in wanted.items():
        entries = items.get(stage)
        if not entries:
            raise SystemExit(f"stage_deps: error: dvc.yaml: stage {stage!r} has no deps list")
        code = [(index, path) for index, _, path in entries if is_code_dep(path)]
        old = {path: lines[index] for index, path in code}
        indent = entries[0][1]
        new = [old.get(path, f"{indent}- {path}{newline}") for path in deps]
        at = code[0][0] if code else entries[-1][0]
        replacements[at] = new if code else [lines[at], *new]
        replacements.update({index: [] for index, _ in code[1:]})
    return "".join(
        "".join(replacements[index]) if index in replacements else line
        for index, line in enumerate(lines)
    )


def differences(declared: dict[str, list[str]], wanted: dict[str, list[str]]) -> list[str]:
    problems = []
    for stage, deps in wanted.items():
        listed = set(declared.get(stage, []))
        missing, extra = sorted(set(deps) - listed), sorted(listed - set(deps))
        if missing:
            problems.append(f"stage {stage!r} imports code dvc.yaml does not list: {missing}")
        if extra:
            problems.append(f"stage {stage!r} lists code it does not import: {extra}")
    return problems


# ---- command line ---------------------------------------------------------------------------


def all_derived(root: Path, text: str) -> dict[str, list[str]]:
    return {stage: derived_deps(root, stage) for stage in deps_items(text.splitlines())}


def write_text_atomically(path: Path, text: str) -> None:
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(handle, "w", newline="") as stream:
            stream.write(text)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.tools.stage_deps", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--root", type=Path, default=Path(), help="project folder (default: here)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true", help="exit 1 if dvc.yaml differs")
    mode.add_argument("--write", action="store_true", help="rewrite dvc.yaml's src/pipeline deps")
    args = parser.parse_args(argv)
    dvc_yaml = args.root / "dvc.yaml"
    if not dvc_yaml.is_file():
        raise SystemExit(f"stage_deps: error: no dvc.yaml in {args.root.resolve()}")
    text = dvc_yaml.read_bytes().decode()  # line endings as they are: --write keeps them
    wanted = all_derived(args.root, text)
    if args.write:
        updated = rewrite(text, wanted)
        if updated != text:
            write_text_atomically(dvc_yaml, updated)
        return 0
    if args.check:
        problems = differences(declared_code_deps(text), wanted)
        for problem in problems:
            print(f"dvc.yaml: {problem}; run `python -m pipeline.tools.stage_deps --write`")
        return 1 if problems else 0
    for stage, deps in wanted.items():
        print(f"{stage}:", *(f"  - {dep}" for dep in deps), sep="\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
