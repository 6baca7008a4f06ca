"""Odd images in an ImageFolder: 16-bit greyscale, EXIF orientation, symbolic links that leave
data.root, and byte-identical files (which must never straddle two splits)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.core.config import DataParams, Params
from pipeline.core.records import DATA_FIGURES, pick
from pipeline.prepared.types import decode_rows
from pipeline.sources.load import DataSourceError, load_source
from pipeline.sources.prepare import prepare_data
from pipeline.sources.split import split


def pixels(images) -> np.ndarray:
    """Every row decoded, as prepare decodes them (a shard at a time)."""
    return decode_rows(images, slice(None)).images


def params(root: Path, **overrides) -> DataParams:
    return DataParams(source="imagefolder", root=str(root), **{"workers": 1, **overrides})


def save_grey(path: Path, values: np.ndarray, **save_args) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(values).save(path, "PNG", **save_args)


def random_tree(root: Path, per_class: int = 8, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    for name in ("a", "b"):
        for i in range(per_class):
            save_grey(root / name / f"{i:02d}.png", rng.integers(0, 256, (4, 4), dtype=np.uint8))


def test_sixteen_bit_greyscale_is_scaled_not_clipped(tmp_path):
    values = np.array([[0, 257, 1000, 30000, 65535, 32768]], dtype=np.uint16)
    for name in ("a", "b"):
        save_grey(tmp_path / name / "x.png", values)
    assert Image.open(tmp_path / "a" / "x.png").mode in ("I;16", "I")  # really 16-bit on disk
    images = pixels(load_source(params(tmp_path)).pools["all"].images)
    assert images.shape == (2, 1, 1, 6)
    expected = [0, 1, 4, 117, 255, 128]  # round(v * 255 / 65535)
    assert images[0, 0, 0].tolist() == expected
    rgb = pixels(load_source(params(tmp_path, channels=3)).pools["all"].images)
    assert rgb[0, :, 0].tolist() == [expected] * 3


def test_exif_orientation_is_applied(tmp_path):
    stored = np.arange(6, dtype=np.uint8).reshape(2, 3) * 40  # 3 wide, 2 tall as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 clockwise to display"
    save_grey(tmp_path / "a" / "rotated.png", stored, exif=exif)
    upright = np.rot90(stored, k=-1)  # 2 wide, 3 tall, as a viewer shows it
    save_grey(tmp_path / "b" / "plain.png", np.ascontiguousarray(upright))
    images = pixels(load_source(params(tmp_path)).pools["all"].images)  # one size: no resize
    assert images.shape == (2, 1, 3, 2)
    np.testing.assert_array_equal(images[0, 0], upright)
    np.testing.assert_array_equal(images[1, 0], upright)


def test_links_leaving_the_root_are_refused_and_listed(tmp_path):
    root = tmp_path / "root"
    random_tree(root)
    out = tmp_path / "out"
    prepare_data(Params(data=params(root)), root=out)
    before = {p: p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}

    secret = tmp_path / "secret.txt"
    secret.write_text("root:x:0:0\n")
    save_grey(tmp_path / "elsewhere.png", np.zeros((4, 4), np.uint8))
    (root / "a" / "link.png").symlink_to(tmp_path / "elsewhere.png")
    (root / "b" / "passwd.png").symlink_to(secret)
    (root / "b" / "inside.png").symlink_to(root / "a" / "00.png")  # stays inside: fine
    (tmp_path / "outdir").mkdir()
    (root / "c").symlink_to(tmp_path / "outdir", target_is_directory=True)
    with pytest.raises(DataSourceError) as caught:
        prepare_data(Params(data=params(root)), root=out)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("3 symbolic link(s)")
    for shown in ("a/link.png -> ", "b/passwd.png -> ", "c -> ", str(secret)):
        assert shown in message
    assert "inside.png" not in message
    # Nothing was written: the earlier outputs are byte-identical.
    assert {p: p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()} == before


def test_links_into_the_projects_dvc_cache_are_allowed(tmp_path):
    """DVC's `symlink` cache type leaves data.root full of links into .dvc/cache."""
    project = tmp_path / "project"
    random_tree(tmp_path / "staging")
    cache = project / ".dvc" / "cache" / "files" / "md5"
    root = project / "data" / "raw" / "pets"
    for i, source in enumerate(sorted((tmp_path / "staging").rglob("*.png"))):
        cached = cache / f"{i:02d}" / "0123456789abcdef"
        cached.parent.mkdir(parents=True)
        shutil.copy(source, cached)
        link = root / source.relative_to(tmp_path / "staging")
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(cached)
    assert len(load_source(params(root)).pools["all"]) == 16


def test_a_link_loop_is_quarantined_like_a_broken_link(tmp_path):
    random_tree(tmp_path)
    (tmp_path / "a" / "loop.png").symlink_to("other.png")  # loop.png -> other.png -> loop.png
    (tmp_path / "a" / "other.png").symlink_to("loop.png")
    (tmp_path / "b" / "broken.png").symlink_to("nothing.png")
    data = load_source(params(tmp_path))
    assert [(q.path, q.reason) for q in data.quarantined] == [
        ("a/loop.png", "unreadable (Too many levels of symbolic links)"),
        ("a/other.png", "unreadable (Too many levels of symbolic links)"),
        ("b/broken.png", "unreadable (No such file or directory)"),
    ]
    assert len(data.pools["all"]) == 16


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads through chmod 000: nothing to refuse")
@pytest.mark.parametrize(
    ("link", "where"),
    [
        ("c", "c"),  # a class folder linked into an unreadable folder: was a PermissionError
        (None, "a/locked"),  # an unreadable folder in a class folder: its files were dropped
    ],
)
def test_an_unreadable_folder_is_one_line_not_a_traceback(tmp_path, link, where):
    """(A file linked into an unreadable folder is quarantined as ``unreadable``.)"""
    root = tmp_path / "root"
    random_tree(root)
    locked = root / "a" / "locked" if link is None else root / ".locked"
    save_grey(locked / "sub" / "x.png", np.zeros((4, 4), np.uint8))
    if link is not None:
        (root / link).symlink_to(locked / "sub")
    locked.chmod(0)
    try:
        with pytest.raises(DataSourceError) as caught:
            load_source(params(root))
    finally:
        locked.chmod(0o755)
    assert str(caught.value) == (
        f"cannot read {where!r} in data.root {str(root)!r} (Permission denied): "
        "fix its permissions or remove it"
    )


def test_byte_identical_files_stay_in_one_split_and_are_counted(tmp_path):
    root = tmp_path / "root"
    random_tree(root, per_class=12)
    copies = 0
    for i in range(6):  # each copied twice, within its class and into the other class
        original = root / "a" / f"{i:02d}.png"
        shutil.copy(original, root / "a" / f"copy_{i}.png")
        shutil.copy(original, root / "b" / f"copy_of_a_{i}.png")
        copies += 2
    out = tmp_path / "out"
    report = prepare_data(Params(data=params(root, val_fraction=0.2, test_fraction=0.2)), out)
    assert report["duplicate_files"] == copies
    assert {"path": "a/copy_0.png", "same_as": "a/00.png"} in report["duplicates"]
    assert pick(report, DATA_FIGURES)["duplicate_files"] == copies  # a metrics/data.json figure

    source = load_source(params(root))
    parts = split(source, 0.2, 0.2, seed=42)
    seen = {name: {img.tobytes() for img in pixels(part.images)} for name, part in parts.items()}
    assert not seen["train"] & seen["val"]
    assert not seen["train"] & seen["test"]
    assert not seen["val"] & seen["test"]
    assert sum(len(part) for part in parts.values()) == 24 + copies  # every file kept


def test_without_duplicates_the_split_is_unchanged(tmp_path):
    random_tree(tmp_path, per_class=10)
    source = load_source(params(tmp_path))
    assert source.pools["all"].groups is None and source.duplicates == []
