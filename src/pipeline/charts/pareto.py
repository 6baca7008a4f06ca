"""pipeline-pareto's chart: accuracy against J/image and against wall seconds, every run a grey
point, the Pareto front joined and named. Runs without a figure are left off that panel (and
counted in its subtitle), never drawn at zero. It draws what pipeline-pareto hands it: which run
is on a front is decided there (pipeline.tools.pareto), not here."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.charts.render import draw_chart, message_chart

TITLE = "Experiments: accuracy against cost"
PLACE = {"field": "place", "type": "nominal", "title": None}
PLACE_SCALE = {"domain": ["Pareto front", "other run"], "range": ["#d62728", "#9e9e9e"]}


@dataclass(frozen=True)
class ParetoPoint:
    name: str
    accuracy: float
    cost: float
    on_front: bool


@dataclass(frozen=True)
class ParetoPanel:
    """One cost axis: the runs with a figure for it, and how many runs had none (not drawn)."""

    name: str  # "energy" | "wall time"
    axis_title: str
    points: Sequence[ParetoPoint]
    left_off: int


def _points(panel: ParetoPanel) -> list[dict[str, Any]]:
    return [
        {
            "name": point.name,
            "accuracy": point.accuracy,
            "cost": point.cost,
            "place": "Pareto front" if point.on_front else "other run",
        }
        for point in panel.points
    ]


def _panel(panel: ParetoPanel) -> dict[str, Any]:
    name, left_off = panel.name, panel.left_off
    x = {"field": "cost", "type": "quantitative", "title": panel.axis_title}
    x["scale"] = {"type": "log"}
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
        "data": {"values": _points(panel)},
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


def pareto_chart(panels: Sequence[ParetoPanel]) -> dict[str, Any]:
    # Every run with an accuracy is a point or left off in each panel.
    if not any(panel.points or panel.left_off for panel in panels):
        return message_chart(TITLE, "no run has an accuracy yet: nothing to plot")
    return {
        "$schema": "https://vega.github.io/schema/vega-lite/v5.json",
        "title": {"text": TITLE, "anchor": "start"},
        "hconcat": [_panel(panel) for panel in panels],
    }


def write_pareto_chart(path: str | Path, panels: Sequence[ParetoPanel]) -> str | None:
    """Draw the chart (or a placeholder saying why not); returns that reason, or None."""
    return draw_chart(path, pareto_chart(panels), "pipeline-pareto")
