"""pipeline-pareto on crafted and on real `dvc exp show --json`; pipeline-sweep's -S grid refusing
hostile input on the driver."""

from __future__ import annotations

import json
import os
import re
import resource
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from conftest import ROOT, dvc, run
from pipeline.cluster.grid import SweepError, expand
from pipeline.tools.pareto import (
    least_energy_meeting_target,
    main,
    pareto_front,
    report,
    run_exp_show,
    runs_from_exp_show,
    select_runs,
    without_workspace_copy,
)

# --- a crafted document, in the shape dvc 3.x writes --------------------------------------------


def data(params: dict[str, Any], evaluation: dict | None, training: dict | None) -> dict:
    metrics: dict[str, Any] = {}
    for path, content in (("metrics/eval.json", evaluation), ("metrics/train.json", training)):
        metrics[path] = (
            {"data": content}
            if content is not None
            else {"error": {"type": "FileNotFoundError", "msg": "No such file"}}
        )
    return {"rev": "x", "params": {"params.yaml": {"data": params}}, "metrics": metrics}


def experiment(
    name: str, precision: str, accuracy: float | None, train: dict | None, state: str | None = None
) -> dict:
    params = {"train": {"precision": precision, "batch_size": 64, "target_accuracy": 0.96}}
    evaluation = None if accuracy is None else {"accuracy": accuracy}
    executor = None if state is None else {"state": state, "name": "dvc-task", "local": {}}
    rev = f"{abs(hash(name)):040x}"[:40]
    return {
        "revs": [
            {
                "rev": rev,
                "name": name,
                "data": data(params, evaluation, train),
                "error": None,
                "experiments": None,
            }
        ],
        "executor": executor,
        "name": name,
    }


def energy(joules_per_image: float | None, seconds: float | None = None) -> dict:
    train: dict[str, Any] = {"energy": {"joules_per_image": joules_per_image, "method": "rapl"}}
    if seconds is not None:
        train["wall_seconds"] = seconds
    return train


@pytest.fixture
def document() -> list[dict]:
    base_params = {"train": {"precision": "fp32", "batch_size": 64}}
    return [
        {
            "rev": "workspace",
            "name": None,
            "error": None,
            "experiments": None,
            "data": data(base_params, {"accuracy": 0.80}, energy(2.0, 50.0)),
        },
        {
            "rev": "c0ffee" + "0" * 34,
            "name": "main",
            "error": None,
            "data": data(base_params, None, None),
            "experiments": [
                experiment("cheap", "bf16", 0.95, energy(0.5, 10.0)),
                experiment("best", "fp32", 0.97, energy(0.8, 20.0)),
                experiment("dominated", "fp16", 0.90, energy(0.6, 5.0)),
                experiment("no-energy", "fp32", 0.99, {"wall_seconds": 30.0}),
                experiment("null-energy", "fp32", 0.98, energy(None, 25.0)),
                experiment(
                    "flat-key",
                    "bf16",
                    0.93,
                    {"energy.joules_per_image": 0.4, "energy.method": "rapl", "wall_seconds": 12.0},
                ),
                experiment("waiting", "bf16", None, None, state="queued"),
            ],
        },
    ]


def names(runs) -> list[str]:
    return [run.name for run in runs]


def test_every_entry_becomes_a_run_with_its_figures(document: list[dict]) -> None:
    runs = {run.name: run for run in runs_from_exp_show(document)}

    assert set(runs) == {
        "workspace",
        "main",
        "cheap",
        "best",
        "dominated",
        "no-energy",
        "null-energy",
        "flat-key",
        "waiting",
    }
    cheap = runs["cheap"]
    assert (cheap.kind, cheap.accuracy, cheap.joules_per_image, cheap.wall_seconds) == (
        "experiment",
        0.95,
        0.5,
        10.0,
    )
    assert cheap.params["train.precision"] == "bf16"
    assert cheap.energy_method == "rapl"
    assert runs["flat-key"].joules_per_image == 0.4
    assert runs["no-energy"].joules_per_image is None
    assert runs["null-energy"].joules_per_image is None
    assert runs["main"].kind == "baseline" and runs["main"].accuracy is None
    assert runs["waiting"].state == "queued"
    assert runs["workspace"].kind == "workspace"


def test_energy_front_keeps_only_undominated_runs_cheapest_first(document: list[dict]) -> None:
    front = pareto_front(runs_from_exp_show(document), lambda run: run.joules_per_image)
    # dominated (0.90 at 0.6 J) loses to cheap (0.95 at 0.5 J); no-energy is never a candidate.
    assert names(front) == ["flat-key", "cheap", "best"]


def test_time_front_is_separate(document: list[dict]) -> None:
    front = pareto_front(runs_from_exp_show(document), lambda run: run.wall_seconds)
    assert names(front) == ["dominated", "cheap", "best", "null-energy", "no-energy"]


def test_identical_runs_both_stay_on_the_front(document: list[dict]) -> None:
    runs = runs_from_exp_show(document)
    twin = next(run for run in runs if run.name == "cheap")
    front = pareto_front([*runs, twin], lambda run: run.joules_per_image)
    assert names(front).count("cheap") == 2


def test_equal_accuracy_at_higher_cost_is_dominated() -> None:
    entry = {
        "rev": "c0ffee" + "0" * 34,
        "name": "main",
        "data": data({}, None, None),
        "experiments": [
            experiment("lean", "bf16", 0.95, energy(0.5)),
            experiment("dear", "fp32", 0.95, energy(0.7)),
            experiment("truthy", "fp32", True, energy(0.1)),
        ],
    }
    runs = runs_from_exp_show([entry])
    assert names(pareto_front(runs, lambda run: run.joules_per_image)) == ["lean"]
    assert next(run for run in runs if run.name == "truthy").accuracy is None  # not a number


def test_least_energy_meeting_target(document: list[dict]) -> None:
    runs = runs_from_exp_show(document)
    assert least_energy_meeting_target(runs, 0.95).name == "cheap"
    assert least_energy_meeting_target(runs, 0.92).name == "flat-key"
    # Without --target each experiment's train.target_accuracy (0.96) applies.
    assert least_energy_meeting_target(runs, None).name == "best"
    # no-energy reaches 0.99 but has no figure: it cannot be chosen.
    assert least_energy_meeting_target(runs, 0.985) is None


def test_report_lists_runs_without_energy_and_never_gives_them_a_number(
    document: list[dict],
) -> None:
    runs, left_out = select_runs(runs_from_exp_show(document))
    text = report(runs, 0.95, left_out)
    unavailable = text.split("Energy unavailable")[1].split("\n\n")[0]

    assert "no-energy" in unavailable and "null-energy" in unavailable
    header, *rows = unavailable.splitlines()[1:]
    column = header.index("J/image")
    assert [row[column:].split()[0] for row in rows] == ["-", "-"]
    assert re.search(r"^\*\s+cheap\s", text, re.MULTILINE)
    assert "least energy meeting the target (--target 0.95): cheap (0.5 J/image" in text
    assert re.search(r"^- waiting [0-9a-f]{7}: queued, not run yet$", text, re.MULTILINE)
    assert "- main c0ffee0: no accuracy" in text
    # With every run left out there is no front to pick from, and the last line says that.
    nothing = report([], 0.95, left_out)
    assert nothing.endswith("* no run competes: every one was left out (see above)")
    assert "has an energy figure" not in nothing
    # A target nobody with an energy figure reaches is said so, not given a pick.
    unreachable = report(runs, 0.9999, left_out)
    assert "least energy meeting" not in unreachable
    expected = "* no run that meets its target accuracy (--target 0.9999) has a figure of"
    assert expected in unreachable


def test_main_reads_a_saved_json(document: list[dict], tmp_path: Path, capsys) -> None:
    saved = tmp_path / "exps.json"
    saved.write_text(json.dumps(document))

    assert main(["--json", str(saved)]) == 0
    out = capsys.readouterr().out
    expected = "best (0.8 J/image of CPU package energy, accuracy 0.9700)"
    assert f"(train.target_accuracy): {expected}" in out


# --- the real thing: two experiments in a throwaway git+DVC repo --------------------------------

STAGE = """\
import json, os, sys, yaml
train = yaml.safe_load(open("params.yaml"))["train"]
os.makedirs("metrics", exist_ok=True)
fp32 = train["precision"] == "fp32"
json.dump({"accuracy": 0.97 if fp32 else 0.95}, open("metrics/eval.json", "w"))
energy = {"joules_per_image": 0.02 * train["batch_size"] / 64, "method": "rapl"} if fp32 else None
json.dump({"wall_seconds": 640 / train["batch_size"], "energy": energy},
          open("metrics/train.json", "w"))
if train["batch_size"] == 7:  # fails after writing, as a failed export gate does
    sys.exit("gate failed")
"""


def make_repo(root: Path, stage: str, metrics: list[str], params: str) -> Path:
    root.mkdir(parents=True)
    run(root, "git", "init", "-q", "-b", "main")
    run(root, "git", "config", "user.name", "test")  # the queue's workers commit too
    run(root, "git", "config", "user.email", "test@example.com")
    dvc(root, "init", "-q")
    (root / "stage.py").write_text(stage)
    (root / "params.yaml").write_text(params)
    outs = "".join(f"      - {path}:\n          cache: false\n" for path in metrics)
    (root / "dvc.yaml").write_text(
        f"stages:\n  train:\n    cmd: {sys.executable} stage.py\n    deps: [stage.py]\n"
        f"    params: [train]\n    metrics:\n{outs}"
    )
    run(root, "git", "add", "-A")
    run(root, "git", "commit", "-qm", "initial")
    return root


def test_pareto_on_real_dvc_experiments(tmp_path: Path, capsys) -> None:
    repo = make_repo(
        tmp_path / "repo",
        STAGE,
        ["metrics/eval.json", "metrics/train.json"],
        "train:\n  precision: fp32\n  batch_size: 64\n",
    )
    dvc(repo, "exp", "run", "-n", "half", "-S", "train.precision=bf16")
    dvc(repo, "exp", "run", "-n", "big", "-S", "train.precision=fp32", "-S", "train.batch_size=32")

    runs = {run.name: run for run in runs_from_exp_show(run_exp_show(repo))}

    assert {"half", "big"} <= set(runs)
    half, big = runs["half"], runs["big"]
    assert (half.params["train.precision"], half.accuracy, half.joules_per_image) == (
        "bf16",
        0.95,
        None,
    )
    assert (big.params["train.batch_size"], big.accuracy) == (32, 0.97)
    assert big.joules_per_image == pytest.approx(0.01)
    assert big.wall_seconds == pytest.approx(20.0)
    assert runs["main"].kind == "baseline"

    assert main(["--repo", str(repo), "--target", "0.96"]) == 0
    out = capsys.readouterr().out
    assert "least energy meeting the target (--target 0.96): big (0.01 J/image" in out
    assert "half" in out.split("Energy unavailable")[1]
    # The workspace only repeats "big", the last experiment run: listed as left out, once.
    assert out.count("workspace") == 1 and "- workspace: repeats big" in out

    # A `dvc exp run` that fails leaves its params and half-made figures in the workspace.
    failed = dvc(repo, "exp", "run", "-S", "train.batch_size=7", check=False)
    assert failed.returncode != 0
    assert main(["--repo", str(repo), "--target", "0.96"]) == 0
    out = capsys.readouterr().out
    assert "- workspace: outputs out of date (dvc status: train)" in out
    assert "91.43" not in out  # 640 / 7 wall seconds: the failed run's figure is on no front


def test_failed_noisy_and_stale_runs_are_left_out_and_named() -> None:
    stale = energy(0.8, 20.0)  # what the workspace held when the failed experiment started
    good = {**energy(0.5, 10.0), "policy": {"precision": "bf16", "device": "cpu"}}
    noisy = {**energy(0.1, 2.0), "steady_state_spread": 0.9}
    entry = {
        "rev": "c0ffee" + "0" * 34,
        "name": "main",
        "data": data({}, None, None),
        "experiments": [
            experiment("good", "auto", 0.95, good),
            experiment("gate-failed", "auto", 0.99, stale, state="failed"),
            experiment("busy", "auto", 0.96, noisy),
        ],
    }
    # The workspace holds good's figures under other params: a run that failed before writing.
    workspace = {"rev": "workspace", "name": None, "experiments": None}
    workspace["data"] = data({"train": {"batch_size": 7}}, {"accuracy": 0.95}, good)
    runs, left_out = select_runs(runs_from_exp_show([workspace, entry]))
    assert names(runs) == ["good"]
    why = {run.name: reason for run, reason in left_out}
    assert why["gate-failed"].startswith("failed:")
    assert why["busy"] == "noisy: training images/s spread 90% > 25%"
    assert why["workspace"].startswith("its figures are good's but its params differ")
    assert names(select_runs(runs_from_exp_show([entry]), max_spread=1.0)[0]) == ["good", "busy"]
    text = report(runs, None, left_out)
    front = text.split("\n\n")[0]
    assert "gate-failed" not in front and "busy" not in front
    header, row = front.splitlines()[1:3]
    assert row[header.index("precision") :].split()[:2] == ["bf16", "cpu"]  # not `auto`
    assert "- gate-failed " in text and "- busy " in text


def scoped(name: str, accuracy: float, joules: float, method: str) -> dict:
    train = {"energy": {"joules_per_image": joules, "method": method}, "wall_seconds": 1.0}
    return experiment(name, "bf16", accuracy, train)


def test_energy_of_different_scopes_is_never_ranked_together() -> None:
    entry = {
        "rev": "c0ffee" + "0" * 34,
        "name": "main",
        "data": data({}, None, None),
        "experiments": [
            scoped("gpu-fast", 0.96, 0.002, "nvml_energy_counter"),
            scoped("gpu-sampled", 0.97, 0.003, "nvml_power_sampling"),
            scoped("cpu-rapl", 0.97, 0.001, "rapl"),  # fewer joules, but of a CPU package
            scoped("guess", 0.99, 0.0001, "estimate"),
        ],
    }
    runs = runs_from_exp_show([entry])
    scopes = {run.name: run.energy_scope for run in runs if run.kind == "experiment"}
    assert scopes == {
        "gpu-fast": "GPU board",
        "gpu-sampled": "GPU board",
        "cpu-rapl": "CPU package",
        "guess": "estimate",
    }
    with pytest.raises(ValueError, match="different scopes"):
        least_energy_meeting_target(runs, 0.95)
    assert least_energy_meeting_target(runs, 0.95, "GPU board").name == "gpu-fast"

    text = report(runs, 0.95)
    gpu = next(part for part in text.split("\n\n") if "GPU board energy" in part.split("\n")[0])
    assert "gpu-fast" in gpu and "gpu-sampled" in gpu
    assert "cpu-rapl" not in gpu and "guess" not in gpu  # cheaper or more accurate: other scope
    assert "(--target 0.95): gpu-fast (0.002 J/image of GPU board energy" in text
    assert "(--target 0.95): cpu-rapl (0.001 J/image of CPU package energy" in text
    assert "(--target 0.95): guess (0.0001 J/image of estimate energy" in text


def test_workspace_with_results_of_its_own_stays(document: list[dict]) -> None:
    runs = without_workspace_copy(runs_from_exp_show(document))
    assert "workspace" in names(runs)
    copy = [entry for entry in document if entry["rev"] != "workspace"]
    copy.insert(0, {**document[1]["experiments"][0]["revs"][0], "rev": "workspace"})
    assert "workspace" not in names(without_workspace_copy(runs_from_exp_show(copy)))


# --- pipeline-sweep: hostile -S values, refused on the driver in one line -----------------------

HUGE = [  # each would list more values than memory holds before the old count
    (["train.lr=range(0,1000)", "train.batch_size=range(0,1000)", "model.width=range(0,1000)"],
     "-S gives 1,000,000,000 experiments, over 10,000 (-S train.lr=range(0,1000) alone gives"),
    (["train.lr=range(0,100000000)"], "-S gives 100,000,000 experiments, over 10,000"),
    (["train.lr=range(0,1e300)"], "-S gives 1.00e+300 experiments, over 10,000"),
    (["train.lr=shuffle(range(0,100000000))"], "-S gives 100,000,000 experiments, over 10,000"),
    (["train.lr=range(0,inf)"], "range() needs finite numbers and a step other than 0"),
    (["train.lr=range(0,10,0)"], "range() needs finite numbers and a step other than 0"),
    (["train.lr=range(5,0)"], "-S train.lr=range(5,0): gives no values"),
]  # fmt: skip
MEMORY_CAP = 1 << 30  # bytes of address space: refusing needs a few dozen MB


def project_params(folder: Path) -> Path:
    shutil.copy(ROOT / "params.yaml", folder / "params.yaml")
    return folder


def capped_python(code: str, cwd: Path) -> subprocess.CompletedProcess:
    """``code`` in a Python that cannot grow past MEMORY_CAP: a grid listed in full dies fast."""

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (MEMORY_CAP, MEMORY_CAP))

    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, preexec_fn=cap,
                          capture_output=True, text=True, timeout=120)  # fmt: skip


def test_a_huge_grid_is_refused_before_any_list_is_built(tmp_path: Path) -> None:
    code = (
        "import json, sys\nfrom pipeline.cluster.grid import SweepError, expand\n"
        "for values in json.loads(sys.argv[1]):\n"
        "    try:\n        print(len(expand(values, 's')))\n"
        "    except SweepError as error:\n        print(error)\n"
    )
    done = capped_python(code.replace("sys.argv[1]", repr(json.dumps([v for v, _ in HUGE]))),
                         project_params(tmp_path))  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.splitlines()
    assert len(lines) == len(HUGE)  # one line each
    for line, (_, message) in zip(lines, HUGE, strict=True):
        assert message in line


def test_the_cli_refuses_a_huge_range_or_a_newline_in_one_line(tmp_path: Path) -> None:
    cli = "from pipeline.cluster.cli import main\nraise SystemExit(main({!r}))"
    for argv, message in (
        (["-S", "train.lr=range(0,1e300)"], "-S gives 1.00e+300 experiments, over 10,000"),
        (["-S", "train.lr=1\nfoo"], r"-S 'train.lr=1\nfoo': "),
    ):
        done = capped_python(cli.format(argv), project_params(tmp_path))
        assert done.returncode == 1, done.stderr[-2000:]
        assert done.stdout == ""  # nothing started, nothing written
        assert done.stderr.startswith("pipeline-sweep: error: ") and message in done.stderr
        assert done.stderr.count("\n") == 1


def test_the_cli_checks_points_against_the_params_of_its_repo(tmp_path: Path) -> None:
    """--repo names the project: its params.yaml, not the one where the command runs."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    project = project_params(tmp_path)
    argv = ["--repo", str(project), "-S", "train.lr=true"]
    cli = "from pipeline.cluster.cli import main\nraise SystemExit(main({!r}))"
    done = capped_python(cli.format(argv), elsewhere)
    assert done.returncode == 1 and done.stdout == ""
    assert "params.yaml: bad value for 'train.lr': True" in done.stderr, done.stderr


def refused(set_params: list[str], name: str = "s", repo: Path | None = None) -> str:
    with pytest.raises(SweepError) as caught:
        expand(set_params, name, repo) if repo else expand(set_params, name)
    assert "\n" not in str(caught.value) and "\r" not in str(caught.value)
    return str(caught.value)


@pytest.mark.parametrize(
    ("set_params", "message"),
    [
        (["train.lr=1\nfoo"], r"-S 'train.lr=1\nfoo': "),
        (['train.lr="a\nb"'], r"""-S 'train.lr="a\nb"' (s-1): params.yaml: bad value for"""),
        (["train.lr=1\u2028foo"], r"-S 'train.lr=1\u2028foo': "),
        (["train.lr=" + "9" * 100_000], "99999': Exceeds the limit (4300 digits)"),
    ],
)  # fmt: skip
def test_a_newline_in_a_value_is_quoted_not_echoed(tmp_path, monkeypatch, set_params, message):
    monkeypatch.chdir(project_params(tmp_path))
    text = refused(set_params)
    assert message in text and len(text) < 500


@pytest.mark.parametrize("name", ["a\nb", "abc\n", "x\rdone"])
def test_a_newline_in_the_name_is_refused_and_quoted(name: str) -> None:
    assert refused([], name).startswith(f"--name {name!r}: use letters")


@pytest.mark.parametrize(
    ("set_params", "message"),
    [
        (["train.bogus=1,2"], "-S train.bogus=1 (s-1): Could not override 'train.bogus'."),
        (["+train.bogus=1"], "(s-1): params.yaml: unknown key 'train.bogus' (check its spelling)"),
        (["train.lr=true,inf"], "-S train.lr=True (s-1): params.yaml: bad value for 'train.lr'"),
        (["train.lr=0.01,inf"], "-S train.lr=inf (s-2): params.yaml: bad value for 'train.lr'"),
        (["train.batch_size=false"], "bad value for 'train.batch_size': False"),
        (["train.epochs=1e300"], "bad value for 'train.epochs': 1e+300"),
        (["seed=-1"], "bad value for 'seed': -1"),
        (["train.distributed.nnodes=1,2"], "(s-2): params.yaml: bad value for 'train.distributed"),
        (["train.lr=1,1,1"], "-S train.lr=1 (s-2) gives the same params as s-1: drop the repeat"),
        (["train.lr=1,1.0"], "-S train.lr=1.0 (s-2) gives the same params as s-1"),
        (["train.lr=1,2", "seed=7,7"], "-S train.lr=1 seed=7 (s-2) gives the same params as s-1"),
        (["=5"], "-S '=5': empty key"),
        (["~"], "-S '~': empty key"),
        ([":train.lr=1"], "-S ':train.lr=1': empty key"),
        (["other.yaml:=5"], "-S 'other.yaml:=5': empty key"),
        (["train.lr=1", "train.lr=2"], "-S 'train.lr=2': train.lr is already set by -S 'train."),
    ],
)  # fmt: skip
def test_a_point_every_worker_would_fail_is_refused(tmp_path, monkeypatch, set_params, message):
    monkeypatch.chdir(project_params(tmp_path))  # the CLI's --repo defaults to here
    assert message in refused(set_params)


def test_good_grids_pass_and_only_params_yaml_meets_the_schema(tmp_path: Path) -> None:
    repo = project_params(tmp_path)
    grid = expand(["train.lr=0.001,0.01", "train.batch_size=64,128", "other.yaml:x=a,b"], "s", repo)
    assert len(grid) == 8 and grid[-1].set_params[-1] == "other.yaml:x=b"  # other files: DVC's
    # Another project's params.yaml (train.sleep is no key of this pipeline's schema): only the
    # rules DVC applies on the worker, which still refuse a key params.yaml lacks, and repeats.
    (repo / "params.yaml").write_text("train:\n  lr: 0.1\n  sleep: 0\n")
    assert len(expand(["train.lr=0.1,0.2", "train.sleep=0,20"], "s", repo)) == 4
    assert "Could not override 'train.bogus'" in refused(["train.bogus=1"], repo=repo)
    assert "gives the same params as s-1" in refused(["train.lr=5,5"], repo=repo)
