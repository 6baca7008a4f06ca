"""Deterministic stratified train/val/test split."""

from __future__ import annotations

import numpy as np
from sklearn.model_selection import train_test_split

from pipeline.core.errors import PipelineError
from pipeline.prepared.types import LabelledImages, SourceData


class SplitError(PipelineError):
    """Too few images (or classes) for the requested split."""


def _first_of_each_group(pool: LabelledImages) -> np.ndarray:
    """Rows that stand for their group (every row when there are no groups)."""
    if pool.groups is None:
        return np.arange(len(pool))
    return np.sort(np.unique(pool.groups, return_index=True)[1])


def _stratified(
    pool: LabelledImages, fraction: float, seed: int, what: str
) -> tuple[LabelledImages, LabelledImages]:
    classes = np.unique(pool.labels)
    units = _first_of_each_group(pool)
    held = int(round(len(units) * fraction))
    if len(classes) < 2:
        raise SplitError(f"need at least 2 classes, found {len(classes)}")
    if held < len(classes) or len(units) - held < len(classes):
        raise SplitError(
            f"{len(units)} {'distinct ' if pool.groups is not None else ''}images cannot give "
            f"a {what} split of {fraction:g} "
            f"with every one of {len(classes)} classes on both sides"
        )
    keep, hold = train_test_split(
        units, test_size=held, random_state=seed, shuffle=True, stratify=pool.labels[units]
    )
    if pool.groups is not None:
        # Byte-identical copies follow the row that stands for them: never on both sides.
        held_rows = np.isin(pool.groups, pool.groups[hold])
        keep, hold = np.flatnonzero(~held_rows), np.flatnonzero(held_rows)
    # Sorted indices keep the output independent of sklearn's internal shuffling order.
    return pool.subset(np.sort(keep)), pool.subset(np.sort(hold))


def split(source: SourceData, val_fraction: float, test_fraction: float, seed: int) -> dict:
    """Return {"train", "val", "test"} -> LabelledImages; same inputs give identical bytes."""
    if "all" in source.pools:
        rest, test = _stratified(source.pools["all"], test_fraction, seed, "test")
        val_of_rest = val_fraction / (1.0 - test_fraction)
        train, val = _stratified(rest, val_of_rest, seed + 1, "val")
    else:
        train, val = _stratified(source.pools["train"], val_fraction, seed, "val")
        test = source.pools["test"]
    return {"train": train, "val": val, "test": test}
