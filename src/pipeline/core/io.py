"""Atomic file writes, hashing and the (pickle-free) formats stages hand to each other."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, TypeVar

import numpy as np
import torch
from safetensors.numpy import load_file as load_numpy_file
from safetensors.numpy import save as save_numpy_bytes
from safetensors.torch import load_file as load_torch_file
from safetensors.torch import save as save_torch_bytes

from pipeline.core.reading import open_regular

if TYPE_CHECKING:
    from pydantic import ValidationError


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_open(
    path: str | Path, mode: str = "wb", check: Callable[[Path], object] | None = None
) -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path``; on success fsync it and move it into place.

    A process killed at any moment leaves either the old file or the new one, never half of it.
    ``check`` sees the complete temporary file first; if it raises, nothing is replaced.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    # mkstemp makes the file private (0600); give it the permissions a plain open() would.
    os.fchmod(fd, 0o666 & ~_current_umask())
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        if check is not None:
            check(Path(tmp_name))
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise


def _process_runs(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


def remove_stale_staging(path: str | Path) -> list[Path]:
    """Remove the staging and retired folders (``.<name>.<pid>.<random>.tmp`` / ``.old``) that
    a killed run left beside ``path`` (a killed prepare leaves a dataset-sized one), unless the
    process named in them still runs; folders named without a pid (older runs) go too."""
    path = Path(path)
    pattern = re.compile(rf"^\.{re.escape(path.name)}\.(?:(\d+)\.)?[^.]+\.(?:tmp|old)$")
    removed = []
    for entry in sorted(path.parent.iterdir()) if path.parent.is_dir() else []:
        found = pattern.match(entry.name)
        if not found or entry.is_symlink() or not entry.is_dir():
            continue
        if found.group(1) and _process_runs(int(found.group(1))):
            continue
        shutil.rmtree(entry)
        removed.append(entry)
    if removed:
        names = ", ".join(entry.name for entry in removed)
        print(f"removed what a killed run left beside {path}: {names}", file=sys.stderr)
    return removed


@contextlib.contextmanager
def staged_folder(path: str | Path) -> Iterator[Path]:
    """A new empty folder beside ``path`` to fill; when the block ends without an error it
    replaces ``path`` whole (any old folder is removed after), else it is removed and ``path``
    is left as it was: a failed run never leaves half a folder of outputs. A killed run's
    folders are removed first (``remove_stale_staging``): its pid is in their names."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_staging(path)
    prefix = f".{path.name}.{os.getpid()}."
    staging = Path(tempfile.mkdtemp(prefix=prefix, suffix=".tmp", dir=path.parent))
    os.chmod(staging, 0o777 & ~_current_umask())  # mkdtemp makes it private (0700)
    retired = None
    try:
        yield staging
        if path.exists() or path.is_symlink():
            retired = Path(tempfile.mkdtemp(prefix=prefix, suffix=".old", dir=path.parent))
            os.replace(path, retired / path.name)
        os.replace(staging, path)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if retired is not None and not (path.exists() or path.is_symlink()):
            os.replace(retired / path.name, path)  # the swap failed half-way: put the old back
            shutil.rmtree(retired)
        raise
    if retired is not None:
        shutil.rmtree(retired)


def write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_open(path, "wb") as handle:
        handle.write(data)


def write_text(path: str | Path, text: str) -> None:
    with atomic_open(path, "w") as handle:
        handle.write(text)


def _json_safe(value: Any) -> Any:
    """NaN and infinity are not JSON: they become null so every reader can parse the file."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.generic):
        return _json_safe(value.item())
    return value


def write_json(path: str | Path, payload: Mapping[str, Any] | list[Any]) -> None:
    write_text(path, json.dumps(_json_safe(payload), indent=2, allow_nan=False) + "\n")


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


Record = TypeVar("Record")


def describe_validation_error(error: ValidationError, what: str = "record") -> str:
    """The first problem pydantic found, as one line naming the field: ``field 'a.b[0]': ...``."""
    first = error.errors()[0]
    field = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in first["loc"])
    message = " ".join(first["msg"].split())
    if not field:  # the whole document: not JSON, or not an object
        return f"not a {what} ({message})"
    if first["type"] == "missing":
        return f"field {field.lstrip('.')!r} is missing"
    got = repr(first.get("input"))
    got = got if len(got) <= 60 else got[:57] + "..."
    return f"field {field.lstrip('.')!r}: {message}, got {got}"


def read_json_record(
    path: str | Path, kind: type[Record], error: type[Exception], what: str
) -> Record:
    """The JSON file ``path`` as the dataclass ``kind``, every field strictly typed (``true`` is
    not a count, ``"3"`` not a number); any problem is one ``error`` line naming file and field.
    ``what`` names the document in that line ("model card")."""
    # Imported here: scripts that only write records (benchmarks/gpu_check.py) run without it.
    from pydantic import TypeAdapter, ValidationError

    try:
        with open_regular(path) as handle:
            text = handle.read()
    except OSError as problem:
        raise error(f"{path}: cannot read ({problem.strerror or problem})") from None
    try:
        return TypeAdapter(kind).validate_json(text, strict=True)
    except ValidationError as problem:
        raise error(f"{path}: {describe_validation_error(problem, what)}") from None


def write_json_record(path: str | Path, record: Any, omit_if_none: tuple[str, ...] = ()) -> None:
    """A dataclass as JSON, keys in field order (so the file's bytes follow the class); the
    optional fields named in ``omit_if_none`` are left out while they are None."""
    fields = dataclasses.asdict(record)
    write_json(path, {k: v for k, v in fields.items() if not (k in omit_if_none and v is None)})


def save_arrays(path: str | Path, arrays: Mapping[str, np.ndarray]) -> None:
    write_bytes(path, save_numpy_bytes({k: np.ascontiguousarray(v) for k, v in arrays.items()}))


def load_arrays(path: str | Path) -> dict[str, np.ndarray]:
    return load_numpy_file(str(path))


def save_tensors(
    path: str | Path, tensors: Mapping[str, torch.Tensor], metadata: dict[str, str] | None = None
) -> None:
    cpu = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    write_bytes(path, save_torch_bytes(cpu, metadata=metadata))


def load_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    return load_torch_file(str(path))


def sha256_file(path: str | Path, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open_regular(path) as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_json(payload: Any) -> str:
    """A stable hash of a JSON-able value: keys sorted, no whitespace."""
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return sha256_bytes(canonical.encode())
