"""The ``-S`` grid in DVC's grammar: ``-S train.lr=0.001,0.01 -S train.batch_size=64,128`` is 4.

DVC expands a sweep for ``dvc exp run --queue`` with Hydra's override parser (``a,b``,
``range(...)``, ``choice(...)``; ``file.yaml:key=...`` for another params file); this calls the
same functions, so a grid means here what it means to ``dvc exp run --queue``.

What would fail on every worker is refused here, in one line, before anything starts: a grid of
over MAX_EXPERIMENTS (counted before any list is built: ``range(0,1e300)`` is a number, not a
list), an empty or repeated key, and (cluster/points.py) two points with the same params and a
point whose params.yaml DVC could not write or the pipeline's schema would refuse.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from decimal import Decimal
from fractions import Fraction
from pathlib import Path
from typing import Any

from pipeline.cluster.messages import SweepError, quoted, reason, shown
from pipeline.cluster.points import DEFAULT_PARAMS_FILE, Experiment, check_points

# What git accepts in one ref component, kept simple: no slashes, spaces or '..'.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")
MAX_EXPERIMENTS = 10_000

__all__ = ["MAX_EXPERIMENTS", "Experiment", "SweepError", "check_name", "expand"]


def check_name(name: str) -> str:
    if not _NAME.fullmatch(name) or ".." in name or name.endswith((".", ".lock")):
        raise SweepError(
            f"--name {quoted(name)}: use letters, digits, '_', '-' and '.' (a git ref component)"
        )
    return name


def _as_set_param(path: str, override: str) -> str:
    return override if path == DEFAULT_PARAMS_FILE else f"{path}:{override}"


def _parse(path: str, override: str) -> Any:
    """One ``-S`` value as Hydra parses it (an Override), or a one-line SweepError."""
    from dvc.utils.hydra import to_hydra_overrides

    typed = _as_set_param(path, override)
    try:
        parsed = to_hydra_overrides([override])[0]
    except Exception as error:  # hydra's OverrideParseException, and what its grammar raises
        raise SweepError(f"-S {shown(typed)}: {reason(error)}") from None
    if not path or not parsed.key_or_group:
        raise SweepError(f"-S {quoted(typed)}: empty key (expected key=value, e.g. train.lr=1)")
    return parsed


def _parsed(set_params: Sequence[str]) -> dict[tuple[str, str], tuple[str, Any]]:
    """Each ``-S`` by (params file, key): the value as typed and Hydra's Override of it."""
    from dvc.utils.cli_parse import to_path_overrides

    for value in set_params:
        if "=" not in value and "~" not in value:  # ~key deletes a key (Hydra)
            raise SweepError(f"-S {quoted(value)}: expected key=value (e.g. train.lr=0.001,0.01)")
    parsed: dict[tuple[str, str], tuple[str, Any]] = {}
    for path, overrides in to_path_overrides(set_params).items():
        for override in overrides:
            typed, value = _as_set_param(path, override), _parse(path, override)
            earlier = parsed.get((path, value.key_or_group))
            if earlier is not None:  # Hydra would keep only the last, silently
                raise SweepError(
                    f"-S {quoted(typed)}: {value.key_or_group} is already set by "
                    f"-S {quoted(earlier[0])} (one -S per key; a,b sweeps it)"
                )
            parsed[(path, value.key_or_group)] = (typed, value)
    return parsed


def _range_length(start: Any, stop: Any, step: Any) -> int:
    """The values of Hydra's ``range(start, stop, step)``, counted without listing them."""
    bounds = (start, stop, step)
    if any(isinstance(x, float) and not math.isfinite(x) for x in bounds) or step == 0:
        raise ValueError("range() needs finite numbers and a step other than 0")
    # Hydra steps from start while short of stop (floats in Decimal): the exact quotient's ceiling.
    return max(0, math.ceil((Fraction(stop) - Fraction(start)) / Fraction(step)))


def _count(typed: str, override: Any) -> int:
    """How many values one ``-S`` gives: a choice's listed values, a range's computed length."""
    from hydra.core.override_parser.types import ChoiceSweep, RangeSweep

    value = override.value()
    if isinstance(value, ChoiceSweep):
        return len(value.list)
    if isinstance(value, RangeSweep):
        try:
            return _range_length(value.start, value.stop, value.step)
        except ValueError as error:
            raise SweepError(f"-S {shown(typed)}: {error}") from None
    return 1  # one value (interval and glob sweeps are refused by Hydra and DVC later)


def _size_text(count: int) -> str:
    return f"{count:,}" if count < 10**15 else f"{Decimal(count):.2e}"


def _check_size(parsed: dict[tuple[str, str], tuple[str, Any]]) -> None:
    """Refuse a grid of no points or of over MAX_EXPERIMENTS before Hydra lists one."""
    counts = {typed: _count(typed, override) for typed, override in parsed.values()}
    for typed, count in counts.items():
        if count == 0:
            raise SweepError(f"-S {shown(typed)}: gives no values")
    total = math.prod(counts.values())
    if total > MAX_EXPERIMENTS:
        widest = max(counts, key=counts.__getitem__)
        raise SweepError(
            f"-S gives {_size_text(total)} experiments, over {MAX_EXPERIMENTS:,} "
            f"(-S {shown(widest)} alone gives {_size_text(counts[widest])})"
        )


def _points(set_params: Sequence[str]) -> list[dict[str, list[str]]]:
    """DVC's own expansion: each point's overrides by params file."""
    from dvc.utils.cli_parse import to_path_overrides
    from dvc.utils.hydra import get_hydra_sweeps

    try:
        points = get_hydra_sweeps(to_path_overrides(set_params)) if set_params else [{}]
    except Exception as error:  # hydra's OverrideParseException, DVC's InvalidArgumentError
        raise SweepError(f"-S {' '.join(map(shown, set_params))}: {reason(error)}") from None
    # A float range's Decimal steps can round to one value more than counted: checked again.
    if len(points) > MAX_EXPERIMENTS:
        raise SweepError(f"-S gives {len(points):,} experiments, over {MAX_EXPERIMENTS:,}")
    return points


def expand(
    set_params: Sequence[str], sweep_name: str, repo: Path | None = None
) -> list[Experiment]:
    """Every combination of the ``-S`` values, named ``<sweep_name>-<i>`` (i from 1).

    Each point is checked against ``repo``'s params.yaml (default: the current folder, as
    ``--repo`` defaults to it); without a readable one only the grid itself is checked.
    """
    check_name(sweep_name)
    _check_size(_parsed(set_params))
    points = _points(set_params)
    experiments = [
        Experiment(
            index,
            f"{sweep_name}-{index}",
            tuple(_as_set_param(path, o) for path, overrides in point.items() for o in overrides),
        )
        for index, point in enumerate(points, start=1)
    ]
    check_points(experiments, points, Path.cwd() if repo is None else repo)
    return experiments
