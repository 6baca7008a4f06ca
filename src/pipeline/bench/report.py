"""Benchmark rows -> CSV (every row; also the plot data), the headline record (the stage writes it
to metrics/benchmark.json), and the report a person reads: a Markdown table with a chart of
accuracy against speed (and energy), drawn offline."""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path
from typing import Any

from pipeline.bench.rows import MIN_ROUNDS, ROW_FIELDS, BenchRow, Headline
from pipeline.charts.benchmark import benchmark_chart
from pipeline.charts.render import check_chart_path, draw_chart
from pipeline.core.io import write_text

TABLE_COLUMNS = [
    ("backend", "backend"),
    ("variant", "variant"),
    ("precision", "precision"),
    ("status", "status"),
    ("providers_used", "providers used"),
    ("batch_size", "batch"),
    ("latency_ms_p50", "p50 ms"),
    ("latency_spread", "spread"),
    ("repeats", "rounds"),
    ("noisy", "noisy"),
    ("latency_ms_p99", "p99 ms"),
    ("ms_per_image", "ms/image"),
    ("images_per_s", "images/s"),
    ("speedup_vs_eager", "x eager"),
    ("speedup_spread", "x eager spread"),
    ("gflops_per_s", "GFLOP/s"),
    ("share_of_peak", "% peak"),
    ("top1_accuracy", "top-1"),
    ("top1_delta_vs_pytorch", "Δ top-1"),
    ("session_create_ms", "session ms"),
    ("first_call_ms", "1st call ms"),
    ("peak_memory_mb", "peak MB"),
    ("joules_per_image", "J/image"),
    ("energy_method", "energy method"),
]


def _eligible(row: BenchRow, base: BenchRow | None, max_accuracy_drop: float) -> bool:
    """Only rows that ran as asked (never a fallback), timed steadily over at least two good
    rounds (never a noisy row, never one without a spread) and kept their accuracy can win."""
    if row.status != "ok" or not row.images_per_s or row.top1_accuracy is None:
        return False
    if row.noisy or (row.repeats or 0) < MIN_ROUNDS:
        return False
    if base is None or base.top1_accuracy is None:
        return True
    return row.top1_accuracy >= base.top1_accuracy - max_accuracy_drop


def headline_of(rows: list[BenchRow], max_accuracy_drop: float) -> Headline:
    """The fastest eligible row of one batch size's rows, against PyTorch eager fp32."""
    base = next((r for r in rows if r.is_baseline and r.status == "ok"), None)
    eligible = [r for r in rows if _eligible(r, base, max_accuracy_drop)]
    best = max(eligible, key=lambda r: r.images_per_s or 0.0) if eligible else None
    return Headline(
        batch_size=rows[0].batch_size,
        best=best,
        baseline=base,
        # The best row's own paired speed-up (bench/run.py derive); getattr: None without a best.
        speedup=getattr(best, "speedup_vs_eager", None),
        speedup_spread=getattr(best, "speedup_spread", None),
        speedup_unavailable=getattr(best, "speedup_unavailable", None),
        rows_not_eligible=len(rows) - len(eligible),
        rows_noisy=sum(1 for r in rows if r.noisy),
    )


def headline(rows: list[BenchRow], max_accuracy_drop: float) -> dict[str, Headline]:
    """Per batch size (``batch_<size>``): the fastest eligible row, against PyTorch eager fp32."""
    sizes = sorted({row.batch_size for row in rows})
    return {
        f"batch_{size}": headline_of([r for r in rows if r.batch_size == size], max_accuracy_drop)
        for size in sizes
    }


def rows_to_csv(rows: list[BenchRow]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=ROW_FIELDS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if v is None else v for k, v in row.as_dict().items()})
    return buffer.getvalue()


def _cell(key: str, value: Any) -> str:
    """A value as one Markdown table cell: a '|' or a newline in it would split the row."""
    return " ".join(_formatted(key, value).splitlines()).replace("|", "\\|")


def _formatted(key: str, value: Any) -> str:
    if value is None or value == "":
        return "–"
    if key == "noisy":
        return "noisy" if value else ""
    if key == "repeats":
        return str(value)
    if key in ("share_of_peak", "latency_spread", "speedup_spread"):
        return f"{100 * value:.0f}%"
    if key == "top1_delta_vs_pytorch":
        return f"{100 * value:+.2f} pt"
    if key == "speedup_vs_eager":
        return f"{value:.2f}x"
    if key == "providers_used":
        return value.replace("ExecutionProvider", "")
    if isinstance(value, float):
        return f"{value:,.4f}" if value < 10 else f"{value:,.1f}"
    return str(value)


def _context_lines(context: dict[str, Any]) -> list[str]:
    lines = [f"- {key}: {value}" for key, value in context.items() if not isinstance(value, dict)]
    for key, peak in context.get("peaks", {}).items():
        lines.append(
            f"- peak {key}: {peak['gflops']:,.1f} GFLOP/s ({peak['method']}; fastest repeat)"
        )
    return lines


def chart_subtitle(context: dict[str, Any]) -> str:
    cpu = f"{context.get('cpu', 'CPU')} ({context.get('cpu_isa', 'ISA unknown')})"
    where = f"{context['gpu']}; {cpu}" if context.get("gpu") else cpu
    return f"{where}; torch {context.get('torch')}, onnxruntime {context.get('onnxruntime')}"


def _speedup_cell(entry: Headline) -> str:
    """The speed-up with the spread of its per-round ratios: 9.30x ±3%."""
    if entry.speedup is None or entry.speedup_spread is None:
        return _cell("speedup_vs_eager", entry.speedup)
    return f"{entry.speedup:.2f}x ±{100 * entry.speedup_spread:.0f}%"


def _best_lines(top: dict[str, Headline]) -> list[str]:
    lines = ["## Best per batch size", ""]
    lines += ["| batch | best | precision | images/s | spread | rounds | x PyTorch eager fp32 "]
    lines[-1] += "| Δ top-1 | J/image (scope) |"
    lines += ["|" + "---|" * 9]
    for entry in top.values():
        best = entry.best
        name = _cell("best", f"{best.backend} {best.variant}" if best else None)
        figures = entry.as_dict()
        energy = _cell("joules_per_image", figures["best_joules_per_image"])
        if figures["best_energy_scope"]:
            energy += f" ({figures['best_energy_scope']})"
        lines.append(
            f"| {entry.batch_size} | {name} | {_cell('precision', figures['best_precision'])} | "
            f"{_cell('images_per_s', figures['best_images_per_s'])} | "
            f"{_cell('latency_spread', figures['best_spread'])} | "
            f"{_cell('repeats', figures['best_repeats'])} | "
            f"{_speedup_cell(entry)} | "
            f"{_cell('top1_delta_vs_pytorch', entry.accuracy_delta)} | {energy} |"
        )
    for entry in top.values():
        if entry.speedup_unavailable:
            lines += ["", f"No speed-up at batch {entry.batch_size}: {entry.speedup_unavailable}."]
    return lines


def _note_lines(rows: list[BenchRow]) -> list[str]:
    notes = {
        (r.backend, r.variant, r.status, r.reason or r.note) for r in rows if r.reason or r.note
    }
    if not notes:
        return []
    return ["", "## Notes", "", *(f"- {b} {v} ({s}): {text}" for b, v, s, text in sorted(notes))]


def rows_to_markdown(
    rows: list[BenchRow],
    context: dict[str, Any],
    top: dict[str, Headline],
    chart: str | None = None,
) -> str:
    """The report; ``chart`` is the chart's path relative to the report's folder."""
    lines = ["# Inference benchmark", "", *_context_lines(context), ""]
    if chart:
        title = "Top-1 accuracy against images/s and J/image, every backend, variant and batch"
        lines += [f"![{title}]({chart})", ""]
    lines += _best_lines(top)
    lines += ["", "## Every row", ""]
    lines.append("| " + " | ".join(title for _, title in TABLE_COLUMNS) + " |")
    lines.append("|" + "---|" * len(TABLE_COLUMNS))
    for row in rows:
        lines.append("| " + " | ".join(_cell(k, getattr(row, k)) for k, _ in TABLE_COLUMNS) + " |")
    lines += _note_lines(rows)
    methods = sorted({r.memory_method for r in rows if r.memory_method})
    lines += ["", f"Peak memory: {'; '.join(methods) or 'not measured'}."]
    lines += [
        "Latency is per batch (mean/p90/p99 over every good round's timed calls after warm-up); "
        "p50, images/s and GFLOP/s use the median of the p50s of the timing rounds (the first "
        "benchmark.repeats go over every backend in turn; rows still noisy get more, each "
        "beside the PyTorch eager baseline of its batch size, within benchmark.extra_seconds); "
        "spread is the interquartile range / median of those p50s, and a noisy row (spread "
        "above benchmark.max_spread), or one with fewer than 2 good rounds, is never the best. "
        "x eager is the median, over the rounds a row and the baseline of its batch size were "
        "both timed in, of the baseline's p50 over the row's (load on the machine slows both "
        "alike); it is withheld when fewer than 2 rounds pair or their ratios' spread exceeds "
        "benchmark.max_spread. A round that ran on other "
        "providers than the first is not merged. GFLOP/s is the fp32 "
        "model's FLOPs as torch.utils.flop_counter counts them "
        "(padding taps included) x images/s: int8 rows, and kernels that skip padding on small "
        "images, can pass 100% of the fp32 matmul peak. fallback rows ran on another provider "
        "than the one asked for and never count as the best; J/image of different scopes "
        "(gpu_board, cpu_package, cpu_estimate) are different quantities.",
    ]
    return "\n".join(lines) + "\n"


def write_report(
    rows: list[BenchRow],
    context: dict[str, Any],
    max_drop: float,
    csv_path,
    md_path,
    chart_path,
) -> dict:
    """Write the CSV and the Markdown report (which links ``chart_path``, drawn later by
    ``write_report_chart``); return the benchmark record."""
    top = headline(rows, max_drop)
    figures = {key: entry.as_dict() for key, entry in top.items()}
    summary = {"context": context, "headline": figures, "rows": len(rows)}
    chart_path = check_chart_path(chart_path)
    chart_link = Path(os.path.relpath(chart_path, Path(md_path).parent)).as_posix()
    write_text(csv_path, rows_to_csv(rows))
    write_text(md_path, rows_to_markdown(rows, context, top, chart_link))
    return summary


def write_report_chart(rows: list[dict], context: dict[str, Any], chart_path) -> str | None:
    """Drawn last, once every figure is written: a chart that cannot be drawn (a virtual-memory
    limit kills vl-convert) becomes a placeholder saying why, never a failed stage. Returns
    the reason it was not drawn, or None."""
    return draw_chart(chart_path, benchmark_chart(rows, chart_subtitle(context)), "benchmark")
