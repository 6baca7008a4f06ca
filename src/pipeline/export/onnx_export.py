"""PyTorch -> ONNX with a dynamic batch axis and the metadata a deployer needs."""

from __future__ import annotations

import contextlib
import io
import itertools
import json
from pathlib import Path

import onnx
import torch
from torch import nn

from pipeline.core.io import atomic_open
from pipeline.export.graphs import walk_nodes
from pipeline.export.safety import check_onnx_file
from pipeline.models.files import ModelCard

INPUT_NAME = "images"
OUTPUT_NAME = "logits"


def metadata_props(card: ModelCard, include_preprocessing: bool, params_hash: str) -> dict:
    norm = card.normalisation
    props = {
        "class_names": json.dumps(list(card.class_names)),
        "input_layout": "NCHW",
        "input_dtype": "uint8" if include_preprocessing else "float32",
        "input_shape": json.dumps(["batch", *card.input_shape]),
        "preprocessing": "included" if include_preprocessing else "(x / 255 - mean) / std",
        "mean": json.dumps(list(norm.mean)),
        "std": json.dumps(list(norm.std)),
        "params_hash": params_hash,
        "variant": "fp32",
    }
    if pretrained := card.pretrained:  # fine-tuned: from which weights, made for what size
        props["pretrained_weights"] = str(pretrained.get("weights"))
        props["pretrained_sha256"] = str(pretrained.get("sha256"))
        props["pretrained_input_size"] = json.dumps(pretrained.get("input_size"))
    return props


def set_metadata(proto: onnx.ModelProto, metadata: dict[str, str]) -> None:
    """Replace the model's metadata_props (tools such as the quantiser add their own)."""
    del proto.metadata_props[:]
    onnx.helper.set_model_props(proto, metadata)


# Node metadata torch's exporter fills with the Python stack trace of each op: absolute paths of
# this checkout's source files, so the same model exported from another clone (or user's home
# directory) would differ byte for byte and ship those paths to whoever deploys it.
SOURCE_TRACE_KEYS = frozenset({"pkg.torch.onnx.stack_trace"})


def strip_source_traces(proto: onnx.ModelProto) -> None:
    """Drop :data:`SOURCE_TRACE_KEYS` from every node, in subgraphs and functions too."""
    graphs = [proto.graph, *proto.functions]
    for node in itertools.chain.from_iterable(walk_nodes(graph) for graph in graphs):
        kept = [prop for prop in node.metadata_props if prop.key not in SOURCE_TRACE_KEYS]
        del node.metadata_props[:]
        node.metadata_props.extend(kept)


def save_checked(proto: onnx.ModelProto, out_path: str | Path) -> None:
    """Write ``proto`` beside ``out_path`` and move it into place only after it passes checks."""
    with atomic_open(out_path, "wb", check=check_onnx_file) as handle:
        handle.write(proto.SerializeToString())


def export_onnx(
    model: nn.Module,
    example: torch.Tensor,
    out_path: str | Path,
    opset: int,
    metadata: dict[str, str],
) -> None:
    """Export ``model`` (eval mode, on CPU) as a checked ONNX file with a dynamic batch axis."""
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
    strip_source_traces(proto)
    set_metadata(proto, metadata)
    save_checked(proto, out_path)
