"""Model registry: ``model.arch`` -> a constructor taking the input shape and class count."""

from pipeline.models.build import (
    MAX_PARAMETERS,
    ModelSpec,
    UnknownModelError,
    available_archs,
    build_model,
    check_model_size,
    parameter_count,
)

__all__ = [
    "MAX_PARAMETERS",
    "ModelSpec",
    "UnknownModelError",
    "available_archs",
    "build_model",
    "check_model_size",
    "parameter_count",
]
