"""Submit one Ray task per experiment, follow them, cancel on Ctrl-C, pull what landed."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.cluster import task
from pipeline.cluster.grid import Experiment, SweepError
from pipeline.cluster.preflight import Baseline
from pipeline.cluster.report import progress_line
from pipeline.cluster.task import Board, Result, TaskSpec, run_experiment
from pipeline.cluster.tools import Runner, checked, dvc_args, run_command
from pipeline.core.errors import first_line

CANCEL_WAIT_S = 30.0  # how long cancelled tasks get to stop their stages and answer


@dataclass(frozen=True)
class Resources:
    """What each experiment's task asks Ray for; Ray sets CUDA_VISIBLE_DEVICES from ``gpus``."""

    cpus: float
    gpus: float
    max_retries: int  # attempts after a worker or node died; a failed experiment is never retried


def connect(address: str | None) -> Any:
    """Ray, connected to ``address`` (or RAY_ADDRESS), else to a new local instance."""
    import ray

    options: dict[str, Any] = {"log_to_driver": False, "logging_level": "WARNING"}
    if address is None:
        options["include_dashboard"] = False
    try:
        ray.init(address=address, **options)
    except Exception as error:  # ConnectionError, or Ray's own for a bad address
        raise SweepError(f"cannot connect to Ray at '{address}': {first_line(error)}") from None
    # Shipped by value: the workers need not have this package installed (or this version).
    ray.cloudpickle.register_pickle_by_value(task)
    return ray


def default_gpus(ray: Any) -> float:
    """One GPU per experiment where the cluster has GPUs, else none."""
    return 1.0 if ray.cluster_resources().get("GPU", 0) > 0 else 0.0


def fits_somewhere(ray: Any, resources: Resources) -> bool:
    return any(
        node["Alive"]
        and node["Resources"].get("CPU", 0) >= resources.cpus
        and node["Resources"].get("GPU", 0) >= resources.gpus
        for node in ray.nodes()
    )


def author(root: Path, run: Runner = run_command) -> tuple[str, str]:
    """The driver's git identity, for the experiment commits the workers make."""
    ident = run(["git", "var", "GIT_AUTHOR_IDENT"], root)
    name, _, rest = ident.stdout.partition(" <")
    email = rest.partition(">")[0]
    return (name.strip(), email) if ident.returncode == 0 and email else TaskSpec.author


def submit(
    ray: Any,
    experiments: Sequence[Experiment],
    baseline: Baseline,
    resources: Resources,
    scratch_root: str | None,
) -> tuple[dict[Any, Experiment], Any]:
    node_id = ray.get_runtime_context().get_node_id()
    strategy = ray.util.scheduling_strategies.NodeAffinitySchedulingStrategy(node_id, soft=True)
    board = ray.remote(num_cpus=0)(Board).options(scheduling_strategy=strategy).remote()
    remote = ray.remote(run_experiment)
    options = {
        "num_cpus": resources.cpus,
        "num_gpus": resources.gpus,
        "max_retries": resources.max_retries,
        "retry_exceptions": False,
    }
    identity = author(baseline.root)
    refs = {}
    for experiment in experiments:
        spec = TaskSpec(
            experiment.name,
            experiment.set_params,
            baseline.git_url,
            baseline.commit,
            identity,
            scratch_root,
            no_gpu=resources.gpus == 0,
        )
        one = remote.options(name=f"pipeline-sweep:{experiment.name}", **options)
        refs[one.remote(spec, board)] = experiment
    return refs, board


def collect(ray: Any, ref: Any, experiment: Experiment) -> Result:
    """The task's result; a task Ray gave up on (retries spent, cancelled) as a result too."""
    try:
        return ray.get(ref)
    except ray.exceptions.TaskCancelledError:
        return Result(experiment.name, "cancelled")
    except ray.exceptions.RayError as error:
        return Result(experiment.name, "failed", error=f"ray: {first_line(error)}")


def snapshot(ray: Any, board: Any, last: dict) -> dict:
    try:
        return ray.get(board.snapshot.remote(), timeout=10)
    except Exception:  # the board's node died: progress falls back to what was known
        return last


def follow(
    ray: Any,
    refs: dict[Any, Experiment],
    board: Any,
    results: dict[str, Result],
    say: Callable[[str], None] = print,
    poll_s: float = 2.0,
) -> dict[str, Result]:
    """Wait for every task into ``results``, printing progress whenever the counts change."""
    experiments = list(refs.values())
    pending, started, shown, began = list(refs), {}, "", time.monotonic()
    while pending:
        ready, pending = ray.wait(pending, num_returns=1, timeout=poll_s)
        for ref in ready:
            results[refs[ref].name] = collect(ray, ref, refs[ref])
        started = snapshot(ray, board, started)
        line = progress_line(experiments, results, started, time.monotonic() - began)
        if line.partition("] ")[2] != shown.partition("] ")[2]:
            say(line)
            shown = line
    return results


def cancel(ray: Any, refs: dict[Any, Experiment], results: dict[str, Result]) -> dict[str, Result]:
    """Ctrl-C: cancel every unfinished task (a running stage gets SIGTERM), keep what finished."""
    pending = [ref for ref, experiment in refs.items() if experiment.name not in results]
    for ref in pending:
        ray.cancel(ref)
    ready, _ = ray.wait(pending, num_returns=len(pending), timeout=CANCEL_WAIT_S)
    for ref in ready:
        results[refs[ref].name] = collect(ray, ref, refs[ref])
    for ref in pending:
        results.setdefault(refs[ref].name, Result(refs[ref].name, "cancelled"))
    return results


def pull(baseline: Baseline, names: Sequence[str], run: Runner = run_command) -> None:
    """``dvc exp pull`` the landed experiments: refs and outputs, as if run here."""
    if names:
        args = dvc_args("exp", "pull", baseline.git_remote, *names)
        checked(run, args, baseline.root, "dvc exp pull")
