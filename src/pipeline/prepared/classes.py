"""Whether a file's class list can label a model's outputs: read back from meta.json and
model.json, where a count that disagrees with the names trains a model with outputs no name
describes, and duplicate names merge classes in every per-class table."""

from __future__ import annotations

import re
from collections.abc import Sequence

# What `dvc plots show` cannot carry: DVC writes the confusion plot's data, class names
# included, into a <script> element unescaped, and after `<!--` then `<script` (HTML's escaped
# script states) the browser reads the rest of the page as script: no plot is drawn.
_BREAKS_PLOTS_PAGE = re.compile(r"<!--|<script", re.IGNORECASE)


def page_breaking(name: str) -> str | None:
    """The part of a class name that would stop every plot of the plots page; None if none."""
    found = _BREAKS_PLOTS_PAGE.search(name)
    return found.group() if found else None


def classes_problem(class_names: Sequence[str], num_classes: int) -> str | None:
    """Why ``class_names`` and ``num_classes`` cannot label a classifier; None when they can.
    Prepare writes at least 2 distinct names and their count (sources/split.py refuses fewer)."""
    if num_classes != len(class_names):
        return f"field 'num_classes': {num_classes} for {len(class_names)} class_names"
    if num_classes < 2:
        return f"field 'num_classes': {num_classes}; a classifier needs at least 2 classes"
    seen: set[str] = set()
    for index, name in enumerate(class_names):
        if name in seen:
            return f"field 'class_names[{index}]': {name[:80]!r} is named twice"
        if breaking := page_breaking(name):
            return f"field 'class_names[{index}]': {name[:80]!r} holds {breaking!r}"
        seen.add(name)
    return None
