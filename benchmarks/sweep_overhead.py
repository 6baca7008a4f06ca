"""What pipeline-sweep adds to one experiment (clone, pull, push, Ray) over `dvc exp run` in place.

    python benchmarks/sweep_overhead.py                     # a one-stage project: the mechanism
    python benchmarks/sweep_overhead.py --project pipeline  # this project, its baseline pushed

Builds the project in a temporary folder with a bare git remote and a local-folder DVC remote,
runs the baseline and pushes it, then for each repeat runs one experiment with `dvc exp run` in
place and one (other -S value, so neither restores the other from DVC's run-cache) through the
cluster path on a local Ray instance, one at a time. Prints each step's seconds, the time the
cluster path added and the ratio. A local folder stands in for the remotes: over a network the
clone, pull and push take longer.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from pipeline.cluster import driver  # noqa: E402
from pipeline.cluster.grid import Experiment  # noqa: E402
from pipeline.cluster.preflight import preflight  # noqa: E402
from pipeline.hardware.cpu import cpu_model_name  # noqa: E402

TINY_STAGE = """\
import json, os, yaml
train = yaml.safe_load(open("params.yaml"))["train"]
os.makedirs("metrics", exist_ok=True)
json.dump({"accuracy": train["lr"]}, open("metrics/eval.json", "w"))
open("model.txt", "w").write(str(train["lr"]))
"""
TINY_DVC_YAML = """\
stages:
  train:
    cmd: python stage.py
    deps: [stage.py]
    params: [train]
    outs: [model.txt]
    metrics: [{metrics/eval.json: {cache: false}}]
"""


def sh(cwd: Path, *args: str) -> float:
    """Run a command that must succeed; its wall seconds."""
    began = time.perf_counter()
    done = subprocess.run(args, cwd=cwd, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"sweep_overhead: {' '.join(args)} failed:\n{done.stdout}{done.stderr}")
    return time.perf_counter() - began


def dvc(cwd: Path, *args: str) -> float:
    return sh(cwd, sys.executable, "-m", "dvc", *args)


def build(tmp: Path, project: str) -> Path:
    repo = tmp / "repo"
    sh(tmp, "git", "init", "-q", "--bare", str(tmp / "remote.git"))
    if project == "pipeline":
        sh(tmp, "git", "clone", "-q", str(ROOT), str(repo))
    else:
        repo.mkdir()
        sh(repo, "git", "init", "-q", "-b", "main")
        dvc(repo, "init", "-q")
        (repo / "stage.py").write_text(TINY_STAGE)
        (repo / "params.yaml").write_text("train:\n  lr: 0.1\n")
        (repo / "dvc.yaml").write_text(TINY_DVC_YAML)
    dvc(repo, "remote", "add", "-f", "-d", "bench", str(tmp / "dvc-store"))
    sh(repo, "git", "add", "-A")
    sh(repo, "git", "commit", "-qm", "benchmark baseline remotes")
    print(f"baseline dvc repro: {dvc(repo, 'repro'):.1f} s", flush=True)
    sh(repo, "git", "add", "-A")
    sh(repo, "git", "commit", "-qm", "baseline outputs")
    dvc(repo, "push")
    if project == "pipeline":  # the clone's origin is this checkout
        sh(repo, "git", "remote", "remove", "origin")
    sh(repo, "git", "remote", "add", "origin", str(tmp / "remote.git"))
    sh(repo, "git", "push", "-q", "origin", "HEAD:main")
    return repo


def cluster_run(ray, baseline, experiment: Experiment, scratch: str):
    resources = driver.Resources(cpus=1, gpus=0, max_retries=0)
    began = time.perf_counter()
    refs, board = driver.submit(ray, [experiment], baseline, resources, scratch)
    results = driver.follow(ray, refs, board, {}, say=lambda line: None, poll_s=0.5)
    result = results[experiment.name]
    if result.status != "success":
        sys.exit(f"sweep_overhead: {experiment.name} failed: {result.error}\n{result.log_tail}")
    return result, time.perf_counter() - began


def row(cells) -> str:
    return "  ".join(f"{cell:>9}" if i else f"{cell:<7}" for i, cell in enumerate(cells))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--project", choices=("tiny", "pipeline"), default="tiny")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # else Ray writes ~/.ray/auth_token
    os.environ["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]])
    with tempfile.TemporaryDirectory(prefix="sweep-overhead.") as tmp:
        repo = build(Path(tmp), args.project)
        baseline = preflight(repo, "origin", "bench")
        ray = driver.connect(None)
        steps = ("clone", "dvc exp run", "dvc push", "dvc exp push")
        print(row(["repeat", "in place", *steps, "Ray+other", "cluster", "added", "ratio"]))
        added, ratios = [], []
        for i in range(args.repeats):
            lr = 0.001 * (i + 1)
            in_place = dvc(repo, "exp", "run", "-n", f"here-{i}", "-S", f"train.lr={lr}")
            experiment = Experiment(i, f"bench-{i}", (f"train.lr={lr + 0.0005}",))
            result, total = cluster_run(ray, baseline, experiment, tmp)
            spent = {what: 0.0 for what in steps}
            for what, seconds in result.step_s:
                key = what if what in spent else "clone"  # checkout and git config with clone
                spent[key] += seconds
            other = total - sum(spent.values())
            added.append(total - in_place)
            ratios.append(total / in_place)
            cells = [in_place, *spent.values(), other, total, added[-1]]
            print(row([str(i + 1), *(f"{s:.1f}" for s in cells), f"{ratios[-1]:.2f}x"]))
        print(f"median: {statistics.median(added):.1f} s added per experiment, "
              f"{statistics.median(ratios):.2f}x the in-place time")  # fmt: skip
        print(f"project {args.project}; {cpu_model_name()}, {os.cpu_count()} cores; "
              "remotes are local folders")  # fmt: skip
        ray.shutdown()


if __name__ == "__main__":
    main()
