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


def _bind(names: dict[str, str], node: ast.AST, module: str, is_package: bool) -> None:
    if isinstance(node, ast.Import):
        for alias in node.names:  # import a.b binds a; import a.b as c binds c to a.b
            head = alias.name.split(".")[0]
            names[alias.asname or head] = alias.name if alias.asname else head
    elif isinstance(node, ast.ImportFrom):
        source = absolute_module(node, module, is_package)
        for alias in node.names:
            names[alias.asname or alias.name] = f"{source}.{alias.name}"


def _top_level(nodes: list):
    """The module's own statements, into if/try blocks but not into functions or classes."""
    for node in nodes:
        yield node
        if not isinstance(node, Function | ast.ClassDef):
            for field_name in ("body", "orelse", "finalbody", "handlers"):
                yield from _top_level(getattr(node, field_name, []))


def _imports(tree: ast.Module, module: str, is_package: bool) -> dict[str, str]:
    """Every import in the module, lazy and TYPE_CHECKING ones included (they name types); a
    top-level import wins over a lazy one of the same name."""
    names: dict[str, str] = {}
    for node in ast.walk(tree):
        _bind(names, node, module, is_package)
    for node in _top_level(tree.body):
        _bind(names, node, module, is_package)
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


class SourceError(ValueError):
    """A file under the package that cannot be read as Python source."""


def read_module(name: str, path: Path) -> ModuleInfo:
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    except (UnicodeDecodeError, SyntaxError) as error:
        raise SourceError(f"{path}: not readable as Python source ({error})") from None
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
        # id() of each module-level function -> its module: where a resolved call's code is.
        self._home = {id(fn): m for m in self.modules.values() for fn in m.functions.values()}

    def module_of_function(self, function: Function) -> ModuleInfo:
        return self._home[id(function)]

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
        """The project class an annotation names: ``X``, ``a.X``, ``"X"``, ``Optional[X]``, or the
        first project class of ``X | Y``. Containers (``list[X]``, ``tuple[X, Y]``) name none."""
        for node in _annotation_names(annotation):
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

    def method(self, cls: ClassInfo, name: str, bases_only: bool = False, depth: int = 0):
        """(the class that defines it, the function) of ``cls.name``, looked up in ``cls`` and
        then its project base classes in order (``bases_only``: as ``super()`` does)."""
        if not bases_only and name in cls.methods:
            return cls, cls.methods[name]
        owner = self.modules[cls.module]
        for base in cls.node.bases:
            found = self._named(owner, base)
            if isinstance(found, ClassInfo) and depth < 8:
                if (hit := self.method(found, name, depth=depth + 1)) is not None:
                    return hit
        return None

    def attribute_class(self, cls: ClassInfo, name: str) -> ClassInfo | None:
        return self.class_of(self.modules[cls.module], cls.attributes.get(name))


def _annotation_names(node: ast.expr | None):
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        try:
            node = ast.parse(node.value, mode="eval").body
        except SyntaxError:
            return
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
        yield from _annotation_names(node.left)
        yield from _annotation_names(node.right)
    elif isinstance(node, ast.Subscript) and _last_name(node.value) == "Optional":
        yield from _annotation_names(node.slice)
    elif isinstance(node, ast.Name | ast.Attribute):
        yield node


def _last_name(node: ast.expr) -> str | None:
    """``Optional`` for ``Optional`` and ``typing.Optional``."""
    if isinstance(node, ast.Attribute):
        return node.attr
    return node.id if isinstance(node, ast.Name) else None


def decorated(function: Function, name: str) -> bool:
    """Whether ``function`` carries the decorator ``name`` (``staticmethod``, ``classmethod``)."""
    return any(_last_name(decorator) == name for decorator in function.decorator_list)
