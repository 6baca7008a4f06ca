"""The prepare stage's recipe: load a source, split it, write the prepared folder, and return
the data record (the stage script writes it to metrics/, like every stage)."""

from __future__ import annotations

import sys
from dataclasses import asdict, replace
from pathlib import Path

from pipeline.core import paths
from pipeline.core.config import Params
from pipeline.prepared.shards import WrittenSplit
from pipeline.prepared.storage import PreparedMeta, write_prepared
from pipeline.prepared.types import SourceData
from pipeline.sources.errors import DataSourceError
from pipeline.sources.load import check_quarantine, load_source
from pipeline.sources.split import split

MAX_LISTED_DUPLICATES = 20


def data_report(meta: PreparedMeta, files_seen: int, duplicates: list | None = None) -> dict:
    quarantined = [asdict(entry) for entry in meta.quarantined]
    report = {
        "source": meta.source,
        "counts": meta.counts,
        "num_classes": meta.num_classes,
        "input_shape": list(meta.input_shape),
        "files_seen": files_seen,
        "quarantined_count": len(quarantined),
        "quarantined": quarantined,
    }
    if duplicates is not None:  # only sources that look for byte-identical files report them
        report["duplicate_files"] = len(duplicates)
        report["duplicates"] = [
            {"path": copy, "same_as": original}
            for copy, original in duplicates[:MAX_LISTED_DUPLICATES]
        ]
    return report


def written_checks(source: SourceData, max_bad_fraction: float):
    """What prepare re-checks once a lazy source's files are decoded (some fail only then): the
    quarantine limit over every failed file, and every class still in the train split."""

    def check(meta: PreparedMeta, written: dict[str, WrittenSplit]) -> None:
        check_quarantine(replace(source, quarantined=list(meta.quarantined)), max_bad_fraction)
        counts = written["train"].label_counts
        missing = [name for label, name in enumerate(meta.class_names)
                   if label >= len(counts) or counts[label] == 0]  # fmt: skip
        if missing:
            raise DataSourceError(
                f"class(es) with no usable train image after decoding: {', '.join(missing)}"
            )

    return check


def prepare_data(params: Params, root: Path = Path(".")) -> dict:
    source = load_source(params.data)
    check_quarantine(source, params.data.max_bad_fraction)
    splits = split(source, params.data.val_fraction, params.data.test_fraction, params.seed)
    meta = write_prepared(
        root / paths.PREPARED_DIR,
        source,
        splits,
        params.data.shard_images,
        params.seed,
        written_checks(source, params.data.max_bad_fraction),
    )
    report = data_report(meta, source.files_seen, source.duplicates)
    shape = list(meta.input_shape)
    print(f"prepared {source.name}: {meta.counts} shape {shape}", file=sys.stderr)
    if source.duplicates:
        print(
            f"prepare: {len(source.duplicates)} byte-identical file(s), each kept in the split "
            f"of its original (listed in {paths.DATA_DETAILS})",
            file=sys.stderr,
        )
    return report
