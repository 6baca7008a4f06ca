"""Checks an ONNX file must pass before onnxruntime ever opens it."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError
from onnx import TensorProto
from onnx.external_data_helper import uses_external_data

from pipeline.core.errors import PipelineError, first_line
from pipeline.export.graphs import subgraphs
from pipeline.prepared.links import links_into_dvc_cache


class UnsafeModelError(PipelineError):
    pass


# Types onnx packs below one byte per element in raw data, as onnx.helper.make_tensor does;
# looked up by name because older onnx releases lack some of them.
_PACKED_BITS = {
    getattr(TensorProto, name): bits
    for name, bits in {
        "UINT4": 4,
        "INT4": 4,
        "FLOAT4E2M1": 4,
        "UINT2": 2,
        "INT2": 2,
        "FLOAT6E2M3": 6,
        "FLOAT6E3M2": 6,
    }.items()
    if hasattr(TensorProto, name)
}
# A byte count is plain ASCII digits; 20 of them hold any 64-bit size (int() alone would
# also take "+5", " 5", "5_0" and non-ASCII digits).
_BYTE_COUNT = re.compile(r"[0-9]{1,20}")


def _short(text: str) -> str:
    """``repr`` of a value from the file, cut so that a hostile one cannot flood the message."""
    return repr(text) if len(text) <= 60 else repr(text[:60]) + "..."


def _sparse_parts(sparse: onnx.SparseTensorProto) -> Iterator[onnx.TensorProto]:
    yield sparse.values
    yield sparse.indices


def _node_tensors(nodes: Iterable[onnx.NodeProto]) -> Iterator[onnx.TensorProto]:
    """Tensors in the nodes' attributes, sparse ones and those of If/Loop/Scan bodies included."""
    for node in nodes:
        for attribute in node.attribute:
            if attribute.HasField("t"):
                yield attribute.t
            yield from attribute.tensors
            if attribute.HasField("sparse_tensor"):
                yield from _sparse_parts(attribute.sparse_tensor)
            for sparse in attribute.sparse_tensors:
                yield from _sparse_parts(sparse)
        for subgraph in subgraphs(node):
            yield from _graph_tensors(subgraph)


def _graph_tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    """Every tensor of a graph: dense and sparse initializers, attributes, subgraphs."""
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield from _sparse_parts(sparse)
    yield from _node_tensors(graph.node)


def _model_tensors(model: onnx.ModelProto) -> Iterator[onnx.TensorProto]:
    # onnx's own walker (external_data_helper._get_all_tensors) is private and skips sparse
    # tensors, which onnxruntime also reads from external files.
    yield from _graph_tensors(model.graph)
    for function in model.functions:
        yield from _node_tensors(function.node)


def _external_entries(path: Path, tensor: onnx.TensorProto) -> dict[str, str]:
    entries: dict[str, str] = {}
    for entry in tensor.external_data:
        # onnx keeps the last of repeated keys; another reader may keep the first.
        if entry.key in entries:
            key, name = _short(entry.key), _short(tensor.name)
            raise UnsafeModelError(f"{path}: tensor {name} repeats external data key {key}")
        entries[entry.key] = entry.value
    return entries


def _data_file(path: Path, folder: Path, location: str) -> Path:
    """The regular file ``location`` names inside ``folder``: no link, no ONNX model."""
    try:
        return _probe_data_file(path, folder, location)
    except (OSError, ValueError) as error:  # a NUL byte, a name too long for the file system
        # strerror, not str(error): that repeats the whole hostile name.
        reason = getattr(error, "strerror", None) or first_line(error)
        raise UnsafeModelError(
            f"{path}: external data {_short(location)} cannot be opened: {reason}"
        ) from None


def _probe_data_file(path: Path, folder: Path, location: str) -> Path:
    target = folder / location
    if Path(location).is_absolute() or not target.resolve().is_relative_to(folder):
        raise UnsafeModelError(f"{path}: external data {_short(location)} points outside {folder}")
    if target.is_symlink():
        raise UnsafeModelError(f"{path}: external data {_short(location)} is a symbolic link")
    if not target.is_file():
        raise UnsafeModelError(f"{path}: external data {_short(location)} is not a regular file")
    # The model itself or a sibling model (model.int8.onnx, or the final name while
    # atomic_open checks a temporary file): protobuf bytes that would run as weights.
    if target.suffix.lower() == ".onnx" or target.samefile(path):
        raise UnsafeModelError(f"{path}: external data {_short(location)} is an ONNX model file")
    return target


def _byte_count(prefix: str, entries: dict[str, str], key: str) -> int | None:
    value = entries.get(key)
    if value is None:
        return None
    if not _BYTE_COUNT.fullmatch(value):
        raise UnsafeModelError(f"{prefix}: {key} {_short(value)} is not a byte count")
    return int(value)


def _tensor_bytes(prefix: str, tensor: onnx.TensorProto) -> int:
    """The bytes the tensor's dtype and dims need in raw form (strings have no raw form)."""
    try:
        if tensor.data_type == TensorProto.STRING:
            raise KeyError(tensor.data_type)
        itemsize = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
    except KeyError:
        raise UnsafeModelError(
            f"{prefix}: data type {tensor.data_type} cannot be stored as external data"
        ) from None
    if any(dim < 0 for dim in tensor.dims):
        raise UnsafeModelError(f"{prefix}: negative dimension in {_short(str(list(tensor.dims)))}")
    bits = _PACKED_BITS.get(tensor.data_type, itemsize * 8)
    return -(-math.prod(tensor.dims) * bits // 8)


def _check_external_tensor(path: Path, folder: Path, tensor: onnx.TensorProto) -> None:
    """The tensor's bytes lie inside a plain data file in the folder and fit its dtype and dims."""
    entries = _external_entries(path, tensor)
    location = entries.get("location", "")
    target = _data_file(path, folder, location)
    prefix = f"{path}: external data of tensor {_short(tensor.name)} in {_short(location)}"
    offset = _byte_count(prefix, entries, "offset") or 0
    length = _byte_count(prefix, entries, "length")
    needed = _tensor_bytes(prefix, tensor)
    # Without a length, readers take what the dtype and dims need from the offset on.
    read = needed if length is None else length
    size = target.stat().st_size
    if offset + read > size:
        span = f"offset {offset} + {read} bytes"
        raise UnsafeModelError(f"{prefix}: {span} runs past the end of the file ({size} bytes)")
    if read != needed:
        dims = _short(str(list(tensor.dims)))
        raise UnsafeModelError(
            f"{prefix}: length {read} but its dtype and dims {dims} need {needed}"
        )


def check_onnx_file(path: str | Path) -> onnx.ModelProto:
    """Refuse symlinks (other than into the project's DVC cache), files that are not ONNX, and
    external data that is not a plain file in the model's folder or does not fit its tensor,
    then run onnx's full check.

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
    for tensor in _model_tensors(model):
        if uses_external_data(tensor):
            _check_external_tensor(path, folder, tensor)
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as error:
        raise UnsafeModelError(f"{path}: ONNX check failed: {first_line(error)}") from None
    return model
