"""Training that survives faults: kills, corrupt checkpoints, NaN losses, out-of-memory."""

import json
import os
import pickle
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from conftest import ROOT, dvc, fails_within, make_project_copy, run, tool_env
from pipeline.core import paths
from pipeline.core.config import Params, TrainParams, load_params
from pipeline.core.errors import PipelineError
from pipeline.core.records import TRAIN_FIGURES, write_record
from pipeline.sources.prepare import prepare_data
from pipeline.tools.pareto import _run as sweep_entry
from pipeline.tools.pareto import pareto_front
from pipeline.train import checkpoint as checkpoint_module
from pipeline.train import loop
from pipeline.train.checkpoint import (
    checkpoint_files,
    checkpoint_path,
    find_resume,
    load_checkpoint,
    save_checkpoint,
)
from pipeline.train.distributed import FAULT_ENV
from pipeline.train.identity import fingerprint
from pipeline.train.run import run_training

# Slow enough per epoch (~0.3 s) to be killed in the middle of one; deterministic.
KILLABLE = {
    "train.epochs": 5,
    "train.batch_size": 16,
    "train.deterministic": True,
    "model.width": 48,
    "benchmark.min_iterations": 3,
    "benchmark.min_seconds": 0.0,
    "energy.cpu_watts": 50.0,  # an energy figure on any machine (RAPL is often unreadable)
}
RUN_A, RUN_B = "a" * 64, "b" * 64  # two runs' fingerprints


def resumable(epoch: int) -> dict:
    """The least a checkpoint holds to be resumed (what Trainer.state_dict writes, empty)."""
    empty = {"optimizer": {}, "scheduler": {}, "scaler": {}, "ema": None, "best_weights": None}
    model = {"w": torch.ones(3)}
    return {**empty, "model": model, "rng": [], "state": {"epoch": epoch}, "epoch": epoch}


def resumed_at(epoch: int) -> re.Pattern:
    return re.compile(rf"resuming from epoch-{epoch:04d}-[0-9a-f]{{12}}\.pt \(epoch {epoch}\)")


def plant_longer_run(folder: Path) -> None:
    """What a killed 31-epoch run with other params leaves behind: its two newest checkpoints."""
    for epoch in (30, 31):
        save_checkpoint(folder, epoch, resumable(epoch), "c" * 64)


def train_params(**train) -> Params:
    defaults = {"epochs": 3, "batch_size": 64, "deterministic": True, "target_accuracy": None}
    return Params(train=TrainParams(**{**defaults, **train}))


@pytest.fixture(scope="module")
def prepared_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("prepared")
    prepare_data(Params(), root=root)
    return root


def fresh_root(prepared_root: Path, tmp_path: Path) -> Path:
    (tmp_path / "data").mkdir(parents=True)
    (tmp_path / "data/prepared").symlink_to(prepared_root / "data/prepared")
    return tmp_path


def kill_during_epoch(command: list[str], cwd: Path, after_epoch: int) -> str:
    """Start ``command``, SIGKILL its whole process group once epoch ``after_epoch`` is logged
    (the checkpoint is on disk by then; the next epoch is under way)."""
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


def test_two_sigkills_beside_a_longer_runs_checkpoints_resume_to_identical_weights(
    tmp_path, reference
):
    root = make_project_copy(tmp_path / "p", KILLABLE)
    run(root, "python", "stages/prepare.py")
    folder = root / paths.CHECKPOINT_DIR
    plant_longer_run(folder)
    kill_during_epoch(["python", "stages/train.py"], root, after_epoch=1)
    second = kill_during_epoch(["python", "stages/train.py"], root, after_epoch=3)
    assert resumed_at(1).search(second) and "left alone 2 checkpoint(s) of other runs" in second
    assert not (root / paths.MODEL_WEIGHTS).exists()
    resumed = run(root, "python", "stages/train.py")
    assert resumed_at(3).search(resumed.stderr), resumed.stderr
    assert "epoch   1/" not in resumed.stderr
    assert "trained epochs 4-5 (2) in this process (resumed from epoch 3)" in resumed.stderr
    assert (root / paths.MODEL_WEIGHTS).read_bytes() == reference
    # The finished run removed its own checkpoints, and only those.
    assert sorted(p.name for p in folder.iterdir()) == [
        checkpoint_path(folder, 30, "c" * 64).name,
        checkpoint_path(folder, 31, "c" * 64).name,
    ]


def test_killed_dvc_repro_resumes_through_dvc_and_counts_this_process_work(tmp_path, reference):
    root = make_project_copy(tmp_path / "p", KILLABLE)
    command = [sys.executable, "-m", "dvc", "repro", "train"]
    kill_during_epoch(command, root, after_epoch=3)
    again = dvc(root, "repro", "train")
    assert resumed_at(3).search(again.stderr + again.stdout)
    assert (root / paths.MODEL_WEIGHTS).read_bytes() == reference
    metrics = json.loads((root / paths.TRAIN_DETAILS).read_text())
    process = metrics["process"]
    per_epoch = metrics["images"] // 5
    assert metrics["epochs"] == 5 and metrics["resumed"]["processes"] == 2
    assert metrics["resumed"]["from_epoch"] == 3 and process["epochs_trained"] == 2
    # This process's images, time and joules, never divided by the whole run's images.
    assert process["images"] == process["energy"]["images"] == 2 * per_epoch
    energy = process["energy"]
    assert energy["joules_per_image"] == pytest.approx(energy["joules"] / (2 * per_epoch))
    assert process["images_per_s"] == pytest.approx(process["images"] / process["train_seconds"])
    assert metrics["train_seconds"] > process["train_seconds"]
    assert metrics["wall_seconds"] > process["wall_seconds"]
    assert metrics["energy"]["joules"] > energy["joules"] and metrics["images"] == 5 * per_epoch
    assert process["steady_state_images_per_s"] > 0  # two epochs here: the second is steady
    # Two warm-up epochs (one per process) of five: three steady ones in the whole run.
    assert metrics["steady_state_images_per_s"] > 0


def test_code_edit_and_forced_repro_train_every_epoch_through_dvc(tmp_path):
    root = make_project_copy(tmp_path / "p", {**KILLABLE, "train.epochs": 2})
    dvc(root, "repro", "train")
    first = json.loads((root / paths.TRAIN_DETAILS).read_text())
    loop_file = root / "src/pipeline/train/loop.py"
    loop_file.write_text(loop_file.read_text() + "\n# a comment, nothing else\n")
    for args in (["repro", "train"], ["repro", "-f", "train"]):
        result = dvc(root, *args)
        log = result.stderr + result.stdout
        assert "Running stage 'train'" in log, args
        assert "starting fresh" in log and "resuming" not in log, log
        assert "trained epochs 1-2 (2) in this process" in log
        again = json.loads((root / paths.TRAIN_DETAILS).read_text())
        assert again["resumed"]["from_epoch"] is None and again["process"]["epochs_trained"] == 2
        assert again["images"] == again["process"]["images"] == first["images"] > 0
        assert again["resumed"]["processes"] == 1
    assert checkpoint_files(root / paths.CHECKPOINT_DIR) == []
    # The train stage reads the energy section: DVC must see a change there.
    params = (root / "params.yaml").read_text()
    (root / "params.yaml").write_text(params.replace("cpu_watts: 50.0", "cpu_watts: 60.0"))
    status = dvc(root, "status", "train").stdout
    assert re.search(r"^train:\n(.*\n)*\s+modified:\s+energy\b", status, re.M), status


def test_two_deterministic_runs_give_identical_weights_and_metrics(prepared_root, tmp_path):
    results = []
    for name in ("a", "b"):
        root = fresh_root(prepared_root, tmp_path / name)
        metrics = run_training(train_params(checkpoint_every=0), root)
        volatile = {
            "images_per_s",
            "steady_state_images_per_s",
            "steady_state_spread",
            "train_seconds",
            "process",
            "seconds_per_epoch",
            "wall_seconds",
            "memory_peak",
            "compute",
            "energy",
            "seconds_to_target",
            "data_path",  # its reason names the memory available at the time
        }
        results.append(
            (
                (root / paths.MODEL_WEIGHTS).read_bytes(),
                {k: v for k, v in metrics.items() if k not in volatile},
                metrics["data_path"]["data_path"],
            )
        )
    assert results[0] == results[1]


def test_a_finished_run_is_never_resumed_and_leaves_no_checkpoint(prepared_root, tmp_path):
    root = fresh_root(prepared_root, tmp_path)
    params = train_params(epochs=2)
    first = run_training(params, root)
    assert checkpoint_files(root / paths.CHECKPOINT_DIR) == []
    weights = (root / paths.MODEL_WEIGHTS).read_bytes()
    again = run_training(params, root)  # same params, data and code: a re-run trains again
    assert again["resumed"]["from_epoch"] is None and again["process"]["epochs_trained"] == 2
    assert again["images"] == first["images"] > 0
    assert (root / paths.MODEL_WEIGHTS).read_bytes() == weights


def test_checkpoints_of_other_runs_are_looked_past_and_never_deleted(tmp_path):
    folder = tmp_path / "ckpt"
    for epoch in range(1, 32):  # a longer run, killed: its newest two stay
        save_checkpoint(folder, epoch, resumable(epoch), RUN_A)
    for epoch in range(1, 4):  # a shorter run keeps its own newest two beside them
        save_checkpoint(folder, epoch, resumable(epoch), RUN_B)
    names = sorted(p.name for p in folder.iterdir())
    assert names == [
        "epoch-0002-bbbbbbbbbbbb.pt",
        "epoch-0003-bbbbbbbbbbbb.pt",
        "epoch-0030-aaaaaaaaaaaa.pt",
        "epoch-0031-aaaaaaaaaaaa.pt",
    ]
    resume = find_resume(folder, RUN_B)
    assert (
        resume.state["epoch"] == 3 and "left alone 2 checkpoint(s) of other runs" in resume.message
    )
    assert find_resume(folder, RUN_A).state["epoch"] == 31
    fresh = find_resume(folder, "d" * 64)
    assert fresh.state is None and "starting fresh: no checkpoint of this run" in fresh.message


def test_a_checkpoint_whose_full_fingerprint_differs_is_not_resumed(tmp_path):
    twin = RUN_A[:12] + "f" * 52  # same file tag, another run
    save_checkpoint(tmp_path, 4, resumable(4), twin)
    resume = find_resume(tmp_path, RUN_A)
    assert resume.state is None and "belongs to another run" in resume.message


def test_temporary_files_of_killed_writes_are_removed_at_start(tmp_path):
    save_checkpoint(tmp_path, 1, resumable(1), RUN_A)
    leftover = tmp_path / ".epoch-0002-aaaaaaaaaaaa.pt.k3j_9x.tmp"
    leftover.write_bytes(b"half a checkpoint")
    unrelated = tmp_path / "notes.tmp"
    unrelated.write_text("not ours")
    resume = find_resume(tmp_path, RUN_A)
    assert resume.state["epoch"] == 1 and f"removed {leftover.name}" in resume.message
    assert not leftover.exists() and unrelated.exists()


def test_symlinks_are_refused_in_one_line_and_never_followed_or_deleted(tmp_path):
    outside = tmp_path / "outside"
    save_checkpoint(outside, 1, resumable(1), RUN_A)
    target = checkpoint_path(outside, 1, RUN_A)
    folder = tmp_path / "ckpt"
    folder.mkdir()
    for link in (checkpoint_path(folder, 7, RUN_A), folder / ".epoch-0008-aaaaaaaaaaaa.pt.x.tmp"):
        link.symlink_to(target)
        with pytest.raises(PipelineError, match=rf"^{re.escape(str(link))} is a symbolic link"):
            find_resume(folder, RUN_A)
        with pytest.raises(PipelineError, match="never read through links"):
            load_checkpoint(link)
        link.unlink()
    assert target.exists()
    (tmp_path / "linked").symlink_to(outside)
    with pytest.raises(PipelineError, match="linked is a symbolic link; checkpoints must be"):
        find_resume(tmp_path / "linked", RUN_A)
    assert target.exists()


def test_a_pipe_where_a_checkpoint_belongs_is_refused_not_waited_on(tmp_path):
    pipe = checkpoint_path(tmp_path, 3, RUN_A)
    os.mkfifo(pipe)
    with pytest.raises(PipelineError, match="is not a regular file: remove it"):
        find_resume(tmp_path, RUN_A)
    with fails_within(10), pytest.raises(PipelineError, match="is not a regular file: remove it"):
        load_checkpoint(pipe)


def test_truncated_newest_checkpoint_falls_back_to_previous(tmp_path):
    folder = tmp_path / "ckpt"
    save_checkpoint(folder, 1, resumable(1), RUN_A)
    save_checkpoint(folder, 2, resumable(2), RUN_A)
    newest = checkpoint_path(folder, 2, RUN_A)
    newest.write_bytes(newest.read_bytes()[:50])
    resume = find_resume(folder, RUN_A)
    assert resume.state["epoch"] == 1
    assert (
        "resuming from epoch-0001-aaaaaaaaaaaa.pt" in resume.message
        and "epoch-0002-aaaaaaaaaaaa.pt unreadable" in resume.message
    )


class WritesAFile:
    def __init__(self, target: str) -> None:
        self.target = target

    def __reduce__(self):
        return (Path.write_text, (Path(self.target), "pwned"))


def test_hostile_pickle_checkpoint_is_refused_and_never_runs(tmp_path):
    folder = tmp_path / "ckpt"
    folder.mkdir()
    marker = tmp_path / "marker.txt"
    hostile = checkpoint_path(folder, 1, RUN_A)
    with open(hostile, "wb") as handle:
        pickle.dump(
            {"epoch": 1, "fingerprint": RUN_A, "payload": WritesAFile(str(marker))},
            handle,
            protocol=2,
        )
    resume = find_resume(folder, RUN_A)
    assert resume.state is None and "unreadable" in resume.message
    with pytest.raises(pickle.UnpicklingError):
        load_checkpoint(hostile)
    assert not marker.exists()


def test_injected_nan_loss_stops_and_keeps_last_good_checkpoint(
    prepared_root, tmp_path, monkeypatch
):
    root = fresh_root(prepared_root, tmp_path)
    real_step = loop.Trainer.train_step

    def poisoned(self, images, labels, micro=0):
        if self.state.epoch >= 1:  # the second epoch's losses are NaN
            self.loss_fn = lambda logits, target: logits.sum() * float("nan")
        return real_step(self, images, labels, micro)

    monkeypatch.setattr(loop.Trainer, "train_step", poisoned)
    with pytest.raises(loop.NonFiniteLossError, match=r"NaN/inf in \d+ step\(s\).*epoch 2, step"):
        run_training(train_params(epochs=3), root)
    assert not (root / paths.MODEL_WEIGHTS).exists()
    checkpoints = checkpoint_files(root / paths.CHECKPOINT_DIR)
    assert [p.name[:10] for p in checkpoints] == ["epoch-0001"]
    state = load_checkpoint(checkpoints[0])
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def test_tolerated_nonfinite_steps_are_skipped_and_counted(prepared_root, tmp_path, monkeypatch):
    root = fresh_root(prepared_root, tmp_path)
    real_step = loop.Trainer.train_step
    calls = {"n": 0}

    def sometimes_nan(self, images, labels, micro=0):
        calls["n"] += 1
        real_loss = self.loss_fn
        if calls["n"] in (3, 7):
            self.loss_fn = lambda logits, target: real_loss(logits, target) * float("nan")
        try:
            return real_step(self, images, labels, micro)
        finally:
            self.loss_fn = real_loss

    monkeypatch.setattr(loop.Trainer, "train_step", sometimes_nan)
    metrics = run_training(train_params(epochs=2, max_nonfinite_steps=2), root)
    assert metrics["nonfinite_steps"] == 2 and metrics["skipped_steps"] == 2
    assert metrics["val_accuracy"] > 0.5


def simulate_oom_above(batch_size_limit: int, monkeypatch):
    real_step = loop.Trainer.train_step

    def step(self, images, labels, micro=0):
        if len(labels) > batch_size_limit:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real_step(self, images, labels, micro)

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


def test_run_killed_at_epoch_14_of_15_reports_the_whole_run_and_pareto_ranks_it_so(
    prepared_root, tmp_path
):
    """metrics/train.json (what exp show, metrics diff and pipeline-pareto read) describes the
    whole run: a run resumed for its last epoch must not win the time or energy front."""
    root = fresh_root(prepared_root, tmp_path)
    raw = {
        "model": {"width": 8},
        "energy": {"cpu_watts": 50.0},
        "train": {"epochs": 15, "batch_size": 128, "deterministic": True, "target_accuracy": None},
    }
    (root / "params.yaml").write_text(yaml.safe_dump(raw))
    killed = subprocess.run(
        [sys.executable, str(ROOT / "stages/train.py")],
        cwd=root,
        env={**tool_env(), FAULT_ENV: "rank=0,epoch=14"},
        capture_output=True,
        text=True,
    )
    assert killed.returncode != 0 and "exits after epoch 14" in killed.stderr, killed.stderr
    record = run_training(load_params(root / "params.yaml"), root)
    write_record(root / paths.TRAIN_METRICS, record, TRAIN_FIGURES)
    train = json.loads((root / paths.TRAIN_METRICS).read_text())
    process = record["process"]
    assert train["resumed"] == {"processes": 2} and record["resumed"]["from_epoch"] == 14
    assert "process" not in train and process["epochs_trained"] == 1
    assert train["images"] == 15 * process["images"] > 0
    # The whole run's totals add the first process's (up to its epoch-14 checkpoint) to this one's.
    assert train["train_seconds"] > process["train_seconds"] > 0
    assert train["wall_seconds"] > process["wall_seconds"] > 0
    assert train["images_per_s"] == pytest.approx(train["images"] / train["train_seconds"])
    energy = record["energy"]
    assert energy["joules"] > process["energy"]["joules"] > 0
    assert energy["method"] == process["energy"]["method"] and energy["scope"]
    assert train["energy"]["joules_per_image"] == pytest.approx(energy["joules"] / train["images"])
    # pipeline-pareto: a rival just as accurate that took less than the whole run's time (but
    # longer than the resumed process) beats the resumed run on the time front.
    resumed = sweep_run(train, "resumed", 0.90)
    rival = sweep_run({"wall_seconds": (train["wall_seconds"] + process["wall_seconds"]) / 2},
                      "rival", 0.91)  # fmt: skip
    assert resumed.wall_seconds == train["wall_seconds"]
    front = pareto_front([resumed, rival], lambda run: run.wall_seconds)
    assert [run.name for run in front] == ["rival"]


def sweep_run(train: dict, name: str, accuracy: float):
    """The run pipeline-pareto reads from `dvc exp show --json` for these metrics files."""
    metrics = {"metrics/eval.json": {"data": {"accuracy": accuracy}}}
    metrics["metrics/train.json"] = {"data": train}
    entry = {"rev": "0" * 40, "name": name, "data": {"params": {}, "metrics": metrics}}
    return sweep_entry(entry, "experiment", None, "metrics/eval.json", "metrics/train.json")


def test_fingerprint_hashes_what_auto_resolved_to_not_the_words():
    auto = train_params()  # device and precision: auto
    written = train_params(device="cpu", precision="fp32")
    data = {"train": ["0" * 64]}
    cpu = {"device": "cpu", "precision": "fp32", "cpu": "AVX2"}
    gpu = {"device": "cuda", "precision": "bf16", "cpu": "AVX2"}
    assert fingerprint(auto, 64, data, resolved=cpu) == fingerprint(written, 64, data, resolved=cpu)
    assert fingerprint(auto, 64, data, resolved=cpu) != fingerprint(auto, 64, data, resolved=gpu)
    avx512 = {**cpu, "cpu": "AVX-512 bf16"}
    assert fingerprint(auto, 64, data, resolved=cpu) != fingerprint(auto, 64, data, resolved=avx512)


def test_a_checkpoint_of_another_resolution_is_not_resumed_and_the_log_says_why(
    prepared_root, tmp_path, monkeypatch, capsys
):
    """Killed after epoch 1 on an AVX2 profile, re-run where the CPU profile is AVX-512: the
    run starts fresh, names the checkpoint and both resolutions, and leaves it alone."""
    root = fresh_root(prepared_root, tmp_path)
    raw = {"model": {"width": 8}, "train": {"epochs": 2, "batch_size": 128}}
    (root / "params.yaml").write_text(yaml.safe_dump(raw))
    env = {**tool_env(), FAULT_ENV: "rank=0,epoch=1", "PIPELINE_CPU_FLAGS": "avx2,fma"}
    killed = subprocess.run(
        [sys.executable, str(ROOT / "stages/train.py")], cwd=root, env=env, capture_output=True,
        text=True,
    )  # fmt: skip
    assert "exits after epoch 1" in killed.stderr, killed.stderr
    (left,) = checkpoint_files(root / paths.CHECKPOINT_DIR)
    monkeypatch.setenv("PIPELINE_CPU_FLAGS", "avx2,fma,avx512f")
    record = run_training(load_params(root / "params.yaml"), root)
    log = capsys.readouterr().err
    assert record["resumed"]["processes"] == 1 and record["process"]["epochs_trained"] == 2
    assert record["policy"]["cpu"] == "AVX-512" and "starting fresh" in log
    assert (
        f"not resumed: {left.name} was trained under device cpu, precision fp32, cpu AVX2; "
        "this process resolved device cpu, precision fp32, cpu AVX-512"
    ) in log
    assert checkpoint_files(root / paths.CHECKPOINT_DIR) == [left]  # another run's: kept


def test_a_checkpoint_the_file_system_refuses_stops_the_run_instead_of_starting_over(
    tmp_path, monkeypatch
):
    """Permission or I/O errors: starting fresh would throw the run's epochs away (and its new
    checkpoints would later crowd the old one out); the run stops in one line naming it."""
    save_checkpoint(tmp_path, 14, resumable(14), RUN_A)

    def refuse(path):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(checkpoint_module, "load_checkpoint", refuse)
    with pytest.raises(PipelineError, match=r"epoch-0014-a{12}\.pt: cannot read") as error:
        find_resume(tmp_path, RUN_A)
    assert "\n" not in str(error.value) and "Permission denied" in str(error.value)


def test_an_unreadable_newer_checkpoint_never_crowds_out_the_fresh_runs_own(tmp_path):
    """Corrupt content: the run starts fresh (the log names it), and its new checkpoints are
    the newest two kept; the corrupt epoch-14 file, older than they are, goes."""
    stale = checkpoint_path(tmp_path, 14, RUN_A)
    stale.write_bytes(b"not a checkpoint")
    resume = find_resume(tmp_path, RUN_A)
    assert resume.state is None and f"{stale.name} unreadable" in resume.message
    for epoch in (1, 2, 3):
        save_checkpoint(tmp_path, epoch, resumable(epoch), RUN_A)
    assert checkpoint_files(tmp_path, RUN_A) == [
        checkpoint_path(tmp_path, 3, RUN_A),
        checkpoint_path(tmp_path, 2, RUN_A),
    ]
    assert find_resume(tmp_path, RUN_A).state["epoch"] == 3
