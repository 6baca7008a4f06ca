"""Where a symbolic link in the data may point: into the project's DVC cache, where DVC's
``symlink`` cache type leaves links to the files it tracks.

The cache is where DVC's config puts it (``dvc cache dir``: ``[cache] dir`` in
``.dvc/config.local``, ``.dvc/config``, the global or the system config, in that order; a
relative path is relative to the folder of the config file that holds it), else
``<project>/.dvc/cache``. The config files are read here, without importing dvc (seconds of
import in every stage). Other cache types (hardlink, reflink, copy) leave regular files, which
readers take as they are (a hard link's st_nlink > 1 is no link to refuse).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

_SECTION = re.compile(r"^\s*\[\s*['\"]?([^\]'\"]+)['\"]?\s*\]\s*$")
_CACHE_DIR = re.compile(r"^\s*dir\s*=\s*(.*?)\s*$")


def _configured_dir(config: Path) -> Path | None:
    """``[cache] dir`` of one DVC config file (configobj syntax), resolved; None if unset."""
    try:
        lines = config.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return None
    section, found = None, None
    for line in lines:
        if line.lstrip().startswith(("#", ";")):
            continue
        header = _SECTION.match(line)
        if header:
            section = header.group(1).strip()
        elif section == "cache" and (value := _CACHE_DIR.match(line)):
            found = value.group(1).strip("'\"")
    if not found:
        return None
    return (config.parent / os.path.expanduser(found)).resolve()


def _config_files(dvc_dir: Path) -> list[Path]:
    """DVC's config files, the one that wins first."""
    xdg = os.environ.get("XDG_CONFIG_HOME") or os.path.expanduser("~/.config")
    user = os.environ.get("DVC_GLOBAL_CONFIG_DIR") or os.path.join(xdg, "dvc")
    system = os.environ.get("DVC_SYSTEM_CONFIG_DIR") or "/etc/xdg/dvc"
    return [dvc_dir / "config.local", dvc_dir / "config", Path(user, "config"),
            Path(system, "config")]  # fmt: skip


def cache_dir(project: Path) -> Path:
    """The DVC cache of the project whose root is ``project``, as DVC's config sets it."""
    dvc_dir = project / ".dvc"
    for config in _config_files(dvc_dir):
        configured = _configured_dir(config)
        if configured is not None:
            return configured
    return (dvc_dir / "cache").resolve()


def dvc_caches(folder: Path) -> list[Path]:
    """The DVC cache of the project holding ``folder``, found from its path as given and as
    resolved (the two differ when a parent folder is itself a link)."""
    found = []
    for start in (folder.absolute(), folder.resolve()):
        for parent in (start, *start.parents):
            if (parent / ".dvc").is_dir():
                found.append(cache_dir(parent))
                break
    return found


def links_into_dvc_cache(path: Path) -> bool:
    """``path`` is a symbolic link whose target lies in its project's DVC cache."""
    target = path.resolve()
    return path.is_symlink() and any(target.is_relative_to(c) for c in dvc_caches(path.parent))
