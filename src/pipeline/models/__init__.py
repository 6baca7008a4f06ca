"""Model registry: ``model.arch`` -> a constructor taking the input shape and class count."""

from pipeline.models.registry import ModelSpec, available_archs, build_model

__all__ = ["ModelSpec", "available_archs", "build_model"]
