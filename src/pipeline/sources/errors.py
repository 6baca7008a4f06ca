"""The one error every data source raises (kept apart so loaders and the registry share it)."""

from __future__ import annotations

from pipeline.core.errors import PipelineError


class DataSourceError(PipelineError):
    """A source's files are missing or unusable; the message says what to put where."""
