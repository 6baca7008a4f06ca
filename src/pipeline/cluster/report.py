"""Progress lines while a sweep runs and the summary table at its end."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence

from pipeline.cluster.grid import Experiment
from pipeline.cluster.task import Result


def progress_line(
    experiments: Sequence[Experiment],
    results: Mapping[str, Result],
    started: Mapping[str, tuple[str, str]],
    elapsed_s: float,
) -> str:
    """``[12s] 1 done, 2 running, 0 failed, 1 queued | node-a: 1 running, 1 done | ...``"""
    states: Counter[str] = Counter()
    per_node: dict[str, Counter[str]] = {}
    for experiment in experiments:
        result = results.get(experiment.name)
        node = result.node if result else started.get(experiment.name, ("", ""))[0]
        if result is not None:
            state = "done" if result.status == "success" else result.status
        else:
            state = "running" if experiment.name in started else "queued"
        states[state] += 1
        if node:
            per_node.setdefault(node, Counter())[state] += 1
    order = ("done", "running", "failed", "cancelled", "queued")
    head = ", ".join(f"{states[s]} {s}" for s in order if states[s] or s != "cancelled")
    nodes = " | ".join(
        f"{node}: " + ", ".join(f"{count} {s}" for s in order if (count := counts[s]))
        for node, counts in sorted(per_node.items())
    )
    return f"[{elapsed_s:.0f}s] {head}" + (f" | {nodes}" if nodes else "")


def summary_table(experiments: Sequence[Experiment], results: Mapping[str, Result]) -> str:
    """One row per experiment: name, status, node, GPU, wall time, its -S values, error."""
    header = ("experiment", "status", "node", "GPU", "wall s", "params", "error")
    rows = [header]
    for experiment in experiments:
        result = results.get(experiment.name) or Result(experiment.name, "not run")
        rows.append(
            (
                experiment.name,
                result.status,
                result.node or "-",
                result.gpus or "-",
                f"{result.wall_s:.1f}" if result.wall_s else "-",
                " ".join(experiment.set_params) or "-",
                result.error or "",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header) - 1)]
    lines = []
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        lines.append("  ".join([*cells, row[-1]]).rstrip())
    return "\n".join(lines)
