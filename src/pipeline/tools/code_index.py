"""What the names in src/pipeline refer to, read from source text alone (nothing is imported).

A ``CodeIndex`` knows each module's functions, classes (their methods, bases and annotated
attributes) and imports, so that a call such as ``setup.trainer(...)`` or ``save_tensors(...)``
can be traced to the function it runs. It resolves what can be read statically: names defined
or imported (re-exports through ``__init__`` followed), ``module.name``, ``self.method``, and
methods of a receiver whose class is known from an annotation, a constructor call or a
function's return annotation (of a union such as ``InMemory | Streamed``, the first project class
named: which one runs is decided at run time). A call it cannot resolve is simply not followed.

Standard library only: a tool that reads source text has no reason to import torch.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field
from pathlib import Path

Function = ast.FunctionDef | ast.AsyncFunctionDef


@dataclass
class ClassInfo:
    module: str
    node: ast.ClassDef
    methods: dict[str, Function] = field(default_factory=dict)
    attributes: dict[str, ast.expr] = field(default_factory=dict)  # name -> annotation


@dataclass
class ModuleInfo:
    name: str
    path: Path
    functions: dict[str, Function] = field(default_factory=dict)
    classes: dict[str, ClassInfo] = field(default_factory=dict)
    imports: dict[str, str] = field(default_factory=dict)  # local name -> dotted target


def absolute_module(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    """The dotted module a ``from ... import`` reads, relative imports resolved."""
    if not node.level:
        return node.module or ""
    parts = module.split(".")
    base = parts if is_package else parts[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


def _imports(tree: ast.Module, module: str, is_package: bool) -> dict[str, str]:
    """Every import in the module, lazy and TYPE_CHECKING ones included (they name types)."""
    names = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:  # import a.b binds a; import a.b as c binds c to a.b
                head = alias.name.split(".")[0]
                names[alias.asname or head] = alias.name if alias.asname else head
        elif isinstance(node, ast.ImportFrom):
            source = absolute_module(node, module, is_package)
            for alias in node.names:
                names[alias.asname or alias.name] = f"{source}.{alias.name}"
    return names


def _class_info(module: str, node: ast.ClassDef) -> ClassInfo:
    info = ClassInfo(module, node)
    for item in node.body:
        if isinstance(item, Function):
            info.methods[item.name] = item
        elif isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
            info.attributes[item.target.id] = item.annotation
    init = info.methods.get("__init__")
    for item in ast.walk(init) if init else ():
        if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Attribute):
            info.attributes.setdefault(item.target.attr, item.annotation)
    return info


def read_module(name: str, path: Path) -> ModuleInfo:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    info = ModuleInfo(name, path, imports=_imports(tree, name, path.name == "__init__.py"))
    for node in tree.body:
        if isinstance(node, Function):
            info.functions[node.name] = node
        elif isinstance(node, ast.ClassDef):
            info.classes[node.name] = _class_info(name, node)
    return info


class CodeIndex:
    """Every module under ``src`` (the folder that holds the ``pipeline`` package)."""

    def __init__(self, src: Path, package: str = "pipeline") -> None:
        self.src = src
        self.modules: dict[str, ModuleInfo] = {}
        for path in sorted((src / package).rglob("*.py")):
            parts = path.relative_to(src).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            self.modules[name] = read_module(name, path)

    def module_of_file(self, path: Path) -> ModuleInfo | None:
        resolved = path.resolve()
        return next((m for m in self.modules.values() if m.path.resolve() == resolved), None)

    def lookup(self, dotted: str, depth: int = 0) -> ClassInfo | Function | ModuleInfo | None:
        """The function, class or module ``dotted`` names, following re-exports."""
        if dotted in self.modules:
            return self.modules[dotted]
        module, _, name = dotted.rpartition(".")
        info = self.modules.get(module)
        if info is None or depth > 8:
            return None
        if name in info.functions:
            return info.functions[name]
        if name in info.classes:
            return info.classes[name]
        target = info.imports.get(name)
        return self.lookup(target, depth + 1) if target else None

    def resolve_name(
        self, module: ModuleInfo, name: str
    ) -> ClassInfo | Function | ModuleInfo | None:
        """What a bare ``name`` means inside ``module``."""
        if name in module.functions:
            return module.functions[name]
        if name in module.classes:
            return module.classes[name]
        target = module.imports.get(name)
        return self.lookup(target) if target else None

    def class_of(self, module: ModuleInfo, annotation: ast.expr | None) -> ClassInfo | None:
        """The project class an annotation names (``X``, ``X | None``, ``"X"``, ``a.X``)."""
        if annotation is None:
            return None
        if isinstance(annotation, ast.Constant) and isinstance(annotation.value, str):
            try:
                annotation = ast.parse(annotation.value, mode="eval").body
            except SyntaxError:
                return None
        for node in ast.walk(annotation):
            found = self._named(module, node)
            if isinstance(found, ClassInfo):
                return found
        return None

    def _named(self, module: ModuleInfo, node: ast.AST):
        if isinstance(node, ast.Name):
            return self.resolve_name(module, node.id)
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            owner = self.resolve_name(module, node.value.id)
            if isinstance(owner, ModuleInfo):
                return self.resolve_name(owner, node.attr)
        return None

    def method(
        self, cls: ClassInfo, name: str, depth: int = 0
    ) -> tuple[ClassInfo, Function] | None:
        """``cls.name`` or the nearest project base class's."""
        if name in cls.methods:
            return cls, cls.methods[name]
        owner = self.modules[cls.module]
        for base in cls.node.bases:
            found = self._named(owner, base)
            if isinstance(found, ClassInfo) and depth < 8:
                if (hit := self.method(found, name, depth + 1)) is not None:
                    return hit
        return None

    def attribute_class(self, cls: ClassInfo, name: str) -> ClassInfo | None:
        return self.class_of(self.modules[cls.module], cls.attributes.get(name))
