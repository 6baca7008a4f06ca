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


def _entry(path: Path, name: str, raw: object, data_bytes: int, data_start: int = 0) -> TensorEntry:
    if not isinstance(raw, dict):
        raise TensorFileError(f"{path}: header entry {name!r} is not a tensor description")
    dtype, shape, offsets = raw.get("dtype"), raw.get("shape"), raw.get("data_offsets")
    if dtype not in DTYPE_BYTES:
        raise TensorFileError(f"{path}: tensor {name!r} has unknown dtype {dtype!r}")
    if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
        raise TensorFileError(f"{path}: tensor {name!r} has a bad shape {shape!r}")
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(type(o) is int for o in offsets)
        or not 0 <= offsets[0] <= offsets[1] <= data_bytes
    ):
        raise TensorFileError(
            f"{path}: tensor {name!r} claims bytes {offsets!r} but the file holds {data_bytes} "
            "bytes of data (truncated or corrupt)"
        )
    if offsets[1] - offsets[0] != math.prod(shape) * DTYPE_BYTES[dtype]:
        raise TensorFileError(f"{path}: tensor {name!r}: byte range does not match {dtype}{shape}")
    return TensorEntry(dtype, tuple(shape), data_start + offsets[0])


def read_header(path: str | Path) -> dict[str, TensorEntry]:
    """Every tensor's dtype and shape, after checking that the file really holds its bytes."""
    path = Path(path)
    try:
        with open_regular(path) as handle:
            size = os.fstat(handle.fileno()).st_size
            prefix = handle.read(8)
            length = int.from_bytes(prefix, "little") if len(prefix) == 8 else -1
            if not 0 < length <= min(MAX_HEADER_BYTES, size - 8):
                raise TensorFileError(
                    f"{path}: not a safetensors file, or truncated ({size} bytes; the header "
                    f"length field says {length})"
                )
            header = json.loads(handle.read(length))
    except OSError as error:
        raise TensorFileError(f"{path}: cannot read ({error.strerror or error})") from None
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise TensorFileError(f"{path}: safetensors header is not valid JSON") from None
    except RecursionError:  # "[[[[...": json.loads recurses once per level
        raise TensorFileError(
            f"{path}: safetensors header is nested too deeply (not a safetensors file)"
        ) from None
    if not isinstance(header, dict):
        raise TensorFileError(f"{path}: safetensors header is not a JSON object")
    header.pop("__metadata__", None)
    data_bytes = size - 8 - length
    return {name: _entry(path, name, raw, data_bytes, 8 + length) for name, raw in header.items()}
