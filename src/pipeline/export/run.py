"""The export stage's work: fp32 ONNX, its variants, and each one's parity against PyTorch."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.config import Params
from pipeline.data.types import LabelledChunks
from pipeline.export.onnx_export import export_onnx, metadata_props
from pipeline.export.parity import Parity, ParityError, ParityTally, problems
from pipeline.export.session import make_session, session_logits
from pipeline.export.variants import (
    VARIANT_FILES,
    calibration_sample,
    to_fp16,
    to_int8,
    variant_path,
)
from pipeline.inference import predict_logits
from pipeline.io import sha256_file
from pipeline.model_io import ModelCard
from pipeline.preprocess import WithPreprocessing
from pipeline.versioning import params_hash

CPU_FP16_NOTE = (
    "checked on onnxruntime's CPU provider, which runs fp16 nodes through casts to fp32: "
    "this checks the graph, its fp16 weights and its input/output types, not fp16 arithmetic "
    "on a GPU"
)


def _parity_provider(variant: str) -> str:
    # fp16 is meant for GPUs: check it on one when there is one.
    return "cuda" if variant == "fp16" and torch.cuda.is_available() else "cpu"


def parity_of(model, feed, session, test: LabelledChunks, batch_size: int) -> Parity:
    """One session's parity against PyTorch fp32 over the whole test split, read a shard at a
    time (memory flat in the split's size). One session at a time: each keeps an arena sized
    for ``batch_size`` images, so PyTorch's logits are recomputed per variant instead."""
    tally = ParityTally()
    for images, labels in test.iter_shards():
        tensor = torch.from_numpy(images)
        torch_logits = predict_logits(model, tensor, batch_size).numpy()
        inputs = np.ascontiguousarray(feed(tensor).numpy())
        tally.add(torch_logits, session_logits(session, inputs, batch_size), labels)
    return tally.result()


def variant_record(path: Path, variant: str, session, parity: Parity, gate) -> dict[str, Any]:
    """File facts and parity of one exported file against PyTorch fp32's logits."""
    provider = session.get_providers()[0]
    found = problems(parity, gate, variant)
    record = {
        "file": str(path),
        "size_bytes": path.stat().st_size,
        "sha256": sha256_file(path),
        "checked_on": provider,
        "parity": parity.as_dict(),
        "gate": gate.model_dump(),
        "passed": not found,
        "problems": found,
    }
    if variant == "fp16" and provider == "CPUExecutionProvider":
        record["note"] = CPU_FP16_NOTE
    return record


def _remove_stale(onnx_dir: Path, variants: list[str]) -> None:
    """A variant no longer asked for must not linger beside the fresh ones."""
    for name, filename in VARIANT_FILES.items():
        if name not in variants:
            with contextlib.suppress(FileNotFoundError):
                (onnx_dir / filename).unlink()


def export_all(
    params: Params,
    model: WithPreprocessing,
    card: ModelCard,
    test: LabelledChunks,
    train_images: torch.Tensor,
    onnx_dir: str | Path,
) -> dict[str, Any]:
    """Export fp32 and every variant in ``export.variants``; return export.json's content.

    Gates are evaluated but not enforced here: the caller writes the metrics first, then calls
    :func:`enforce_gates`, so a failed gate leaves its evidence behind.
    """
    settings, onnx_dir = params.export, Path(onnx_dir)
    # Without included preprocessing the graph takes normalised float32 and so does every feed.
    graph = model if settings.include_preprocessing else model.model
    feed = (lambda x: x) if settings.include_preprocessing else model.normalize
    fp32_path = variant_path(onnx_dir, "fp32")
    props = metadata_props(card, settings.include_preprocessing, params_hash(params))
    export_onnx(graph, feed(torch.from_numpy(test.head(2))), fp32_path, settings.opset, props)
    _remove_stale(onnx_dir, ["fp32", *settings.variants])

    built: dict[str, dict] = {"fp32": {}}
    if "fp16" in settings.variants:
        built["fp16"] = {"conversion": to_fp16(fp32_path, variant_path(onnx_dir, "fp16"))}
    if "int8" in settings.variants:
        count = settings.int8.calibration_images
        sample = calibration_sample(train_images.numpy(), count, params.seed)
        calibration = np.ascontiguousarray(feed(torch.from_numpy(sample)).numpy())
        described = to_int8(fp32_path, variant_path(onnx_dir, "int8"), calibration, settings.int8)
        built["int8"] = {"quantization": described | {"calibration_seed": params.seed}}

    batch_size = params.evaluate.batch_size  # both sides of the parity check
    records = {}
    for name, extra in built.items():
        path, gate = variant_path(onnx_dir, name), getattr(settings.gates, name)
        session = make_session(path, _parity_provider(name), log=[])
        parity = parity_of(model, feed, session, test, batch_size)
        records[name] = variant_record(path, name, session, parity, gate)
        records[name].update(extra)
        _print_line(name, records[name])
    fp32 = records.pop("fp32")
    # The fp32 file is *the* model (models/onnx/model.onnx); variants are derived from it.
    return {
        "opset": settings.opset,
        "include_preprocessing": settings.include_preprocessing,
        "params_hash": props["params_hash"],
        **fp32,
        "variants": records,
    }


def _print_line(name: str, record: dict) -> None:
    parity = record["parity"]
    print(
        f"export: {name:<4} {record['size_bytes'] / 1024:8.1f} KiB  "
        f"max|diff| {parity['max_abs_logit_diff']:.2e}  "
        f"agree {parity['top1_agreement']:.4f}  acc {parity['onnx_accuracy']:.4f} "
        f"({parity['accuracy_delta']:+.4f})  on {record['checked_on']}  "
        f"{'ok' if record['passed'] else 'FAILED'}",
        file=sys.stderr,
    )


def _remedy(name: str, record: dict) -> str:
    """The setting most likely to bring a failed variant inside its gate."""
    if name == "fp32":
        return ""
    if name != "int8":
        return f" (check the model, or leave {name} out of export.variants)"
    if not record["quantization"]["reduce_range"]:
        return " (set export.int8.reduce_range: true, the recipe for CPUs without VNNI)"
    return " (try export.int8.method: percentile, or leave int8 out of export.variants)"


def enforce_gates(metrics: dict[str, Any]) -> None:
    """Raise one error naming every variant whose parity gate failed, after deleting its file:
    a model that missed its gate must never be picked up downstream as if it passed."""
    records = {"fp32": metrics, **metrics["variants"]}
    failed = {name: record for name, record in records.items() if record["problems"]}
    for record in failed.values():
        Path(record["file"]).unlink(missing_ok=True)
    if failed:
        raise ParityError(
            " | ".join(
                f"{name}: {'; '.join(record['problems'])}{_remedy(name, record)}"
                for name, record in failed.items()
            )
        )
