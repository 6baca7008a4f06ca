"""Read and check a safetensors file's header without touching its tensor data.

A safetensors file is an 8-byte little-endian header length, a JSON header naming every
tensor's dtype, shape and byte range, then the data. Checking the header first means a file
with the wrong tensors, or one whose header claims more data than the file holds, is refused
in one line before any tensor is read (or mapped) into memory.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

from pipeline.core.errors import PipelineError
from pipeline.core.reading import open_regular

# safetensors' own limit on the header; a larger claim is not a safetensors file.
MAX_HEADER_BYTES = 100 * 1024 * 1024
DTYPE_BYTES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "F8_E4M3FNUZ": 1, "F8_E5M2FNUZ": 1,
    "U16": 2, "I16": 2, "F16": 2, "BF16": 2,
    "U32": 4, "I32": 4, "F32": 4,
    "U64": 8, "I64": 8, "F64": 8, "C64": 8,
}  # fmt: skip


class TensorFileError(PipelineError):
    """A safetensors file that is truncated, malformed, or not what the reader expects."""


@dataclass(frozen=True)
class TensorEntry:
    dtype: str
    shape: tuple[int, ...]
    start: int = 0  # file offset of the tensor's first byte (for memory maps)


def _entry(label: object, name: str, raw: object, data_bytes: int, data_start: int) -> TensorEntry:
    if not isinstance(raw, dict):
        raise TensorFileError(f"{label}: header entry {name!r} is not a tensor description")
    dtype, shape, offsets = raw.get("dtype"), raw.get("shape"), raw.get("data_offsets")
    if dtype not in DTYPE_BYTES:
        raise TensorFileError(f"{label}: tensor {name!r} has unknown dtype {dtype!r}")
    if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
        raise TensorFileError(f"{label}: tensor {name!r} has a bad shape {shape!r}")
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(type(o) is int for o in offsets)
        or not 0 <= offsets[0] <= offsets[1] <= data_bytes
    ):
        raise TensorFileError(
            f"{label}: tensor {name!r} claims bytes {offsets!r} but the file holds {data_bytes} "
            "bytes of data (truncated or corrupt)"
        )
    if offsets[1] - offsets[0] != math.prod(shape) * DTYPE_BYTES[dtype]:
        raise TensorFileError(f"{label}: tensor {name!r}: byte range does not match {dtype}{shape}")
    return TensorEntry(dtype, tuple(shape), data_start + offsets[0])


def _length(label: object, prefix: bytes, size: int) -> int:
    """The header length the first 8 bytes give, if the file can hold a header that long."""
    length = int.from_bytes(prefix, "little") if len(prefix) == 8 else -1
    if not 0 < length <= min(MAX_HEADER_BYTES, size - 8):
        raise TensorFileError(
            f"{label}: not a safetensors file, or truncated ({size} bytes; the header "
            f"length field says {length})"
        )
    return length


def _entries(
    label: object, text: bytes, data_bytes: int, data_start: int
) -> dict[str, TensorEntry]:
    try:
        header = json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise TensorFileError(f"{label}: safetensors header is not valid JSON") from None
    except RecursionError:  # "[[[[...": json.loads recurses once per level
        raise TensorFileError(
            f"{label}: safetensors header is nested too deeply (not a safetensors file)"
        ) from None
    if not isinstance(header, dict):
        raise TensorFileError(f"{label}: safetensors header is not a JSON object")
    header.pop("__metadata__", None)
    return {name: _entry(label, name, raw, data_bytes, data_start) for name, raw in header.items()}


def read_header(path: str | Path) -> dict[str, TensorEntry]:
    """Every tensor's dtype and shape, after checking that the file really holds its bytes."""
    path = Path(path)
    try:
        with open_regular(path) as handle:
            size = os.fstat(handle.fileno()).st_size
            length = _length(path, handle.read(8), size)
            text = handle.read(length)
    except OSError as error:
        raise TensorFileError(f"{path}: cannot read ({error.strerror or error})") from None
    return _entries(path, text, size - 8 - length, 8 + length)


def header_of(data: bytes, label: object) -> dict[str, TensorEntry]:
    """read_header for a file already read into memory: the bytes checked are the bytes used."""
    length = _length(label, data[:8], len(data))
    return _entries(label, data[8 : 8 + length], len(data) - 8 - length, 8 + length)
