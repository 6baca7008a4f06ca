"""What every stage script shares: load params, run, and turn user errors into one line."""

from __future__ import annotations

import sys
from collections.abc import Callable

from pipeline.core import paths
from pipeline.core.config import Params, load_params
from pipeline.core.errors import PipelineError


def run_stage(name: str, stage: Callable[[Params], object]) -> None:
    """Run ``stage`` with validated params; a PipelineError exits 1 with one line, no traceback.

    Stages write every output atomically, so a failure leaves the previous outputs in place.
    """
    try:
        stage(load_params(paths.PARAMS))
    except PipelineError as error:
        print(f"{name}: error: {error}", file=sys.stderr)
        sys.exit(1)
