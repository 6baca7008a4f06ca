"""Training that survives faults: kills, corrupt checkpoints, NaN losses, out-of-memory."""

import os
import pickle
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import dvc, make_project_copy, run, tool_env
from pipeline import paths
from pipeline.config import Params, TrainParams
from pipeline.errors import PipelineError
from pipeline.prepare import prepare
from pipeline.train import loop
from pipeline.train.checkpoint import find_resume, load_checkpoint, save_checkpoint
from pipeline.train.run import run_training

# Slow enough per epoch (~0.3 s) to be killed in the middle of one; deterministic.
KILLABLE = {
    "train.epochs": 5,
    "train.batch_size": 16,
    "train.deterministic": True,
    "model.width": 48,
    "benchmark.min_iterations": 3,
    "benchmark.min_seconds": 0.0,
}


def train_params(**train) -> Params:
    defaults = {"epochs": 3, "batch_size": 64, "deterministic": True, "target_accuracy": None}
    return Params(train=TrainParams(**{**defaults, **train}))


@pytest.fixture(scope="module")
def prepared_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("prepared")
    prepare(Params(), root=root)
    return root


def fresh_root(prepared_root: Path, tmp_path: Path) -> Path:
    (tmp_path / "data").mkdir(parents=True)
    (tmp_path / "data/prepared").symlink_to(prepared_root / "data/prepared")
    return tmp_path


def kill_during_epoch(command: list[str], cwd: Path, after_epoch: int) -> str:
    """Start ``command``, SIGKILL its whole process group once epoch ``after_epoch`` is logged."""
    process = subprocess.Popen(
        command,
        cwd=cwd,
        env=tool_env(),
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    seen = []
    for line in process.stderr:
        seen.append(line)
        if line.startswith(f"epoch {after_epoch:>3}/"):
            os.killpg(process.pid, signal.SIGKILL)
            break
    process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL, "".join(seen)
    return "".join(seen)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted deterministic run: the weights every resumed run must reproduce."""
    root = make_project_copy(tmp_path_factory.mktemp("reference") / "p", KILLABLE)
    run(root, "python", "stages/prepare.py")
    run(root, "python", "stages/train.py")
    return (root / paths.MODEL_WEIGHTS).read_bytes()


def test_sigkill_mid_epoch_then_rerun_resumes_to_identical_weights(tmp_path, reference):
    root = make_project_copy(tmp_path / "p", KILLABLE)
    run(root, "python", "stages/prepare.py")
    kill_during_epoch(["python", "stages/train.py"], root, after_epoch=2)
    assert not (root / paths.MODEL_WEIGHTS).exists()
    resumed = run(root, "python", "stages/train.py")
    assert "resuming from epoch-0002.pt (epoch 2)" in resumed.stderr
    assert "epoch   1/" not in resumed.stderr
    assert (root / paths.MODEL_WEIGHTS).read_bytes() == reference


def test_killed_dvc_repro_resumes_through_dvc(tmp_path, reference):
    root = make_project_copy(tmp_path / "p", KILLABLE)
    command = [sys.executable, "-m", "dvc", "repro", "train"]
    kill_during_epoch(command, root, after_epoch=3)
    again = dvc(root, "repro", "train")
    assert "resuming from epoch-0003.pt (epoch 3)" in again.stderr + again.stdout
    assert (root / paths.MODEL_WEIGHTS).read_bytes() == reference


def test_two_deterministic_runs_give_identical_weights_and_metrics(prepared_root, tmp_path):
    results = []
    for name in ("a", "b"):
        root = fresh_root(prepared_root, tmp_path / name)
        metrics = run_training(train_params(checkpoint_every=0), root)
        volatile = {
            "images_per_s",
            "seconds_per_epoch",
            "wall_seconds",
            "memory_peak",
            "compute",
            "energy",
            "seconds_to_target",
        }
        results.append(
            (
                (root / paths.MODEL_WEIGHTS).read_bytes(),
                {k: v for k, v in metrics.items() if k not in volatile},
            )
        )
    assert results[0] == results[1]


def test_changed_params_start_fresh(prepared_root, tmp_path):
    root = fresh_root(prepared_root, tmp_path)
    run_training(train_params(epochs=2), root)
    state = load_checkpoint(root / paths.CHECKPOINT_DIR / "epoch-0002.pt")
    assert find_resume(root / paths.CHECKPOINT_DIR, state["fingerprint"]).state is not None
    changed = find_resume(root / paths.CHECKPOINT_DIR, "other-fingerprint")
    assert changed.state is None and "made with other params or data" in changed.message


def test_truncated_newest_checkpoint_falls_back_to_previous(tmp_path):
    folder = tmp_path / "ckpt"
    save_checkpoint(folder, 1, {"epoch": 1, "fingerprint": "f", "w": torch.ones(3)})
    save_checkpoint(folder, 2, {"epoch": 2, "fingerprint": "f", "w": torch.ones(3)})
    newest = folder / "epoch-0002.pt"
    newest.write_bytes(newest.read_bytes()[:50])
    resume = find_resume(folder, "f")
    assert resume.state["epoch"] == 1
    assert (
        "resuming from epoch-0001.pt" in resume.message
        and "epoch-0002.pt unreadable" in resume.message
    )


def test_only_two_checkpoints_are_kept(tmp_path):
    for epoch in range(1, 5):
        save_checkpoint(tmp_path, epoch, {"epoch": epoch})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch-0003.pt", "epoch-0004.pt"]


class WritesAFile:
    def __init__(self, target: str) -> None:
        self.target = target

    def __reduce__(self):
        return (Path.write_text, (Path(self.target), "pwned"))


def test_hostile_pickle_checkpoint_is_refused_and_never_runs(tmp_path):
    folder = tmp_path / "ckpt"
    folder.mkdir()
    marker = tmp_path / "marker.txt"
    with open(folder / "epoch-0001.pt", "wb") as handle:
        pickle.dump(
            {"epoch": 1, "fingerprint": "f", "payload": WritesAFile(str(marker))},
            handle,
            protocol=2,
        )
    resume = find_resume(folder, "f")
    assert resume.state is None and "unreadable" in resume.message
    with pytest.raises(pickle.UnpicklingError):
        load_checkpoint(folder / "epoch-0001.pt")
    assert not marker.exists()


def test_injected_nan_loss_stops_and_keeps_last_good_checkpoint(
    prepared_root, tmp_path, monkeypatch
):
    root = fresh_root(prepared_root, tmp_path)
    real_step = loop.Trainer.train_step

    def poisoned(self, images, labels):
        if self.state.epoch >= 1:  # the second epoch's losses are NaN
            self.loss_fn = lambda logits, target: logits.sum() * float("nan")
        return real_step(self, images, labels)

    monkeypatch.setattr(loop.Trainer, "train_step", poisoned)
    with pytest.raises(loop.NonFiniteLossError, match=r"NaN/inf in \d+ step\(s\).*epoch 2, step"):
        run_training(train_params(epochs=3), root)
    assert not (root / paths.MODEL_WEIGHTS).exists()
    checkpoints = sorted(p.name for p in (root / paths.CHECKPOINT_DIR).iterdir())
    assert checkpoints == ["epoch-0001.pt"]
    state = load_checkpoint(root / paths.CHECKPOINT_DIR / "epoch-0001.pt")
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def test_tolerated_nonfinite_steps_are_skipped_and_counted(prepared_root, tmp_path, monkeypatch):
    root = fresh_root(prepared_root, tmp_path)
    real_step = loop.Trainer.train_step
    calls = {"n": 0}

    def sometimes_nan(self, images, labels):
        calls["n"] += 1
        real_loss = self.loss_fn
        if calls["n"] in (3, 7):
            self.loss_fn = lambda logits, target: real_loss(logits, target) * float("nan")
        try:
            return real_step(self, images, labels)
        finally:
            self.loss_fn = real_loss

    monkeypatch.setattr(loop.Trainer, "train_step", sometimes_nan)
    metrics = run_training(train_params(epochs=2, max_nonfinite_steps=2), root)
    assert metrics["nonfinite_steps"] == 2 and metrics["skipped_steps"] == 2
    assert metrics["val_accuracy"] > 0.5


def simulate_oom_above(batch_size_limit: int, monkeypatch):
    real_step = loop.Trainer.train_step

    def step(self, images, labels):
        if len(labels) > batch_size_limit:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real_step(self, images, labels)

    monkeypatch.setattr(loop.Trainer, "train_step", step)


def test_out_of_memory_is_a_clear_error(prepared_root, tmp_path, monkeypatch):
    simulate_oom_above(32, monkeypatch)
    with pytest.raises(
        PipelineError,
        match=r"out of memory at train.batch_size=128; try "
        r"train.batch_size=64, or set train.auto_batch_size",
    ):
        run_training(train_params(batch_size=128), fresh_root(prepared_root, tmp_path))


def test_auto_batch_size_backs_off_and_records_the_size_used(prepared_root, tmp_path, monkeypatch):
    simulate_oom_above(32, monkeypatch)
    root = fresh_root(prepared_root, tmp_path)
    metrics = run_training(train_params(batch_size=128, auto_batch_size=True, epochs=2), root)
    assert metrics["batch_size"] == 32
    assert (root / paths.MODEL_WEIGHTS).exists()
