"""pipeline-pareto on crafted and on real `dvc exp show --json`."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

import pytest

from conftest import dvc, run
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
