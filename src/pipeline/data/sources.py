"""Source registry: ``data.source`` -> a loader returning :class:`SourceData`."""

from __future__ import annotations

from pipeline.config import DataParams
from pipeline.data import digits
from pipeline.data.types import SourceData
from pipeline.errors import PipelineError


class DataSourceError(PipelineError):
    """A source's files are missing or unusable; the message says what to put where."""


def load_source(params: DataParams) -> SourceData:
    if params.source == "digits":
        return digits.load()
    raise DataSourceError(f"data.source {params.source!r} is not implemented yet")
