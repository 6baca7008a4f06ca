"""Benchmark rows -> CSV (every row; also the plot data), the headline record (the stage writes it
to metrics/benchmark.json), and the report a person reads: a Markdown table with a chart of
accuracy against speed (and energy), drawn offline."""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path
from typing import Any

from pipeline.charts.benchmark import benchmark_chart
from pipeline.charts.render import chart_bytes, check_chart_path
from pipeline.io import write_bytes, write_text

BASELINE = ("pytorch_eager", "fp32")
ROW_FIELDS = [
    "backend", "variant", "precision", "provider_requested", "providers_used", "status", "reason",
    "note",
    "batch_size", "warmup", "iterations", "repeats", "first_call_ms", "latency_ms_mean",
    "latency_ms_p50", "latency_ms_p50_min", "latency_ms_p50_max", "latency_spread", "noisy",
    "latency_ms_p90", "latency_ms_p99", "ms_per_image", "images_per_s", "speedup_vs_eager",
    "session_create_ms", "peak_memory_mb", "memory_method", "flops_per_image", "gflops_per_s",
    "peak_gflops", "share_of_peak", "top1_accuracy", "top1_delta_vs_pytorch",
    "joules_per_image", "energy_method", "energy_reason",
]  # fmt: skip
TABLE_COLUMNS = [
    ("backend", "backend"),
    ("variant", "variant"),
    ("precision", "precision"),
    ("status", "status"),
    ("providers_used", "providers used"),
    ("batch_size", "batch"),
    ("latency_ms_p50", "p50 ms"),
    ("latency_spread", "spread"),
    ("noisy", "noisy"),
    ("latency_ms_p99", "p99 ms"),
    ("ms_per_image", "ms/image"),
    ("images_per_s", "images/s"),
    ("speedup_vs_eager", "x eager"),
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


def _eligible(row: dict, base: dict | None, max_accuracy_drop: float) -> bool:
    """Only rows that ran as asked (never a fallback), timed steadily (never a noisy row) and
    kept their accuracy can win."""
    if row["status"] != "ok" or not row["images_per_s"] or row["top1_accuracy"] is None:
        return False
    if row.get("noisy"):
        return False
    if base is None or base["top1_accuracy"] is None:
        return True
    return row["top1_accuracy"] >= base["top1_accuracy"] - max_accuracy_drop


def speedup_baseline(base: dict | None) -> tuple[float | None, str | None]:
    """(images/s a speed-up divides by, why there is none): a noisy baseline's figure is no
    steadier than a noisy best row's, so a ratio over it (3084x was seen) is not reported."""
    if base is None or base["status"] != "ok" or not base["images_per_s"]:
        return None, "no PyTorch eager fp32 row that ran"
    if base.get("noisy"):
        return None, "the PyTorch eager fp32 row was noisy (benchmark.max_spread)"
    return base["images_per_s"], None


def headline(rows: list[dict], max_accuracy_drop: float) -> dict[str, Any]:
    """Per batch size: the fastest eligible row, against PyTorch eager fp32."""
    result = {}
    for batch_size in sorted({row["batch_size"] for row in rows}):
        at = [r for r in rows if r["batch_size"] == batch_size]
        base = next(
            (r for r in at if (r["backend"], r["variant"]) == BASELINE and r["status"] == "ok"),
            None,
        )
        eligible = [r for r in at if _eligible(r, base, max_accuracy_drop)]
        best = max(eligible, key=lambda r: r["images_per_s"]) if eligible else None
        base_speed, no_speedup = speedup_baseline(base)
        entry = {
            "best_backend": best["backend"] if best else None,
            "best_variant": best["variant"] if best else None,
            "best_precision": best["precision"] if best else None,
            "best_providers": best["providers_used"] if best else None,
            "best_images_per_s": best["images_per_s"] if best else None,
            # (max - min) / median of the best row's repeats: a re-run lands within about this.
            "best_spread": best.get("latency_spread") if best else None,
            "baseline_images_per_s": base["images_per_s"] if base else None,
            "speedup_vs_pytorch_eager": best["images_per_s"] / base_speed
            if best and base_speed
            else None,
            "speedup_unavailable": no_speedup if best else None,
            "accuracy_delta_vs_pytorch": best["top1_accuracy"] - base["top1_accuracy"]
            if best and base and base["top1_accuracy"] is not None
            else None,
            "best_joules_per_image": best["joules_per_image"] if best else None,
            "best_energy_method": best["energy_method"] if best else None,
            "baseline_joules_per_image": base["joules_per_image"] if base else None,
            "rows_not_eligible": len(at) - len(eligible),
            "rows_noisy": sum(1 for r in at if r.get("noisy")),
        }
        result[f"batch_{batch_size}"] = entry
    return result


def rows_to_csv(rows: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=ROW_FIELDS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if row.get(k) is None else row[k] for k in ROW_FIELDS})
    return buffer.getvalue()


def _cell(key: str, value: Any) -> str:
    if value is None or value == "":
        return "–"
    if key == "noisy":
        return "noisy" if value else ""
    if key in ("share_of_peak", "latency_spread"):
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


def rows_to_markdown(
    rows: list[dict], context: dict[str, Any], top: dict[str, Any], chart: str | None = None
) -> str:
    """The report; ``chart`` is the chart's path relative to the report's folder."""
    lines = ["# Inference benchmark", "", *_context_lines(context), ""]
    if chart:
        title = "Top-1 accuracy against images/s and J/image, every backend, variant and batch"
        lines += [f"![{title}]({chart})", ""]
    lines += ["## Best per batch size", ""]
    lines += ["| batch | best | images/s | spread | x PyTorch eager fp32 | Δ top-1 |"]
    lines += ["|" + "---|" * 6]
    for key, entry in top.items():
        best = f"{entry['best_backend']} {entry['best_variant']}" if entry["best_backend"] else "–"
        if entry.get("best_precision") not in (None, entry["best_variant"]):
            best += f" (computes in {entry['best_precision']})"
        lines.append(
            f"| {key.removeprefix('batch_')} | {best} | "
            f"{_cell('images_per_s', entry['best_images_per_s'])} | "
            f"{_cell('latency_spread', entry['best_spread'])} | "
            f"{_cell('speedup_vs_eager', entry['speedup_vs_pytorch_eager'])} | "
            f"{_cell('top1_delta_vs_pytorch', entry['accuracy_delta_vs_pytorch'])} |"
        )
    for key, entry in top.items():
        if entry.get("speedup_unavailable"):
            batch = key.removeprefix("batch_")
            lines += ["", f"No speed-up at batch {batch}: {entry['speedup_unavailable']}."]
    lines += ["", "## Every row", ""]
    lines.append("| " + " | ".join(title for _, title in TABLE_COLUMNS) + " |")
    lines.append("|" + "---|" * len(TABLE_COLUMNS))
    for row in rows:
        lines.append("| " + " | ".join(_cell(k, row.get(k)) for k, _ in TABLE_COLUMNS) + " |")
    notes = {
        (r["backend"], r["variant"], r["status"], r["reason"] or r["note"])
        for r in rows
        if r["reason"] or r["note"]
    }
    if notes:
        lines += ["", "## Notes", ""]
        lines += [f"- {b} {v} ({s}): {text}" for b, v, s, text in sorted(notes)]
    methods = sorted({r["memory_method"] for r in rows if r.get("memory_method")})
    lines += ["", f"Peak memory: {'; '.join(methods) or 'not measured'}."]
    lines += [
        "Latency is per batch (mean/p90/p99 over the first round's timed calls after warm-up); "
        "p50, images/s and GFLOP/s use the median of the p50s of every timing round (each round "
        "goes over every backend in turn); spread is (max - min) / median of those p50s, and a "
        "noisy row (spread above benchmark.max_spread) is never the best. GFLOP/s is the fp32 "
        "model's FLOPs as torch.utils.flop_counter counts them "
        "(padding taps included) x images/s: int8 rows, and kernels that skip padding on small "
        "images, can pass 100% of the fp32 matmul peak. fallback rows ran on another provider "
        "than the one asked for and never count as the best.",
    ]
    return "\n".join(lines) + "\n"


def write_report(
    rows: list[dict],
    context: dict[str, Any],
    max_drop: float,
    csv_path,
    md_path,
    chart_path,
) -> dict:
    """Write the CSV, the chart and the Markdown report; return the benchmark record."""
    top = headline(rows, max_drop)
    summary = {"context": context, "headline": top, "rows": len(rows)}
    chart_path = check_chart_path(chart_path)
    # Drawn before anything is written: a chart that fails leaves every old file in place.
    chart = chart_bytes(benchmark_chart(rows, chart_subtitle(context)), chart_path.suffix.lower())
    chart_link = Path(os.path.relpath(chart_path, Path(md_path).parent)).as_posix()
    write_text(csv_path, rows_to_csv(rows))
    write_bytes(chart_path, chart)
    write_text(md_path, rows_to_markdown(rows, context, top, chart_link))
    return summary
