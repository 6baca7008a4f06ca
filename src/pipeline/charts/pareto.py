"""pipeline-pareto's chart: accuracy against J/image and against wall seconds, every run a grey
point, the Pareto front joined and named. Runs without a figure are left off that panel (and
counted in its subtitle), never drawn at zero."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pipeline.charts.render import message_chart, write_chart
from pipeline.sweep import Run, pareto_front

TITLE = "Experiments: accuracy against cost"
COSTS: dict[str, tuple[str, Callable[[Run], float | None]]] = {
    "energy": ("training energy, J/image (log scale)", lambda run: run.joules_per_image),
    "wall time": ("training wall time, s (log scale)", lambda run: run.wall_seconds),
}
PLACE = {"field": "place", "type": "nominal", "title": None}
PLACE_SCALE = {"domain": ["Pareto front", "other run"], "range": ["#d62728", "#9e9e9e"]}


def _points(runs: Sequence[Run], cost: Callable[[Run], float | None]) -> list[dict[str, Any]]:
    front = {id(run) for run in pareto_front(runs, cost)}
    return [
        {
            "name": run.name,
            "accuracy": run.accuracy,
            "cost": cost(run),
            "place": "Pareto front" if id(run) in front else "other run",
        }
        for run in runs
        if run.accuracy is not None and cost(run) is not None
    ]


def _panel(runs: Sequence[Run], name: str) -> dict[str, Any]:
    title, cost = COSTS[name]
    points = _points(runs, cost)
    left_off = sum(1 for run in runs if run.accuracy is not None and cost(run) is None)
    x = {"field": "cost", "type": "quantitative", "title": title, "scale": {"type": "log"}}
    y = {"field": "accuracy", "type": "quantitative", "title": "test accuracy"}
    y |= {"scale": {"zero": False, "padding": 12}, "axis": {"format": ".2%"}}
    on_front = {"filter": "datum.place === 'Pareto front'"}
    return {
        "title": {
            "text": f"against {name}",
            "subtitle": f"{left_off} run(s) with no {name} figure not shown" if left_off else "",
        },
        "width": 340,
        "height": 260,
        "data": {"values": points},
        "encoding": {"x": x, "y": y},
        "layer": [
            {
                "transform": [on_front],
                "mark": {"type": "line", "color": PLACE_SCALE["range"][0]},
                "encoding": {"order": {"field": "cost"}},
            },
            {
                "mark": {"type": "point", "filled": True, "size": 90},
                "encoding": {"color": PLACE | {"scale": PLACE_SCALE}},
            },
            {
                "transform": [on_front],
                "mark": {"type": "text", "align": "left", "dx": 7, "dy": -8, "fontSize": 11},
                "encoding": {"text": {"field": "name"}},
            },
        ],
    }


def pareto_chart(runs: Sequence[Run]) -> dict[str, Any]:
    if not any(run.accuracy is not None for run in runs):
        return message_chart(TITLE, "no run has an accuracy yet: nothing to plot")
    return {
        "$schema": "https://vega.github.io/schema/vega-lite/v5.json",
        "title": {"text": TITLE, "anchor": "start"},
        "hconcat": [_panel(runs, name) for name in COSTS],
    }


def write_pareto_chart(path: str | Path, runs: Sequence[Run]) -> None:
    write_chart(path, pareto_chart(runs))
