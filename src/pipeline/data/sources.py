"""Source registry: ``data.source`` -> a loader returning :class:`SourceData`.

``load_source`` then ``check_quarantine`` is what the prepare stage calls.
"""

from __future__ import annotations

from collections.abc import Callable

from pipeline.config import DataParams
from pipeline.data import cifar, digits, imagefolder, mnist
from pipeline.data.errors import DataSourceError
from pipeline.data.types import SourceData

__all__ = ["LOADERS", "DataSourceError", "check_quarantine", "load_source"]


# data.source -> loader; check_params refuses a name that is not here.
LOADERS: dict[str, Callable[[DataParams], SourceData]] = {
    "digits": lambda params: digits.load(),
    "mnist": mnist.load,
    "fashion_mnist": mnist.load,
    "cifar10": cifar.load,
    "imagefolder": imagefolder.load,
}


def load_source(params: DataParams) -> SourceData:
    loader = LOADERS.get(params.source)
    if loader is None:
        raise DataSourceError(f"data.source {params.source!r} is not implemented")
    return loader(params)


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
