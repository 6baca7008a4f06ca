"""Stage check_params: validate params.yaml before any stage that owns outputs runs.

DVC deletes a stage's outputs before running it, so a stage that refused bad params itself
would already have lost the previous good outputs. This stage runs first on every change to
params.yaml; when it fails, `dvc repro` stops before anything is removed. Beyond the schema it
checks every registry name (arch, source, provider, variant) and the model's size. Its output's
content never changes for valid params, so downstream stages rerun only for their own params.
"""

import sys
from pathlib import Path

# This checkout's src/ before any installed copy (docs/architecture.md, "Every stage runs ...").
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from pipeline.core import paths
from pipeline.core.config import Params
from pipeline.core.io import write_json
from pipeline.core.stage import run_stage
from pipeline.tools.params_check import check_params as check_beyond_schema


def check_params(params: Params) -> None:
    check_beyond_schema(params)
    write_json(paths.PARAMS_CHECK, {"params": str(paths.PARAMS), "valid": True})


if __name__ == "__main__":
    run_stage("check_params", check_params)
