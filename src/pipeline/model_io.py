"""Trained weights (safetensors) and the model card that says how to rebuild and feed them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from pipeline.errors import PipelineError
from pipeline.io import load_tensors, read_json, save_tensors, write_json
from pipeline.models import ModelSpec, build_model
from pipeline.preprocess import WithPreprocessing

WEIGHTS_NAME = "model.safetensors"
CARD_NAME = "model.json"


class ModelFileError(PipelineError):
    pass


def make_card(spec: ModelSpec, meta: dict[str, Any], model_params: dict[str, Any]) -> dict:
    return {
        "arch": spec.arch,
        "model_params": model_params,
        "class_names": meta["class_names"],
        "num_classes": spec.num_classes,
        "input_shape": meta["input_shape"],
        "input_dtype": "uint8",
        "input_layout": "NCHW",
        "normalisation": {"mean": meta["mean"], "std": meta["std"], "scale": "x / 255"},
    }


def spec_from_card(card: dict[str, Any]) -> ModelSpec:
    channels, height, _ = card["input_shape"]
    return ModelSpec(
        arch=card["arch"],
        in_channels=channels,
        image_size=height,
        num_classes=card["num_classes"],
        **card.get("model_params", {}),
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
    """The trained classifier wrapped with its preprocessing (takes uint8 NCHW), and its card."""
    models_dir = Path(models_dir)
    card = read_json(models_dir / CARD_NAME)
    model = build_model(spec_from_card(card))
    model.load_state_dict(load_tensors(models_dir / WEIGHTS_NAME))
    norm = card["normalisation"]
    wrapped = WithPreprocessing(model, norm["mean"], norm["std"])
    return wrapped.eval(), card
