"""pipeline-sweep: a grid of DVC experiments on a Ray cluster, pulled back for ``dvc exp show``.

    pipeline-sweep -S train.lr=0.001,0.01 -S train.batch_size=64,128    # 4 experiments
    pipeline-sweep --address ray-head:6379 --name lr-sweep -S train.lr=0.001,0.01

Each experiment is one Ray task: clone the git remote at this commit, ``dvc exp run --pull
--allow-missing -n <name>-<i> -S ...``, push, and the driver ``dvc exp pull``s what landed.
See docs/scaling-out.md.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from pipeline.cluster import driver
from pipeline.cluster.grid import SweepError, expand
from pipeline.cluster.preflight import preflight
from pipeline.cluster.report import summary_table
from pipeline.cluster.task import Result

EXIT_CANCELLED = 130


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pipeline-sweep",
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join(__doc__.splitlines()[2:]),
    )
    add = parser.add_argument
    add("-S", "--set-param", action="append", default=[], metavar="[FILE:]KEY=VALUES",
        help="DVC's -S grammar: a,b or range(...) or choice(...) make a grid")  # fmt: skip
    add(
        "--address",
        default=os.environ.get("RAY_ADDRESS"),
        help="Ray cluster to use (default RAY_ADDRESS; none: a local Ray on this machine)",
    )
    add("--name", default=None, help="experiments are named NAME-1, NAME-2, ...")
    add(
        "--gpus-per-experiment",
        type=float,
        default=None,
        help="default 1 where the cluster has GPUs, else 0",
    )
    add("--cpus-per-experiment", type=float, default=1.0)
    add(
        "--max-retries",
        type=int,
        default=3,
        help="attempts after a worker or node died (a failed experiment is never retried)",
    )
    add("--git-remote", default="origin", help="the git remote the workers clone and push to")
    add(
        "--allow-recompute",
        action="store_true",
        help="start although the DVC remote lacks baseline outputs (every worker recomputes)",
    )
    add("--scratch", default=None, help="folder on each node for the clones (default: its tmp)")
    add("--repo", type=Path, default=Path.cwd(), help="the project checkout (default: here)")
    return parser  # fmt: skip


def check_numbers(args: argparse.Namespace) -> None:
    for flag, value in (("--cpus-per-experiment", args.cpus_per_experiment),
                        ("--gpus-per-experiment", args.gpus_per_experiment),
                        ("--max-retries", args.max_retries)):  # fmt: skip
        if value is not None and not 0 <= value < 1e6:
            raise SweepError(f"{flag} {value}: must be a number from 0")


def run_sweep(args: argparse.Namespace) -> int:
    check_numbers(args)
    name = args.name or f"sweep-{time.strftime('%Y%m%d-%H%M%S')}"
    experiments = expand(args.set_param, name, args.repo)
    baseline = preflight(args.repo, args.git_remote, name, args.allow_recompute)
    for note in baseline.notes:
        print(f"note: {note}")
    ray = driver.connect(args.address)
    gpus = (
        driver.default_gpus(ray) if args.gpus_per_experiment is None else args.gpus_per_experiment
    )
    resources = driver.Resources(args.cpus_per_experiment, gpus, args.max_retries)
    if not driver.fits_somewhere(ray, resources):
        print(f"warning: no node now has {resources.cpus:g} CPUs and {resources.gpus:g} GPUs: "
              "the experiments wait for one (lower --cpus/--gpus-per-experiment?)")  # fmt: skip
    nodes = sum(1 for node in ray.nodes() if node["Alive"])
    print(f"{len(experiments)} experiments from {baseline.commit[:7]} on {nodes} Ray node(s), "
          f"{resources.cpus:g} CPU and {resources.gpus:g} GPU each")  # fmt: skip
    refs, board = driver.submit(ray, experiments, baseline, resources, args.scratch)
    results: dict[str, Result] = {}
    cancelled = False
    try:
        driver.follow(ray, refs, board, results)
    except KeyboardInterrupt:
        cancelled = True
        print("interrupted: cancelling the running experiments ...")
        driver.cancel(ray, refs, results)
    return finish(baseline, experiments, results, cancelled)


def finish(baseline, experiments, results: dict[str, Result], cancelled: bool) -> int:
    landed = [
        e.name for e in experiments if results.get(e.name, Result("", "")).status == "success"
    ]
    for experiment in experiments:
        result = results.get(experiment.name)
        if result is not None and result.status == "failed" and result.log_tail:
            print(f"--- {experiment.name} failed; its log ends:\n{result.log_tail}")
    pulled = True
    try:
        driver.pull(baseline, landed)
    except SweepError as error:
        pulled = False
        print(f"pipeline-sweep: error: {error}", file=sys.stderr)
    print(summary_table(experiments, results))
    if cancelled:
        print(f"cancelled; finished: {', '.join(landed) or 'none'}")
    print(f"{len(landed)} of {len(experiments)} landed" + (" and pulled" if pulled else ""))
    if cancelled:
        return EXIT_CANCELLED
    return 0 if pulled and len(landed) == len(experiments) else 1


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return run_sweep(args)
    except SweepError as error:
        print(f"pipeline-sweep: error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
