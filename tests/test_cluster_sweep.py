"""pipeline-sweep: the -S grid, the pre-flight checks, and real sweeps on a two-node Ray cluster.

The cluster (tests/ray_cluster.py) runs on this machine: two ``ray start`` nodes, each with 2
CPUs and 2 declared (fake) GPUs, a bare git repository as the remote the workers clone and push
to, and a local folder as the DVC remote. The project is a one-stage DVC pipeline whose script
reads params.yaml, so an experiment costs the sweep's own machinery and little else.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, dvc, run, tool_env
from pipeline.cluster.grid import Experiment, SweepError, expand
from pipeline.cluster.preflight import check_outputs, clone_url, preflight
from pipeline.cluster.report import progress_line, summary_table
from pipeline.cluster.task import Result
from pipeline.tools.pareto import run_exp_show, runs_from_exp_show
from ray_cluster import Cluster, ray_env

# --- the grid ----------------------------------------------------------------------------------


def test_grid_is_dvcs_sweep_grammar() -> None:
    grid = expand(["train.lr=0.001,0.01", "train.batch_size=range(64,193,64)", "seed=1"], "s")
    assert [e.name for e in grid] == [f"s-{i}" for i in range(1, 7)]
    assert grid[0] == Experiment(1, "s-1", ("train.lr=0.001", "train.batch_size=64", "seed=1"))
    assert grid[-1].set_params == ("train.lr=0.01", "train.batch_size=192", "seed=1")
    other = expand(["other.yaml:x=choice(a,b)"], "s")
    assert [e.set_params for e in other] == [("other.yaml:x=a",), ("other.yaml:x=b",)]
    assert expand([], "s") == [Experiment(1, "s-1", ())]  # the baseline's params, once


@pytest.mark.parametrize(
    ("set_params", "name", "message"),
    [
        (["train.lr"], "s", "-S 'train.lr': expected key=value"),
        (["train.lr=[1,2"], "s", "-S train.lr=[1,2: no viable alternative"),
        (["x=glob(*)"], "s", "Glob override 'x=glob(*)' is not supported"),
        (["train.lr=1"], "a/b", "--name 'a/b'"),
        (["train.lr=1"], "a..b", "--name 'a..b'"),
    ],
)
def test_bad_grid_is_one_line_naming_the_value(set_params, name, message) -> None:
    with pytest.raises(SweepError, match=re.escape(message)) as caught:
        expand(set_params, name)
    assert "\n" not in str(caught.value)


# --- progress and summary ----------------------------------------------------------------------


def test_progress_counts_per_node_and_the_summary_names_every_experiment() -> None:
    grid = expand(["train.lr=1,2,3,4"], "s")
    results = {
        "s-1": Result("s-1", "success", "h/a", "0", 12.0),
        "s-2": Result("s-2", "failed", "h/b", "1", 3.5, error="dvc exp run: ERROR: boom"),
    }
    started = {"s-1": ("h/a", "0"), "s-2": ("h/b", "1"), "s-3": ("h/a", "1")}
    line = progress_line(grid, results, started, 42.4)
    assert line == (
        "[42s] 1 done, 1 running, 1 failed, 1 queued | h/a: 1 done, 1 running | h/b: 1 failed"
    )
    header, *rows = summary_table(grid, results).splitlines()
    assert header.split() == ["experiment", "status", "node", "GPU", "wall", "s", "params", "error"]
    assert rows[0].split() == ["s-1", "success", "h/a", "0", "12.0", "train.lr=1"]
    assert rows[1].endswith("train.lr=2  dvc exp run: ERROR: boom")
    assert rows[3].split() == ["s-4", "not", "run", "-", "-", "-", "train.lr=4"]


# --- pre-flight, on a real git repository -------------------------------------------------------

STAGE = """\
import json, os, sys, time, yaml
train = yaml.safe_load(open("params.yaml"))["train"]
if train["batch_size"] == 7:
    sys.exit("ERROR: batch_size 7 is refused by this stage")
time.sleep(train["sleep"])
os.makedirs("metrics", exist_ok=True)
gpu = os.environ.get("CUDA_VISIBLE_DEVICES", "unset")
json.dump({"accuracy": train["lr"] + train["batch_size"] / 1000}, open("metrics/eval.json", "w"))
json.dump({"wall_seconds": 1.0, "gpu": gpu}, open("metrics/train.json", "w"))
open("model.txt", "w").write(f"{train['lr']} {train['batch_size']}\\n")
"""
DVC_YAML = """\
stages:
  train:
    cmd: python stage.py
    deps: [stage.py]
    params: [train]
    outs: [model.txt]
    metrics:
      - metrics/eval.json:
          cache: false
      - metrics/train.json:
          cache: false
"""


def make_project(tmp: Path, sleep: float = 0.0) -> Path:
    """A git+DVC project with a bare git remote (pushed) and a local-folder DVC remote."""
    remote, repo = tmp / "remote.git", tmp / "repo"
    run(tmp, "git", "init", "-q", "--bare", str(remote))
    repo.mkdir()
    run(repo, "git", "init", "-q", "-b", "main")
    dvc(repo, "init", "-q")
    with (repo / ".dvc" / "config").open("a") as config:  # `dvc remote add -d`, without a DVC start
        config.write(
            f"[core]\n    remote = store\n['remote \"store\"']\n    url = {tmp / 'dvc-store'}\n"
        )
    (repo / "stage.py").write_text(STAGE)
    (repo / "params.yaml").write_text(f"train:\n  lr: 0.1\n  batch_size: 8\n  sleep: {sleep}\n")
    (repo / "dvc.yaml").write_text(DVC_YAML)
    (repo / ".gitignore").write_text("/model.txt\n")
    run(repo, "git", "add", "-A")
    run(repo, "git", "commit", "-qm", "baseline")
    run(repo, "git", "remote", "add", "origin", str(remote))
    run(repo, "git", "push", "-q", "origin", "main")
    return repo


def remote_experiments(repo: Path) -> list[str]:
    refs = run(repo, "git", "ls-remote", "origin", "refs/exps/*").stdout.split()
    return sorted(ref.rsplit("/", 1)[1] for ref in refs if ref.startswith("refs/exps/"))


def test_preflight_refuses_in_one_line_naming_the_fix(tmp_path: Path) -> None:
    repo = make_project(tmp_path)
    baseline = preflight(repo, "origin", "s")
    assert baseline.git_url == str(tmp_path / "remote.git") and baseline.dvc_remote == "store"
    assert baseline.commit == run(repo, "git", "rev-parse", "HEAD").stdout.strip()

    def refused(*args) -> str:
        with pytest.raises(SweepError) as caught:
            preflight(*args)
        assert "\n" not in str(caught.value)
        return str(caught.value)

    (repo / "params.yaml").write_text("train:\n  lr: 0.5\n  batch_size: 8\n  sleep: 0\n")
    assert refused(repo, "origin", "s").startswith("uncommitted changes (params.yaml): commit")
    run(repo, "git", "commit", "-qam", "lr 0.5")
    message = refused(repo, "origin", "s")
    assert re.fullmatch(
        r"baseline \w{7} is not on git remote 'origin' .*: git push origin main", message
    )
    assert "no git remote 'upstream'" in refused(repo, "upstream", "s")
    run(repo, "git", "push", "-q", "origin", "main")
    config = repo / ".dvc" / "config"
    config.write_text(config.read_text().replace("    remote = store\n", ""))
    run(repo, "git", "commit", "-qam", "no default remote")
    run(repo, "git", "push", "-q", "origin", "main")
    assert refused(repo, "origin", "s").startswith("no DVC default remote in .dvc/config")


def test_outputs_missing_from_the_dvc_remote_are_refused_or_noted() -> None:
    status = json.dumps({"models/model.safetensors": "new", "data/prepared": "missing",
                         "metrics": "deleted"})  # fmt: skip

    def fake(args, cwd):
        return subprocess.CompletedProcess(args, 0, status, "")

    with pytest.raises(SweepError, match=r"DVC remote 's' lacks 2 baseline output\(s\) "
                       r"\(data/prepared, models/model.safetensors\): dvc push, or "):  # fmt: skip
        check_outputs(Path("."), "s", False, fake)
    assert check_outputs(Path("."), "s", True, fake) == [
        "the DVC remote lacks data/prepared, models/model.safetensors: every worker recomputes them"
    ]


def test_clone_url_makes_a_local_path_absolute(tmp_path: Path) -> None:
    assert clone_url("../remote.git", tmp_path / "repo") == str(tmp_path / "remote.git")
    for url in ("git@github.com:o/r.git", "https://h/r.git", "/srv/r.git", "file:///srv/r"):
        assert clone_url(url, tmp_path) == url


# --- real sweeps on a two-node cluster ----------------------------------------------------------


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory):
    started = Cluster(tmp_path_factory.mktemp("ray"), tool_env())
    try:
        yield started.start()
    finally:
        started.stop()  # also when a test or the start failed: only this cluster's processes


@pytest.fixture
def two_nodes(cluster: Cluster) -> Cluster:
    if not cluster.alive("second"):  # a test stopped it
        cluster.add_node()
    return cluster


def sweep_command(address: str, tmp: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "pipeline.cluster.cli", "--address", address,
            "--scratch", str(tmp), "--cpus-per-experiment", "1", "--gpus-per-experiment", "1",
            *args]  # fmt: skip


def sweep_env() -> dict[str, str]:
    env = ray_env(tool_env())  # as the nodes have it
    env["PYTHONPATH"] = str(ROOT / "src")  # this checkout's pipeline-sweep
    return env


def run_sweep(repo: Path, address: str, *args: str) -> subprocess.CompletedProcess:
    scratch = repo.parent / "scratch"
    scratch.mkdir(exist_ok=True)
    command = sweep_command(address, scratch, *args)
    done = subprocess.run(command, cwd=repo, env=sweep_env(), capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    assert not any(scratch.iterdir()), "a task left its scratch clone behind"
    return done


def table(stdout: str) -> dict[str, list[str]]:
    """The summary table's rows by experiment name: [status, node, GPU, wall s, ...]."""
    lines = stdout.split("experiment  status")[1].splitlines()[1:]
    return {line.split()[0]: line.split()[1:] for line in lines if re.match(r"^\S+-\d+\s", line)}


def experiments_shown(repo: Path, sweep: str) -> dict[str, dict]:
    runs = runs_from_exp_show(run_exp_show(repo))  # what pipeline-pareto reads
    return {run.name: run for run in runs if run.name and run.name.startswith(f"{sweep}-")}


@pytest.mark.slow
def test_a_grid_lands_in_exp_show_from_both_nodes_each_on_its_own_gpu(
    tmp_path: Path, two_nodes: Cluster
) -> None:
    repo = make_project(tmp_path)
    done = run_sweep(repo, two_nodes.address, "--name", "grid",
                     "-S", "train.lr=0.1,0.2", "-S", "train.batch_size=8,16")  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "4 of 4 landed and pulled" in done.stdout

    shown = experiments_shown(repo, "grid")
    assert sorted(shown) == ["grid-1", "grid-2", "grid-3", "grid-4"]
    expected = {"grid-1": (0.1, 8), "grid-2": (0.1, 16), "grid-3": (0.2, 8), "grid-4": (0.2, 16)}
    rows = table(done.stdout)
    for name, (lr, batch_size) in expected.items():
        run_ = shown[name]
        assert (run_.params["train.lr"], run_.params["train.batch_size"]) == (lr, batch_size)
        assert run_.accuracy == pytest.approx(lr + batch_size / 1000)  # its own metrics
        assert rows[name][0] == "success"
    # Each node has 2 fake GPUs and 4 experiments fill both: 2 per node, each on its own GPU,
    # and the stage saw the CUDA_VISIBLE_DEVICES the summary reports.
    document = json.loads(dvc(repo, "exp", "show", "--json").stdout)
    stage_gpus = {
        rev["name"]: rev["data"]["metrics"]["metrics/train.json"]["data"]["gpu"]
        for entry in document[1]["experiments"]
        for rev in entry["revs"]
    }
    by_node: dict[str, list[str]] = {}
    for name, (_, node, gpu, *_) in rows.items():
        by_node.setdefault(node, []).append(gpu)
        assert stage_gpus[name] == gpu
    assert sorted(sorted(gpus) for gpus in by_node.values()) == [["0", "1"], ["0", "1"]]
    # The outputs came back too: each experiment's model.txt is in the local cache.
    refs = run(repo, "git", "for-each-ref", "--format=%(refname)", "refs/exps").stdout.split()
    for name in expected:
        ref = next(ref for ref in refs if ref.endswith(f"/{name}"))
        lock = run(repo, "git", "show", f"{ref}:dvc.lock").stdout
        md5 = re.search(r"path: model.txt\n\s+hash: md5\n\s+md5: (\w+)", lock).group(1)
        assert (repo / ".dvc" / "cache" / "files" / "md5" / md5[:2] / md5[2:]).is_file()


@pytest.mark.slow
def test_a_failing_experiment_is_reported_and_the_others_land(
    tmp_path: Path, two_nodes: Cluster
) -> None:
    repo = make_project(tmp_path)
    done = run_sweep(repo, two_nodes.address, "--name", "fails",
                     "-S", "train.batch_size=7,8,9,10")  # fmt: skip
    assert done.returncode == 1
    rows = table(done.stdout)
    assert rows["fails-1"][0] == "failed"
    assert "ERROR: batch_size 7 is refused by this stage" in done.stdout.split("fails-1 ")[-1]
    assert [rows[f"fails-{i}"][0] for i in (2, 3, 4)] == ["success"] * 3
    assert "3 of 4 landed and pulled" in done.stdout
    assert remote_experiments(repo) == ["fails-2", "fails-3", "fails-4"]  # no half experiment
    assert sorted(experiments_shown(repo, "fails")) == ["fails-2", "fails-3", "fails-4"]


def test_an_unpushed_baseline_is_refused_before_anything_starts(tmp_path: Path) -> None:
    repo = make_project(tmp_path)
    run(repo, "git", "commit", "-q", "--allow-empty", "-m", "not pushed")
    # No cluster at this address: a sweep that got past the checks would fail to connect.
    done = run_sweep(repo, "127.0.0.1:9", "-S", "train.lr=0.1,0.2")
    assert done.returncode == 1
    assert done.stdout == ""
    assert re.fullmatch(
        r"pipeline-sweep: error: baseline \w{7} is not on git remote 'origin' \(workers clone "
        r"it\): git push origin main\n",
        done.stderr,
    )
    assert remote_experiments(repo) == []


@pytest.mark.slow
def test_a_node_stopped_mid_sweep_still_completes_every_experiment(
    tmp_path: Path, two_nodes: Cluster
) -> None:
    repo = make_project(tmp_path, sleep=8.0)  # long enough to stop a node inside the stage
    second = two_nodes.node_id("second")[:8]
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    command = sweep_command(two_nodes.address, scratch, "--name", "death",
                            "-S", "train.lr=0.1,0.2,0.3,0.4")  # fmt: skip
    driver = subprocess.Popen(command, cwd=repo, env=sweep_env(), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)  # fmt: skip
    try:
        lines = []
        for line in driver.stdout:
            lines.append(line)
            if re.search(rf"/{second}: (\d+ done, )?\d+ running", line):
                two_nodes.kill("second")  # its tasks die with it, mid-experiment
                break
        else:
            raise AssertionError("the second node never ran an experiment:\n" + "".join(lines))
        out = "".join(lines) + driver.communicate(timeout=240)[0]
    finally:
        driver.kill()
    assert driver.returncode == 0, out
    rows = table(out)
    assert [row[0] for row in rows.values()] == ["success"] * 4
    assert all(second not in row[1] for row in rows.values()), out  # retried on the head
    assert remote_experiments(repo) == ["death-1", "death-2", "death-3", "death-4"]
    assert sorted(experiments_shown(repo, "death")) == ["death-1", "death-2", "death-3", "death-4"]
