"""Charts drawn offline: the benchmark report's chart and pipeline-pareto --plot."""

import json
import resource
import subprocess
import sys
import textwrap
import xml.etree.ElementTree as ET
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.bench.report import write_report, write_report_chart
from pipeline.bench.rows import BenchRow
from pipeline.charts.benchmark import benchmark_chart
from pipeline.charts.render import write_chart
from pipeline.core.errors import PipelineError
from pipeline.tools.pareto import main as pareto_main
from test_bench_report import row, sample_rows

CONTEXT = {"cpu": "Test CPU", "cpu_isa": "avx2", "torch": "2.x", "onnxruntime": "1.x"}


def points(svg: Path) -> list[str]:
    """The aria-label of every point mark Vega drew (legend symbols are not point marks)."""
    root = ET.parse(svg).getroot()
    assert root.tag.endswith("svg")
    return [e.get("aria-label") for e in root.iter() if e.get("aria-roledescription") == "point"]


def report(tmp_path: Path, rows: list[BenchRow]) -> tuple[Path, str]:
    files = [tmp_path / f"metrics/{name}" for name in ("b.csv", "report.md", "b.svg")]
    write_report(rows, CONTEXT, 0.005, *files)
    assert write_report_chart(rows, CONTEXT, files[2]) is None
    return files[2], files[1].read_text()


def test_report_links_a_chart_with_one_point_per_row_that_ran(tmp_path):
    chart, text = report(tmp_path, sample_rows())
    assert "](b.svg)" in text  # relative to report.md: shows on a forge
    drawn = points(chart)
    assert len(drawn) == 7  # 8 rows, one failed: it has neither speed nor accuracy
    assert sum("(fallback)" in label for label in drawn) == 2
    assert not any("tensorrt" in label for label in drawn)
    assert "J/image" not in chart.read_text()  # no row measured energy: no energy panel


def test_energy_panel_only_with_measured_joules(tmp_path):
    rows = sample_rows()
    rows[:3] = [replace(item, joules_per_image=0.01, energy_method="rapl") for item in rows[:3]]
    chart, _ = report(tmp_path, rows)
    drawn = points(chart)
    assert len(drawn) == 7 + 3
    assert sum(label.startswith("J/image (rapl") for label in drawn) == 3


def test_nothing_to_plot_still_writes_a_chart_that_says_so(tmp_path):
    chart, text = report(tmp_path, [row("onnxruntime_cuda", "fp16", 1, None, None, "failed")])
    assert points(chart) == [] and "nothing to plot" in chart.read_text()
    assert "](b.svg)" in text


def test_a_chart_that_cannot_be_drawn_costs_no_figure(tmp_path, monkeypatch, capsys):
    import pipeline.charts.render as render

    monkeypatch.setattr(render, "_CHILD", "import sys; sys.exit('renderer crashed')")
    files = [tmp_path / f"metrics/{name}" for name in ("b.csv", "report.md", "b.svg")]
    write_report(sample_rows(), CONTEXT, 0.005, *files)
    reason = write_report_chart(sample_rows(), CONTEXT, files[2])
    assert reason == "the chart renderer (vl-convert) failed (exit status 1): renderer crashed"
    assert files[0].read_text().count("\n") == 9 and "](b.svg)" in files[1].read_text()
    assert f"chart not drawn: {reason}" in files[2].read_text()  # DVC's output exists
    assert capsys.readouterr().err == f"benchmark: chart {files[2]} not drawn: {reason}\n"


# Under a real virtual-memory limit (as `ulimit -v 8000000` sets it), the benchmark report and
# pipeline-pareto --plot: vl-convert's V8 aborts the process it runs in (SIGTRAP) at any limit.
UNDER_LIMIT = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    sys.path.insert(0, sys.argv[2])
    from pipeline.bench.report import write_report, write_report_chart
    from pipeline.tools.pareto import main
    from test_bench_report import sample_rows
    out = Path(sys.argv[1])
    files = [out / name for name in ("b.csv", "report.md", "b.svg")]
    context = {"cpu": "Test CPU"}
    write_report(sample_rows(), context, 0.005, *files)
    write_report_chart(sample_rows(), context, files[2])
    sys.exit(main(["--json", str(out / "exp.json"), "--plot", str(out / "front.png")]))
    """
)


def test_charts_under_a_virtual_memory_limit_cost_no_figure(tmp_path):
    limit = 8_000_000 * 1024  # ulimit -v 8000000 (kB), as the cluster node set it
    (tmp_path / "exp.json").write_text(json.dumps(exp_show({"a": (0.9, 0.5, 10.0)})))
    result = subprocess.run(
        [sys.executable, "-c", UNDER_LIMIT, str(tmp_path), str(Path(__file__).parent)],
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS, (limit, limit)),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "b.csv").read_text().count("\n") == 9
    assert result.stdout.startswith("Pareto front: accuracy")  # the report printed first
    lines = result.stderr.splitlines()
    for who, chart in (("benchmark", "b.svg"), ("pipeline-pareto", "front.png")):
        line = next(line for line in lines if line.startswith(f"{who}: chart "))
        assert "virtual-memory limit (ulimit -v 8000000 kB" in line
        assert line.endswith("lift it (ulimit -v unlimited) to draw charts")
        assert (tmp_path / chart).stat().st_size > 0
    assert "ulimit -v unlimited" in (tmp_path / "b.svg").read_text()


def test_png_charts_hold_a_drawing(tmp_path):
    write_chart(tmp_path / "c.png", benchmark_chart(sample_rows(), "test"))
    with Image.open(tmp_path / "c.png") as image:
        pixels = np.asarray(image.convert("RGB")).astype(int)
    assert pixels.shape[0] > 200 and pixels.shape[1] > 400
    assert ((pixels.max(-1) - pixels.min(-1)) > 60).sum() > 500  # coloured points


def test_a_chart_file_must_be_svg_or_png(tmp_path):
    with pytest.raises(PipelineError, match=r"must end in .svg or .png: '.*c\.jpg'"):
        write_chart(tmp_path / "c.jpg", benchmark_chart(sample_rows(), "test"))
    assert not (tmp_path / "c.jpg").exists()


# --- pipeline-pareto --plot -------------------------------------------------------------------


def exp_show(runs: dict[str, tuple[float | None, float | None, float | None]]) -> list[dict]:
    """`dvc exp show --json` with one experiment per name: (accuracy, J/image, wall seconds)."""
    experiments = []
    for name, (accuracy, joules, seconds) in runs.items():
        metrics = {
            "metrics/eval.json": {"data": {"accuracy": accuracy}},
            "metrics/train.json": {
                "data": {"wall_seconds": seconds, "energy": {"joules_per_image": joules}}
            },
        }
        data = {"params": {"params.yaml": {"data": {}}}, "metrics": metrics}
        revs = [{"rev": name * 8, "name": name, "data": data}]
        experiments.append({"name": name, "executor": None, "revs": revs})
    return [{"rev": "c0ffee" * 6, "name": "main", "data": {}, "experiments": experiments}]


def test_pareto_plot_draws_both_fronts(tmp_path, capsys):
    saved = tmp_path / "exp.json"
    runs = {
        "cheap": (0.95, 0.5, 10.0),
        "best": (0.97, 0.8, 20.0),
        "dominated": (0.90, 0.6, 30.0),
        "no-energy": (0.99, None, 40.0),
    }
    saved.write_text(json.dumps(exp_show(runs)))
    chart = tmp_path / "front.svg"
    assert pareto_main(["--json", str(saved), "--plot", str(chart)]) == 0
    assert f"chart: {chart}" in capsys.readouterr().out
    drawn = points(chart)
    assert len(drawn) == 3 + 4  # energy panel: no-energy left off; wall-time panel: all four
    front = [label for label in drawn if "Pareto front" in label]
    assert len(front) == 2 + 3  # energy: cheap, best; time: cheap, best, no-energy
    assert "1 run(s) with no energy figure not shown" in chart.read_text()


def test_pareto_plot_refuses_an_unknown_format_before_reading_anything(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        pareto_main(["--json", str(tmp_path / "missing.json"), "--plot", "front.jpg"])
    assert exit_info.value.code == 2
    assert "--plot must end in .svg or .png: 'front.jpg'" in capsys.readouterr().err


def test_a_row_at_zero_accuracy_is_drawn_not_dropped(tmp_path):
    """A variant that scores 0 is the broken one a reader must see (it used to vanish)."""
    rows = [
        row("onnxruntime_cpu", "int8", 1, 100.0, 0.0),
        row("pytorch_eager", "fp32", 1, 50.0, 0.9),
    ]
    chart, _ = report(tmp_path, rows)
    assert len(points(chart)) == 2


def test_runs_without_a_positive_cost_are_left_off_the_log_axis():
    from pipeline.tools.pareto import Run, chart_panels

    def run(name: str, joules: float | None) -> Run:
        return Run(name, name, "experiment", None, {}, 0.9, joules, "cpu_estimate", 2.0)

    runs = [
        run("zero", 0.0),
        run("negative", -1.0),
        run("none", None),
        run("a", 2.0),
        run("b", 8.0),
    ]
    energy = next(panel for panel in chart_panels(runs) if panel.name == "energy")
    assert sorted(point.name for point in energy.points) == ["a", "b"]
    assert energy.left_off == 3


def test_a_renderer_failure_names_the_error_not_a_stack_frame():
    """vl-convert's JavaScript errors end in stack frames ('at ext:<anon>:4:1')."""
    from pipeline.charts.render import ChartNotDrawn, chart_bytes

    with pytest.raises(ChartNotDrawn) as caught:
        chart_bytes({"mark": "nonsense", "data": {"values": [{"a": 1}]}}, ".svg")
    message = str(caught.value)
    assert "Error" in message.split("failed (exit status 1): ", 1)[1], message
    assert " at " not in message and "\n" not in message


def test_a_placeholder_with_control_characters_is_still_an_svg():
    from pipeline.charts.render import placeholder_bytes

    svg = placeholder_bytes("chart not drawn: \x1b[31mred\x1b[0m <b> & \x00", ".svg")
    text = ET.fromstring(svg).find("{http://www.w3.org/2000/svg}text").text
    assert text == "chart not drawn:  [31mred [0m <b> &  "
