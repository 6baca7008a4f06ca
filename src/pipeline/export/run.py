"""The export stage's work: fp32 ONNX, its variants, and each one's parity against PyTorch."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.core.catalog import PROVIDERS, VARIANTS, base_variant, exported_variants, resolve
from pipeline.core.config import Params
from pipeline.core.io import sha256_file
from pipeline.core.versioning import params_hash
from pipeline.export.onnx_export import export_onnx, metadata_props
from pipeline.export.parity import Parity, ParityError, ParityTally, problems
from pipeline.export.session import make_session, session_logits
from pipeline.export.variants import (
    VARIANT_FILES,
    ConvertContext,
    Converter,
    VariantInfo,
    variant_path,
)
from pipeline.models.files import ModelCard
from pipeline.models.inference import predict_logits, require_finite
from pipeline.models.preprocess import WithPreprocessing
from pipeline.prepared.types import LabelledChunks


def _parity_provider(variant: str) -> str:
    # A variant made for GPUs is checked on one when there is one.
    return "cuda" if VARIANTS[variant].check_on_gpu and torch.cuda.is_available() else "cpu"


def parity_of(model, feed, session, test: LabelledChunks, batch_size: int) -> Parity:
    """One session's parity against PyTorch fp32 over the whole test split, read a shard at a
    time (memory flat in the split's size). One session at a time: each keeps an arena sized
    for ``batch_size`` images, so PyTorch's logits are recomputed per variant instead."""
    tally = ParityTally()
    for images, labels in test.iter_shards():
        tensor = torch.from_numpy(images)
        torch_logits = require_finite(predict_logits(model, tensor, batch_size), "export parity")
        torch_logits = torch_logits.numpy()
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
    if provider == PROVIDERS["cpu"].ort_name and VARIANTS[variant].cpu_note:
        record["note"] = VARIANTS[variant].cpu_note
    return record


def _remove_stale(onnx_dir: Path, variants: list[str]) -> None:
    """A variant no longer asked for must not linger beside the fresh ones."""
    for name, filename in VARIANT_FILES.items():
        if name not in variants:
            with contextlib.suppress(FileNotFoundError):
                (onnx_dir / filename).unlink()


def convert(name: str, onnx_dir: Path, context: ConvertContext) -> VariantInfo:
    """Write variant ``name`` from the fp32 file with the converter its catalog entry names."""
    converter: Converter = resolve(VARIANTS[name].target, "pipeline.export")
    return converter(variant_path(onnx_dir, base_variant()), variant_path(onnx_dir, name), context)


def write_variants(
    params: Params,
    graph: torch.nn.Module,
    example: torch.Tensor,
    props: dict[str, str],
    context: ConvertContext,
    onnx_dir: Path,
) -> dict[str, VariantInfo]:
    """Export the base (fp32) file, then every variant ``export.variants`` asks for from it, in
    one loop over their converters; what each did, by name, base first."""
    base = base_variant()
    export_onnx(graph, example, variant_path(onnx_dir, base), params.export.opset, props)
    _remove_stale(onnx_dir, exported_variants(params.export.variants))
    built = {base: VariantInfo()}
    for name in params.export.variants:
        built[name] = convert(name, onnx_dir, context)
    return built


def _graph_and_feed(model: WithPreprocessing, include_preprocessing: bool):
    """The module to export, and what turns uint8 images into its input: without included
    preprocessing the graph takes normalised float32, and so does every feed."""
    if include_preprocessing:
        return model, lambda images: images
    return model.model, model.normalize


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
    graph, feed = _graph_and_feed(model, settings.include_preprocessing)
    props = metadata_props(card, settings.include_preprocessing, params_hash(params))
    context = ConvertContext(params, train_images, feed)
    sample = feed(torch.from_numpy(test.head(2)))
    built = write_variants(params, graph, sample, props, context, onnx_dir)
    batch_size = params.evaluate.batch_size  # both sides of the parity check
    records = {}
    for name, info in built.items():
        path, gate = variant_path(onnx_dir, name), settings.gates[name]
        session = make_session(path, _parity_provider(name), log=[])
        parity = parity_of(model, feed, session, test, batch_size)
        record = variant_record(path, name, session, parity, gate) | info.facts
        records[name] = _with_remedy(record, info.remedy or VARIANTS[name].remedy)
        _print_line(name, records[name])
    # The fp32 file is *the* model (models/onnx/model.onnx); variants are derived from it.
    return {
        "opset": settings.opset,
        "include_preprocessing": settings.include_preprocessing,
        "params_hash": props["params_hash"],
        **records.pop(base_variant()),
        "variants": records,
    }


def _with_remedy(record: dict[str, Any], remedy: str) -> dict[str, Any]:
    """A record that missed its gate says what to change (export.json keeps the advice)."""
    return record | {"remedy": remedy} if record["problems"] and remedy else record


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


def enforce_gates(metrics: dict[str, Any]) -> None:
    """Raise one error naming every variant whose parity gate failed, after deleting its file:
    a model that missed its gate must never be picked up downstream as if it passed."""
    records = {base_variant(): metrics, **metrics["variants"]}
    failed = {name: record for name, record in records.items() if record["problems"]}
    for record in failed.values():
        Path(record["file"]).unlink(missing_ok=True)
    if failed:
        raise ParityError(
            " | ".join(
                f"{name}: {'; '.join(record['problems'])}"
                + (f" ({record['remedy']})" if "remedy" in record else "")
                for name, record in failed.items()
            )
        )
