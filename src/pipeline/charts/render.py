"""Vega-Lite specs -> SVG or PNG files, rendered in-process by vl-convert (no browser, no
network: data must be inline in the spec)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.errors import PipelineError
from pipeline.io import write_bytes

# DVC's plot templates are Vega-Lite v5 specs; this is the newest v5 that vl-convert ships, used
# for the static charts and for the scripts inlined into the offline plots page alike.
VEGA_LITE_VERSION = "5.21"
CHART_SUFFIXES = (".svg", ".png")
PNG_SCALE = 2.0  # sharp on high-density screens


def check_chart_path(path: str | Path) -> Path:
    """The path, if its suffix names a format we can render; else a one-line error."""
    path = Path(path)
    if path.suffix.lower() not in CHART_SUFFIXES:
        raise PipelineError(f"a chart file must end in .svg or .png: '{path}'")
    return path


def chart_bytes(spec: dict[str, Any], suffix: str) -> bytes:
    import vl_convert  # native module; only code that draws charts needs it

    # No base URL is allowed: a spec that tries to load data from anywhere fails here.
    options = {"vl_version": VEGA_LITE_VERSION, "allowed_base_urls": []}
    if suffix == ".svg":
        return vl_convert.vegalite_to_svg(spec, **options).encode("utf-8")
    if suffix == ".png":
        return vl_convert.vegalite_to_png(spec, scale=PNG_SCALE, **options)
    raise PipelineError(f"a chart file must end in .svg or .png, not '{suffix}'")


def write_chart(path: str | Path, spec: dict[str, Any]) -> None:
    path = check_chart_path(path)
    write_bytes(path, chart_bytes(spec, path.suffix.lower()))


def message_chart(title: str, text: str) -> dict[str, Any]:
    """A chart that says why there is nothing to draw (so the file always exists)."""
    return {
        "$schema": "https://vega.github.io/schema/vega-lite/v5.json",
        "title": title,
        "width": 360,
        "height": 60,
        "data": {"values": [{"text": text}]},
        "mark": {"type": "text", "fontSize": 13},
        "encoding": {"text": {"field": "text"}},
    }
