"""Data-parallel training: real gloo processes on the CPU, started the way users start them.

Multi-process runs go through ``python stages/train.py`` (which launches its own workers via
torch's elastic agent) or ``torchrun``, in a throwaway copy of the project.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from conftest import make_project_copy, run, tool_env
from pipeline.core import paths
from pipeline.core.config import Params, ParamsError, TrainParams, parse_params
from pipeline.core.errors import PipelineError
from pipeline.hardware.precision import PRECISIONS
from pipeline.models.files import load_trained
from pipeline.models.inference import predict_logits
from pipeline.prepared.storage import read_split_tensors
from pipeline.train import distributed, launch
from pipeline.train.batches import DeviceBatches, EpochOrder, HostBatches, make_batches
from pipeline.train.distributed import Group
from pipeline.train.feeders import InMemory, StepSetup
from pipeline.train.identity import fingerprint, prepared_hashes
from pipeline.train.run import run_training

# Six epochs: enough for two processes (half the optimiser steps) to reach the single-process
# accuracy on digits. Deterministic, so a resumed run can be compared bit for bit.
DDP_PARAMS = {"train.epochs": 6, "train.deterministic": True}
TWO = {**DDP_PARAMS, "train.distributed": {"nproc_per_node": 2, "max_restarts": 0}}


def project(tmp_path: Path, prepared: Path, overrides: dict) -> Path:
    root = make_project_copy(tmp_path, overrides)
    shutil.copytree(prepared / paths.PREPARED_DIR, root / paths.PREPARED_DIR)
    return root


def run_env(cwd: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        args, cwd=cwd, env={**tool_env(), **(env or {})}, capture_output=True, text=True
    )


def accuracy_on_test_split(root: Path) -> float:
    model, _card = load_trained(root / paths.MODELS_DIR)
    images, labels = read_split_tensors(root / paths.PREPARED_DIR, "test")
    return (predict_logits(model, images, 512).argmax(1) == labels).float().mean().item()


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    root = make_project_copy(tmp_path_factory.mktemp("prepared") / "p")
    run(root, "python", "stages/prepare.py")
    return root


@pytest.fixture(scope="module")
def two_process_run(prepared, tmp_path_factory):
    root = project(tmp_path_factory.mktemp("ddp") / "p", prepared, TWO)
    result = run(root, "python", "stages/train.py")
    return root, result.stderr


# ---- config, launcher decisions, helpers (no processes) -------------------------------------


def test_distributed_params_validate_and_name_the_bad_key():
    assert Params().train.distributed.nproc_per_node == 1
    auto = parse_params({"train": {"distributed": {"nproc_per_node": "auto"}}})
    assert auto.train.distributed.nproc_per_node == "auto"
    for bad, key in [
        ({"nproc_per_node": 0}, "nproc_per_node"),
        ({"nproc_per_node": "all"}, "nproc_per_node"),
        ({"nnodes": 2}, "rdzv_endpoint"),
        ({"nnodes": 2, "rdzv_endpoint": "node0"}, "rdzv_endpoint"),
        ({"nnodes": 2, "rdzv_endpoint": "node0:\uff12\uff19\uff14\uff10\uff10"}, "rdzv_endpoint"),
        ({"nnodes": 2, "rdzv_endpoint": "node0:0"}, "rdzv_endpoint"),
        ({"nnodes": 2, "rdzv_endpoint": "node0:65536"}, "rdzv_endpoint"),
        ({"max_restarts": -1}, "max_restarts"),
    ]:
        with pytest.raises(ParamsError, match=rf"'train\.distributed\.{key}'"):
            parse_params({"train": {"distributed": bad}})
    two_nodes = {"nnodes": 2, "rdzv_endpoint": "node0.example.com:29400"}
    assert parse_params({"train": {"distributed": two_nodes}}).train.distributed.nnodes == 2


def test_process_count_and_device_checks_on_cpu():
    dist = TrainParams().distributed
    assert launch.processes_per_node(dist.model_copy(update={"nproc_per_node": "auto"}), "cpu") == 1
    assert launch.processes_per_node(dist.model_copy(update={"nproc_per_node": 3}), "cpu") == 3
    with pytest.raises(PipelineError, match="pins one GPU"):
        launch.check_devices("cuda:1", 2)
    launch.check_devices("cpu", 2)
    assert distributed.threads_per_process(2, cores=2) == 1
    assert distributed.threads_per_process(2, cores=16) == 8
    assert distributed.threads_per_process(4, cores=2) == 1


def test_worker_detection_and_fault_hook(monkeypatch):
    assert distributed.is_worker({"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0"})
    assert not distributed.is_worker({})
    assert distributed.parse_fault("rank=1,epoch=2") == (1, 2, None)
    assert distributed.parse_fault("rank=1,epoch=2,batch=5") == (1, 2, 5)
    with pytest.raises(PipelineError, match=r"expected rank=R,epoch=E\[,batch=B\]"):
        distributed.parse_fault("rank=1")
    exits = []
    monkeypatch.setattr(distributed.os, "_exit", exits.append)
    group = distributed.Group(rank=1, world_size=2)
    env = {distributed.FAULT_ENV: "rank=1,epoch=2", "TORCHELASTIC_RESTART_COUNT": "0"}
    distributed.maybe_inject_fault(group, 1, environ=env)
    distributed.maybe_inject_fault(distributed.Group(rank=0, world_size=2), 2, environ=env)
    distributed.maybe_inject_fault(group, 2, environ={**env, "TORCHELASTIC_RESTART_COUNT": "1"})
    distributed.maybe_inject_fault(group, 2, 3, environ=env)  # a batch: not the epoch's end
    assert exits == []
    distributed.maybe_inject_fault(group, 2, environ=env)
    assert exits == [1]
    at_batch = {**env, distributed.FAULT_ENV: "rank=1,epoch=2,batch=3"}
    distributed.maybe_inject_fault(group, 2, environ=at_batch)
    distributed.maybe_inject_fault(group, 2, 3, environ=at_batch)
    assert exits == [1, 1]


def failure(exitcode, message="", timestamp=0):
    return SimpleNamespace(
        exitcode=exitcode,
        error_file="/tmp/error.json" if message else "<N/A>",
        message={"message": message} if message else "see the docs",
        timestamp=timestamp,
        signal_name=lambda: "SIGTERM",
    )


def test_failure_message_is_one_line_naming_the_rank_that_started_it():
    user_error = {0: failure(1, "PipelineError: bad thing\nmore", 5), 1: failure(-15)}
    assert (
        launch.failure_message(SimpleNamespace(failures=user_error), 0)
        == "training worker rank 0 exited with code 1: PipelineError: bad thing"
    )
    # Rank 1 died silently; rank 0 then lost its peer, and its error was recorded first.
    lost_peer = {
        0: failure(1, "RuntimeError: [pair.cc:545] Read error: Connection reset by peer", 1),
        1: failure(1, timestamp=2),
    }
    assert launch.failure_message(SimpleNamespace(failures=lost_peer), 2) == (
        "training worker rank 1 exited with code 1 (after 2 restart(s)); its output is above"
    )


def test_checkpoint_fingerprint_depends_on_world_size_not_launch_settings(prepared):
    data = prepared_hashes(prepared / paths.PREPARED_DIR)
    params = Params()
    relaunched = Params(train=TrainParams(distributed={"nproc_per_node": 2, "max_restarts": 3}))
    assert fingerprint(params, 64, data) == fingerprint(relaunched, 64, data)
    assert fingerprint(params, 64, data, world_size=2) != fingerprint(params, 64, data)


def test_rank_shards_cover_the_epoch_once_device_and_host_paths():
    n, world = 1003, 3
    images = torch.arange(n).view(n, 1)
    labels = torch.zeros(n, dtype=torch.long)
    for kind in (DeviceBatches, HostBatches):
        extra = {"workers": 0} if kind is HostBatches else {}
        ranks = [
            kind(images, labels, 32, torch.device("cpu"), 7, r, world, **extra)
            for r in range(world)
        ]
        for _epoch in range(2):
            states = [b.generator.get_state() for b in ranks]
            shards = [b.epoch_indices() for b in ranks]
            for b, state in zip(ranks, states, strict=True):
                b.generator.set_state(state)  # iterate the same epoch the shards came from
            union = torch.cat(shards).tolist()
            assert len(union) == len(set(union)) == n - n % world
            seen = [torch.cat([x.view(-1) for x, _ in b]).tolist() for b in ranks]
            flat = [i for s in seen for i in s]
            assert len(flat) == len(set(flat)) == world * len(ranks[0]) * 32
            assert all(set(s) <= set(shard.tolist()) for s, shard in zip(seen, shards, strict=True))


def test_validation_slices_count_every_sample_once():
    n = 269
    val = (torch.arange(n).view(n, 1), torch.zeros(n, dtype=torch.long))
    data = InMemory(val, val, EpochOrder.whole(n))
    steps = [
        StepSetup(torch.device("cpu"), PRECISIONS["fp32"], 0, rank=r, world_size=2) for r in (0, 1)
    ]
    slices = [data.validation(step).chunks()[0][0].view(-1) for step in steps]
    assert torch.equal(torch.cat(slices), torch.arange(n))


# ---- real processes --------------------------------------------------------------------------


def dump_shards(prepared_dir: str, out: str) -> None:
    """Under torchrun: each rank's indices for two epochs, on both data paths, to rank 0's file."""
    group = distributed.join_group("cpu")
    n = len(read_split_tensors(Path(prepared_dir), "train")[1])
    ids, labels = torch.arange(n).view(n, 1), torch.zeros(n, dtype=torch.long)
    mine = {}
    for on_device in (True, False):
        batches = make_batches(
            ids, labels, 64, torch.device("cpu"), 42, on_device, group.rank, group.world_size, 0
        )
        mine[str(on_device)] = [
            torch.cat([x.view(-1) for x, _ in batches]).tolist() for _epoch in range(2)
        ]
    gathered = [None] * group.world_size
    torch.distributed.all_gather_object(gathered, {"rank": group.rank, "n": n, "ids": mine})
    if group.is_writer:
        Path(out).write_text(json.dumps(gathered))
    distributed.leave_group()


def test_two_gloo_processes_split_each_epoch_without_overlap(prepared, tmp_path):
    out = tmp_path / "shards.json"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    run(
        prepared,
        *command,
        "--nproc_per_node",
        "2",
        __file__,
        str(prepared / "data/prepared"),
        str(out),
    )
    ranks = json.loads(out.read_text())
    n = ranks[0]["n"]
    assert sorted(r["rank"] for r in ranks) == [0, 1]
    for path in ("True", "False"):
        for epoch in range(2):
            per_rank = [set(r["ids"][path][epoch]) for r in ranks]
            assert not per_rank[0] & per_rank[1]
            # Each rank trains full batches of its half: 629 -> 9 x 64; the rest of each half is
            # reshuffled into later epochs.
            assert all(len(s) == (n // 2) // 64 * 64 for s in per_rank)
        across = [set(ranks[0]["ids"][path][e]) | set(ranks[1]["ids"][path][e]) for e in (0, 1)]
        assert across[0] != across[1]  # reshuffled every epoch
    assert ranks[0]["ids"]["True"] == ranks[0]["ids"]["False"]  # both data paths agree


def test_two_processes_match_single_process_accuracy_and_write_once(
    prepared, two_process_run, tmp_path
):
    root, stderr = two_process_run
    metrics = json.loads((root / paths.TRAIN_DETAILS).read_text())
    assert metrics["world_size"] == 2
    assert metrics["global_batch_size"] == 2 * metrics["batch_size"] == 128
    assert metrics["epochs"] == 6
    # Written once: one header, one resume line, one progress line per epoch, no stray files.
    assert stderr.count("train: small_cnn on cpu") == 1
    assert stderr.count("train: starting fresh") == 1
    assert sum(line.startswith("epoch ") for line in stderr.splitlines()) == 6
    assert (root / paths.MODEL_WEIGHTS).exists() and (root / paths.MODEL_CARD).exists()
    leftovers = [p.name for p in root.rglob("*.tmp")]
    assert leftovers == []
    assert list((root / paths.CHECKPOINT_DIR).iterdir()) == []  # a finished run removes its own
    curve = (root / paths.TRAIN_LIVE_DIR / "plots/metrics/train_loss.tsv").read_text()
    assert len(curve.strip().splitlines()) == 1 + 6  # header + one row per epoch

    single = project(tmp_path / "single", prepared, DDP_PARAMS)
    reference = run_training(parse_params({"train": {"epochs": 6, "deterministic": True}}), single)
    assert reference["world_size"] == 1
    assert abs(metrics["val_accuracy"] - reference["val_accuracy"]) <= 0.02
    assert abs(accuracy_on_test_split(root) - accuracy_on_test_split(single)) <= 0.02


def test_worker_killed_on_first_attempt_restarts_and_resumes(prepared, two_process_run, tmp_path):
    root = project(
        tmp_path / "p",
        prepared,
        {**TWO, "train.distributed": {"nproc_per_node": 2, "max_restarts": 1}},
    )
    result = run_env(
        root, "python", "stages/train.py", env={distributed.FAULT_ENV: "rank=1,epoch=2"}
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("rank 1 exits after epoch 2") == 1
    assert re.search(r"train: resuming from epoch-0002-[0-9a-f]{12}\.pt \(epoch 2\)", result.stderr)
    assert json.loads((root / paths.TRAIN_DETAILS).read_text())["epochs"] == 6
    # Resumed from the checkpoint, the run ends exactly where the uninterrupted one did.
    uninterrupted, _ = two_process_run
    weights = (root / paths.MODEL_WEIGHTS).read_bytes()
    assert weights == (uninterrupted / paths.MODEL_WEIGHTS).read_bytes()


def test_worker_failure_without_restarts_is_a_one_line_error(prepared, tmp_path):
    root = project(tmp_path / "p", prepared, {**TWO, "train.epochs": 3})
    result = run_env(
        root, "python", "stages/train.py", env={distributed.FAULT_ENV: "rank=1,epoch=1"}
    )
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last == "train: error: training worker rank 1 exited with code 1; its output is above"
    assert result.stderr.count("train: error:") == 1
    assert "Traceback" not in result.stderr
    assert not (root / paths.MODEL_WEIGHTS).exists()
    assert not (root / paths.TRAIN_METRICS).exists()
    assert [p.name for p in root.rglob("*.tmp")] == []


if __name__ == "__main__":  # the torchrun worker of the sharding test
    dump_shards(sys.argv[1], sys.argv[2])


@dataclass(frozen=True)
class _TwoRanks(Group):
    """all_reduce as rank 0 would see it beside a second rank contributing ``other``."""

    other: float = 0.0

    def all_reduce(self, tensor):
        return tensor + self.other


@pytest.mark.parametrize(
    ("method", "local_rank", "other", "expected"),
    [
        ("nvml_energy_counter", 0, 10.0, 20.0),  # each GPU's own counter: add them up
        ("estimate", 1, 10.0, 20.0),  # each process's own CPU time: add them up
        ("rapl", 0, 0.0, 10.0),  # package-wide: local rank 0 counts it ...
        ("rapl", 1, 10.0, 10.0),  # ... and local rank 1 adds nothing
    ],
)
def test_group_energy_adds_own_meters_and_counts_rapl_once(method, local_rank, other, expected):
    from pipeline.energy import EnergyReading
    from pipeline.train.accounting import group_joules

    reading = EnergyReading(joules=10.0, seconds=2.0, method=method, reason=None)
    group = _TwoRanks(rank=local_rank, world_size=2, local_rank=local_rank, other=other)
    assert group_joules(reading, group, torch.device("cpu")) == expected


def test_group_energy_stays_unavailable_when_a_rank_has_no_figure():
    from pipeline.energy import EnergyReading
    from pipeline.train.accounting import group_joules

    reading = EnergyReading(joules=None, seconds=2.0, method="unavailable", reason="no meter")
    group = _TwoRanks(rank=0, world_size=2, local_rank=0, other=5.0)
    assert group_joules(reading, group, torch.device("cpu")) is None
