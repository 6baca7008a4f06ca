"""Vega-Lite specs -> SVG or PNG files, drawn by vl-convert (no browser, no network: data must
be inline in the spec) in a child process.

Why a child: vl-convert's V8 engine reserves a large address range when it starts, and under a
virtual-memory limit (RLIMIT_AS, ``ulimit -v``, common on cluster and login nodes) it aborts
the whole process ("Oilpan: CagedHeap reservation", SIGTRAP), at 8 GiB and at 64 GiB alike.
In a child that abort costs the chart, never the figures of the process that asked for it.
"""

from __future__ import annotations

import io
import json
import resource
import signal
import subprocess
import sys
from html import escape
from pathlib import Path
from typing import Any

from pipeline.core.errors import PipelineError, first_line
from pipeline.core.io import write_bytes

# DVC's plot templates are Vega-Lite v5 specs; this is the newest v5 that vl-convert ships, used
# for the static charts and for the scripts inlined into the offline plots page alike.
VEGA_LITE_VERSION = "5.21"
CHART_SUFFIXES = (".svg", ".png")
PNG_SCALE = 2.0  # sharp on high-density screens
RENDER_TIMEOUT_S = 120  # a few seconds on a busy 2-core machine

# Run with -I (isolated: no PYTHONPATH, no user site): it needs vl_convert and nothing else.
_CHILD = """
import json, sys
import vl_convert
request = json.load(sys.stdin)
options = {"vl_version": request["vl_version"], "allowed_base_urls": []}
if request["suffix"] == ".svg":
    out = vl_convert.vegalite_to_svg(request["spec"], **options).encode("utf-8")
else:
    out = vl_convert.vegalite_to_png(request["spec"], scale=request["scale"], **options)
sys.stdout.buffer.write(out)
"""


class ChartNotDrawn(PipelineError):
    """The renderer failed or could not start; the message says why and what to change."""


def check_chart_path(path: str | Path) -> Path:
    """The path, if its suffix names a format we can render; else a one-line error."""
    path = Path(path)
    if path.suffix.lower() not in CHART_SUFFIXES:
        raise PipelineError(f"a chart file must end in .svg or .png: '{path}'")
    return path


def _address_space_limit() -> str | None:
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    return None if soft == resource.RLIM_INFINITY else f"{soft // 1024} kB"


def _why(returncode: int, stderr: bytes) -> str:
    text = stderr.decode("utf-8", "replace")
    how = f"exit status {returncode}"
    if returncode < 0:
        how = f"killed by {signal.Signals(-returncode).name}"
    limit = _address_space_limit()
    if limit and ("CagedHeap" in text or "out of memory" in text or returncode < 0):
        return (
            f"vl-convert's V8 engine could not reserve address space under a virtual-memory "
            f"limit (ulimit -v {limit}; {how}); lift it (ulimit -v unlimited) to draw charts"
        )
    return f"the chart renderer (vl-convert) failed ({how}): {_error_line(text)}"


def _error_line(stderr: str) -> str:
    """The last line that states an error: Python's and V8's tracebacks end in stack frames
    (``at ext:<anon>:4:1``, indented ``File ...`` lines) after the line that says what failed."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    stated = [line for line in lines if not line.startswith(("at ", "File ", "^", "~"))]
    errors = [line for line in stated if "Error" in line.split(" ", 1)[0]]
    return first_line((errors or stated or lines or [""])[-1])


def chart_bytes(spec: dict[str, Any], suffix: str) -> bytes:
    """The drawn chart; ChartNotDrawn (one line) when the child renderer fails."""
    if suffix not in CHART_SUFFIXES:
        raise PipelineError(f"a chart file must end in .svg or .png, not '{suffix}'")
    request = {"spec": spec, "suffix": suffix, "vl_version": VEGA_LITE_VERSION, "scale": PNG_SCALE}
    try:
        result = subprocess.run(
            [sys.executable, "-I", "-c", _CHILD],
            input=json.dumps(request).encode("utf-8"),
            capture_output=True,
            timeout=RENDER_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired:
        raise ChartNotDrawn(f"the chart renderer took over {RENDER_TIMEOUT_S} s") from None
    except OSError as error:
        raise ChartNotDrawn(f"the chart renderer could not start: {error}") from None
    if result.returncode != 0 or not result.stdout:
        raise ChartNotDrawn(_why(result.returncode, result.stderr))
    return result.stdout


def write_chart(path: str | Path, spec: dict[str, Any]) -> None:
    path = check_chart_path(path)
    write_bytes(path, chart_bytes(spec, path.suffix.lower()))


def placeholder_bytes(text: str, suffix: str) -> bytes:
    """A plain picture of one line of text, made without vl-convert (it is what failed)."""
    # XML 1.0 forbids most control characters, escaped or not: the SVG would not parse.
    text = "".join(char if char.isprintable() else " " for char in text)
    if suffix == ".svg":
        return (
            '<svg xmlns="http://www.w3.org/2000/svg" width="900" height="40">'
            f'<text x="8" y="25" font-family="sans-serif" font-size="13">{escape(text)}</text>'
            "</svg>\n"
        ).encode()
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (8 + 7 * len(text), 40), "white")
    ImageDraw.Draw(image).text((8, 14), text, fill="black")
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def draw_chart(path: str | Path, spec: dict[str, Any], who: str) -> str | None:
    """Write the chart; if it cannot be drawn, write a placeholder that says why (so an output
    DVC expects exists), print one line and return the reason. Never raises ChartNotDrawn:
    callers draw charts after every figure is written, and a chart never costs them."""
    path = check_chart_path(path)
    try:
        write_bytes(path, chart_bytes(spec, path.suffix.lower()))
        return None
    except ChartNotDrawn as error:
        reason = str(error)
    write_bytes(path, placeholder_bytes(f"chart not drawn: {reason}", path.suffix.lower()))
    print(f"{who}: chart {path} not drawn: {reason}", file=sys.stderr)
    return reason


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
