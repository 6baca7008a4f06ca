"""A stable hash of the params, stamped into exported models to trace them to a run."""

from __future__ import annotations

import hashlib
import json

from pipeline.config import Params


def params_hash(params: Params) -> str:
    canonical = json.dumps(params.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()
