"""Checks an ONNX file must pass before onnxruntime ever opens it."""

from __future__ import annotations

from pathlib import Path

import onnx
from google.protobuf.message import DecodeError
from onnx.external_data_helper import uses_external_data

from pipeline.core.errors import PipelineError, first_line
from pipeline.export.graphs import subgraphs
from pipeline.prepared.links import links_into_dvc_cache


class UnsafeModelError(PipelineError):
    pass


def _graph_tensors(graph: onnx.GraphProto):
    """Every tensor of a graph: initializers and attribute tensors, subgraphs included."""
    yield from graph.initializer
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.HasField("t"):
                yield attribute.t
            yield from attribute.tensors
        for subgraph in subgraphs(node):
            yield from _graph_tensors(subgraph)


def _external_locations(model: onnx.ModelProto) -> list[str]:
    locations = []
    for tensor in _graph_tensors(model.graph):
        if uses_external_data(tensor):
            entries = {entry.key: entry.value for entry in tensor.external_data}
            locations.append(entries.get("location", ""))
    return locations


def check_onnx_file(path: str | Path) -> onnx.ModelProto:
    """Refuse symlinks (other than into the project's DVC cache), files that are not ONNX, and
    external data outside the model's folder, then run onnx's full check.

    Returns the loaded model (without external data) for callers that need its metadata.
    """
    path = Path(path)
    # DVC's symlink cache type links models/onnx/*.onnx into the cache; any other link is refused.
    if path.is_symlink() and not links_into_dvc_cache(path):
        raise UnsafeModelError(f"{path}: ONNX model is a symbolic link; refusing to load it")
    if not path.is_file():
        raise UnsafeModelError(f"{path}: no such ONNX file")
    folder = path.parent.resolve()
    try:
        model = onnx.load(str(path), load_external_data=False)
    except DecodeError:
        # A zip, a pickle, anything that is not protobuf: the same rule as a failed check.
        raise UnsafeModelError(f"{path}: not an ONNX model (cannot parse it)") from None
    for location in _external_locations(model):
        target = folder / location
        if Path(location).is_absolute() or not target.resolve().is_relative_to(folder):
            raise UnsafeModelError(f"{path}: external data {location!r} points outside {folder}")
        if target.is_symlink():
            raise UnsafeModelError(f"{path}: external data {location!r} is a symbolic link")
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as error:
        raise UnsafeModelError(f"{path}: ONNX check failed: {first_line(error)}") from None
    return model
