"""The ``-S`` grid in DVC's grammar: ``-S train.lr=0.001,0.01 -S train.batch_size=64,128`` is 4.

DVC expands a sweep for ``dvc exp run --queue`` with Hydra's override parser (``a,b``,
``range(...)``, ``choice(...)``; ``file.yaml:key=...`` for another params file); this calls the
same functions, so a grid means here what it means to ``dvc exp run --queue``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from pipeline.core.errors import PipelineError, first_line

DEFAULT_PARAMS_FILE = "params.yaml"
# What git accepts in one ref component, kept simple: no slashes, spaces or '..'.
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
MAX_EXPERIMENTS = 10_000


class SweepError(PipelineError):
    """A sweep that cannot start: the message names the bad value or the fix."""


@dataclass(frozen=True)
class Experiment:
    """One point of the grid: its unique name and its ``-S`` values, as DVC takes them."""

    index: int
    name: str
    set_params: tuple[str, ...]


def check_name(name: str) -> str:
    if not _NAME.match(name) or ".." in name or name.endswith((".", ".lock")):
        raise SweepError(
            f"--name '{name}': use letters, digits, '_', '-' and '.' (a git ref component)"
        )
    return name


def _as_set_param(path: str, override: str) -> str:
    return override if path == DEFAULT_PARAMS_FILE else f"{path}:{override}"


def expand(set_params: Sequence[str], sweep_name: str) -> list[Experiment]:
    """Every combination of the ``-S`` values, named ``<sweep_name>-<i>`` (i from 1)."""
    from dvc.utils.cli_parse import to_path_overrides
    from dvc.utils.hydra import get_hydra_sweeps

    check_name(sweep_name)
    for value in set_params:
        if "=" not in value and "~" not in value:  # ~key deletes a key (Hydra)
            raise SweepError(f"-S '{value}': expected key=value (e.g. train.lr=0.001,0.01)")
    try:
        points = get_hydra_sweeps(to_path_overrides(set_params)) if set_params else [{}]
    except Exception as error:  # hydra's OverrideParseException, DVC's InvalidArgumentError
        raise SweepError(f"-S {' '.join(set_params)}: {first_line(error)}") from None
    if len(points) > MAX_EXPERIMENTS:
        raise SweepError(f"-S gives {len(points)} experiments, over {MAX_EXPERIMENTS}")
    return [
        Experiment(
            index,
            f"{sweep_name}-{index}",
            tuple(_as_set_param(path, o) for path, overrides in point.items() for o in overrides),
        )
        for index, point in enumerate(points, start=1)
    ]
