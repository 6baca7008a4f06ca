"""ImageFolder source: mixed formats and sizes, quarantine of bad files, layout errors,
determinism (also pool against single process) and the progress lines."""

from __future__ import annotations

import hashlib
import io
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import fails_within
from pipeline.core.config import DataParams, Params
from pipeline.core.progress import Progress
from pipeline.prepared.types import decode_rows
from pipeline.sources import imagefolder
from pipeline.sources.load import DataSourceError, check_quarantine, load_source
from pipeline.sources.parallel import ChunkRunner
from pipeline.sources.prepare import prepare_data

FORMATS = [("PNG", "png"), ("JPEG", "jpg"), ("BMP", "bmp"), ("WEBP", "webp")]


def save(path: Path, size: tuple[int, int], mode: str = "RGB", fmt: str = "PNG", seed: int = 0):
    rng = np.random.default_rng(seed)
    shape = (size[1], size[0]) + ((3,) if mode == "RGB" else ())
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, size=shape, dtype=np.uint8), mode).save(path, fmt)


def make_tree(root: Path, per_class: int = 4, classes=("cat", "dog", "eel"), mode="RGB"):
    """Every class holds every format; sizes vary between 12x12, 16x10 and 9x20."""
    sizes = [(12, 12), (16, 10), (9, 20)]
    n = 0
    for name in classes:
        for i in range(per_class):
            fmt, ext = FORMATS[(i + n) % len(FORMATS)]
            save(root / name / f"{i:03d}.{ext}", sizes[(i + n) % 3], mode, fmt, seed=n * 100 + i)
        n += 1


def params(root: Path, **overrides) -> DataParams:
    return DataParams(source="imagefolder", root=str(root), **{"workers": 1, **overrides})


def decoded(data):
    """What prepare makes of the pool: (pixels, labels, quarantined) after the full decode,
    files that fail only then quarantined beside the ones the probe refused."""
    pool = data.pools["all"]
    done = decode_rows(pool.images, slice(None))
    quarantined = sorted([*data.quarantined, *done.failed], key=lambda q: q.path)
    return done.images, pool.labels[done.kept], quarantined


def test_mixed_formats_and_sizes_resized_to_a_square(tmp_path):
    make_tree(tmp_path)
    (tmp_path / "dog" / "nested").mkdir()
    save(tmp_path / "dog" / "nested" / "deep.png", (30, 30), seed=7)
    (tmp_path / "dog" / ".DS_Store").write_bytes(b"junk")  # hidden: skipped, not quarantined
    data = load_source(params(tmp_path, image_size=8))
    pool = data.pools["all"]
    assert data.class_names == ["cat", "dog", "eel"]
    assert pool.images.shape == (13, 3, 8, 8) and pool.images.dtype == np.uint8
    assert pool.labels.tolist() == [0] * 4 + [1] * 5 + [2] * 4
    assert data.quarantined == [] and data.files_seen == 13
    # Sorted order, so cat/000.png is row 0: check against a direct Pillow decode.
    direct = Image.open(tmp_path / "cat" / "000.png").convert("RGB").resize((8, 8), Image.BILINEAR)
    np.testing.assert_array_equal(decoded(data)[0][0], np.asarray(direct).transpose(2, 0, 1))
    assert list(data.input_hashes) == ["imagefolder"]
    assert len(data.input_hashes["imagefolder"]) == 64


def test_common_size_kept_and_greyscale_gives_one_channel(tmp_path):
    for name in ("a", "b"):
        for i in range(3):
            save(tmp_path / name / f"{i}.png", (10, 6), mode="L", seed=i)
    data = load_source(params(tmp_path))
    assert data.pools["all"].images.shape == (6, 1, 6, 10)  # N, C, H, W
    assert load_source(params(tmp_path, channels=3)).pools["all"].images.shape == (6, 3, 6, 10)


def test_differing_sizes_need_image_size(tmp_path):
    make_tree(tmp_path)
    with pytest.raises(DataSourceError, match=r"images differ in size .* set data.image_size"):
        load_source(params(tmp_path))


def test_channels_param_converts(tmp_path):
    make_tree(tmp_path)
    data = load_source(params(tmp_path, image_size=5, channels=1))
    assert data.pools["all"].images.shape == (12, 1, 5, 5)


def _add_bad_files(root: Path) -> dict[str, str]:
    (root / "cat" / "empty.png").write_bytes(b"")
    save(root / "dog" / "cut.png", (64, 64), seed=3)
    full = (root / "dog" / "cut.png").read_bytes()
    (root / "dog" / "cut.png").write_bytes(full[: len(full) // 2])
    (root / "eel" / "notes.jpg").write_text("this is not a JPEG\n")
    save(root / "eel" / "huge.png", (300, 300), seed=4)
    return {
        "cat/empty.png": "empty file (0 bytes)",
        "dog/cut.png": "cannot decode (",
        "eel/notes.jpg": "not a PNG, JPEG, BMP or WebP image",
        "eel/huge.png": "decompression-bomb guard: ",
    }


def test_bad_files_are_quarantined_with_their_reasons(tmp_path):
    make_tree(tmp_path)
    expected = _add_bad_files(tmp_path)
    data = load_source(params(tmp_path, image_size=8, max_image_pixels=10_000))
    pixels, labels, quarantined = decoded(data)
    reasons = {q.path: q.reason for q in quarantined}
    assert set(reasons) == set(expected)
    for path, start in expected.items():
        assert reasons[path].startswith(start), reasons[path]
    assert "truncated" in reasons["dog/cut.png"]
    assert "90000 pixels" in reasons["eel/huge.png"]
    assert data.files_seen == 16 and len(pixels) == 12
    assert labels.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    # 4 of 16 is 25%: the gate fails above it and names the numbers.
    data = replace(data, quarantined=quarantined)
    check_quarantine(data, 0.25)
    with pytest.raises(DataSourceError, match=r"^4 of 16 files quarantined \(25.0%\)"):
        check_quarantine(data, 0.2)


def test_a_pipe_among_the_images_is_quarantined_not_waited_on(tmp_path):
    make_tree(tmp_path)
    os.mkfifo(tmp_path / "dog" / "pipe.png")
    with fails_within(30):
        pixels, _, quarantined = decoded(load_source(params(tmp_path, image_size=8)))
    assert [(q.path, q.reason) for q in quarantined] == [
        ("dog/pipe.png", "unreadable (not a regular file (a folder, pipe, device or socket))")
    ]
    assert len(pixels) == 12


def test_truncated_image_does_not_shift_later_rows(tmp_path):
    make_tree(tmp_path)
    clean = decoded(load_source(params(tmp_path, image_size=8)))
    _add_bad_files(tmp_path)
    dirty = decoded(load_source(params(tmp_path, image_size=8, max_image_pixels=10_000)))
    np.testing.assert_array_equal(dirty[0], clean[0])
    np.testing.assert_array_equal(dirty[1], clean[1])


def test_same_files_give_identical_bytes_in_and_out_of_the_pool(tmp_path):
    make_tree(tmp_path, per_class=12)
    _add_bad_files(tmp_path)
    results = [
        load_source(params(tmp_path, image_size=8, max_image_pixels=10_000, workers=w))
        for w in (1, 1, 2, 3)
    ]
    first, first_decoded = results[0], decoded(results[0])
    for other in results[1:]:
        pixels, labels, quarantined = decoded(other)
        assert pixels.tobytes() == first_decoded[0].tobytes()
        assert labels.tobytes() == first_decoded[1].tobytes()
        assert quarantined == first_decoded[2]
        assert other.input_hashes == first.input_hashes


def test_hash_changes_when_a_file_changes(tmp_path):
    make_tree(tmp_path)
    before = load_source(params(tmp_path, image_size=8)).input_hashes
    save(tmp_path / "cat" / "001.jpg", (16, 10), fmt="JPEG", seed=999)
    assert load_source(params(tmp_path, image_size=8)).input_hashes != before


def test_progress_lines_when_stderr_is_not_a_terminal(tmp_path, capsys):
    make_tree(tmp_path, per_class=20)
    prepare_data(Params(data=params(tmp_path, image_size=8)), root=tmp_path / "out")
    lines = capsys.readouterr().err.splitlines()
    assert "imagefolder probe: 60/60 files (100%)" in lines
    assert "prepare train: 42/42 images (100%)" in lines
    assert len([line for line in lines if line.startswith("prepare train")]) <= 10


@pytest.mark.parametrize(
    ("layout", "match"),
    [
        ("missing", r"data.root '.*nowhere' is not a folder"),
        ("no classes", r"no class folders in"),
        ("empty class", r"empty class folder\(s\) in .*: dog$"),
        ("one class", r"only one class folder in .* \(cat\): need at least 2 classes"),
        ("all bad", r"no usable images in .*: all 2 files quarantined"),
        ("class all bad", r"class folder\(s\) in .* with no usable image \(all quarantined\): dog"),
    ],
)
def test_layout_errors_are_one_clear_line(tmp_path, layout, match):
    root = tmp_path / "nowhere" if layout == "missing" else tmp_path
    if layout == "empty class":
        save(tmp_path / "cat" / "0.png", (4, 4))
        (tmp_path / "dog").mkdir()
    if layout == "one class":
        save(tmp_path / "cat" / "0.png", (4, 4))
    if layout in ("all bad", "class all bad"):
        (tmp_path / "cat").mkdir()
        (tmp_path / "dog").mkdir()
        (tmp_path / "dog" / "0.png").write_bytes(b"")
        if layout == "all bad":
            (tmp_path / "cat" / "0.png").write_text("nope")
        else:
            save(tmp_path / "cat" / "0.png", (4, 4))
    with pytest.raises(DataSourceError, match=match) as info:
        load_source(params(root))
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("name", ["<!--<script>", "x<SCRIPT", "<!--"])
def test_a_class_folder_name_that_breaks_the_plots_page_is_refused(tmp_path, name):
    """DVC writes class names into the plots page's <script> unescaped: after '<!--' and
    '<script' the browser reads the rest of the page as script and draws no plot."""
    make_tree(tmp_path, per_class=1, classes=("cat", name))
    with pytest.raises(DataSourceError) as info:
        load_source(params(tmp_path))
    message = str(info.value)
    assert message.startswith(f"class folder {name!r} in ") and "rename the folder" in message
    assert "\n" not in message


def test_other_markup_in_class_folder_names_is_kept(tmp_path):
    make_tree(tmp_path, per_class=1, classes=("<b>cat", "dog & co"))
    assert load_source(params(tmp_path, image_size=8)).class_names == ["<b>cat", "dog & co"]


def test_format_is_detected_from_bytes_not_extension(tmp_path):
    make_tree(tmp_path)
    save(tmp_path / "cat" / "really_png.jpg", (12, 12), fmt="PNG")
    save(tmp_path / "cat" / "gif.png", (12, 12), fmt="GIF")  # not on the allow-list
    data = load_source(params(tmp_path, image_size=8))
    assert [(q.path, q.reason) for q in data.quarantined] == [
        ("cat/gif.png", "not a PNG, JPEG, BMP or WebP image")
    ]
    assert len(data.pools["all"]) == 13


def test_folder_hash_is_order_independent():
    probes = [imagefolder.Probe("aa"), imagefolder.Probe("bb")]
    assert imagefolder.folder_hash(["x", "y"], probes) == imagefolder.folder_hash(
        ["y", "x"], probes[::-1]
    )


def test_file_names_that_are_not_utf8_are_kept_and_hashed_as_their_bytes(tmp_path):
    make_tree(tmp_path)
    original = (tmp_path / "cat" / "000.png").read_bytes()
    (tmp_path / "cat" / "000.png").unlink()
    with open(os.fsencode(tmp_path / "cat") + b"/bad\xff.png", "wb") as handle:
        handle.write(original)
    data = load_source(params(tmp_path, image_size=8))
    assert "cat/bad\udcff.png" in data.pools["all"].images.files  # a good image: kept
    assert data.quarantined == []
    # The name's bytes on disk go into the hash; a UTF-8 name hashes as it always did.
    probes = [imagefolder.Probe("aa"), imagefolder.Probe("bb")]
    expected = hashlib.sha256(b"cat/bad\xff.png\taa\ncat/\xc3\xa9t\xc3\xa9.png\tbb\n")
    assert imagefolder.folder_hash(["cat/bad\udcff.png", "cat/été.png"], probes) == (
        expected.hexdigest()
    )


def _dies_on_second_chunk(start, chunk):
    if start == 2:
        os._exit(9)  # what a crashing native decoder looks like to the pool
    return list(chunk)


def test_a_dead_worker_is_a_clear_error_not_a_hang():
    with pytest.raises(DataSourceError, match="a worker process died"):
        with ChunkRunner(2) as runner:
            list(runner.map(_dies_on_second_chunk, list(range(8)), 2))


def _doubled(start, chunk):
    return [2 * item for item in chunk]


def test_pool_results_come_back_by_start_index():
    with ChunkRunner(2) as runner:
        got = dict(runner.map(_doubled, [1, 2, 3, 4, 5], 2))
    assert got == {0: [2, 4], 2: [6, 8], 4: [10]}


def test_progress_is_a_tqdm_bar_on_a_terminal():
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    stream = Terminal()
    with Progress(4, "imagefolder decode", stream=stream) as bar:
        bar.update(4)
    assert "imagefolder decode: 100%" in stream.getvalue() and "\r" in stream.getvalue()


def test_prepare_decodes_one_shard_of_rows_at_a_time(tmp_path, monkeypatch):
    make_tree(tmp_path / "root", per_class=20)
    sizes = []
    real = imagefolder.FolderImages.decode

    def counted(self):
        sizes.append(len(self))
        return real(self)

    monkeypatch.setattr(imagefolder.FolderImages, "decode", counted)
    data = params(tmp_path / "root", image_size=8, shard_images=16)
    prepare_data(Params(data=data), root=tmp_path / "out")
    assert max(sizes) == 16 and sum(sizes) == 60  # every file once, never more than a shard


def test_a_failed_prepare_leaves_the_previous_folder_and_no_staging(tmp_path):
    make_tree(tmp_path / "root", per_class=20)
    out = tmp_path / "out"
    prepare_data(Params(data=params(tmp_path / "root", image_size=8)), root=out)
    before = {p.name: p.read_bytes() for p in (out / "data/prepared").iterdir()}
    for path in (tmp_path / "root" / "eel").glob("*.png"):  # the header probe passes ...
        path.write_bytes(path.read_bytes()[:-60])  # ... the full decode finds it truncated
    with pytest.raises(DataSourceError, match=r"^5 of 60 files quarantined .*eel/\d+\.png: "):
        prepare_data(Params(data=params(tmp_path / "root", image_size=8)), root=out)
    after = {p.name: p.read_bytes() for p in (out / "data/prepared").iterdir()}
    assert after == before
    assert sorted(p.name for p in (out / "data").iterdir()) == ["prepared"]  # no staging left
