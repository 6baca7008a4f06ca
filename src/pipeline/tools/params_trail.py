"""Follow one parameter through the calls that pass it on, and count the trip.

    python -m pipeline.tools.params_trail src/pipeline/train/run.py:run_training:params

How far a reader travels to see what a value does: the files a parameter passes through, in
the order the calls are written, and how often the trail climbs back up a layer.

- Inside a function the parameter is carried by its own name and by every local name assigned
  from an expression that mentions a carried name (``setup = build_setup(params, ...)``).
- A call passes it on when an argument, or the object a method is called on, mentions a carried
  name; the trail enters the callee (the first call only: a function is read once) carrying the
  parameters those arguments bind to (``self`` for the object). Calls are taken in the order
  they are written, depth first; what pipeline.tools.code_index cannot resolve is not followed.
- A *stop* is a run of consecutive functions entered in one file; a *climb* is a stop in a
  higher layer (pipeline.tools.layers) than the stop before it.

Standard library only: a tool that reads source text has no reason to import torch.
"""

from __future__ import annotations

import argparse
import ast
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path

from pipeline.tools.code_index import ClassInfo, CodeIndex, Function, ModuleInfo
from pipeline.tools.layers import RANKS


@dataclass
class Stop:
    module: str
    functions: list[str] = field(default_factory=list)

    @property
    def rank(self) -> int:
        parts = self.module.split(".")
        return RANKS.get(parts[1], -1) if len(parts) > 1 else -1


@dataclass
class Trail:
    stops: list[Stop]

    @property
    def climbs(self) -> int:
        return sum(after.rank > before.rank for before, after in pairwise(self.stops))

    @property
    def files(self) -> int:
        return len({stop.module for stop in self.stops})

    def lines(self) -> list[str]:
        rows = []
        for number, stop in enumerate(self.stops, 1):
            earlier = self.stops[number - 2] if number > 1 else stop
            up = "  ^ climbs back up" if stop.rank > earlier.rank else ""
            where = stop.module.removeprefix("pipeline.").replace(".", "/") + ".py"
            rows.append(f"{number:3d}. {where:32s} {', '.join(stop.functions)}{up}")
        return rows

    def summary(self) -> str:
        return f"{len(self.stops)} stops in {self.files} files, {self.climbs} climbs back up"


def _mentions(node: ast.AST | None, carried: set[str]) -> bool:
    return node is not None and any(
        isinstance(name, ast.Name) and name.id in carried for name in ast.walk(node)
    )


def _assignments(node: ast.AST) -> tuple[ast.AST | None, list[ast.AST]]:
    """(the value, the targets) of an assignment-like node; (None, []) for any other."""
    if isinstance(node, ast.Assign):
        return node.value, node.targets
    if isinstance(node, ast.AnnAssign | ast.AugAssign | ast.NamedExpr):
        return node.value, [node.target]
    if isinstance(node, ast.For | ast.comprehension):
        return node.iter, [node.target]
    if isinstance(node, ast.withitem) and node.optional_vars is not None:
        return node.context_expr, [node.optional_vars]
    return None, []


def carried_names(function: Function, start: set[str]) -> set[str]:
    """``start`` and every local name assigned from them, to a fixed point (order-blind)."""
    carried, changed = set(start), True
    while changed:
        changed = False
        for node in ast.walk(function):
            value, targets = _assignments(node)
            if not _mentions(value, carried):
                continue
            named = {n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)}
            if named - carried:
                carried |= named
                changed = True
    return carried


@dataclass
class Frame:
    """A function being read: where it is, its class, and the local names' known classes."""

    module: ModuleInfo
    cls: ClassInfo | None
    function: Function
    types: dict[str, ClassInfo]


class Walker:
    def __init__(self, index: CodeIndex) -> None:
        self.index = index
        self.entered: set[int] = set()  # id() of each function node read so far
        self.events: list[tuple[str, str]] = []  # (module, qualified name) in reading order

    def walk(self, module: ModuleInfo, cls: ClassInfo | None, fn: Function, start: set[str]):
        if id(fn) in self.entered:
            return
        self.entered.add(id(fn))
        self.events.append((module.name, f"{cls.node.name}.{fn.name}" if cls else fn.name))
        frame = Frame(module, cls, fn, self.local_types(module, cls, fn))
        carried = carried_names(fn, start)
        calls = [node for node in ast.walk(fn) if isinstance(node, ast.Call)]
        for call in sorted(calls, key=lambda node: (node.lineno, node.col_offset)):
            self.follow(frame, call, carried)

    def follow(self, frame: Frame, call: ast.Call, carried: set[str]) -> None:
        target = self.callee(frame, call.func)
        if target is None:
            return
        owner, fn, bound = target
        receiver = call.func.value if isinstance(call.func, ast.Attribute) else None
        passed = bound_parameters(fn, call, carried, bound)
        if bound and isinstance(call.func, ast.Attribute) and _mentions(receiver, carried):
            passed.add(fn.args.args[0].arg if fn.args.args else "self")
        if passed:
            module = self.index.modules[owner.module] if isinstance(owner, ClassInfo) else owner
            self.walk(module, owner if isinstance(owner, ClassInfo) else None, fn, passed)

    def callee(self, frame: Frame, func: ast.expr):
        """(module or class, function, bound) that ``func`` calls, or None."""
        if isinstance(func, ast.Name):
            found = self.index.resolve_name(frame.module, func.id)
        elif isinstance(func, ast.Attribute):
            found = self.attribute(frame, func)
        else:
            return None
        if isinstance(found, ClassInfo):
            hit = self.index.method(found, "__init__")
            return (hit[0], hit[1], True) if hit else None
        if isinstance(found, tuple):
            return found
        if isinstance(found, Function):
            return self.owner_module(found), found, False
        return None

    def attribute(self, frame: Frame, func: ast.Attribute):
        value = func.value
        if isinstance(value, ast.Name) and value.id not in frame.types:
            owner = self.index.resolve_name(frame.module, value.id)
            if isinstance(owner, ModuleInfo):
                return self.index.resolve_name(owner, func.attr)
        cls = self.expression_class(frame, value)
        hit = self.index.method(cls, func.attr) if cls else None
        return (hit[0], hit[1], True) if hit else None

    def expression_class(self, frame: Frame, node: ast.expr) -> ClassInfo | None:
        if isinstance(node, ast.Name):
            return frame.types.get(node.id)
        if isinstance(node, ast.Attribute):
            owner = self.expression_class(frame, node.value)
            return self.index.attribute_class(owner, node.attr) if owner else None
        return None

    def owner_module(self, fn: Function) -> ModuleInfo:
        return next(m for m in self.index.modules.values() if fn in m.functions.values())

    def local_types(self, module: ModuleInfo, cls: ClassInfo | None, fn: Function):
        """Local names whose class is known: self, annotated parameters, constructed objects."""
        types = {}
        arguments = [*fn.args.posonlyargs, *fn.args.args, *fn.args.kwonlyargs]
        for arg in arguments:
            if (found := self.index.class_of(module, arg.annotation)) is not None:
                types[arg.arg] = found
        if cls is not None and arguments:
            types[arguments[0].arg] = cls
        for node in ast.walk(fn):
            value, targets = _assignments(node)
            if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                if (found := self.index.class_of(module, node.annotation)) is not None:
                    types[node.target.id] = found
            elif isinstance(value, ast.Call) and len(targets) == 1:
                made = self.made_by(module, value.func)
                if made is not None and isinstance(targets[0], ast.Name):
                    types[targets[0].id] = made
        return types

    def made_by(self, module: ModuleInfo, func: ast.expr) -> ClassInfo | None:
        """The class a call returns: the class called, or a function's return annotation."""
        found = self.index.resolve_name(module, func.id) if isinstance(func, ast.Name) else None
        if isinstance(found, ClassInfo):
            return found
        if isinstance(found, Function):
            return self.index.class_of(self.owner_module(found), found.returns)
        return None


def bound_parameters(fn: Function, call: ast.Call, carried: set[str], bound: bool) -> set[str]:
    """The callee's parameters that receive an argument mentioning a carried name."""
    positional = [*fn.args.posonlyargs, *fn.args.args][1 if bound else 0 :]
    passed = set()
    for place, argument in enumerate(call.args):
        if not _mentions(argument, carried):
            continue
        if isinstance(argument, ast.Starred):  # spread over every remaining parameter
            passed |= {arg.arg for arg in positional[place:]}
        elif place < len(positional):
            passed.add(positional[place].arg)
        elif fn.args.vararg is not None:
            passed.add(fn.args.vararg.arg)
    names = {arg.arg for arg in [*positional, *fn.args.kwonlyargs]}
    for keyword in call.keywords:
        if _mentions(keyword.value, carried):
            if keyword.arg in names:
                passed.add(keyword.arg)
            elif fn.args.kwarg is not None:
                passed.add(fn.args.kwarg.arg)
    return passed


def trail(index: CodeIndex, path: Path, function: str, parameter: str) -> Trail:
    module = index.module_of_file(path)
    if module is None:
        raise SystemExit(f"params_trail: error: {path} is not a module of {index.src}/pipeline")
    cls_name, _, name = function.rpartition(".")
    cls = module.classes.get(cls_name) if cls_name else None
    fn = cls.methods.get(name) if cls else module.functions.get(name)
    if fn is None:
        raise SystemExit(f"params_trail: error: no function {function!r} in {path}")
    arguments = {a.arg for a in [*fn.args.posonlyargs, *fn.args.args, *fn.args.kwonlyargs]}
    if parameter not in arguments:
        raise SystemExit(f"params_trail: error: {function} has no parameter {parameter!r}")
    walker = Walker(index)
    walker.walk(module, cls, fn, {parameter})
    stops: list[Stop] = []
    for module_name, qualified in walker.events:
        if not stops or stops[-1].module != module_name:
            stops.append(Stop(module_name))
        stops[-1].functions.append(qualified)
    return Trail(stops)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.tools.params_trail")
    parser.add_argument(
        "start", help="FILE:FUNCTION:PARAM, e.g. src/pipeline/train/run.py:run_training:params"
    )
    parser.add_argument(
        "--src", type=Path, default=Path("src"), help="the folder holding pipeline/"
    )
    args = parser.parse_args(argv)
    try:
        file, function, parameter = args.start.rsplit(":", 2)
    except ValueError:
        parser.error(f"{args.start!r}: expected FILE:FUNCTION:PARAM")
    if not Path(file).is_file():
        parser.error(f"{file!r}: no such file")
    found = trail(CodeIndex(args.src), Path(file), function, parameter)
    print(f"`{parameter}` from {file}:{function}, through the calls that pass it on:")
    print("\n".join(found.lines()))
    print(found.summary())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
