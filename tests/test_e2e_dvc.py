"""Tier 3: the real pipeline through real DVC, in a throwaway git repo (tests run in file order)."""

import csv
import json
import os
import shutil
import subprocess
import sys

import pytest
import yaml
from dvc_render.html import PAGE_HTML  # DVC's own page: Vega from a CDN

import offline_browser
from conftest import FAST_PARAMS, dvc, make_project_copy, run

OUTPUTS = [
    "data/prepared/train-00000.safetensors",
    "data/prepared/meta.json",
    "models/model.safetensors",
    "models/model.json",
    "models/onnx/model.onnx",
    "metrics/data.json",
    "metrics/train.json",
    "metrics/eval.json",
    "metrics/export.json",
    "metrics/benchmark.json",
    "metrics/benchmark.csv",
    "metrics/report.md",
    "metrics/benchmark.svg",
    "metrics/confusion.csv",
    "metrics/train/plots/metrics/val_accuracy.tsv",
    *(f"metrics/details/{name}.json" for name in ("data", "train", "eval", "export", "benchmark")),
]
METRICS = ["metrics/data.json", "metrics/train.json", "metrics/eval.json", "metrics/export.json"]
METRICS.append("metrics/benchmark.json")
# The only text a metrics file holds: labels needed to read its figures.
LABELS = {"energy.method", "policy.precision", "policy.device", "best_backend", "best_variant"}
LABELS |= {"best_precision", "best_energy_scope", "baseline_energy_scope"}  # never compared


def leaves(node, prefix=""):
    for key, value in node.items():
        if isinstance(value, dict):
            yield from leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    # The default's runtimes: OpenVINO rows beside onnxruntime's, through real DVC.
    params = {**FAST_PARAMS, "benchmark.runtimes": ["openvino"]}
    root = make_project_copy(tmp_path_factory.mktemp("e2e") / "project", params)
    result = dvc(root, "repro")
    assert "Running stage 'benchmark'" in result.stdout
    run(root, "git", "add", "-A")
    run(root, "git", "commit", "-qm", "first run")
    return root


def read(root, name):
    return json.loads((root / name).read_text())


def set_param(root, section, key, value):
    params = yaml.safe_load((root / "params.yaml").read_text())
    params[section][key] = value
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def test_repro_writes_every_output_with_sane_values(project):
    for name in OUTPUTS:
        assert (project / name).is_file(), name
    train = read(project, "metrics/train.json")
    assert train["epochs"] == FAST_PARAMS["train.epochs"]
    assert train["policy"]["device"] == "cpu" and train["images_per_s"] > 0
    energy = train["energy"]
    assert energy["method"] in ("rapl", "unavailable")
    assert (energy["joules_per_image"] is None) == (energy["method"] == "unavailable")
    details = read(project, "metrics/details/train.json")
    assert details["energy"]["images"] > 0 and details["torch_version"]
    if energy["method"] == "unavailable":
        assert details["energy"]["reason"]
    assert read(project, "metrics/eval.json")["accuracy"] > 0.85
    export = read(project, "metrics/export.json")
    assert export["parity"]["top1_agreement"] >= 0.999
    assert "sha256" not in export
    assert len(read(project, "metrics/details/export.json")["sha256"]) == 64
    bench = read(project, "metrics/benchmark.json")
    assert set(bench["headline"]) == {"batch_1", "batch_64"}
    timed = [r for r in csv.DictReader(open(project / "metrics/benchmark.csv")) if r["iterations"]]
    assert timed and all(r["repeats"] == str(FAST_PARAMS["benchmark.repeats"]) for r in timed)
    assert all(float(r["latency_spread"]) >= 0 and r["noisy"] in ("True", "False") for r in timed)
    # OpenVINO beside onnxruntime, each row with the precision its compiled model reports.
    openvino = [r for r in timed if r["backend"].startswith("openvino")]
    assert {r["variant"] for r in openvino} == {"fp32", "fp16", "int8"}
    ran = ("fp32", "bf16", "fp16", "int8")
    assert all(r["precision"] in ran and r["top1_accuracy"] for r in openvino)
    status = dvc(project, "status", "--json")
    assert json.loads(status.stdout) == {}


def test_metrics_hold_only_figures_and_fit_a_screen(project):
    columns = []
    for name in METRICS:
        for key, value in leaves(read(project, name)):
            columns.append(key)
            is_figure = isinstance(value, int | float) and not isinstance(value, bool)
            label = key.split(".", 2)[-1] if key.startswith("headline.") else key
            assert is_figure or value is None or label in LABELS, f"{name}: {key} = {value!r}"
    # Was 200+ with hashes, versions, policy and per class; the headline's precision, spread and
    # energy scopes (what a diff must not compare silently) took it from 45 to 50.
    assert len(columns) <= 50, columns


PLOTS = {  # dvc.yaml's plots, as DVC names their <div>s: no stray plot of confusion.csv
    *(f"metrics_train_plots_metrics_{name}_tsv" for name in
      ("lr", "train_accuracy", "train_loss", "val_accuracy", "val_loss")),
    "confusion_matrix",
    "images_per_second",
    "metrics_benchmark_svg",
}  # fmt: skip


def test_plots_show_draws_every_plot_with_no_network(project, tmp_path):
    curve = (project / "metrics/train/plots/metrics/val_accuracy.tsv").read_text().splitlines()
    epochs = FAST_PARAMS["train.epochs"]
    assert [line.split("\t")[0] for line in curve] == ["step", *map(str, range(1, epochs + 1))]
    # The report and its chart are committed with the metrics (in git, not DVC's cache).
    assert "](benchmark.svg)" in (project / "metrics/report.md").read_text()
    tracked = run(project, "git", "ls-files", "metrics/benchmark.svg", "metrics/report.md")
    assert tracked.stdout.split() == ["metrics/benchmark.svg", "metrics/report.md"]
    assert (project / "metrics/benchmark.svg").read_text().startswith("<svg")
    browser = offline_browser.find_chromium()
    if browser is None:
        pytest.skip("no chromium on PATH (apt-get install chromium): page not drawn in a browser")
    dvc(project, "plots", "show")  # plain: .dvc/config names the offline page
    page = project / "dvc_plots" / "index.html"
    assert '"title": "epoch"' in page.read_text()  # the curves' x axis
    shown, shot = offline_browser.plot_pixels(browser, page, tmp_path / "offline")
    assert set(shown) == PLOTS
    blank = {name: pixels for name, pixels in shown.items() if not pixels.drawn}
    assert not blank, f"not drawn: {blank}; see {shot}"
    # The same check on DVC's own page (libraries from a CDN) finds every Vega plot blank.
    (tmp_path / "cdn.html").write_text(PAGE_HTML)
    dvc(project, "plots", "show", "--html-template", str(tmp_path / "cdn.html"))
    shown, shot = offline_browser.plot_pixels(browser, page, tmp_path / "cdn")
    assert {name for name, pixels in shown.items() if pixels.drawn} == {"metrics_benchmark_svg"}


def test_bad_params_fail_in_one_line_and_keep_previous_outputs(project):
    model_before = (project / "models/model.safetensors").read_bytes()
    metrics_before = (project / "metrics/train.json").read_text()
    original = (project / "params.yaml").read_text()
    try:
        for section, key, value, expected in [
            ("train", "batch_sise", 32, "unknown key 'train.batch_sise'"),
            ("train", "batch_size", -1, "bad value for 'train.batch_size': -1"),
            ("train", "epochs", True, "bad value for 'train.epochs': True"),
            # A name no registry holds (core/catalog.py): refused before DVC deletes the model.
            (
                "model",
                "arch",
                "resnet9000",
                "bad value for 'model.arch': 'resnet9000' (must be one of",
            ),
            # Built for 224x224: on 8x8 digits it stops here, not after training (issue 18).
            (
                "model",
                "arch",
                "torchvision:resnet18",
                "model.arch 'torchvision:resnet18' on "
                "data.image_size 8 (digits: 8x8): the feature map is 1 pixel",
            ),
        ]:
            (project / "params.yaml").write_text(original)
            set_param(project, section, key, value)
            result = dvc(project, "repro", check=False)
            assert result.returncode != 0
            assert f"check_params: error: params.yaml: {expected}" in result.stderr
            assert "Traceback" not in result.stderr
            assert (project / "models/model.safetensors").read_bytes() == model_before
            assert (project / "metrics/train.json").read_text() == metrics_before
    finally:
        (project / "params.yaml").write_text(original)
    # Fixed params: only the check reruns; every other stage is still up to date.
    rerun = dvc(project, "repro").stdout
    assert "Running stage 'check_params'" in rerun
    assert "Running stage 'prepare'" not in rerun and "Running stage 'train'" not in rerun
    assert json.loads(dvc(project, "status", "--json").stdout) == {}


def test_a_stage_run_by_hand_also_refuses_bad_params(project):
    original = (project / "params.yaml").read_text()
    try:
        set_param(project, "train", "batch_size", -1)
        result = run(project, "python", "stages/train.py", check=False)
    finally:
        (project / "params.yaml").write_text(original)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "train: error: params.yaml: bad value for 'train.batch_size': -1 "
        "(Input should be greater than 0)"
    ]


def test_broken_model_files_fail_in_one_line_and_keep_previous_outputs(project):
    weights = project / "models/model.safetensors"
    onnx_model = project / "models/onnx/model.onnx"
    good_weights, good_onnx = weights.read_bytes(), onnx_model.read_bytes()
    eval_before = (project / "metrics/eval.json").read_bytes()
    bench_before = (project / "metrics/benchmark.json").read_bytes()
    try:
        weights.unlink()  # DVC may have linked it from the cache: never write through a link
        weights.write_bytes(good_weights[: len(good_weights) // 2])
        result = run(project, "python", "stages/evaluate.py", check=False)
        assert result.returncode == 1
        (line,) = result.stderr.strip().splitlines()
        assert line.startswith("evaluate: error: models/model.safetensors: tensor ")
        assert line.endswith("(truncated or corrupt)")
        weights.unlink()
        weights.write_bytes(good_weights)
        onnx_model.unlink()
        onnx_model.write_bytes(b"PK\x03\x04" + b"\0" * 64)  # a zip, not an ONNX model
        result = run(project, "python", "stages/benchmark.py", check=False)
        assert result.returncode == 1
        assert result.stderr.strip().splitlines()[-1] == (
            "benchmark: error: models/onnx/model.onnx: not an ONNX model (cannot parse it)"
        )
        assert "Traceback" not in result.stderr
    finally:
        for path, data in ((weights, good_weights), (onnx_model, good_onnx)):
            path.unlink(missing_ok=True)
            path.write_bytes(data)
    assert (project / "metrics/eval.json").read_bytes() == eval_before
    assert (project / "metrics/benchmark.json").read_bytes() == bench_before
    assert json.loads(dvc(project, "status", "--json").stdout) == {}


def test_an_edit_to_the_benchmark_code_changes_only_the_benchmark_stage(project):
    edited = project / "src/pipeline/bench/timing.py"
    original = edited.read_bytes()
    try:
        edited.write_bytes(original + b"# an edit\n")
        status = json.loads(dvc(project, "status", "--json").stdout)
    finally:
        edited.write_bytes(original)
    assert status == {"benchmark": [{"changed deps": {"src/pipeline/bench": "modified"}}]}
    assert json.loads(dvc(project, "status", "--json").stdout) == {}


def test_bytecode_caches_are_not_code_changes(project):
    # Python writes __pycache__ on import, with source mtimes inside; another clone's (or CI's)
    # would differ from the committed dvc.lock and make every code dep look modified.
    cache = project / "src/pipeline/bench/__pycache__"
    cache.mkdir(exist_ok=True)
    stray = cache / "timing.cpython-311.pyc"
    try:
        stray.write_bytes(b"\x00stray bytecode")
        (project / "src/pipeline/stray.pyc").write_bytes(b"\x00stray bytecode")
        status = json.loads(dvc(project, "status", "--json").stdout)
    finally:
        stray.unlink()
        (project / "src/pipeline/stray.pyc").unlink()
    assert status == {}


def test_metrics_and_params_diff_between_commits(project):
    set_param(project, "train", "epochs", 2)
    dvc(project, "repro")
    run(project, "git", "add", "-A")
    run(project, "git", "commit", "-qm", "two epochs")
    params_diff = json.loads(dvc(project, "params", "diff", "HEAD~1", "--json").stdout)
    assert params_diff["params.yaml"]["train.epochs"] == {"old": 4, "new": 2, "diff": -2}
    metrics_diff = json.loads(dvc(project, "metrics", "diff", "HEAD~1", "--json").stdout)
    assert metrics_diff["metrics/train.json"]["epochs"] == {"old": 4, "new": 2, "diff": -2}
    # Only figures a changed epoch count can move: no hashes, versions, CPU flags or peaks.
    changed = [key for keys in metrics_diff.values() for key in keys]
    noise = ("sha256", "hash", "version", "isa", "peak_gflops", "provider", "policy.cpu")
    assert not [key for key in changed if any(word in key for word in noise)], changed
    assert "metrics/data.json" not in metrics_diff  # prepare did not run again


def test_experiment_with_set_param_shows_in_exp_show(project):
    dvc(project, "exp", "run", "-S", "train.epochs=3", "--name", "three-epochs")
    shown = json.loads(dvc(project, "exp", "show", "--json").stdout)
    experiments = [
        exp
        for entry in shown
        for group in (entry.get("experiments") or [])
        for exp in group["revs"]
    ]
    found = [exp for exp in experiments if exp.get("name") == "three-epochs"]
    assert found, f"experiment missing from {[e.get('name') for e in experiments]}"
    data = found[0]["data"]
    assert data["params"]["params.yaml"]["data"]["train"]["epochs"] == 3
    assert data["metrics"]["metrics/train.json"]["data"]["epochs"] == 3
    assert data["metrics"]["metrics/eval.json"]["data"]["accuracy"] > 0.5


# --- Each stage runs its own checkout's code (a queued, --temp or cloned run) -------------------

MARKER = "evaluate code of the experiment's own copy"


def test_a_queued_experiment_runs_its_own_code_not_the_workspace(project, tmp_path):
    """A queued or --temp experiment runs in a temporary copy; with an editable install a plain
    `import pipeline` would load the workspace's (or another checkout's) code while dvc.lock
    records the copy's hashes."""
    # As after `pip install -e .` in this clone: its workspace src/ is importable everywhere.
    os.environ["PYTHONPATH"] = str(project / "src")
    evaluate = project / "src/pipeline/evaluate/metrics.py"
    original = evaluate.read_text()
    try:
        evaluate.write_text(original + f"\nprint({MARKER!r}, flush=True)\n")
        queue = ["exp", "run", "--queue", "evaluate", "-n", "edited"]
        dvc(project, *queue, "-S", "evaluate.batch_size=256")
        evaluate.write_text(original)  # the workspace no longer has the edit; the experiment does
        dvc(project, "queue", "start")
        logs = dvc(project, "queue", "logs", "--follow", "edited").stdout
        assert "Running stage 'evaluate'" in logs, logs
        assert MARKER in logs, logs

        # The other way round: another checkout's edited code is importable, and a --temp
        # experiment here must not run it.
        other = tmp_path / "other" / "src"
        shutil.copytree(project / "src", other)
        (other / "pipeline/evaluate/metrics.py").write_text(original + f"\nprint({MARKER!r})\n")
        os.environ["PYTHONPATH"] = str(other)
        temp = ["exp", "run", "--temp", "evaluate", "-n", "temp"]
        result = dvc(project, *temp, "-S", "evaluate.batch_size=128")
        assert "Running stage 'evaluate'" in result.stdout, result.stdout
        assert MARKER not in result.stdout + result.stderr
    finally:
        os.environ.pop("PYTHONPATH", None)
        evaluate.write_text(original)


# --- A busy machine (last: it re-times the benchmark under load) -------------------------------

SPIN = "while True: pass"  # one core kept busy for as long as it runs


def test_a_busy_machine_still_gives_a_headline_for_every_batch_size(project):
    """The benchmark stage with a CPU-bound process beside it still reports a headline, with its
    spread and its speed-up over PyTorch eager, for every batch size (noisy rows, and rows whose
    ratios to the baseline have not settled, get extra rounds within benchmark.extra_seconds)."""
    set_param(project, "benchmark", "extra_seconds", 15.0)
    # Rounds of the default's length (FAST_PARAMS' 5 calls make a round's p50 a coin toss).
    set_param(project, "benchmark", "min_iterations", 30)
    set_param(project, "benchmark", "min_seconds", 0.1)
    spinner = subprocess.Popen([sys.executable, "-c", SPIN])
    try:
        done = dvc(project, "repro", check=False)  # the benchmark stage, beside the spinner
    finally:
        spinner.kill()
        spinner.wait()
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Running stage 'benchmark'" in done.stdout
    record = read(project, "metrics/details/benchmark.json")
    metrics = read(project, "metrics/benchmark.json")
    batch_sizes = yaml.safe_load((project / "params.yaml").read_text())["benchmark"]["batch_sizes"]
    sizes = {f"batch_{size}" for size in batch_sizes}
    assert set(record["headline"]) == sizes
    for key, entry in record["headline"].items():
        assert entry["best_backend"], (key, entry, done.stderr[-3000:])
        assert entry["best_repeats"] >= 2
        assert entry["best_spread"] is not None and entry["best_spread"] <= 0.125
        assert metrics["headline"][key]["best_spread"] == entry["best_spread"]
        # The baseline is protected: its rounds pair with the row's, so there is a speed-up, or
        # (ratios that still disagree under the load) the reason names the paired rounds.
        speedup = entry["speedup_vs_pytorch_eager"]
        if speedup is None:
            assert "across" in entry["speedup_unavailable"], (key, entry["speedup_unavailable"])
            assert "paired rounds" in entry["speedup_unavailable"]
        else:
            assert speedup > 0 and entry["speedup_spread"] <= 0.125
