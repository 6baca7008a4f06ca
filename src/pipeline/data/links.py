"""Where a symbolic link in the data may point: into the project's DVC cache, where DVC's
``symlink`` cache type leaves links to the files it tracks."""

from __future__ import annotations

from pathlib import Path


def dvc_caches(folder: Path) -> list[Path]:
    """``.dvc/cache`` of the project holding ``folder``, found from its path as given and as
    resolved (the two differ when a parent folder is itself a link)."""
    found = []
    for start in (folder.absolute(), folder.resolve()):
        for parent in (start, *start.parents):
            if (parent / ".dvc").is_dir():
                found.append((parent / ".dvc" / "cache").resolve())
                break
    return found
