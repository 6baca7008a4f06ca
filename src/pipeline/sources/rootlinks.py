"""Symbolic links under ``data.root``: where they may lead, one rule for every file source.

A link may lead anywhere inside ``data.root``, or into the DVC cache of the project holding it
(where DVC's ``symlink`` cache type points). A link that leads anywhere else could make prepare
read any file on the machine, so it stops prepare before any byte is read through it. A link
that leads nowhere (broken, or a loop) escapes nothing: reading through it fails, and the
source reports that as it reports any unreadable file.
"""

from __future__ import annotations

import os
from pathlib import Path

from pipeline.prepared.links import dvc_caches
from pipeline.sources.errors import DataSourceError


def allowed_roots(root: Path) -> list[Path]:
    """data.root itself, and the DVC cache of the project holding it (``.dvc/cache``)."""
    return [root.resolve(), *dvc_caches(root)]


def escapes(path: Path, allowed: list[Path]) -> bool:
    """A symbolic link whose target lies outside every allowed folder."""
    if not path.is_symlink():
        return False
    try:
        target = path.resolve()
    except (RuntimeError, OSError):  # a link loop (RuntimeError up to Python 3.12): no target
        return False
    return not any(target.is_relative_to(folder) for folder in allowed)


def escaping_parts(root: Path, relative: str, allowed: list[Path]) -> list[str]:
    """The links on the way from ``root`` to ``root/relative`` (the file itself included)
    that lead outside, as paths relative to ``root``."""
    parts = Path(relative).parts
    return [
        Path(*parts[:depth]).as_posix()
        for depth in range(1, len(parts) + 1)
        if escapes(root.joinpath(*parts[:depth]), allowed)
    ]


def refuse_escaping_links(root: Path, escaping: list[str]) -> None:
    """One line listing the first links that lead outside (relative to ``root``), if any."""
    if not escaping:
        return
    shown = "; ".join(f"{name} -> {os.readlink(root / name)}" for name in sorted(escaping)[:3])
    more = f"; and {len(escaping) - 3} more" if len(escaping) > 3 else ""
    raise DataSourceError(
        f"{len(escaping)} symbolic link(s) in {str(root)!r} lead outside data.root ({shown}"
        f"{more}); copy the files in instead of linking them"
    )
