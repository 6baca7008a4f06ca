"""Each point of a sweep checked on the driver as its worker would meet it: params.yaml with
the point's ``-S`` applied as ``dvc exp run -S`` applies them, then the pipeline's schema, so a
point that would fail on every worker, or repeat another's params, stops the sweep in one line."""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.cluster.messages import SweepError, reason, shown
from pipeline.core.config import ParamsError, parse_params, parse_yaml
from pipeline.core.reading import open_regular

DEFAULT_PARAMS_FILE = "params.yaml"


@dataclass(frozen=True)
class Experiment:
    """One point of the grid: its unique name and its ``-S`` values, as DVC takes them."""

    index: int
    name: str
    set_params: tuple[str, ...]


def _baseline(repo: Path) -> dict | None:
    """``repo``'s params.yaml as a mapping; None where there is none to check points against."""
    import yaml

    try:
        with open_regular(repo / DEFAULT_PARAMS_FILE) as handle:
            raw = parse_yaml(handle.read().decode("utf-8"))
    except (OSError, ValueError, yaml.YAMLError):  # the workers report what they make of it
        return None
    return raw if isinstance(raw, dict) else None


def _applier(baseline: dict) -> Callable[[list[str]], Any]:
    """DVC's ``apply_overrides`` (what ``dvc exp run -S`` does to params.yaml on each worker),
    its same Hydra and OmegaConf calls on a copy of the baseline's mapping instead of the file."""
    from dvc.utils.collections import to_omegaconf
    from dvc.utils.hydra import to_hydra_overrides
    from hydra._internal.config_loader_impl import ConfigLoaderImpl
    from omegaconf import OmegaConf

    try:
        config = OmegaConf.create(to_omegaconf(baseline), flags={"allow_objects": True})
    except Exception as error:  # OmegaConf's (a null key): dvc exp run -S fails on it alike
        raise SweepError(
            f"{DEFAULT_PARAMS_FILE}: DVC cannot set -S in it ({reason(error)})"
        ) from None
    OmegaConf.set_struct(config, True)  # as DVC: a key params.yaml lacks needs +key=...

    def apply(overrides: list[str]) -> Any:
        point = copy.deepcopy(config)  # half the time of creating it again
        ConfigLoaderImpl._apply_overrides_to_config(to_hydra_overrides(overrides), point)
        return OmegaConf.to_object(point)

    return apply


def _schema_applies(baseline: dict) -> bool:
    """Whether params.yaml is this pipeline's: another project's (the tests' one-stage project)
    is checked by DVC's rules only."""
    try:
        parse_params(baseline)
    except ParamsError:
        return False
    return True


def _params_of(experiment: Experiment, overrides: list[str], apply, schema: bool) -> str:
    """The point's params.yaml as its stages would read it, for spotting a repeat."""
    try:
        params = apply(overrides)
    except Exception as error:  # Hydra's and OmegaConf's: dvc exp run fails on them alike
        raise SweepError(f"{_point(experiment)}: {reason(error)}") from None
    if not schema:
        return repr(params)
    try:
        return repr(parse_params(params, source=DEFAULT_PARAMS_FILE))
    except ParamsError as error:  # its message is one line, its values already cut short
        raise SweepError(f"{_point(experiment)}: {error}") from None


def _point(experiment: Experiment) -> str:
    return f"-S {' '.join(map(shown, experiment.set_params))} ({experiment.name})"


def check_points(experiments: list[Experiment], points: list[dict], repo: Path) -> None:
    """Refuse the first point that would fail on every worker, or that repeats another."""
    touched = any(point.get(DEFAULT_PARAMS_FILE) for point in points)
    baseline = _baseline(repo) if touched else None  # untouched, DVC leaves params.yaml be
    apply = _applier(baseline) if baseline is not None else None
    schema = baseline is not None and _schema_applies(baseline)
    seen: dict[tuple[str, str], str] = {}
    for experiment, point in zip(experiments, points, strict=True):
        own = point.get(DEFAULT_PARAMS_FILE, [])
        params = repr(sorted(own)) if apply is None else _params_of(experiment, own, apply, schema)
        others = repr(
            {path: sorted(o) for path, o in sorted(point.items()) if path != DEFAULT_PARAMS_FILE}
        )
        key = (params, others)
        if key in seen:
            raise SweepError(
                f"{_point(experiment)} gives the same params as {seen[key]}: drop the repeat"
            )
        seen[key] = experiment.name
