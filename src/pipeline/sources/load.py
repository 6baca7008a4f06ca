"""``data.source`` -> :class:`SourceData`, through the loaders registered in pipeline.core.catalog.

``load_source`` then ``check_quarantine`` is what the prepare stage calls.
"""

from __future__ import annotations

from pipeline.core.catalog import SOURCES, resolve
from pipeline.core.config import DataParams
from pipeline.prepared.types import SourceData
from pipeline.sources.errors import DataSourceError

__all__ = ["DataSourceError", "check_quarantine", "load_source"]


def load_source(params: DataParams) -> SourceData:
    """The loader registered for ``data.source`` in pipeline.core.catalog (in this package)."""
    if params.source not in SOURCES:
        raise DataSourceError(f"data.source {params.source!r} is not implemented")
    return resolve(SOURCES[params.source].target, __package__)(params)


def check_quarantine(source: SourceData, max_bad_fraction: float) -> None:
    """Fail when more than ``max_bad_fraction`` (data.max_bad_fraction) of the files seen
    were quarantined; the message names the counts and the first few files."""
    bad, seen = len(source.quarantined), source.files_seen
    if bad == 0 or seen == 0 or bad / seen <= max_bad_fraction:
        return
    examples = "; ".join(f"{q.path}: {q.reason}" for q in source.quarantined[:3])
    more = f"; and {bad - 3} more" if bad > 3 else ""
    raise DataSourceError(
        f"{bad} of {seen} files quarantined ({bad / seen:.1%}) exceeds data.max_bad_fraction="
        f"{max_bad_fraction:g} ({examples}{more}); fix or remove them, or raise the limit"
    )
