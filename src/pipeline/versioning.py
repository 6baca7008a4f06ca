"""A stable hash of the params, stamped into exported models to trace them to a run."""

from __future__ import annotations

from pipeline.config import Params
from pipeline.io import sha256_json


def params_hash(params: Params) -> str:
    return sha256_json(params.model_dump(mode="json"))
