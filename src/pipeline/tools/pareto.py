"""pipeline-pareto: which experiments buy their accuracy with the least energy, or time.

Reads ``dvc exp show --json`` (from ``--json FILE``, or by running it). Its DVC 3.x shape, as
dvc 3.67 writes it::

    [{"rev": "workspace", "name": null, "data": DATA, "experiments": null},
     {"rev": "<sha>", "name": "main", "data": DATA,          # a baseline commit
      "experiments": [{"name": "bf16", "executor": null | {"state": "queued" | "running" |
                                                             "failed" | ...},
                       "revs": [{"rev": "<sha>", "name": "bf16", "data": DATA}]}]}]
    DATA = {"params": {"params.yaml": {"data": {...}}},
            "metrics": {"metrics/eval.json": {"data": {...}} | {"error": {...}}}, ...}

Test accuracy is ``accuracy`` in the eval metrics, energy ``energy.joules_per_image`` in the
train metrics (flat, or nested as :meth:`pipeline.energy.EnergyReading.to_dict` writes it), time
``wall_seconds`` there too (both cover the whole run: every process of a resumed one), and the
precision and device that ran ``policy.precision`` and ``policy.device`` (the params may say
``auto``). A run without an energy figure is listed as
"energy unavailable" and kept off the energy front: it is never given a number.

Only runs that finished with results of their own compete (:func:`select_runs`): queued,
running and failed experiments (``dvc exp show`` gives a failed one the figures of the workspace
it started from), a workspace that repeats an experiment or holds another run's figures under
changed params, runs without accuracy, and runs whose training rate was noisy are left out, and
the report says which and why.

Energy figures differ in what they cover (``energy.method``): NVML reads the GPU board, RAPL the
CPU package (other processes included), an estimate is CPU time times a rated power. A GPU
board's joules and a CPU package's joules are not the same quantity, so each scope gets its own
energy front and its own least-energy pick: runs of different scopes are never ranked together.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pipeline.charts.pareto import ParetoPanel, ParetoPoint, write_pareto_chart
from pipeline.core import paths
from pipeline.core.reading import open_regular
from pipeline.core.records import dotted_get
from pipeline.energy.base import ENERGY_SCOPES

Kind = Literal["workspace", "baseline", "experiment"]
ALWAYS_SHOWN_PARAMS = ("train.batch_size",)
MAX_SPREAD = 0.25  # default --max-spread: per-epoch images/s spread that makes a run noisy
UNFINISHED = {"queued": "queued, not run yet", "running": "still running"}
FAILED = "failed: dvc exp show gives it the workspace's figures, not its own"
TARGET_PARAM = "train.target_accuracy"
UNKNOWN_SCOPE = "unknown scope"


@dataclass(frozen=True)
class Run:
    """One row of ``dvc exp show``: the workspace, a baseline commit or an experiment."""

    name: str
    rev: str
    kind: Kind
    state: str | None  # executor state (queued, running, failed...); None once finished
    params: dict[str, Any]  # flattened: {"train.precision": "bf16", ...}
    accuracy: float | None
    joules_per_image: float | None
    energy_method: str | None
    wall_seconds: float | None
    precision: str | None = None  # what ran (train metrics' policy), not the param's `auto`
    device: str | None = None
    spread: float | None = None  # per-epoch images/s spread after the first epoch

    @property
    def target_accuracy(self) -> float | None:
        return _number(self.params.get(TARGET_PARAM))

    @property
    def energy_scope(self) -> str | None:
        """What the energy figure covers (GPU board, CPU package, estimate); None without one."""
        if self.joules_per_image is None:
            return None
        # A resumed run's whole-run figure may join methods of one scope ("a+b").
        methods = (self.energy_method or "").split("+")
        scopes = {ENERGY_SCOPES.get(method, UNKNOWN_SCOPE) for method in methods}
        return scopes.pop() if len(scopes) == 1 else UNKNOWN_SCOPE


def energy_scopes(runs: Sequence[Run]) -> list[str]:
    """The scopes present among ``runs``, in ENERGY_SCOPES order (unknown last)."""
    present = {run.energy_scope for run in runs} - {None}
    order = [*dict.fromkeys(ENERGY_SCOPES.values()), UNKNOWN_SCOPE]
    return [scope for scope in order if scope in present]


# --- reading dvc exp show ---------------------------------------------------------------------


def run_exp_show(repo: Path | None = None) -> list[dict[str, Any]]:
    """``dvc exp show --json`` in ``repo``, run by this interpreter's DVC (no shell)."""
    command = [sys.executable, "-m", "dvc", "exp", "show", "--json"]
    done = subprocess.run(command, cwd=repo, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"dvc exp show failed ({done.returncode}): {done.stderr.strip()}")
    return json.loads(done.stdout)


def workspace_status(repo: Path | None = None) -> str | None:
    """Why the workspace's outputs do not belong to its params and code (``dvc status`` lists
    changed stages, e.g. after a failed `dvc exp run`); None when they are up to date."""
    command = [sys.executable, "-m", "dvc", "status", "--json"]
    done = subprocess.run(command, cwd=repo, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        return f"dvc status failed ({done.returncode}): figures not checked"
    changed = sorted(json.loads(done.stdout or "{}"))
    if not changed:
        return None
    return f"outputs out of date (dvc status: {', '.join(changed)}); a failed or unfinished run"


def runs_from_exp_show(
    document: Sequence[Mapping[str, Any]],
    eval_metrics: str = paths.EVAL_METRICS.as_posix(),
    train_metrics: str = paths.TRAIN_METRICS.as_posix(),
) -> list[Run]:
    """Every workspace, baseline and experiment entry of the document, in its order."""
    runs = []
    for entry in document:
        is_workspace = entry.get("rev") == "workspace"
        kind: Kind = "workspace" if is_workspace else "baseline"
        runs.append(_run(entry, kind, None, eval_metrics, train_metrics))
        for experiment in entry.get("experiments") or []:
            tip = (experiment.get("revs") or [{}])[0]  # DVC 3 keeps one rev per experiment
            state = (experiment.get("executor") or {}).get("state")
            named = {**tip, "name": experiment.get("name") or tip.get("name")}
            runs.append(_run(named, "experiment", state, eval_metrics, train_metrics))
    return runs


def _run(
    entry: Mapping[str, Any], kind: Kind, state: str | None, eval_path: str, train_path: str
) -> Run:
    data = entry.get("data") or {}
    metrics = data.get("metrics") or {}
    evaluation = _file_data(metrics, eval_path)
    training = _file_data(metrics, train_path)
    rev = str(entry.get("rev") or "")
    return Run(
        name=entry.get("name") or ("workspace" if kind == "workspace" else rev[:7]),
        rev=rev,
        kind=kind,
        state=state,
        params=_flat_params(data.get("params") or {}),
        accuracy=_number(_lookup(evaluation, "accuracy")),
        joules_per_image=_number(_lookup(training, "energy.joules_per_image")),
        energy_method=_text_or_none(_lookup(training, "energy.method")),
        wall_seconds=_number(_lookup(training, "wall_seconds")),
        precision=_text_or_none(_lookup(training, "policy.precision")),
        device=_text_or_none(_lookup(training, "policy.device")),
        spread=_number(_lookup(training, "steady_state_spread")),
    )


def _file_data(section: Mapping[str, Any], path: str) -> Mapping[str, Any]:
    """The ``data`` of one params/metrics file; {} when missing or when DVC reports an error."""
    return (section.get(path) or {}).get("data") or {}


def _flat_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """params.yaml keys as ``train.precision``; other params files as ``file:key``."""
    flat: dict[str, Any] = {}
    for file, content in params.items():
        prefix = "" if file == paths.PARAMS.as_posix() else f"{file}:"
        for key, value in _flatten((content or {}).get("data") or {}):
            flat[prefix + key] = value
    return flat


def _flatten(mapping: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for key, value in mapping.items():
        if isinstance(value, Mapping):
            yield from _flatten(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def _lookup(data: Mapping[str, Any], dotted: str) -> Any:
    """A flat ``a.b`` key if present, else the nested ``data[a][b]``; None when absent."""
    if dotted in data:
        return data[dotted]
    return dotted_get(data, dotted, missing=None)


def _number(value: Any) -> float | None:
    """Only real, finite numbers count: null, NaN, text and booleans are 'no figure'."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _text_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _figures(run: Run) -> tuple[Any, ...]:
    return (run.accuracy, run.joules_per_image, run.wall_seconds)


def workspace_problem(run: Run, runs: Sequence[Run]) -> str | None:
    """Why the workspace is not a run of its own: it repeats another run (after `dvc exp run`
    it holds the last experiment's params and metrics), or it holds another run's figures
    under other params (a `dvc exp run` that failed before writing its own)."""
    if run.kind != "workspace" or run.accuracy is None:
        return None
    for other in runs:
        if other.kind == "workspace" or _figures(other) != _figures(run):
            continue
        if other.params == run.params:
            return f"repeats {other.name}"
        return f"its figures are {other.name}'s but its params differ (stale after a failed run)"
    return None


def without_workspace_copy(runs: Sequence[Run]) -> list[Run]:
    """Drop the workspace when it only repeats another run; one with results of its own stays."""
    return [run for run in runs if workspace_problem(run, runs) is None]


def why_left_out(
    run: Run, runs: Sequence[Run], max_spread: float, workspace_status: str | None = None
) -> str | None:
    """Why ``run`` may not compete; None when it finished with figures of its own.
    ``workspace_status``: why the workspace's outputs are out of date, if they are."""
    if run.state in UNFINISHED:
        return UNFINISHED[run.state]
    if run.state == "failed":
        return FAILED
    if (problem := workspace_problem(run, runs)) is not None:
        return problem
    if run.kind == "workspace" and workspace_status:
        return workspace_status
    if run.accuracy is None:
        return "no accuracy (metrics/eval.json missing)"
    if run.spread is not None and run.spread > max_spread:
        return f"noisy: training images/s spread {run.spread:.0%} > {max_spread:.0%}"
    return None


def select_runs(
    runs: Sequence[Run], max_spread: float = MAX_SPREAD, workspace_status: str | None = None
) -> tuple[list[Run], list[tuple[Run, str]]]:
    """(runs that compete, [(run left out, why)])."""
    kept, left_out = [], []
    for run in runs:
        reason = why_left_out(run, runs, max_spread, workspace_status)
        if reason is None:
            kept.append(run)
        else:
            left_out.append((run, reason))
    return kept, left_out


# --- choosing ---------------------------------------------------------------------------------


def pareto_front(runs: Sequence[Run], cost: Callable[[Run], float | None]) -> list[Run]:
    """Runs no other run beats on both accuracy (higher) and cost (lower), cheapest first.

    Runs without accuracy or without a cost are not candidates; ties are all kept.
    """
    scored = [
        (run, run.accuracy, price)
        for run in runs
        if run.accuracy is not None and (price := cost(run)) is not None
    ]
    front = [
        (run, accuracy, price)
        for run, accuracy, price in scored
        if not any(_dominates(a, p, accuracy, price) for _, a, p in scored)
    ]
    return [run for run, _, _ in sorted(front, key=lambda item: item[2])]


def _dominates(accuracy: float, cost: float, other_accuracy: float, other_cost: float) -> bool:
    no_worse = accuracy >= other_accuracy and cost <= other_cost
    return no_worse and (accuracy > other_accuracy or cost < other_cost)


# pipeline-pareto --plot: one panel per cost, (axis title, the run's cost).
CHART_COSTS: dict[str, tuple[str, Callable[[Run], float | None]]] = {
    "energy": ("training energy, J/image (log scale)", lambda run: run.joules_per_image),
    "wall time": ("training wall time, s (log scale)", lambda run: run.wall_seconds),
}


def chart_panels(runs: Sequence[Run]) -> list[ParetoPanel]:
    """Each cost's points (runs with an accuracy and a positive cost) and its front; runs
    without one are counted, never drawn: the cost axis is logarithmic, where one run at 0 or
    below flattened every point of the panel onto the axis."""
    panels = []
    for name, (title, cost) in CHART_COSTS.items():
        priced = [run for run in runs if run.accuracy is not None and (cost(run) or 0) > 0]
        front = {id(run) for run in pareto_front(priced, cost)}
        points = [
            ParetoPoint(run.name, run.accuracy, cost(run), id(run) in front) for run in priced
        ]
        left_off = sum(1 for run in runs if run.accuracy is not None) - len(priced)
        panels.append(ParetoPanel(name, title, points, left_off))
    return panels


def least_energy_meeting_target(
    runs: Sequence[Run], target: float | None, scope: str | None = None
) -> Run | None:
    """The run with the fewest joules per image among those at or above their target.

    ``target`` (from --target) applies to every run; without it each run's own
    ``train.target_accuracy`` param does, and runs without one are not candidates. Only runs of
    one energy scope compete: ``scope``, or the runs' only scope (ValueError if they have several).
    """
    if scope is None:
        scopes = energy_scopes(runs)
        if len(scopes) > 1:
            raise ValueError(f"energy figures of different scopes ({', '.join(scopes)}): pick one")
        scope = scopes[0] if scopes else None
    candidates = [
        run
        for run in runs
        if run.joules_per_image is not None
        and run.energy_scope == scope
        and run.accuracy is not None
        and (goal := target if target is not None else run.target_accuracy) is not None
        and run.accuracy >= goal
    ]
    return min(candidates, key=lambda run: run.joules_per_image or 0.0, default=None)


# --- printing ---------------------------------------------------------------------------------


def shown_params(runs: Sequence[Run]) -> list[str]:
    """Precision and batch size, plus every other param that differs between runs."""
    keys = sorted({key for run in runs for key in run.params})
    varying = [k for k in keys if len({repr(run.params.get(k)) for run in runs}) > 1]
    return [*ALWAYS_SHOWN_PARAMS, *(k for k in varying if k not in ALWAYS_SHOWN_PARAMS)]


def format_table(
    runs: Sequence[Run], params: Sequence[str], marked: Sequence[Run] | Run | None = None
) -> str:
    marked = marked if isinstance(marked, Sequence) else [marked]
    header = ["", "name", "rev", *params, "precision", "device", "accuracy", "J/image"]
    header += ["energy scope", "energy method"]
    header.append("seconds")
    rows = [header] + [
        [
            "*" if any(run is mark for mark in marked) else "",
            run.name,
            run.rev[:7] if run.kind != "workspace" else "",
            *(_cell(run.params.get(key)) for key in params),
            _cell(run.precision),
            _cell(run.device),
            _cell(run.accuracy, ".4f"),
            _cell(run.joules_per_image, ".4g"),
            run.energy_scope or "-",
            run.energy_method or ("-" if run.joules_per_image is None else "?"),
            _cell(run.wall_seconds, ".4g"),
        ]
        for run in runs
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows
    )


def _cell(value: Any, spec: str = "") -> str:
    if value is None:
        return "-"
    return format(value, spec) if spec else str(value)


def report(
    runs: Sequence[Run], target: float | None, left_out: Sequence[tuple[Run, str]] = ()
) -> str:
    """The fronts (one per energy scope, and time), the runs left off them, and per scope the
    least-energy run meeting the target. ``runs`` compete; ``left_out`` are listed with why."""
    params = shown_params(runs)
    scopes = energy_scopes(runs)
    best = {scope: least_energy_meeting_target(runs, target, scope) for scope in scopes}
    marked = [run for run in best.values() if run is not None]
    lines = []
    for scope in scopes:
        in_scope = [run for run in runs if run.energy_scope == scope]
        lines += [
            f"Pareto front: accuracy (max) vs energy per image (min), {scope} energy",
            format_table(pareto_front(in_scope, lambda run: run.joules_per_image), params, marked),
            "",
        ]
    lines += [
        "Pareto front: accuracy (max) vs wall seconds (min)",
        format_table(pareto_front(runs, lambda run: run.wall_seconds), params, marked),
    ]
    no_energy = [run for run in runs if run.accuracy is not None and run.joules_per_image is None]
    if no_energy:
        lines += ["", "Energy unavailable (kept off the energy front):"]
        lines.append(format_table(no_energy, params))
    if left_out:
        lines += ["", "Left out:"]
        lines += [f"- {_label(run)}: {why}" for run, why in left_out]
    lines.append("")
    if not runs:
        lines.append("* no run competes: every one was left out (see above)")
        return "\n".join(lines)
    lines += [_target_line(best[scope], target, scope) for scope in scopes] or [
        _target_line(None, target, None)
    ]
    return "\n".join(lines)


def _label(run: Run) -> str:
    return run.name if run.kind == "workspace" else f"{run.name} {run.rev[:7]}"


def _target_line(best: Run | None, target: float | None, scope: str | None) -> str:
    source = f"--target {target:g}" if target is not None else TARGET_PARAM
    if best is None:
        figure = f"a figure of {scope} energy" if scope else "an energy figure"
        return f"* no run that meets its target accuracy ({source}) has {figure}"
    return (
        f"* least energy meeting the target ({source}): {best.name} "
        f"({best.joules_per_image:.4g} J/image of {scope} energy, accuracy {best.accuracy:.4f})"
    )


def read_saved_exp_show(parser: argparse.ArgumentParser, path: Path) -> list[Any]:
    """The saved ``dvc exp show --json`` document; a one-line usage error when it cannot be
    read or is not that JSON list, instead of a traceback."""
    try:
        # open_regular: a folder or device is refused, and a named pipe cannot hang the read.
        with open_regular(path) as handle:
            document = json.loads(handle.read().decode("utf-8"))
    except OSError as error:
        parser.error(f"--json cannot read '{path}': {error.strerror or error}")
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        parser.error(f"--json '{path}' is not JSON: {error}")
    # runs_from_exp_show walks a list of objects: anything else would fail deep inside it.
    if not isinstance(document, list) or not all(isinstance(e, dict) for e in document):
        parser.error(f"--json '{path}' is not `dvc exp show --json` output (a list of objects)")
    return document


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pipeline-pareto", description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="saved `dvc exp show --json` output")
    parser.add_argument("--repo", type=Path, help="run `dvc exp show` in this folder")
    parser.add_argument("--target", type=float, help=f"accuracy goal (default: {TARGET_PARAM})")
    parser.add_argument("--plot", type=Path, help="also draw the fronts into this .svg or .png")
    parser.add_argument(
        "--max-spread",
        type=float,
        default=MAX_SPREAD,
        help="leave out runs whose per-epoch training images/s spread exceeds this "
        f"(default {MAX_SPREAD})",
    )
    args = parser.parse_args(argv)
    if args.plot is not None and args.plot.suffix.lower() not in (".svg", ".png"):
        parser.error(f"--plot must end in .svg or .png: '{args.plot}'")
    if not 0 < args.max_spread < math.inf:
        parser.error(f"--max-spread must be a positive number: '{args.max_spread}'")
    status = None  # a saved document has no workspace to ask
    if args.json is not None:
        document = read_saved_exp_show(parser, args.json)
    else:
        # subprocess's cwd would raise FileNotFoundError/NotADirectoryError with a traceback.
        if args.repo is not None and not args.repo.is_dir():
            parser.error(f"--repo is not a folder: '{args.repo}'")
        document = run_exp_show(args.repo)
        status = workspace_status(args.repo)
    runs, left_out = select_runs(runs_from_exp_show(document), args.max_spread, status)
    print(report(runs, args.target, left_out))
    # After the report is printed: a chart that cannot be drawn says why and costs nothing else.
    if args.plot is not None and write_pareto_chart(args.plot, chart_panels(runs)) is None:
        print(f"\nchart: {args.plot}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
