"""Trained weights (safetensors) and the model card that says how to rebuild and feed them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from torch import nn

from pipeline.errors import PipelineError
from pipeline.io import load_tensors, read_json, save_tensors, write_json
from pipeline.models import ModelSpec, build_model, check_model_size
from pipeline.preprocess import WithPreprocessing
from pipeline.safetensors_header import TensorFileError, read_header

WEIGHTS_NAME = "model.safetensors"
CARD_NAME = "model.json"
_SAFETENSORS_DTYPES = {
    torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.float64: "F64",
    torch.int64: "I64", torch.int32: "I32", torch.uint8: "U8", torch.bool: "BOOL",
}  # fmt: skip


class ModelFileError(PipelineError):
    pass


def make_card(
    spec: ModelSpec,
    meta: dict[str, Any],
    model_params: dict[str, Any],
    normalisation: tuple[list, list] | None = None,
    pretrained: dict[str, Any] | None = None,
) -> dict:
    """``normalisation``: (mean, std) when not the train split's (torchvision weights bring
    theirs); ``pretrained``: what the start weights were (source, sha256, nominal input size)."""
    mean, std = normalisation or (meta["mean"], meta["std"])
    card = {
        "arch": spec.arch,
        "model_params": model_params,
        "class_names": meta["class_names"],
        "num_classes": spec.num_classes,
        "input_shape": meta["input_shape"],
        "input_dtype": "uint8",
        "input_layout": "NCHW",
        "normalisation": {"mean": mean, "std": std, "scale": "x / 255"},
    }
    if pretrained is not None:  # absent by default: the default card stays as it was
        card["pretrained"] = pretrained
    return card


def spec_from_card(card: dict[str, Any]) -> ModelSpec:
    channels, height, _ = card["input_shape"]
    return ModelSpec(
        arch=card["arch"],
        in_channels=channels,
        image_size=height,
        num_classes=card["num_classes"],
        **card.get("model_params", {}),
    )


def _is_numbers(value: Any, length: int | None = None) -> bool:
    return (
        isinstance(value, list)
        and (length is None or len(value) == length)
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
    )


def read_card(path: str | Path) -> dict[str, Any]:
    """The model card, or a one-line ModelFileError when it is missing, not JSON, or lacks a
    field the stages use."""
    try:
        card = read_json(path)
    except OSError as error:
        raise ModelFileError(f"{path}: cannot read ({error.strerror or error})") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ModelFileError(f"{path}: not a JSON model card ({error})") from None
    if not isinstance(card, dict):
        raise ModelFileError(f"{path}: not a model card (not a JSON object)")
    norm = card.get("normalisation")
    fields_ok = {
        "arch": isinstance(card.get("arch"), str),
        "model_params": isinstance(card.get("model_params", {}), dict),
        "num_classes": type(card.get("num_classes")) is int,
        "input_shape": _is_numbers(card.get("input_shape"), 3),
        "normalisation": isinstance(norm, dict)
        and _is_numbers(norm.get("mean"))
        and _is_numbers(norm.get("std")),
    }
    bad = [name for name, ok in fields_ok.items() if not ok]
    if bad:
        raise ModelFileError(f"{path}: not a model card (missing or bad {', '.join(bad)})")
    return card


def _skeleton(card: dict[str, Any], card_path: Path) -> nn.Module:
    """The card's model on the meta device: its tensor names and shapes, nothing allocated."""
    try:
        spec = spec_from_card(card)
        check_model_size(spec)
        with torch.device("meta"):
            return build_model(spec)
    except PipelineError as error:
        raise ModelFileError(f"{card_path}: {error}") from None
    except (TypeError, ValueError, RuntimeError) as error:
        raise ModelFileError(f"{card_path}: not a buildable model ({error})") from None


def check_weights_match(weights_path: Path, skeleton: nn.Module, arch: str) -> None:
    """Compare the file's header (names, shapes, dtypes) with the model before reading data."""
    try:
        found = read_header(weights_path)
    except TensorFileError as error:
        raise ModelFileError(str(error)) from None
    expected = skeleton.state_dict()
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    if missing or unexpected:
        detail = "; ".join(
            f"{what} {names[0]!r}" + (f" and {len(names) - 1} more" if len(names) > 1 else "")
            for what, names in (("missing", missing), ("unexpected", unexpected))
            if names
        )
        raise ModelFileError(f"{weights_path}: tensors do not match a {arch} model ({detail})")
    for name, tensor in expected.items():
        want = (_SAFETENSORS_DTYPES.get(tensor.dtype), tuple(tensor.shape))
        got = (found[name].dtype, found[name].shape)
        if got != want:
            raise ModelFileError(
                f"{weights_path}: tensor {name!r} is {got[0]}{list(got[1])}, a {arch} model "
                f"needs {want[0]}{list(want[1])}"
            )


def save_trained(models_dir: str | Path, model: nn.Module, card: dict[str, Any]) -> None:
    state = model.state_dict()
    bad = [
        name
        for name, value in state.items()
        if value.is_floating_point() and not torch.isfinite(value).all()
    ]
    if bad:
        raise ModelFileError(
            f"refusing to save non-finite weights ({bad[0]} and {len(bad) - 1} more)"
        )
    models_dir = Path(models_dir)
    save_tensors(models_dir / WEIGHTS_NAME, state, metadata={"arch": card["arch"]})
    write_json(models_dir / CARD_NAME, card)


def load_trained(models_dir: str | Path) -> tuple[WithPreprocessing, dict[str, Any]]:
    """The trained classifier wrapped with its preprocessing (takes uint8 NCHW), and its card.

    Card and weights header are checked before any weights are read, so a wrong, truncated or
    oversized file costs one line, not a traceback or a huge allocation.
    """
    models_dir = Path(models_dir)
    card = read_card(models_dir / CARD_NAME)
    weights_path = models_dir / WEIGHTS_NAME
    check_weights_match(weights_path, _skeleton(card, models_dir / CARD_NAME), card["arch"])
    model = build_model(spec_from_card(card))
    try:
        model.load_state_dict(load_tensors(weights_path))
    except (SafetensorError, RuntimeError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise ModelFileError(f"{weights_path}: cannot load ({first})") from None
    norm = card["normalisation"]
    wrapped = WithPreprocessing(model, norm["mean"], norm["std"])
    return wrapped.eval(), card
