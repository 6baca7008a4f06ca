"""Follow one parameter through the calls that pass it on, and count the trip.

    python -m pipeline.tools.params_trail src/pipeline/train/run.py:run_training:params

How far a reader travels to see what a value does: the files a parameter passes through, in
the order the calls are written, and how often the trail climbs back up a layer.

- Inside a function the parameter is carried by its own name and by every local name assigned
  from an expression that mentions a carried name (``setup = build_setup(params, ...)``; a
  name, tuple or starred target: ``self.x = params`` or ``d[k] = params`` carries no name).
- A call passes it on when an argument, or the object a method is called on, mentions a carried
  name; the trail enters the callee (at its first such call only: a function is read once)
  carrying the parameters those arguments may bind to (``self`` for the object; after a
  ``*spread`` any later parameter; with ``**mapping`` every keyword one).
- Calls are taken in the order they are written, depth first: an outer call before the calls
  in its arguments, and the calls inside a nested function or lambda where they are written. A
  function passed by name (a callback) is not followed, nor is anything pipeline.tools.code_index
  cannot resolve; a method called on ``self`` is looked up from the receiver's class, so an
  override wins.
- A *stop* is a run of consecutive functions entered in one file; a *climb* is a stop in a
  higher layer (pipeline.tools.layers) than the stop before it.

Standard library only: a tool that reads source text has no reason to import torch.
"""

from __future__ import annotations

import argparse
import ast
from dataclasses import dataclass, field, replace
from itertools import pairwise
from pathlib import Path

from pipeline.tools.code_index import (
    ClassInfo,
    CodeIndex,
    Function,
    ModuleInfo,
    SourceError,
    decorated,
)
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
    def climbed(self) -> list[bool]:
        """For each stop: whether it is in a higher layer than the stop before it."""
        return [False] + [after.rank > before.rank for before, after in pairwise(self.stops)]

    @property
    def climbs(self) -> int:
        return sum(self.climbed)

    @property
    def files(self) -> int:
        return len({stop.module for stop in self.stops})

    def lines(self) -> list[str]:
        rows = []
        for number, (stop, climbed) in enumerate(zip(self.stops, self.climbed, strict=True), 1):
            up = "  ^ climbs back up" if climbed else ""
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


def _target_names(target: ast.AST) -> set[str]:
    """The local names an assignment target binds (not ``obj.attr`` nor ``d[key]``)."""
    if isinstance(target, ast.Name):
        return {target.id}
    if isinstance(target, ast.Starred):
        return _target_names(target.value)
    if isinstance(target, ast.Tuple | ast.List):
        return set().union(*(_target_names(element) for element in target.elts))
    return set()


def carried_names(function: Function, start: set[str]) -> set[str]:
    """``start`` and every local name assigned from them, to a fixed point (order-blind)."""
    carried, changed = set(start), True
    while changed:
        changed = False
        for node in ast.walk(function):
            value, targets = _assignments(node)
            if not _mentions(value, carried):
                continue
            named = set().union(*(_target_names(target) for target in targets))
            if named - carried:
                carried |= named
                changed = True
    return carried


@dataclass(frozen=True)
class Callee:
    """A resolved call: the function, where its code is (module, defining class), the class of
    the object it runs on (for ``self``: a subclass may override what it calls), and whether
    the first parameter is that object."""

    function: Function
    module: ModuleInfo
    owner: ClassInfo | None = None
    receiver: ClassInfo | None = None
    bound: bool = False


@dataclass
class Frame:
    """A function being read: its callee record and its local names' known classes."""

    callee: Callee
    types: dict[str, ClassInfo]


class Walker:
    def __init__(self, index: CodeIndex) -> None:
        self.index = index
        self.entered: set[int] = set()  # id() of each function node read so far
        self.events: list[tuple[str, str]] = []  # (module, qualified name) in reading order

    def walk(self, callee: Callee, start: set[str]) -> None:
        fn = callee.function
        if id(fn) in self.entered:
            return
        self.entered.add(id(fn))
        label = f"{callee.owner.node.name}.{fn.name}" if callee.owner else fn.name
        self.events.append((callee.module.name, label))
        frame = Frame(callee, self.local_types(callee))
        carried = carried_names(fn, start)
        calls = [node for node in ast.walk(fn) if isinstance(node, ast.Call)]
        for call in sorted(calls, key=lambda node: (node.lineno, node.col_offset)):
            self.follow(frame, call, carried)

    def follow(self, frame: Frame, call: ast.Call, carried: set[str]) -> None:
        callee = self.callee(frame, call.func)
        if callee is None:
            return
        passed = bound_parameters(callee.function, call, carried, callee.bound)
        receiver = call.func.value if isinstance(call.func, ast.Attribute) else None
        if callee.bound and _mentions(receiver, carried) and callee.function.args.args:
            passed.add(callee.function.args.args[0].arg)
        if passed:
            self.walk(callee, passed)

    def callee(self, frame: Frame, func: ast.expr) -> Callee | None:
        if isinstance(func, ast.Name):
            return self.named_callee(self.index.resolve_name(frame.callee.module, func.id))
        if not isinstance(func, ast.Attribute):
            return None
        value = func.value
        if isinstance(value, ast.Call) and getattr(value.func, "id", None) == "super":
            owner = frame.callee.owner
            hit = self.index.method(owner, func.attr, bases_only=True) if owner else None
            return self.method_callee(hit, frame.callee.receiver)
        if isinstance(value, ast.Name) and value.id not in frame.types:
            named = self.index.resolve_name(frame.callee.module, value.id)
            if isinstance(named, ModuleInfo):
                return self.named_callee(self.index.resolve_name(named, func.attr))
            if isinstance(named, ClassInfo):  # Class.method(...): only a classmethod binds
                hit = self.index.method(named, func.attr)
                callee = self.method_callee(hit, named)
                return replace(callee, bound=decorated(hit[1], "classmethod")) if hit else None
        cls = self.expression_class(frame, value)
        return self.method_callee(self.index.method(cls, func.attr), cls) if cls else None

    def named_callee(self, found) -> Callee | None:
        """A module-level function, or a class called (its ``__init__``)."""
        if isinstance(found, ClassInfo):
            return self.method_callee(self.index.method(found, "__init__"), found)
        if isinstance(found, Function):
            return Callee(found, self.index.module_of_function(found))
        return None

    def method_callee(self, hit, receiver: ClassInfo | None) -> Callee | None:
        if hit is None:
            return None
        owner, fn = hit
        module = self.index.modules[owner.module]
        return Callee(fn, module, owner, receiver or owner, bound=not decorated(fn, "staticmethod"))

    def expression_class(self, frame: Frame, node: ast.expr) -> ClassInfo | None:
        if isinstance(node, ast.Name):
            return frame.types.get(node.id)
        if isinstance(node, ast.Attribute):
            owner = self.expression_class(frame, node.value)
            return self.index.attribute_class(owner, node.attr) if owner else None
        return None

    def local_types(self, callee: Callee) -> dict[str, ClassInfo]:
        """Local names whose class is known: self, annotated parameters, constructed objects."""
        fn, module, types = callee.function, callee.module, {}
        arguments = [*fn.args.posonlyargs, *fn.args.args, *fn.args.kwonlyargs]
        for arg in arguments:
            if (found := self.index.class_of(module, arg.annotation)) is not None:
                types[arg.arg] = found
        if callee.bound and callee.receiver is not None and arguments:
            types[arguments[0].arg] = callee.receiver
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
            return self.index.class_of(self.index.module_of_function(found), found.returns)
        return None


def bound_parameters(fn: Function, call: ast.Call, carried: set[str], bound: bool) -> set[str]:
    """The callee's parameters that may receive an argument mentioning a carried name."""
    positional = [*fn.args.posonlyargs, *fn.args.args][1 if bound else 0 :]
    spread_from = None  # after a *spread, a later argument may land on any later parameter
    passed = set()
    for place, argument in enumerate(call.args):
        if isinstance(argument, ast.Starred) and spread_from is None:
            spread_from = place
        if not _mentions(argument, carried):
            continue
        if spread_from is not None:
            passed |= {arg.arg for arg in positional[spread_from:]}
        elif place < len(positional):
            passed.add(positional[place].arg)
        if fn.args.vararg is not None and (spread_from is not None or place >= len(positional)):
            passed.add(fn.args.vararg.arg)
    keyword_names = [arg.arg for arg in [*positional, *fn.args.kwonlyargs]]
    for keyword in call.keywords:
        if not _mentions(keyword.value, carried):
            continue
        if keyword.arg is None:  # **mapping: any keyword parameter
            passed |= set(keyword_names)
        if keyword.arg in keyword_names:
            passed.add(keyword.arg)
        elif fn.args.kwarg is not None:
            passed.add(fn.args.kwarg.arg)
    return passed


def _start(index: CodeIndex, path: Path, function: str) -> Callee:
    module = index.module_of_file(path)
    if module is None:
        raise SystemExit(f"params_trail: error: {path} is not a module of {index.src}/pipeline")
    cls_name, _, name = function.rpartition(".")
    if not cls_name:
        fn = module.functions.get(name)
        return Callee(fn, module) if fn else _no_function(function, path)
    cls = module.classes.get(cls_name)
    if cls is None:
        raise SystemExit(f"params_trail: error: no class {cls_name!r} in {path}")
    fn = cls.methods.get(name)
    bound = fn is not None and not decorated(fn, "staticmethod")
    return Callee(fn, module, cls, cls, bound) if fn else _no_function(function, path)


def _no_function(function: str, path: Path):
    raise SystemExit(f"params_trail: error: no function {function!r} in {path}")


def trail(index: CodeIndex, path: Path, function: str, parameter: str) -> Trail:
    start = _start(index, path, function)
    args = start.function.args
    names = {a.arg for a in [*args.posonlyargs, *args.args, *args.kwonlyargs]}
    names |= {a.arg for a in (args.vararg, args.kwarg) if a is not None}
    if parameter not in names:
        raise SystemExit(f"params_trail: error: {function} has no parameter {parameter!r}")
    walker = Walker(index)
    walker.walk(start, {parameter})
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
    try:
        index = CodeIndex(args.src)
    except SourceError as error:
        raise SystemExit(f"params_trail: error: {error}") from None
    found = trail(index, Path(file), function, parameter)
    print(f"`{parameter}` from {file}:{function}, through the calls that pass it on:")
    print("\n".join(found.lines()))
    print(found.summary())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
