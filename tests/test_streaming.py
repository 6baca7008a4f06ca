"""The streaming train path: order, rank sharding, resume, accuracy, and a killed run."""

import subprocess
import sys
import threading

import numpy as np
import pytest
import torch
import yaml

from conftest import ROOT, tool_env
from pipeline.core import paths
from pipeline.core.config import DataParams, Params, TrainParams, load_params
from pipeline.prepared.shards import open_split, write_split
from pipeline.sources.prepare import prepare_data
from pipeline.train.batches import DeviceBatches, HostBatches
from pipeline.train.distributed import FAULT_ENV
from pipeline.train.run import run_training
from pipeline.train.setup import choose_data_path
from pipeline.train.streaming import StreamBatches

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def split(tmp_path_factory):
    """103 images (row number in the first pixel's two bytes) in shards of 10: the last short."""
    folder = tmp_path_factory.mktemp("shards")
    count = 103
    images = np.zeros((count, 2, 3, 3), np.uint8)
    images[:, 0, 0, 0], images[:, 1, 0, 0] = np.arange(count) % 256, np.arange(count) // 256
    written = write_split(folder, "train", images, np.zeros(count, np.int64), 10, seed=1)
    return open_split(folder, "train", written.entries, (2, 3, 3), 1, count)


def rows(batch: torch.Tensor) -> list[int]:
    return (batch[:, 0, 0, 0].long() + 256 * batch[:, 1, 0, 0].long()).tolist()


def epochs(batches: StreamBatches, count: int) -> list[list[list[int]]]:
    return [[rows(images) for images, _ in batches] for _ in range(count)]


def test_same_seed_same_batches_other_seed_other_batches(split):
    a = epochs(StreamBatches(split, 8, CPU, seed=3, window_shards=3), 2)
    b = epochs(
        StreamBatches(split, 8, CPU, seed=3, window_shards=3, prefetch_batches=1, background=True),
        2,
    )
    c = epochs(StreamBatches(split, 8, CPU, seed=4, window_shards=3), 2)
    assert a == b  # the reader thread and its prefetch depth change nothing
    assert a != c and a[0] != a[1]  # reshuffled every epoch
    for epoch in a:
        seen = [row for batch in epoch for row in batch]
        assert len(epoch) == 12 and len(set(seen)) == len(seen) == 96  # full batches, no repeats


def test_shuffle_crosses_shards_but_stays_within_a_window(split):
    shard_of = {}
    for number, (images, _) in enumerate(split.iter_shards()):
        shard_of.update((row, number) for row in rows(torch.from_numpy(images)))
    batches = StreamBatches(split, 8, CPU, seed=0, window_shards=2)
    state = batches.generator.get_state()
    flat = [row for batch in epochs(batches, 1)[0] for row in batch]
    batches.generator.set_state(state)
    windows = [numbers for numbers, _, _ in batches.window_orders(batches.next_epoch_seed())]
    assert [n for numbers in windows for n in numbers] != list(range(11))  # shard order shuffled
    window_of = {n: w for w, numbers in enumerate(windows) for n in numbers}
    sequence = [window_of[shard_of[row]] for row in flat]
    assert sequence == sorted(sequence)  # each window is used up before the next one starts
    assert len({shard_of[row] for row in flat[:8]}) == 2  # a batch mixes its window's shards


def test_ranks_take_disjoint_equal_shares(split):
    per_rank = [
        epochs(StreamBatches(split, 5, CPU, seed=9, rank=r, world_size=3), 1)[0] for r in range(3)
    ]
    sets = [{row for batch in epoch for row in batch} for epoch in per_rank]
    assert [len(epoch) for epoch in per_rank] == [6, 6, 6]  # 103 // 3 = 34 -> 6 batches of 5
    assert all(len(s) == 30 for s in sets)
    assert not (sets[0] & sets[1] or sets[0] & sets[2] or sets[1] & sets[2])


def test_resume_from_the_generator_state_continues_the_sequence(split):
    whole = epochs(StreamBatches(split, 8, CPU, seed=5), 3)
    first = StreamBatches(split, 8, CPU, seed=5)
    epochs(first, 1)
    resumed = StreamBatches(split, 8, CPU, seed=123)
    resumed.generator.set_state(first.generator.get_state())  # what a checkpoint restores
    assert epochs(resumed, 2) == whole[1:]


def test_abandoned_epoch_stops_its_reader_thread(split):
    before = threading.active_count()
    iterator = iter(StreamBatches(split, 4, CPU, seed=0, prefetch_batches=1, background=True))
    next(iterator)
    assert threading.active_count() == before + 1  # the reader, blocked on a full queue
    iterator.close()  # what happens when a training step raises
    assert threading.active_count() == before


def test_auto_picks_memory_while_the_split_fits_in_half_the_available_memory():
    assert choose_data_path("auto", 10, 100)[0] == "memory"
    assert choose_data_path("auto", 60, 100)[0] == "stream"
    assert choose_data_path("auto", 60, None)[0] == "memory"
    assert choose_data_path("stream", 1, 100) == ("stream", "train.data_path: stream")


@pytest.fixture(scope="module")
def sharded_digits(tmp_path_factory):
    root = tmp_path_factory.mktemp("digits")
    prepare_data(Params(data=DataParams(shard_images=256)), root=root)
    return root


@pytest.mark.parametrize("world_size", [1, 2])
def test_memory_feeders_give_the_streamed_batches(split, world_size):
    """Same seed, same shards: in memory (on the device or through a DataLoader) the batches
    are the streamed ones, rank by rank, also when an epoch resumes part-way."""
    images, labels = split.load_tensors()
    for rank in range(world_size):
        stream = StreamBatches(split, 8, CPU, seed=3, rank=rank, world_size=world_size)
        expected = epochs(stream, 3)
        assert expected[0] != expected[1]
        order = stream.order
        for feeder in (
            DeviceBatches(images, labels, 8, CPU, 3, rank, world_size, order),
            HostBatches(images, labels, 8, CPU, 3, rank, world_size, 0, order),
        ):
            assert epochs(feeder, 2) == expected[:2]
            feeder.skip_next_epoch(3)  # a resume after the third batch of epoch 3
            assert epochs(feeder, 1) == [expected[2][3:]]


def test_the_dataloader_feeder_leaves_the_global_generator_alone(split):
    """A resumed run starts a new DataLoader iterator where the uninterrupted one did not: it
    must not draw from torch's global generator (dropout, ...)."""
    images, labels = split.load_tensors()
    feeder = HostBatches(images, labels, 8, CPU, 3, workers=0)
    before = torch.get_rng_state()
    next(iter(feeder))
    assert torch.equal(torch.get_rng_state(), before)


def test_memory_and_stream_train_bit_identical_weights(sharded_digits, tmp_path):
    """train.data_path (and data_on_device) never change the result: deterministic CPU
    training ships byte-identical weights whichever way the train split is read."""
    weights = {}
    for path, on_device in (("memory", True), ("memory", False), ("stream", False)):
        root = tmp_path / f"{path}-{on_device}"
        (root / "data").mkdir(parents=True)
        (root / "data/prepared").symlink_to(sharded_digits / paths.PREPARED_DIR)
        train = TrainParams(
            epochs=2, data_path=path, data_on_device=on_device, num_workers=0, augment="crop",
            checkpoint_every=0, target_accuracy=None, precision="fp32", deterministic=True,
        )  # fmt: skip
        metrics = run_training(Params(model={"width": 8}, train=train), root)
        assert metrics["data_path"]["data_path"] == path
        weights[path, on_device] = (root / paths.MODEL_WEIGHTS).read_bytes()
    assert len(set(weights.values())) == 1, list(weights)


def kill_and_resume(root, prepared, train: dict, fault: str) -> dict:
    """Run a real `stages/train.py` that the fault hook kills, then the re-run in process; the
    weights it ships, its record, and those of a fresh uninterrupted run."""
    raw = {"data": {"shard_images": 256}, "model": {"width": 8}, "train": train}
    (root / "params.yaml").write_text(yaml.safe_dump(raw))
    (root / "data").mkdir()
    (root / "data/prepared").symlink_to(prepared / paths.PREPARED_DIR)
    env = {**tool_env(), FAULT_ENV: fault}
    killed = subprocess.run(
        [sys.executable, str(ROOT / "stages/train.py")],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
    )
    assert killed.returncode != 0 and "exits after" in killed.stderr, killed.stderr
    assert not (root / paths.MODEL_WEIGHTS).exists()
    checkpoints = sorted(p.name for p in (root / paths.CHECKPOINT_DIR).iterdir())
    params = load_params(root / "params.yaml")
    resumed = run_training(params, root)
    after_resume = (root / paths.MODEL_WEIGHTS).read_bytes()
    fresh = run_training(params, root)  # the finished run left no checkpoint to resume
    assert fresh["resumed"]["from_epoch"] is None
    return {
        "checkpoints": checkpoints,
        "resumed": resumed,
        "fresh": fresh,
        "same_weights": (root / paths.MODEL_WEIGHTS).read_bytes() == after_resume,
    }


def test_killed_streamed_run_resumes_to_identical_weights(sharded_digits, tmp_path):
    """Killed after epoch 1's checkpoint: the re-run resumes there and ships the weights an
    uninterrupted run ships."""
    train = {"data_path": "stream", "epochs": 2, "batch_size": 32, "deterministic": True}
    run = kill_and_resume(tmp_path, sharded_digits, train, "rank=0,epoch=1")
    assert run["resumed"]["data_path"]["data_path"] == "stream"
    assert run["resumed"]["resumed"]["from_epoch"] == 1
    assert run["same_weights"]


@pytest.mark.parametrize("data_path", ["stream", "memory"])
def test_killed_mid_epoch_resumes_from_its_batch_checkpoint_bit_identically(
    sharded_digits, tmp_path, data_path
):
    """Killed at batch 21 of epoch 2 (after the checkpoint at batch 20): the re-run starts at
    batch 21 and ends with the weights, losses and accuracies of a run never stopped."""
    train = {
        "data_path": data_path, "epochs": 2, "batch_size": 32, "deterministic": True,
        "checkpoint_every_batches": 10, "augment": "crop",
    }  # fmt: skip
    run = kill_and_resume(tmp_path, sharded_digits, train, "rank=0,epoch=2,batch=21")
    assert run["checkpoints"][-1].startswith("epoch-0001+000020-"), run["checkpoints"]
    resumed, fresh = run["resumed"], run["fresh"]
    assert resumed["resumed"]["from_epoch"] == 1 and resumed["resumed"]["from_batch"] == 20
    assert run["same_weights"]
    for key in ("train_loss", "train_accuracy", "val_loss", "val_accuracy"):
        assert resumed[key] == fresh[key], key
    # This process trained the epoch's last batches only; the whole run counts every image.
    per_epoch = fresh["images"] // 2
    assert resumed["process"]["images"] == per_epoch - 20 * 32
    assert resumed["images"] == fresh["images"] == fresh["process"]["images"] == 2 * per_epoch
