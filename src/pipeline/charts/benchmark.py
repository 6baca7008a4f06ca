"""The benchmark's chart: top-1 accuracy against images/s (and J/image where measured), one
point per backend x variant x batch size, so speed is never shown without its accuracy."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pipeline.charts.render import message_chart

if TYPE_CHECKING:
    from pipeline.bench.rows import BenchRow

TITLE = "Top-1 accuracy against inference speed"
ACCURACY_AXIS = {
    "field": "top1_accuracy",
    "type": "quantitative",
    "title": "top-1 accuracy (test split)",
    "scale": {"zero": False, "padding": 12},
    "axis": {"format": ".2%"},
}


def series(row: BenchRow) -> str:
    """Backend and variant, with fallbacks named as such (they never ran where asked)."""
    label = f"{row.backend} {row.variant}"
    return f"{label} (fallback)" if row.status == "fallback" else label


def plotted_points(rows: list[BenchRow]) -> list[dict[str, Any]]:
    """Rows that ran and have both a speed and an accuracy; a failed row has neither. An
    accuracy of 0 is drawn: it is the broken variant a reader must see."""
    return [
        {
            "series": series(row),
            "batch": row.batch_size,
            "images_per_s": row.images_per_s,
            "joules_per_image": row.joules_per_image,
            "top1_accuracy": row.top1_accuracy,
        }
        for row in rows
        if row.status != "failed" and row.images_per_s and row.top1_accuracy is not None
    ]


def _panel(field: str, title: str) -> dict[str, Any]:
    return {
        "width": 340,
        "height": 260,
        "transform": [{"filter": f"isValid(datum.{field}) && datum.{field} > 0"}],
        "mark": {"type": "point", "filled": True, "size": 110, "opacity": 0.85},
        "encoding": {
            "x": {
                "field": field,
                "type": "quantitative",
                "title": title,
                "scale": {"type": "log"},
            },
            "y": ACCURACY_AXIS,
            "color": {"field": "series", "type": "nominal", "title": "backend variant"},
            "shape": {"field": "batch", "type": "ordinal", "title": "batch size"},
        },
    }


def benchmark_chart(rows: list[BenchRow], subtitle: str) -> dict[str, Any]:
    """A Vega-Lite spec; the J/image panel only when some row has an energy figure."""
    points = plotted_points(rows)
    if not points:
        return message_chart(TITLE, "no row has both images/s and top-1 accuracy: nothing to plot")
    panels = [_panel("images_per_s", "images/s (p50 latency, log scale)")]
    methods = sorted({r.energy_method for r in rows if r.joules_per_image is not None})
    if methods:
        panels.append(_panel("joules_per_image", f"J/image ({', '.join(methods)}; log scale)"))
    return {
        "$schema": "https://vega.github.io/schema/vega-lite/v5.json",
        "title": {"text": TITLE, "subtitle": subtitle, "anchor": "start"},
        "data": {"values": points},
        "hconcat": panels,
        "config": {"legend": {"labelLimit": 320}},
    }
