"""PyTorch -> ONNX with a dynamic batch axis and the metadata a deployer needs."""

from __future__ import annotations

import contextlib
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import onnx
import torch
from torch import nn

from pipeline.export.safety import check_onnx_file

INPUT_NAME = "images"
OUTPUT_NAME = "logits"


def metadata_props(card: dict[str, Any], include_preprocessing: bool, params_hash: str) -> dict:
    norm = card["normalisation"]
    return {
        "class_names": json.dumps(card["class_names"]),
        "input_layout": "NCHW",
        "input_dtype": "uint8" if include_preprocessing else "float32",
        "input_shape": json.dumps(["batch", *card["input_shape"]]),
        "preprocessing": "included" if include_preprocessing else "(x / 255 - mean) / std",
        "mean": json.dumps(norm["mean"]),
        "std": json.dumps(norm["std"]),
        "params_hash": params_hash,
    }


def export_onnx(
    model: nn.Module,
    example: torch.Tensor,
    out_path: str | Path,
    opset: int,
    metadata: dict[str, str],
) -> None:
    """Export ``model`` (eval mode, on CPU) and move it into place only after it passes checks."""
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval().to("cpu")
    # The exporter prints pages of progress; keep the stage log to what a person reads.
    with contextlib.redirect_stdout(io.StringIO()):
        program = torch.onnx.export(
            model,
            (example,),
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            opset_version=opset,
            dynamo=True,
            dynamic_shapes=({0: torch.export.Dim("batch", min=1)},),
            verbose=False,
        )
    proto = program.model_proto
    onnx.helper.set_model_props(proto, metadata)
    fd, tmp_name = tempfile.mkstemp(
        suffix=".onnx", dir=out_path.parent, prefix=f".{out_path.name}."
    )
    os.close(fd)
    try:
        onnx.save_model(proto, tmp_name)
        check_onnx_file(tmp_name)
        os.replace(tmp_name, out_path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
