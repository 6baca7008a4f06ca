"""Stable hashes that trace an output to its run: of the params, and of the code."""

from __future__ import annotations

import functools
from pathlib import Path

import torch

from pipeline.core.config import Params
from pipeline.core.io import sha256_file, sha256_json


def params_hash(params: Params) -> str:
    return sha256_json(params.model_dump(mode="json"))


@functools.cache
def code_version() -> dict[str, str]:
    """The pipeline package's source (every file under ``src/pipeline``, more than a stage's deps)
    and torch's version: a checkpoint resumes only under the code that wrote it."""
    package = Path(__file__).parent
    files = sorted(
        path for path in package.rglob("*") if path.is_file() and "__pycache__" not in path.parts
    )
    digests = {path.relative_to(package).as_posix(): sha256_file(path) for path in files}
    return {"pipeline": sha256_json(digests), "torch": torch.__version__}
