"""Sharded prepared data: the writer, the checked reader, and hostile shards."""

import os
from dataclasses import replace

import numpy as np
import pytest

from conftest import fails_within
from pipeline.core.headers import TensorFileError, header_of, read_header
from pipeline.prepared.shards import ShardError, ShardWriter, open_split, write_split
from pipeline.prepared.stats import channel_stats

SHAPE = (1, 4, 4)


def make_split(count=30, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (count, *SHAPE), dtype=np.uint8)
    images[:, 0, 0, 0] = np.arange(count)  # every row distinguishable
    return images, np.arange(count, dtype=np.int64) % 3


def write(folder, images, labels, shard_images, split="train"):
    folder.mkdir(parents=True, exist_ok=True)
    return write_split(folder, split, images, labels, shard_images, seed=5)


def opened(folder, written, split="train", verify=True, entries=None, count=None):
    """The split as meta.json's index and counts describe it (``entries``/``count`` override)."""
    entries = written.entries if entries is None else entries
    count = written.count if count is None else count
    return open_split(folder, split, entries, SHAPE, 3, count, verify)


def test_round_trip_across_shards_keeps_every_row_once(tmp_path):
    images, labels = make_split(30)
    written = write(tmp_path, images, labels, shard_images=7)
    index = written.entries
    assert [e.file for e in index] == [f"train-{n:05d}.safetensors" for n in range(5)]
    assert [e.count for e in index] == [7, 7, 7, 7, 2]
    assert written.label_counts.tolist() == [10, 10, 10]
    loaded, loaded_labels = opened(tmp_path, written).load()
    order = loaded[:, 0, 0, 0].astype(int)
    assert sorted(order) == list(range(30))  # every row once ...
    assert order.tolist() != list(range(30))  # ... shuffled across shards (mixed classes)
    np.testing.assert_array_equal(loaded, images[order])
    np.testing.assert_array_equal(loaded_labels, labels[order])


def test_one_shard_keeps_the_source_order_and_rows_reads_only_a_sample(tmp_path):
    images, labels = make_split(30)
    written = write(tmp_path, images, labels, shard_images=64)
    split = opened(tmp_path, written)
    assert len(split.shards) == 1
    np.testing.assert_array_equal(split.load()[0], images)
    written = write(tmp_path / "many", images, labels, shard_images=4)
    many = opened(tmp_path / "many", written)
    rows = np.array([0, 3, 4, 17, 29])
    np.testing.assert_array_equal(many.rows(rows), many.load()[0][rows])


def test_writer_channel_stats_match_the_whole_array():
    images = np.random.default_rng(2).integers(0, 256, (50, 3, 5, 5), dtype=np.uint8)
    writer = ShardWriter("/nonexistent", "train", shard_images=1000)  # nothing flushed
    for start in range(0, 50, 16):
        writer.add(images[start : start + 16], np.zeros(len(images[start : start + 16]), int))
    mean, std = writer.channel_stats()
    np.testing.assert_allclose(mean, channel_stats(images)[0], rtol=1e-12)
    np.testing.assert_allclose(std, channel_stats(images)[1], rtol=1e-9)


@pytest.fixture
def prepared(tmp_path):
    images, labels = make_split(20)
    return tmp_path, write(tmp_path, images, labels, shard_images=8)


def test_truncated_shard_is_refused(prepared):
    folder, written = prepared
    path = folder / "train-00001.safetensors"
    path.write_bytes(path.read_bytes()[:-40])
    with pytest.raises(ShardError, match=r"train-00001\.safetensors.*truncated"):
        opened(folder, written)


def test_shard_with_the_wrong_image_shape_is_refused(prepared):
    folder, written = prepared
    images, labels = make_split(8)
    write_split(folder, "other", images.reshape(8, 1, 2, 8), labels, 8, seed=0)
    (folder / "other-00000.safetensors").replace(folder / "train-00000.safetensors")
    with pytest.raises(ShardError, match=r"images is \('U8', \(8, 1, 2, 8\)\), meta.json says"):
        opened(folder, written, verify=False)


def test_linked_shard_is_refused(prepared, tmp_path_factory):
    folder, written = prepared
    elsewhere = tmp_path_factory.mktemp("elsewhere") / "x.safetensors"
    (folder / "train-00000.safetensors").replace(elsewhere)
    (folder / "train-00000.safetensors").symlink_to(elsewhere)
    with pytest.raises(ShardError, match="is a symbolic link"):
        opened(folder, written)


def test_count_that_disagrees_with_the_index_is_refused(prepared):
    folder, written = prepared
    nine = [replace(written.entries[0], count=9), *written.entries[1:]]
    with pytest.raises(ShardError, match=r"images is .*\(9, 1, 4, 4\)"):
        opened(folder, written, entries=nine)
    with pytest.raises(ShardError, match="shards hold 20 images, counts say 21"):
        opened(folder, written, count=21)


def test_changed_bytes_fail_the_sha256_and_bad_labels_fail_the_read(prepared):
    folder, written = prepared
    path = folder / "train-00002.safetensors"
    data = bytearray(path.read_bytes())
    data[read_header(path)["labels"].start + 7] ^= 0x7F  # first label's top byte: huge label
    path.write_bytes(bytes(data))
    with pytest.raises(ShardError, match="sha256 .* differs from meta.json"):
        opened(folder, written)
    split = opened(folder, written, verify=False)
    with pytest.raises(ShardError, match="label -?[0-9]+ is outside 0..2"):
        split.load()


def test_missing_index_and_missing_file_are_one_line_errors(prepared):
    folder, written = prepared
    with pytest.raises(ShardError, match="no shards for split 'val'"):
        opened(folder, written, split="val", entries=())
    (folder / "train-00001.safetensors").unlink()
    with pytest.raises(ShardError, match="train-00001.safetensors: shard listed in meta.json"):
        opened(folder, written)


def counting_hashes(monkeypatch, delay=0.0):
    """Count the shards hashed (pipeline.prepared.shards.sha256_file), each taking ``delay`` s."""
    import time

    from pipeline.core.io import sha256_file
    from pipeline.prepared import shards

    hashed = []

    def counted(path):
        hashed.append(path.name)
        time.sleep(delay)
        return sha256_file(path)

    monkeypatch.setattr(shards, "sha256_file", counted)
    return hashed


def test_shards_are_hashed_once_per_prepared_folder_and_a_change_is_still_caught(
    tmp_path, monkeypatch
):
    import os

    folder = tmp_path / "prepared"
    written = write(folder, *make_split(20), shard_images=8)
    hashed = counting_hashes(monkeypatch)
    opened(folder, written)
    assert len(hashed) == 3 and (tmp_path / ".prepared.verified.json").is_file()
    opened(folder, written)  # a second process, rank or resume
    assert len(hashed) == 3
    path = folder / "train-00001.safetensors"
    times = path.stat()
    data = bytearray(path.read_bytes())
    data[-1] ^= 1  # same size, and the old mtime put back: only ctime tells
    path.write_bytes(bytes(data))
    os.utime(path, ns=(times.st_atime_ns, times.st_mtime_ns))
    with pytest.raises(ShardError, match="train-00001.safetensors: sha256 .* differs"):
        opened(folder, written)
    data[-1] ^= 1
    path.unlink()
    path.write_bytes(bytes(data))  # the right bytes in a new file (as a relink leaves them)
    del hashed[:]
    opened(folder, written)
    assert hashed == ["train-00001.safetensors"]


def test_ranks_that_start_together_hash_each_shard_once_between_them(tmp_path, monkeypatch):
    from concurrent.futures import ThreadPoolExecutor

    folder = tmp_path / "prepared"
    written = write(folder, *make_split(20), shard_images=8)
    hashed = counting_hashes(monkeypatch, delay=0.05)
    with ThreadPoolExecutor(4) as ranks:
        list(ranks.map(lambda _: opened(folder, written), range(4)))
    assert sorted(hashed) == [entry.file for entry in written.entries]


def test_a_pipe_named_like_a_tensor_file_is_refused_not_waited_on(tmp_path):
    pipe = tmp_path / "shard-00000.safetensors"
    os.mkfifo(pipe)
    with fails_within(10), pytest.raises(TensorFileError, match="cannot read .*not a regular file"):
        read_header(pipe)


def test_a_header_read_from_memory_matches_the_file_and_refuses_the_same_damage(prepared):
    folder, _ = prepared
    path = folder / "train-00000.safetensors"
    data = path.read_bytes()
    assert header_of(data, path) == read_header(path)
    with pytest.raises(TensorFileError, match=r"claims bytes .*\(truncated or corrupt\)"):
        header_of(data[:-10], path)
    with pytest.raises(TensorFileError, match="not a safetensors file, or truncated"):
        header_of(data[:5], path)
