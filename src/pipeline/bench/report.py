"""Benchmark rows -> CSV (every row; also the plot data), JSON headline, Markdown table."""

from __future__ import annotations

import csv
import io
from typing import Any

from pipeline.io import write_json, write_text

BASELINE = ("pytorch_eager", "fp32")
TABLE_COLUMNS = [
    ("backend", "backend"),
    ("variant", "variant"),
    ("status", "status"),
    ("providers_used", "providers used"),
    ("batch_size", "batch"),
    ("latency_ms_p50", "p50 ms"),
    ("latency_ms_p90", "p90 ms"),
    ("latency_ms_p99", "p99 ms"),
    ("images_per_s", "images/s"),
    ("top1_accuracy", "top-1"),
]


def _baseline(rows: list[dict], batch_size: int) -> dict | None:
    for row in rows:
        if (row["backend"], row["variant"]) == BASELINE and row["batch_size"] == batch_size:
            return row
    return None


def headline(rows: list[dict]) -> dict[str, Any]:
    """Per batch size: the fastest row that really ran as asked, against PyTorch eager fp32."""
    result = {}
    for batch_size in sorted({row["batch_size"] for row in rows}):
        candidates = [r for r in rows if r["batch_size"] == batch_size and r["status"] == "ok"]
        best = max(candidates, key=lambda r: r["images_per_s"])
        base = _baseline(rows, batch_size)
        result[f"batch_{batch_size}"] = {
            "best_backend": best["backend"],
            "best_variant": best["variant"],
            "best_images_per_s": best["images_per_s"],
            "baseline_images_per_s": base["images_per_s"] if base else None,
            "speedup_vs_pytorch_eager": best["images_per_s"] / base["images_per_s"]
            if base
            else None,
            "accuracy_delta_vs_pytorch": best["top1_accuracy"] - base["top1_accuracy"]
            if base
            else None,
        }
    return result


def rows_to_csv(rows: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.4f}" if value < 10 else f"{value:,.1f}"
    return str(value)


def rows_to_markdown(rows: list[dict], context: dict[str, Any]) -> str:
    lines = ["# Inference benchmark", ""]
    lines += [f"- {key}: {value}" for key, value in context.items()]
    lines += ["", "| " + " | ".join(title for _, title in TABLE_COLUMNS) + " |"]
    lines.append("|" + "---|" * len(TABLE_COLUMNS))
    for row in rows:
        lines.append("| " + " | ".join(_cell(row[key]) for key, _ in TABLE_COLUMNS) + " |")
    return "\n".join(lines) + "\n"


def write_report(rows: list[dict], context: dict[str, Any], json_path, csv_path, md_path) -> dict:
    summary = {"context": context, "headline": headline(rows), "rows": len(rows)}
    write_text(csv_path, rows_to_csv(rows))
    write_text(md_path, rows_to_markdown(rows, context))
    write_json(json_path, summary)
    return summary
