import numpy as np
import pytest

from pipeline.core.config import DataParams
from pipeline.prepared.stats import channel_stats
from pipeline.prepared.storage import read_split, write_prepared
from pipeline.prepared.types import LabelledImages, SourceData
from pipeline.sources import digits
from pipeline.sources.prepare import prepare_data
from pipeline.sources.split import SplitError, split


def test_digits_is_uint8_nchw_with_ten_classes():
    source = digits.load()
    pool = source.pools["all"]
    assert pool.images.dtype == np.uint8 and pool.images.shape[1:] == (1, 8, 8)
    assert pool.images.max() == 255
    assert source.class_names == [str(i) for i in range(10)]


def test_split_is_stratified_disjoint_and_complete():
    source = digits.load()
    parts = split(source, 0.15, 0.15, seed=0)
    total = sum(len(p) for p in parts.values())
    assert total == len(source.pools["all"])
    for part in parts.values():
        assert set(np.unique(part.labels)) == set(range(10))
    assert abs(len(parts["test"]) / total - 0.15) < 0.01


def test_same_seed_gives_identical_bytes_and_other_seed_differs(tmp_path):
    source = digits.load()
    for name, seed in [("a", 7), ("b", 7), ("c", 8)]:
        parts = split(source, 0.15, 0.15, seed=seed)
        write_prepared(tmp_path / name, source, parts)
    for split_name in ("train", "val", "test"):
        file = f"{split_name}-00000.safetensors"
        assert (tmp_path / "a" / file).read_bytes() == (tmp_path / "b" / file).read_bytes()
    assert (tmp_path / "a/train-00000.safetensors").read_bytes() != (
        tmp_path / "c/train-00000.safetensors"
    ).read_bytes()


def test_official_test_split_is_kept():
    rng = np.random.default_rng(0)
    train = LabelledImages(
        rng.integers(0, 255, (100, 1, 4, 4), dtype=np.uint8), np.repeat(np.arange(4), 25)
    )
    test = LabelledImages(
        rng.integers(0, 255, (8, 1, 4, 4), dtype=np.uint8), np.repeat(np.arange(4), 2)
    )
    parts = split(SourceData("x", {"train": train, "test": test}, list("abcd")), 0.2, 0.1, 0)
    assert parts["test"] is test
    assert len(parts["train"]) == 80 and len(parts["val"]) == 20


def test_too_few_images_is_a_clear_error():
    tiny = LabelledImages(np.zeros((6, 1, 2, 2), np.uint8), np.array([0, 0, 0, 1, 1, 1]))
    with pytest.raises(SplitError, match="6 images cannot give a test split"):
        split(SourceData("x", {"all": tiny}, ["a", "b"]), 0.1, 0.1, 0)


def test_single_class_is_a_clear_error():
    one = LabelledImages(np.zeros((50, 1, 2, 2), np.uint8), np.zeros(50, np.int64))
    with pytest.raises(SplitError, match="at least 2 classes"):
        split(SourceData("x", {"all": one}, ["a"]), 0.1, 0.1, 0)


def test_channel_stats_match_numpy():
    images = np.random.default_rng(1).integers(0, 256, (10, 3, 5, 5), dtype=np.uint8)
    mean, std = channel_stats(images)
    np.testing.assert_allclose(mean, (images / 255.0).mean(axis=(0, 2, 3)))
    np.testing.assert_allclose(std, (images / 255.0).std(axis=(0, 2, 3)))


def test_prepare_writes_the_contract(tmp_path):
    from pipeline.core.config import Params

    report = prepare_data(Params(data=DataParams()), root=tmp_path)
    prepared = tmp_path / "data/prepared"
    assert sorted(p.name for p in prepared.iterdir()) == [
        "meta.json",
        "test-00000.safetensors",  # the default stays one shard per split
        "train-00000.safetensors",
        "val-00000.safetensors",
    ]
    assert report["quarantined_count"] == 0
    assert sum(report["counts"].values()) == 1797
    assert read_split(prepared, "val").images.dtype == np.uint8
    assert not (tmp_path / "metrics").exists()  # the record is the stage script's to write


def test_prepare_fails_above_the_quarantine_threshold_and_writes_nothing(tmp_path):
    from PIL import Image

    from pipeline.core.config import Params
    from pipeline.sources.load import DataSourceError

    root = tmp_path / "images"
    for label in ("cat", "dog"):
        (root / label).mkdir(parents=True)
        for i in range(12):
            Image.new("L", (8, 8), color=i * 10).save(root / label / f"{i}.png")
    (root / "cat" / "empty.png").write_bytes(b"")
    (root / "dog" / "notes.jpg").write_text("not an image")
    data = DataParams(source="imagefolder", root=str(root), max_bad_fraction=0.05, workers=1)
    with pytest.raises(DataSourceError, match=r"2 of 26 files quarantined"):
        prepare_data(Params(data=data), root=tmp_path / "out")
    assert not (tmp_path / "out").exists()

    report = prepare_data(
        Params(data=data.model_copy(update={"max_bad_fraction": 0.1})), root=tmp_path / "out"
    )
    reasons = {item["path"]: item["reason"] for item in report["quarantined"]}
    assert set(reasons) == {"cat/empty.png", "dog/notes.jpg"} and all(reasons.values())
