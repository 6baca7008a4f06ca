"""A newcomer's first `dvc repro`: clone the committed project, run the whole pipeline, time it.

    python benchmarks/first_run.py                  # this machine's CPU
    python benchmarks/first_run.py --emulate Haswell-v4   # every stage under qemu-x86_64 -cpu ...

Prints the CPU profile, the wall time of the whole `dvc repro` and what it reached: test
accuracy and each ONNX variant's parity and gate. `--emulate` runs each stage's Python under
qemu's user-mode emulator with that CPU model (e.g. Haswell-v4: AVX2 and FMA, no AVX-512, no VNNI,
no bf16), so the numerics of another instruction set can be checked on this machine; its time
is the emulator's, not that CPU's, and is labelled so.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def python_shim(folder: Path, cpu_model: str) -> Path:
    """A `python` that runs this interpreter under qemu-x86_64 with ``cpu_model``."""
    qemu = shutil.which("qemu-x86_64")
    if qemu is None:
        sys.exit("first_run: --emulate needs qemu-x86_64 (apt-get install qemu-user)")
    shim = folder / "python"
    # qemu warns about every CPU feature it does not emulate: drop those lines, keep the exit code.
    shim.write_text(f'#!/bin/bash\nexec {qemu} -cpu {cpu_model} {sys.executable} "$@" '
                    "2> >(grep -v 'TCG doesn.t support' >&2)\n")  # fmt: skip
    shim.chmod(shim.stat().st_mode | stat.S_IXUSR)
    return folder


def cpu_profile(env: dict) -> str:
    code = "from pipeline.hardware.cpu import detect; print(detect().profile)"
    result = subprocess.run(["python", "-c", code], env=env, capture_output=True, text=True)
    return result.stdout.strip().splitlines()[-1] if result.stdout.strip() else result.stderr


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--emulate", metavar="CPU_MODEL", help="qemu CPU model, e.g. Haswell-v4")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="first-run.") as tmp:
        clone, bin_dir = Path(tmp) / "clone", Path(tmp) / "bin"
        subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
        bin_dir.mkdir()
        if args.emulate:
            python_shim(bin_dir, args.emulate)
        else:  # a shim, not a symlink: a venv's python finds its venv from its own path
            shim = bin_dir / "python"
            shim.write_text(f'#!/bin/sh\nexec {sys.executable} "$@"\n')
            shim.chmod(shim.stat().st_mode | stat.S_IXUSR)
        env = dict(os.environ, DVC_NO_ANALYTICS="1")
        env["PATH"] = os.pathsep.join([str(bin_dir), str(Path(sys.executable).parent), env["PATH"]])
        profile = cpu_profile(env)
        started = time.perf_counter()
        result, stages = repro_timed(clone, env)
        seconds = time.perf_counter() - started
        report(clone, profile, seconds, result, args.emulate)
        print("per stage: " + ", ".join(f"{name} {took:.1f} s" for name, took in stages.items()))


def repro_timed(clone: Path, env: dict):
    """Run `dvc repro`, timing each stage from its 'Running stage' line to the next one."""
    command = [sys.executable, "-m", "dvc", "repro"]
    # One pipe for both streams: the stages' progress on stderr must not fill a second one.
    process = subprocess.Popen(
        command, cwd=clone, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    stages, current, since, lines = {}, None, time.perf_counter(), []
    for line in process.stdout:
        lines = [*lines[-19:], line.rstrip()]
        if line.startswith("Running stage '"):
            now = time.perf_counter()
            if current:
                stages[current] = now - since
            current, since = line.split("'")[1], now
    process.wait()
    if current:
        stages[current] = time.perf_counter() - since
    return subprocess.CompletedProcess(command, process.returncode, "", "\n".join(lines)), stages


def report(clone: Path, profile: str, seconds: float, result, emulated: str | None) -> None:
    timing = f"{seconds:.1f} s" + (f" (emulated {emulated}: not its speed)" if emulated else "")
    print(f"CPU profile: {profile}")
    print(f"`dvc repro` on a fresh clone: {timing}, exit {result.returncode}")
    if result.returncode:  # the clone's metrics are the committed ones: nothing to report
        print(result.stderr.strip() or result.stdout)
        return
    metrics = clone / "metrics"
    if (metrics / "eval.json").is_file():
        print(f"test accuracy: {json.loads((metrics / 'eval.json').read_text())['accuracy']:.4f}")
    if (metrics / "details/export.json").is_file():  # the whole record: recipes, pass/fail
        export = json.loads((metrics / "details/export.json").read_text())
        for name, record in {"fp32": export, **export["variants"]}.items():
            parity = record["parity"]
            extra = record.get("quantization", {})
            recipe = f"  reduce_range={extra['reduce_range']}" if extra else ""
            print(f"  {name:4}  max|diff| {parity['max_abs_logit_diff']:.3f}  "
                  f"agree {parity['top1_agreement']:.4f}  "
                  f"acc {parity['onnx_accuracy']:.4f} ({parity['accuracy_delta']:+.4f})  "
                  f"{'ok' if record['passed'] else 'FAILED'}{recipe}")  # fmt: skip


if __name__ == "__main__":
    main()
