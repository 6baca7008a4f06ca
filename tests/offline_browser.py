"""A real headless Chromium with the network cut, to check that a page draws what it should.

Two passes over the same page at the same window size: the first (a copy of the page with a
measuring script added at the end) reports where each plot's box lies; the second screenshots
the page as it is, and each box's pixels must show a drawing, not a blank."""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
WIDTH = 1280
MEASURE = """<script>
// Report once every plot has a size and the layout has held still, or when time runs out.
const plotDivs = () => [...document.body.children].filter((e) => e.tagName === "DIV");
let last = "", deadline = Date.now() + 15000;
function report() {
  const boxes = plotDivs().map((e) => {
    const r = e.getBoundingClientRect();
    return {id: e.id, x: r.left + scrollX, y: r.top + scrollY, width: r.width, height: r.height};
  });
  const now = JSON.stringify({boxes, height: document.documentElement.scrollHeight});
  const ready = boxes.every((b) => b.height > 0) && now === last;
  if (ready || Date.now() > deadline) document.title = "BOXES" + now + "BOXES";
  else { last = now; setTimeout(report, 250); }
}
window.addEventListener("load", () => setTimeout(report, 250));
</script>
"""


def find_chromium() -> str | None:
    return next((path for name in BROWSERS if (path := shutil.which(name))), None)


def _chromium(binary: str, page: Path, profile: Path, *args: str) -> str:
    command = [
        binary,
        "--headless",
        "--no-sandbox",  # tests may run as root (CI containers)
        "--disable-gpu",
        "--hide-scrollbars",
        "--force-device-scale-factor=1",
        f"--user-data-dir={profile}",
        # No network: no host name resolves, and anything else goes to a closed local port.
        "--host-resolver-rules=MAP * ~NOTFOUND",
        "--proxy-server=http://127.0.0.1:9",
        "--virtual-time-budget=20000",  # run the page's scripts and timers to completion
        *args,
        page.resolve().as_uri(),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise AssertionError(f"chromium failed ({done.returncode}): {done.stderr[-2000:]}")
    return done.stdout


@dataclass(frozen=True)
class Box:
    id: str
    x: int
    y: int
    width: int
    height: int


def measure(binary: str, page: Path, work: Path) -> tuple[list[Box], int]:
    """Each top-level <div>'s box (DVC puts one plot in each), and the page's height."""
    copy = page.with_name(f".measure-{page.name}")  # same folder: relative image paths hold
    head, end, tail = page.read_text(encoding="utf-8").rpartition("</body>")  # the bundle has one
    copy.write_text(head + MEASURE + end + tail, encoding="utf-8")
    try:
        dom = _chromium(
            binary, copy, work / "profile-measure", "--window-size=1280,2000", "--dump-dom"
        )
    finally:
        copy.unlink()
    found = re.search(r"BOXES(.*?)BOXES", html.unescape(dom), re.DOTALL)
    if found is None:
        raise AssertionError("the measuring script never ran: the page's scripts failed")
    layout = json.loads(found.group(1))
    boxes = [
        Box(b["id"], round(b["x"]), round(b["y"]), round(b["width"]), round(b["height"]))
        for b in layout["boxes"]
    ]
    return boxes, int(layout["height"])


def screenshot(binary: str, page: Path, work: Path, height: int) -> Path:
    shot = work / "screenshot.png"
    window = f"--window-size={WIDTH},{max(height, 200)}"
    _chromium(binary, page, work / "profile-shot", window, f"--screenshot={shot}")
    return shot


@dataclass(frozen=True)
class Pixels:
    """What a screenshot shows inside one plot's box."""

    width: int
    height: int
    ink: float  # share of pixels that are not near-white: axes, text, marks
    coloured: int  # saturated pixels: data marks (lines, points, cells); axes and text are grey

    @property
    def drawn(self) -> bool:
        # Axes, titles and labels are grey; Vega-Embed's slider thumb and a legend dot add a
        # little colour. Data marks add more: each 4-epoch curve here has over a thousand.
        return self.width >= 150 and self.height >= 150 and self.ink > 0.01 and self.coloured > 400


def pixels(image: Image.Image, box: Box) -> Pixels:
    crop = np.asarray(image.crop((box.x, box.y, box.x + box.width, box.y + box.height)))
    crop = crop[..., :3].astype(np.int32).reshape(-1, 3)
    if crop.size == 0:
        return Pixels(box.width, box.height, 0.0, 0)
    ink = float((crop.min(axis=-1) < 200).mean())
    coloured = int(((crop.max(axis=-1) - crop.min(axis=-1)) > 60).sum())
    return Pixels(box.width, box.height, ink, coloured)


def plot_pixels(binary: str, page: Path, work: Path) -> tuple[dict[str, Pixels], Path]:
    """{plot div id: its pixels} for the page as a browser with no network shows it, and the
    screenshot (kept in ``work`` for a person to look at)."""
    work.mkdir(parents=True, exist_ok=True)
    boxes, height = measure(binary, page, work)
    shot = screenshot(binary, page, work, height)
    with Image.open(shot) as image:
        image = image.convert("RGB")
        return {box.id: pixels(image, box) for box in boxes}, shot
