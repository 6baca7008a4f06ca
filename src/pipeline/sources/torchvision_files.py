"""What the torchvision-format sources share: locating their files, hashing, downloading.

Files are read from ``data.root`` in torchvision's own layout, so a folder torchvision filled
(or one a user copied) works offline. Only a missing file with ``data.download: true`` ever
touches the network, and then through torchvision's own download code. Something other than a
regular file where a file belongs (a named pipe, a folder) and a symbolic link leading outside
``data.root`` (the rule of sources.rootlinks) stop prepare before anything is read.
"""

from __future__ import annotations

import stat
from collections.abc import Callable
from pathlib import Path

from pipeline.core.errors import first_line
from pipeline.core.io import sha256_file
from pipeline.sources.errors import DataSourceError
from pipeline.sources.rootlinks import allowed_roots, escaping_parts, refuse_escaping_links


def _is_regular(path: Path) -> bool:
    """True for a regular file (through links), False when nothing is there; a one-line
    DataSourceError for anything else (a pipe would block the read, a folder cannot be read)."""
    try:
        mode = path.stat().st_mode
    except (FileNotFoundError, NotADirectoryError):  # a broken link counts as missing too
        return False
    except OSError as error:  # permissions, a link loop
        raise DataSourceError(f"{path}: unreadable ({error.strerror or error})") from None
    if not stat.S_ISREG(mode):
        raise DataSourceError(
            f"{path}: not a regular file (a folder, pipe, device or socket); put the file there"
        )
    return True


def find(root: Path, relative: str, compressed_ok: bool) -> Path | None:
    """The file at ``root/relative`` (or its ``.gz`` twin when allowed), else None."""
    plain = root / relative
    if _is_regular(plain):
        return plain
    gz = root / f"{relative}.gz"
    if compressed_ok and _is_regular(gz):
        return gz
    return None


def _find_all(root: Path, names: list[str], compressed_ok: bool) -> dict[str, Path | None]:
    """Every name's file, or None; links leading outside data.root are refused first."""
    allowed = allowed_roots(root)
    suffixes = ("", ".gz") if compressed_ok else ("",)
    candidates = [f"{name}{suffix}" for name in names for suffix in suffixes]
    escaping = {part for name in candidates for part in escaping_parts(root, name, allowed)}
    refuse_escaping_links(root, sorted(escaping))
    return {name: find(root, name, compressed_ok) for name in names}


def missing_error(
    source: str, root: Path, missing: list[str], compressed_ok: bool
) -> DataSourceError:
    suffix = "[.gz]" if compressed_ok else ""
    expected = ", ".join(f"{(root / name).as_posix()}{suffix}" for name in missing)
    return DataSourceError(
        f"data.source {source}: missing {expected}; set data.download: true or put the files there"
    )


def locate(
    source: str,
    root: Path,
    names: list[str],
    *,
    compressed_ok: bool,
    download: bool,
    downloader: Callable[[Path], None],
) -> dict[str, Path]:
    """Map each expected relative name to its file, downloading once if allowed and needed."""
    found = _find_all(root, names, compressed_ok)
    missing = [name for name, path in found.items() if path is None]
    if missing and download:
        try:
            downloader(root)
        except Exception as error:  # network, mirror and checksum failures all end here
            raise DataSourceError(
                f"data.source {source}: download into {root.as_posix()} failed "
                f"({first_line(error)}); put the files there by hand or check the network"
            ) from None
        found = _find_all(root, names, compressed_ok)
        missing = [name for name, path in found.items() if path is None]
    if missing:
        raise missing_error(source, root, missing, compressed_ok)
    return {name: path for name, path in found.items() if path is not None}


def file_hashes(root: Path, files: dict[str, Path]) -> dict[str, str]:
    """Per-file sha256, keyed by the path relative to data.root (portable across machines)."""
    return {path.relative_to(root).as_posix(): sha256_file(path) for path in files.values()}
