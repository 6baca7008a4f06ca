"""A stage's record -> two committed files: the figures a person compares, and the whole record.

``metrics/<stage>.json`` is a DVC metrics file: `dvc exp show` makes a column of every key and
`dvc metrics diff` lists every change, so it holds only figures that a param or code change can
move (accuracy, loss, images/s, latency, J/image, speed-ups, sizes) and the few labels needed to
read them (which precision, device, energy meter). ``metrics/details/<stage>.json`` (a plain
output, `cache: false`) holds the whole record: hashes, versions, CPU flags, policy, providers,
parity gates and per-class tables beside the figures.

Each stage names its figures as dotted keys; anything else stays out of the metrics file, so a
new key is context until someone decides it is worth a column.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from pipeline.core import paths
from pipeline.core.io import write_json

MISSING = object()


def dotted_get(record: Mapping[str, Any], dotted: str, missing: Any = MISSING) -> Any:
    """``record[a][b]`` for ``"a.b"``; ``missing`` when any step is absent."""
    node: Any = record
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return missing
        node = node[part]
    return node


def pick(record: Mapping[str, Any], figures: Iterable[str]) -> dict[str, Any]:
    """The ``figures`` (dotted keys) of ``record``, nested as there; absent keys are skipped."""
    picked: dict[str, Any] = {}
    for dotted in figures:
        value = dotted_get(record, dotted)
        if value is MISSING:
            continue
        *parents, leaf = dotted.split(".")
        node = picked
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return picked


def details_path(metrics_path: str | Path) -> Path:
    """metrics/train.json -> metrics/details/train.json (same root)."""
    metrics_path = Path(metrics_path)
    return metrics_path.parent / paths.DETAILS_DIR.name / metrics_path.name


def write_record(metrics_path: str | Path, record: Mapping[str, Any], figures: Iterable[str]):
    """The whole record to its details file, then the figures to the metrics file."""
    write_json(details_path(metrics_path), record)
    write_json(metrics_path, pick(record, figures))


# --- each stage's figures: one place to see what `dvc exp show` gets a column for -------------

DATA_FIGURES = ("counts.train", "counts.val", "counts.test", "quarantined_count", "duplicate_files")
EVAL_FIGURES = ("accuracy", "loss", "macro_f1")
TRAIN_FIGURES = (
    "train_loss",
    "val_loss",
    "val_accuracy",
    "best_val_accuracy",
    "epochs",
    # Time, images and energy of the whole run (every process of a resumed run; this
    # process's share is in metrics/details/train.json under ``process`` only).
    "resumed.processes",  # 1: trained in one go
    "images",
    "train_seconds",
    "images_per_s",
    "steady_state_images_per_s",
    "steady_state_spread",
    "wall_seconds",
    "seconds_to_target",
    "memory_peak.bytes",
    "energy.joules_per_image",
    "energy.method",  # which meter: joules of a GPU board and of a CPU package differ
    "policy.precision",  # what ran, where the params may say `auto`
    "policy.device",
)
_PARITY_FIGURES = ("size_bytes", "parity.top1_agreement", "parity.accuracy_delta")
_HEADLINE_FIGURES = (
    "best_backend",
    "best_variant",
    "best_precision",  # what ran: fp32 on one GPU may be tf32 on another
    "best_images_per_s",
    "best_spread",  # IQR / median of its rounds: a re-run lands within about this
    "speedup_vs_pytorch_eager",
    "best_joules_per_image",
    "best_energy_scope",  # gpu_board, cpu_package or cpu_estimate: J/image of different things
)


def export_figures(record: Mapping[str, Any]) -> list[str]:
    """Size and parity of fp32 (top level) and of each variant."""
    figures = list(_PARITY_FIGURES)
    for variant in record.get("variants", {}):
        figures += [f"variants.{variant}.{key}" for key in _PARITY_FIGURES]
    return figures


def benchmark_figures(summary: Mapping[str, Any]) -> list[str]:
    """The headline of each batch size: the fastest eligible row and its speed-up."""
    return [f"headline.{batch}.{key}" for batch in summary["headline"] for key in _HEADLINE_FIGURES]
