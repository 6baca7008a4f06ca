"""SIGKILL soak: kill the train stage at random moments, resume, compare with an uninterrupted run.

    python benchmarks/resume_soak.py --rounds 10 --seed 0

In a throwaway copy of the project (deterministic CPU training, 5 short epochs): an uninterrupted
run gives the reference weights; a longer run with other params is killed to leave its
checkpoints behind; then runs of ``python stages/train.py`` are SIGKILLed at random moments
(start-up, mid-epoch, mid-write) until ``--rounds`` kills happened, and a last run finishes. Its
weights must equal the reference bit for bit, and the other run's checkpoints must still be
there. Prints one line per round and a summary; exits 1 when the weights differ.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = {
    "seed": 42,
    "train": {"epochs": 5, "batch_size": 16, "deterministic": True},
    "model": {"width": 48},
}
LONGER = {"train": {"epochs": 8, "lr": 0.002}}  # other params: another run's checkpoints
RESUMED = re.compile(r"resuming from (epoch-\d+-[0-9a-f]+\.pt)")


def copy_project(dest: Path, overrides: dict) -> None:
    for name in ("src", "stages", "dvc.yaml"):
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, dest / name)
    write_params(dest, overrides)


def write_params(dest: Path, overrides: dict) -> None:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for section, values in overrides.items():
        if isinstance(values, dict):
            params[section].update(values)
        else:
            params[section] = values
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def first_checkpoint(root: Path) -> bool:
    return any((root / "models/checkpoints").glob("epoch-*.pt"))


def watch_first_checkpoint(root: Path, started: float, seen: list[float]):
    """A kill_when that never kills: it notes when the first checkpoint appeared."""

    def check() -> bool:
        if not seen and first_checkpoint(root):
            seen.append(time.perf_counter() - started)
        return False

    return check


def train(root: Path, kill_after_s: float | None, kill_when=None) -> tuple[str, bool]:
    """Run the train stage; SIGKILL it after ``kill_after_s`` or as soon as ``kill_when()``.
    (stderr, whether it finished)."""
    env = {**os.environ, "PYTHONPATH": str(root / "src")}
    with tempfile.TemporaryFile("w+") as log:
        process = subprocess.Popen(
            [sys.executable, "stages/train.py"],
            cwd=root,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=log,
            start_new_session=True,
        )
        try:
            while kill_when is not None and process.poll() is None and not kill_when():
                time.sleep(0.02)
            if kill_when is not None and process.poll() is None:
                raise subprocess.TimeoutExpired(process.args, 0)
            process.wait(timeout=kill_after_s)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        log.seek(0)
        text = log.read()
    if process.returncode not in (0, -signal.SIGKILL):
        raise SystemExit(f"train stage failed ({process.returncode}):\n{text}")
    return text, process.returncode == 0


def prepare_project(root: Path) -> None:
    """A throwaway copy of the project in ``root`` with SETTINGS, its data prepared."""
    copy_project(root, SETTINGS)
    subprocess.run(
        [sys.executable, "stages/prepare.py"],
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root / "src")},
        check=True,
        capture_output=True,
    )


def reference_run(root: Path) -> tuple[bytes, float, float | None]:
    """The uninterrupted run: (its weights, its seconds, seconds to its first checkpoint)."""
    started, first_s = time.perf_counter(), []
    # Watch for the first checkpoint without killing: kills are then drawn mostly after it,
    # so most rounds resume (start-up alone is most of a short run).
    train(root, None, kill_when=watch_first_checkpoint(root, started, first_s))
    reference_s = time.perf_counter() - started
    reference = (root / "models/model.safetensors").read_bytes()
    (root / "models/model.safetensors").unlink()
    print(f"reference run: {reference_s:.1f} s", flush=True)
    return reference, reference_s, first_s[0] if first_s else None


def leave_other_run(root: Path) -> list[str]:
    """Checkpoints of a run with other params (LONGER), which no resume may touch."""
    write_params(root, {**SETTINGS, "train": {**SETTINGS["train"], **LONGER["train"]}})
    # Killed once its first checkpoint is written: it leaves a resumable run behind.
    train(root, None, kill_when=lambda: first_checkpoint(root))
    others = sorted(p.name for p in (root / "models/checkpoints").glob("epoch-*.pt"))
    if not others:
        raise SystemExit("the longer run left no checkpoint: nothing to protect")
    write_params(root, SETTINGS)
    print(f"other run's checkpoints left behind: {others}", flush=True)
    return others


def kill_rounds(root: Path, reference: bytes, rounds: int, draw_delay) -> tuple[bool, int, int]:
    """SIGKILL runs after ``draw_delay()`` seconds until ``rounds`` kills happened: (whether
    every run that finished first matched the reference, kills, rounds run)."""
    # --rounds counts real kills: a run that finishes before its kill time is checked and
    # the next one starts over, up to 3x --rounds attempts.
    all_same, kills, round_number = True, 0, 0
    while kills < rounds and round_number < 3 * rounds:
        round_number += 1
        delay = draw_delay()
        text, finished = train(root, delay)
        kills += not finished
        resumed = RESUMED.search(text)
        state = "finished" if finished else "killed"
        origin = resumed.group(1) if resumed else "fresh"
        print(f"round {round_number:>2}: {state} after {delay:5.1f} s, started from {origin}")
        if finished:
            same = (root / "models/model.safetensors").read_bytes() == reference
            all_same &= same
            print(f"          finished before its kill; weights identical: {same}")
    return all_same, kills, round_number


def last_run(root: Path, reference: bytes, others: list[str]) -> tuple[bool, bool]:
    """The run left to finish: (weights identical to the reference, other checkpoints kept)."""
    text, _ = train(root, None)
    resumed = RESUMED.search(text)
    same = (root / "models/model.safetensors").read_bytes() == reference
    kept = all((root / "models/checkpoints" / name).is_file() for name in others)
    print(f"last run started from {resumed.group(1) if resumed else 'fresh'}")
    print(f"weights identical to the uninterrupted run: {same}")
    print(f"other run's checkpoints still there: {kept}")
    return same, kept


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    chance = random.Random(args.seed)
    with tempfile.TemporaryDirectory(prefix="resume-soak-") as tmp:
        root = Path(tmp)
        prepare_project(root)
        reference, reference_s, first_s = reference_run(root)
        others = leave_other_run(root)
        earliest = 0.8 * first_s if first_s is not None else 0.0
        all_same, kills, round_number = kill_rounds(
            root, reference, args.rounds, lambda: chance.uniform(earliest, reference_s)
        )
        same, kept = last_run(root, reference, others)
        print(f"SIGKILLs: {kills} in {round_number} rounds")
        sys.exit(0 if same and all_same and kept else 1)


if __name__ == "__main__":
    main()
