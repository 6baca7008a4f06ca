"""ImageFolder source: ``data.root/<class name>/.../<image>``, every file fully decoded.

Class names are the sorted sub-folder names; files are taken in sorted order, so the same
files give byte-identical arrays whatever the worker count. Files that cannot be used (empty,
unreadable, a broken link or a link loop, not an allowed image format, truncated, over
``data.max_image_pixels``) are quarantined with their reason; hidden files and folders
(``.name``) are skipped, and a folder that cannot be listed stops prepare. Symbolic links that
lead outside ``data.root`` (other than into the project's DVC cache, where DVC's ``symlink``
cache type points; see sources.rootlinks) stop prepare before any file is read, and
byte-identical files share a group id so the split keeps them on one side. File names need not
be UTF-8.

Two passes over a process pool: at load, a cheap header probe (sha256, size, mode) that fixes
the output shape; the full decode waits for prepare, which asks for one shard's rows at a time
(``FolderImages.decode``): workers write them straight into one preallocated uint8 array, so
memory holds one shard, never the dataset.
"""

from __future__ import annotations

import hashlib
import os
from functools import partial
from pathlib import Path

import numpy as np

from pipeline.core.config import DataParams
from pipeline.core.progress import Progress
from pipeline.prepared.classes import page_breaking
from pipeline.prepared.types import Decoded, LabelledImages, Quarantined, SourceData
from pipeline.sources.decode import GREY_MODES, Probe, decode_into, probe_chunk, target
from pipeline.sources.errors import DataSourceError
from pipeline.sources.parallel import ChunkRunner, chunk_size_for, resolve_workers, shared_empty
from pipeline.sources.rootlinks import allowed_roots, escapes, refuse_escaping_links


def _unreadable(root: Path, error: OSError) -> DataSourceError:
    where = os.path.relpath(error.filename or root, root)
    return DataSourceError(
        f"cannot read {where!r} in data.root {str(root)!r} ({error.strerror or error}): "
        "fix its permissions or remove it"
    )


def _files_under(
    root: Path, folder: Path, allowed: list[Path], escaping: list[str], unreadable: list[OSError]
) -> list[str]:
    found = []
    # A folder that cannot be listed would drop its files silently: its error is kept.
    for dirpath, dirnames, filenames in os.walk(folder, onerror=unreadable.append):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in [*dirnames, *filenames]:
            if not name.startswith(".") and escapes(Path(dirpath, name), allowed):
                escaping.append(Path(dirpath, name).relative_to(root).as_posix())
        for name in filenames:
            if not name.startswith("."):
                found.append(Path(dirpath, name).relative_to(root).as_posix())
    return sorted(found)


def _class_folders(root: Path) -> list[str]:
    """The sorted names of the visible folders in ``root`` (links to folders included)."""
    try:
        return sorted(d.name for d in root.iterdir() if not d.name.startswith(".") and d.is_dir())
    except OSError as error:  # e.g. a link to a folder inside an unreadable folder
        raise _unreadable(root, error) from None


def scan(root: Path) -> tuple[list[str], list[str], list[int]]:
    """Return (class names, relative file paths, labels); one-line errors for bad layouts."""
    if not root.is_dir():
        raise DataSourceError(
            f"data.root {str(root)!r} is not a folder: for data.source imagefolder put one "
            "folder of images per class there"
        )
    classes = _class_folders(root)
    allowed = allowed_roots(root)
    escaping = [name for name in classes if escapes(root / name, allowed)]
    if not classes:
        raise DataSourceError(f"no class folders in {str(root)!r}: expected <root>/<class>/<image>")
    files: list[str] = []
    labels: list[int] = []
    empty: list[str] = []
    unreadable: list[OSError] = []
    for label, name in enumerate(classes):
        skip = name in escaping
        found = [] if skip else _files_under(root, root / name, allowed, escaping, unreadable)
        if not found:
            empty.append(name)
        files += found
        labels += [label] * len(found)
    # Before anything is read: a link out of the root could reach any file on the machine.
    refuse_escaping_links(root, escaping)
    if unreadable:
        raise _unreadable(root, unreadable[0])
    if empty:
        raise DataSourceError(f"empty class folder(s) in {str(root)!r}: {', '.join(empty)}")
    if len(classes) < 2:
        raise DataSourceError(
            f"only one class folder in {str(root)!r} ({classes[0]}): need at least 2 classes"
        )
    for name in classes:
        if breaking := page_breaking(name):
            raise DataSourceError(
                f"class folder {name[:80]!r} in {str(root)!r}: a class name holding {breaking!r} "
                "stops every plot of `dvc plots show`'s page; rename the folder"
            )
    return classes, files, labels


def folder_hash(files: list[str], probes: list[Probe]) -> str:
    """One sha256 over the sorted (relative path, file sha256) pairs: any change shows.

    A path is hashed as the bytes of its name on disk (``os.fsencode``): the same bytes as
    UTF-8 for every valid UTF-8 name, so earlier hashes stay valid, and a name that is not
    UTF-8 (surrogate-escaped in Python) hashes without error and distinctly from any other."""
    digest = hashlib.sha256()
    for path, sha in sorted(zip(files, (p.sha256 or "unreadable" for p in probes), strict=True)):
        digest.update(os.fsencode(path) + f"\t{sha}\n".encode())
    return digest.hexdigest()


def choose_layout(
    params: DataParams, files: list[str], probes: list[Probe], good: list[int]
) -> tuple[int, int, int]:
    """(channels, height, width): the params when set, else 1 channel only if every usable
    image is greyscale, and the images' common size (refused when sizes differ)."""
    channels = params.channels or (1 if all(probes[i].mode in GREY_MODES for i in good) else 3)
    if params.image_size is not None:
        return channels, params.image_size, params.image_size
    sizes: dict[tuple[int, int], str] = {}
    for i in good:
        sizes.setdefault((probes[i].width, probes[i].height), files[i])
    if len(sizes) > 1:
        (a, file_a), (b, file_b) = list(sizes.items())[:2]
        raise DataSourceError(
            f"images differ in size ({len(sizes)} sizes, e.g. {file_a} is {a[0]}x{a[1]} and "
            f"{file_b} is {b[0]}x{b[1]}): set data.image_size to resize them to one square side"
        )
    ((width, height),) = sizes
    return channels, height, width


def duplicate_groups(
    files: list[str], digests: list[str]
) -> tuple[np.ndarray | None, list[tuple[str, str]]]:
    """One group id per row (the row of the first byte-identical file), and the (copy,
    original) pairs; no ids at all when every file is distinct."""
    first: dict[str, int] = {}
    groups = np.array([first.setdefault(d, row) for row, d in enumerate(digests)], np.int64)
    copies = [(files[row], files[g]) for row, g in enumerate(groups.tolist()) if g != row]
    return (groups if copies else None), copies


def _check_classes(root: Path, classes: list[str], labels: np.ndarray, files_seen: int) -> None:
    if len(labels) == 0:
        raise DataSourceError(
            f"no usable images in {str(root)!r}: all {files_seen} files quarantined"
        )
    counts = np.bincount(labels, minlength=len(classes))
    hollow = [name for name, count in zip(classes, counts, strict=True) if count == 0]
    if hollow:
        raise DataSourceError(
            f"class folder(s) in {str(root)!r} with no usable image (all quarantined): "
            + ", ".join(hollow)
        )


def _probe_all(workers: int, paths: list[str], chunk: int, max_pixels: int) -> list[Probe]:
    probes: list[Probe] = [Probe("")] * len(paths)
    with ChunkRunner(workers) as runner, Progress(len(paths), "imagefolder probe") as bar:
        for start, found in runner.map(partial(probe_chunk, max_pixels=max_pixels), paths, chunk):
            probes[start : start + len(found)] = found
            bar.update(len(found))
    return probes


class FolderImages:
    """Image files not decoded yet, with the shape they will have: the split selects rows of
    them like an array's, and prepare decodes one shard's rows at a time (see data.types)."""

    dtype = np.dtype(np.uint8)
    ndim = 4

    def __init__(
        self, root: Path, files: list[str], shape: tuple[int, int, int], workers: int,
        max_pixels: int,
    ) -> None:  # fmt: skip
        self.root, self.files, self.workers, self.max_pixels = root, files, workers, max_pixels
        self.layout = shape
        self.shape = (len(files), *shape)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: np.ndarray) -> FolderImages:
        files = [self.files[i] for i in np.asarray(index).tolist()]
        return FolderImages(self.root, files, self.layout, self.workers, self.max_pixels)

    def decode(self) -> Decoded:
        """Decode every file into one array, filled in place by the workers; the files that
        fail now (after a good probe) come back quarantined with their reason."""
        channels, height, width = self.layout
        paths = [str(self.root / name) for name in self.files]
        chunk = chunk_size_for(len(paths), self.workers)
        workers = min(self.workers, -(-len(paths) // chunk)) if paths else 1
        images = shared_empty((len(paths), *self.layout), shared=workers > 1)
        failed: dict[int, str] = {}
        # The target is registered before the pool forks, so the workers inherit it.
        with target(images) as key, ChunkRunner(workers) as runner:
            decode = partial(decode_into, key=key, max_pixels=self.max_pixels,
                             channels=channels, height=height, width=width)  # fmt: skip
            for start, bad in runner.map(decode, paths, chunk):
                failed.update((start + offset, reason) for offset, reason in bad)
        kept = np.array([row for row in range(len(paths)) if row not in failed], np.int64)
        return Decoded(
            images[kept] if failed else images,  # the array keeps its shared mapping alive
            kept,
            [Quarantined(self.files[row], reason) for row, reason in sorted(failed.items())],
        )


def load(params: DataParams) -> SourceData:
    root = Path(params.root)
    classes, files, labels = scan(root)
    paths = [str(root / f) for f in files]
    workers = resolve_workers(params.workers)
    chunk = chunk_size_for(len(paths), workers)
    workers = min(workers, -(-len(paths) // chunk))  # no idle processes for small folders
    probes = _probe_all(workers, paths, chunk, params.max_image_pixels)
    reasons = {i: p.reason for i, p in enumerate(probes) if p.reason}
    good = [i for i in range(len(paths)) if i not in reasons]
    if not good:
        _check_classes(root, classes, np.zeros(0, np.int64), len(files))
    shape = choose_layout(params, files, probes, good)
    label_array = np.array([labels[i] for i in good], dtype=np.int64)
    _check_classes(root, classes, label_array, len(files))
    groups, duplicates = duplicate_groups(
        [files[i] for i in good], [probes[i].sha256 for i in good]
    )
    images = FolderImages(root, [files[i] for i in good], shape, workers, params.max_image_pixels)
    return SourceData(
        name="imagefolder",
        pools={"all": LabelledImages(images, label_array, groups)},
        class_names=classes,
        input_hashes={"imagefolder": folder_hash(files, probes)},
        quarantined=[Quarantined(files[i], reasons[i]) for i in sorted(reasons)],
        files_seen=len(files),
        duplicates=duplicates,
    )
