"""torchvision-format sources (MNIST, Fashion-MNIST, CIFAR-10) on tiny files in the real
on-disk formats, the restricted CIFAR unpickler against hostile files, and the registry."""

from __future__ import annotations

import gzip
import hashlib
import os
import pickle
import pickletools
import struct
from pathlib import Path

import numpy as np
import pytest

from conftest import fails_within
from pipeline.core.config import DataParams
from pipeline.prepared.types import LabelledImages, Quarantined, SourceData
from pipeline.sources import cifar, mnist
from pipeline.sources.load import DataSourceError, check_quarantine, load_source

# ---------------------------------------------------------------- writers of the real formats


def write_idx(path: Path, array: np.ndarray) -> None:
    """An unsigned-byte IDX file as published by LeCun (and gzipped as torchvision fetches)."""
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".gz":
        with gzip.open(path, "wb") as handle:
            handle.write(payload)
    else:
        path.write_bytes(payload)


def make_mnist(root: Path, folder: str, gz: bool, seed: int = 0) -> dict[str, LabelledImages]:
    rng = np.random.default_rng(seed)
    pools = {}
    for split, prefix, n in (("train", "train", 20), ("test", "t10k", 10)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n).astype(np.uint8)
        suffix = ".gz" if gz else ""
        write_idx(root / folder / "raw" / f"{prefix}-images-idx3-ubyte{suffix}", images)
        write_idx(root / folder / "raw" / f"{prefix}-labels-idx1-ubyte{suffix}", labels)
        pools[split] = LabelledImages(images[:, None], labels.astype(np.int64))
    return pools


class Py2Pickler(pickle._Pickler):
    """Writes every str and bytes as a Python 2 string (BINSTRING), as the real CIFAR python
    batches were written by Python 2's cPickle, protocol 2; no ``_codecs`` global appears."""

    dispatch = pickle._Pickler.dispatch.copy()

    def _save_py2_string(self, obj: str | bytes) -> None:
        raw = obj.encode("latin1") if isinstance(obj, str) else obj
        if len(raw) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(raw)]) + raw)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(raw)) + raw)
        self.memoize(obj)

    dispatch[str] = _save_py2_string
    dispatch[bytes] = _save_py2_string


def py2_pickle(obj: object) -> bytes:
    from io import BytesIO

    buffer = BytesIO()
    Py2Pickler(buffer, protocol=2).dump(obj)
    # numpy 1.x (which wrote the real files) names the module numpy.core.multiarray.
    return buffer.getvalue().replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n")


LABEL_NAMES = "airplane automobile bird cat deer dog frog horse ship truck".split()


def make_cifar(root: Path, per_batch: int = 4, seed: int = 0) -> dict[str, LabelledImages]:
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    parts = {}
    for name in [*cifar.TRAIN_BATCHES, cifar.TEST_BATCH]:
        images = rng.integers(0, 256, size=(per_batch, 3, 32, 32), dtype=np.uint8)
        labels = [int(x) for x in rng.integers(0, 10, size=per_batch)]
        batch = {
            "batch_label": f"{name} of 5",
            "labels": labels,
            "data": images.reshape(per_batch, 3072),  # R plane, G plane, B plane per row
            "filenames": [f"img_{i}.png" for i in range(per_batch)],
        }
        (folder / name).write_bytes(py2_pickle(batch))
        parts[name] = LabelledImages(images, np.array(labels, dtype=np.int64))
    meta = {"num_cases_per_batch": per_batch, "label_names": LABEL_NAMES, "num_vis": 3072}
    (folder / "batches.meta").write_bytes(py2_pickle(meta))
    return parts


# ---------------------------------------------------------------- MNIST and Fashion-MNIST


@pytest.mark.parametrize(
    ("source", "folder", "gz"), [("mnist", "MNIST", True), ("fashion_mnist", "FashionMNIST", False)]
)
def test_idx_sources_read_official_train_and_test(tmp_path, source, folder, gz):
    expected = make_mnist(tmp_path, folder, gz)
    data = load_source(DataParams(source=source, root=str(tmp_path)))
    assert set(data.pools) == {"train", "test"}
    for split in ("train", "test"):
        assert data.pools[split].images.dtype == np.uint8
        assert data.pools[split].images.shape == expected[split].images.shape
        np.testing.assert_array_equal(data.pools[split].images, expected[split].images)
        np.testing.assert_array_equal(data.pools[split].labels, expected[split].labels)
    assert len(data.class_names) == 10
    assert data.class_names[9] == ("9" if source == "mnist" else "Ankle boot")
    suffix = ".gz" if gz else ""
    key = f"{folder}/raw/train-images-idx3-ubyte{suffix}"
    raw = (tmp_path / key).read_bytes()
    assert data.input_hashes[key] == hashlib.sha256(raw).hexdigest()
    assert len(data.input_hashes) == 4
    assert data.files_seen == 30 and data.quarantined == []


def test_missing_mnist_offline_is_one_line_naming_the_path(tmp_path):
    with pytest.raises(DataSourceError) as info:
        load_source(DataParams(source="mnist", root=str(tmp_path)))
    message = str(info.value)
    assert "\n" not in message
    assert f"{tmp_path.as_posix()}/MNIST/raw/train-images-idx3-ubyte[.gz]" in message
    assert "data.download: true" in message


def test_partly_missing_names_only_the_missing_file(tmp_path):
    make_mnist(tmp_path, "MNIST", gz=True)
    (tmp_path / "MNIST/raw/t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataSourceError, match=r"missing \S*t10k-labels-idx1-ubyte\[\.gz\];"):
        load_source(DataParams(source="mnist", root=str(tmp_path)))


def test_download_true_fetches_only_when_missing(tmp_path, monkeypatch):
    calls = []

    def fake_download(source, root):  # stands in for torchvision's network fetch
        calls.append((source, root))
        make_mnist(root, "FashionMNIST", gz=True)

    monkeypatch.setattr(mnist, "_download", fake_download)
    params = DataParams(source="fashion_mnist", root=str(tmp_path), download=True)
    assert len(load_source(params).pools["train"]) == 20
    assert len(load_source(params).pools["test"]) == 10
    assert calls == [("fashion_mnist", tmp_path)]


def test_failed_download_is_one_line(tmp_path, monkeypatch):
    def offline(source, root):
        raise OSError("<urlopen error [Errno -3] Temporary failure in name resolution>\nmore")

    monkeypatch.setattr(mnist, "_download", offline)
    with pytest.raises(DataSourceError) as info:
        load_source(DataParams(source="mnist", root=str(tmp_path), download=True))
    assert "\n" not in str(info.value)
    assert "download into" in str(info.value) and "name resolution" in str(info.value)


@pytest.mark.parametrize("damage", ["magic", "truncated", "trailing"])
def test_damaged_idx_file_is_refused(tmp_path, damage):
    make_mnist(tmp_path, "MNIST", gz=False)
    path = tmp_path / "MNIST/raw/train-images-idx3-ubyte"
    raw = path.read_bytes()
    path.write_bytes(
        {
            "magic": b"\x00\x00\x0d\x03" + raw[4:],
            "truncated": raw[:-5],
            "trailing": raw + b"x",
        }[damage]
    )
    with pytest.raises(DataSourceError, match="train-images-idx3-ubyte"):
        load_source(DataParams(source="mnist", root=str(tmp_path)))


def _mnist_file(root: Path, name: str, gz: bool = False) -> Path:
    return root / "MNIST" / "raw" / f"{name}{'.gz' if gz else ''}"


@pytest.mark.parametrize("gz", [False, True])
def test_idx_header_claiming_more_than_the_file_holds_is_refused_before_allocating(tmp_path, gz):
    make_mnist(tmp_path, "MNIST", gz=gz)
    # Within MAX_ITEMS and MAX_SIDE, but 9 TB of pixels: allocating it was a MemoryError.
    header = struct.pack(">HBBIII", 0, 0x08, 3, 9_000_000, 1000, 1000)
    path = _mnist_file(tmp_path, "train-images-idx3-ubyte", gz)
    if gz:
        with gzip.open(path, "wb") as handle:
            handle.write(header + bytes(100))
    else:
        path.write_bytes(header + bytes(100))
    with pytest.raises(DataSourceError) as info:
        load_source(DataParams(source="mnist", root=str(tmp_path)))
    message = str(info.value)
    assert message.startswith(f"{path}: header claims shape 9000000x1000x1000 ")
    actual = f"{path.stat().st_size} compressed bytes" if gz else "holds 100 bytes"
    assert actual in message and "\n" not in message


@pytest.mark.parametrize(
    ("shape", "match"),
    [
        ((20, 1, 1), r"images of 1x1 pixels \(IDX shape 20x1x1\); each side must be at least 2"),
        ((20, 0, 28), r"images of 0x28 pixels"),
        ((20, 28, 0), r"images of 28x0 pixels"),
        ((0, 28, 28), r"IDX file holds no items \(shape 0x28x28\)"),
    ],
)
def test_degenerate_idx_images_are_refused(tmp_path, shape, match):
    make_mnist(tmp_path, "MNIST", gz=False)
    write_idx(_mnist_file(tmp_path, "train-images-idx3-ubyte"), np.zeros(shape, np.uint8))
    write_idx(_mnist_file(tmp_path, "train-labels-idx1-ubyte"), np.zeros(shape[0], np.uint8))
    with pytest.raises(DataSourceError, match=f"train-images-idx3-ubyte: {match}") as info:
        load_source(DataParams(source="mnist", root=str(tmp_path)))
    assert "\n" not in str(info.value)


def test_train_and_test_idx_images_must_share_one_size(tmp_path):
    make_mnist(tmp_path, "MNIST", gz=False)
    write_idx(_mnist_file(tmp_path, "t10k-images-idx3-ubyte"), np.zeros((10, 32, 32), np.uint8))
    with pytest.raises(DataSourceError) as info:
        load_source(DataParams(source="mnist", root=str(tmp_path)))
    message = str(info.value)
    assert "train images are 28x28 (train-images-idx3-ubyte)" in message
    assert "test images are 32x32 (t10k-images-idx3-ubyte)" in message
    assert "\n" not in message


def test_a_pipe_in_place_of_an_idx_file_is_not_a_regular_file_and_no_hang(tmp_path):
    make_mnist(tmp_path, "MNIST", gz=False)
    path = _mnist_file(tmp_path, "t10k-labels-idx1-ubyte")
    path.unlink()
    os.mkfifo(path)
    with fails_within(30), pytest.raises(DataSourceError) as info:
        load_source(DataParams(source="mnist", root=str(tmp_path)))
    assert str(info.value).startswith(f"{path}: not a regular file (")
    assert "missing" not in str(info.value) and "\n" not in str(info.value)


def _move_and_link(root: Path, relative: str, target: Path) -> None:
    """``root/relative`` (a file or folder) moved to ``target``, a link to it in its place."""
    (root / relative).rename(target)
    (root / relative).symlink_to(target, target_is_directory=target.is_dir())


@pytest.mark.parametrize(
    ("source", "relative"),
    [
        ("mnist", "MNIST/raw/train-images-idx3-ubyte"),
        ("mnist", "MNIST"),  # a folder on the way
        ("cifar10", "cifar-10-batches-py/data_batch_2"),
        ("cifar10", "cifar-10-batches-py"),
    ],
)
def test_torchvision_files_linked_from_outside_the_root_are_refused(tmp_path, source, relative):
    root = tmp_path / "root"
    make_mnist(root, "MNIST", gz=False) if source == "mnist" else make_cifar(root)
    params = DataParams(source=source, root=str(root))
    (root / "copies").mkdir()
    _move_and_link(root, relative, root / "copies" / "moved")  # stays in data.root: fine
    assert load_source(params).files_seen > 0
    (root / relative).unlink()
    (root / "copies" / "moved").rename(tmp_path / "elsewhere")
    (root / relative).symlink_to(tmp_path / "elsewhere")
    with pytest.raises(DataSourceError) as info:
        load_source(params)
    message = str(info.value)
    assert message.startswith(f"1 symbolic link(s) in {str(root)!r} lead outside data.root (")
    assert f"{relative} -> {tmp_path / 'elsewhere'}" in message and "\n" not in message


# ---------------------------------------------------------------- CIFAR-10


def test_cifar10_reads_real_python2_batches(tmp_path):
    parts = make_cifar(tmp_path)
    raw = (tmp_path / "cifar-10-batches-py/data_batch_1").read_bytes()
    opcodes = {op.name for op, _, _ in pickletools.genops(raw)}
    assert "BINUNICODE" not in opcodes and b"numpy.core.multiarray" in raw  # like the real ones

    data = load_source(DataParams(source="cifar10", root=str(tmp_path)))
    assert data.class_names == LABEL_NAMES
    train = data.pools["train"]
    assert train.images.shape == (20, 3, 32, 32) and train.images.dtype == np.uint8
    expected = np.concatenate([parts[name].images for name in cifar.TRAIN_BATCHES])
    np.testing.assert_array_equal(train.images, expected)
    np.testing.assert_array_equal(
        train.labels, np.concatenate([parts[name].labels for name in cifar.TRAIN_BATCHES])
    )
    np.testing.assert_array_equal(data.pools["test"].images, parts["test_batch"].images)
    assert set(data.input_hashes) == {
        f"cifar-10-batches-py/{n}" for n in [*cifar.TRAIN_BATCHES, "test_batch", "batches.meta"]
    }


def test_cifar10_accepts_python3_protocol2_batches(tmp_path):
    parts = make_cifar(tmp_path)
    images = parts["test_batch"].images
    labels = parts["test_batch"].labels.tolist()
    batch = {b"data": images.reshape(len(images), 3072), b"labels": labels}
    (tmp_path / "cifar-10-batches-py/test_batch").write_bytes(pickle.dumps(batch, protocol=2))
    data = load_source(DataParams(source="cifar10", root=str(tmp_path)))
    np.testing.assert_array_equal(data.pools["test"].images, images)


def test_missing_cifar10_offline_is_one_line(tmp_path):
    with pytest.raises(DataSourceError) as info:
        load_source(DataParams(source="cifar10", root=str(tmp_path)))
    assert "\n" not in str(info.value)
    assert f"{tmp_path.as_posix()}/cifar-10-batches-py/data_batch_1" in str(info.value)
    assert "set data.download: true or put the files there" in str(info.value)


class RunsShell:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class WritesFile:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",))


@pytest.mark.parametrize("attack", ["os.system", "exec", "nested", "object-dtype"])
def test_hostile_cifar_batch_is_refused_and_runs_nothing(tmp_path, attack):
    make_cifar(tmp_path)
    marker = tmp_path / "pwned"
    payload = {
        "os.system": lambda: pickle.dumps(RunsShell(marker), protocol=2),
        "exec": lambda: pickle.dumps(WritesFile(marker), protocol=2),
        # a well-formed batch with the attack tucked into one value
        "nested": lambda: py2_pickle(
            {"data": np.zeros((1, 3072), np.uint8), "labels": [0], "x": WritesFile(marker)}
        ),
        "object-dtype": lambda: pickle.dumps(
            {"data": np.array([1, "a"], dtype=object)}, protocol=2
        ),
    }[attack]()
    (tmp_path / "cifar-10-batches-py/data_batch_3").write_bytes(payload)
    with pytest.raises(DataSourceError) as info:
        load_source(DataParams(source="cifar10", root=str(tmp_path)))
    message = str(info.value)
    assert "data_batch_3: not a CIFAR-10 python batch (refused" in message
    assert "\n" not in message
    assert not marker.exists()


def test_cifar_batch_with_wrong_shape_is_refused(tmp_path):
    make_cifar(tmp_path)
    bad = py2_pickle({"data": np.zeros((2, 100), np.uint8), "labels": [0, 1]})
    (tmp_path / "cifar-10-batches-py/test_batch").write_bytes(bad)
    with pytest.raises(DataSourceError, match="expected 3072"):
        load_source(DataParams(source="cifar10", root=str(tmp_path)))


# ---------------------------------------------------------------- registry and quarantine gate


def test_digits_still_default():
    data = load_source(DataParams())
    assert data.name == "digits" and set(data.pools) == {"all"}


def _with_bad(bad: int, seen: int) -> SourceData:
    images = LabelledImages(np.zeros((1, 1, 2, 2), np.uint8), np.zeros(1, np.int64))
    quarantined = [Quarantined(f"a/{i}.png", "empty file (0 bytes)") for i in range(bad)]
    return SourceData("imagefolder", {"all": images}, ["a"], {}, quarantined, seen)


def test_check_quarantine_allows_up_to_the_limit():
    check_quarantine(_with_bad(0, 100), 0.0)
    check_quarantine(_with_bad(1, 100), 0.01)


def test_check_quarantine_fails_above_the_limit_naming_the_numbers():
    with pytest.raises(DataSourceError) as info:
        check_quarantine(_with_bad(5, 100), 0.01)
    message = str(info.value)
    assert message.startswith("5 of 100 files quarantined (5.0%) exceeds data.max_bad_fraction=")
    assert "a/0.png: empty file (0 bytes)" in message and "and 2 more" in message
    assert "\n" not in message
