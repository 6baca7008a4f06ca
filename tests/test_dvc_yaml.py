"""dvc.yaml must declare exactly the paths the code writes (src/pipeline/core/paths.py), the
params sections each stage's code reads and the code each stage imports."""

import ast
from pathlib import Path

import yaml

from conftest import ROOT
from pipeline.core import paths
from pipeline.core.config import Params
from pipeline.tools import stage_deps

SECTIONS = set(Params.model_fields)  # seed, data, model, train, ...


def stages():
    return yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def declared_outputs(stage: dict) -> set[str]:
    found = set()
    for kind in ("outs", "metrics", "plots"):
        for entry in stage.get(kind, []):
            found.add(next(iter(entry)) if isinstance(entry, dict) else entry)
    return found


def test_every_stage_is_a_thin_script_without_arguments():
    for name, stage in stages().items():
        assert stage["cmd"] == f"python stages/{name}.py"
        assert f"stages/{name}.py" in stage["deps"]


def test_every_stage_depends_on_exactly_the_code_its_script_imports():
    """Not on all of src/pipeline: an edit to the benchmark must not re-run training."""
    declared = {
        name: sorted(dep for dep in stage["deps"] if dep.startswith("src/"))
        for name, stage in stages().items()
    }
    derived = {name: stage_deps.derived_deps(ROOT, name) for name in stages()}
    assert declared == derived, "run `python -m pipeline.tools.stage_deps --write`"


def test_the_derived_code_deps_follow_the_pipeline_order():
    # Guards the derivation itself: a stage needs its own code, never a later stage's.
    derived = {name: set(stage_deps.derived_deps(ROOT, name)) for name in stages()}
    assert {"src/pipeline/sources", "src/pipeline/prepared"} <= derived["prepare"]
    assert "src/pipeline/tools" in derived["check_params"]
    assert {"src/pipeline/train", "src/pipeline/models"} <= derived["train"]
    assert "src/pipeline/bench" in derived["benchmark"]
    for name in ("check_params", "prepare", "evaluate", "export"):
        assert not {"src/pipeline/bench", "src/pipeline/train"} & derived[name], name
    assert "src/pipeline/bench" not in derived["train"]
    # Prepare-only loaders apart from the prepared-data contract: a loader edit re-runs prepare.
    assert [name for name in derived if "src/pipeline/sources" in derived[name]] == ["prepare"]


def test_outputs_match_paths_module():
    all_outputs = set().union(*(declared_outputs(s) for s in stages().values()))
    written = {
        paths.PARAMS_CHECK,
        paths.PREPARED_DIR,
        paths.CHECKPOINT_DIR,
        paths.MODEL_WEIGHTS,
        paths.MODEL_CARD,
        paths.ONNX_DIR,
        paths.DATA_METRICS,
        paths.TRAIN_METRICS,
        paths.TRAIN_LIVE_DIR,
        paths.EVAL_METRICS,
        paths.CONFUSION_PLOT,
        paths.EXPORT_METRICS,
        paths.BENCHMARK_METRICS,
        paths.BENCHMARK_TABLE,
        paths.BENCHMARK_REPORT,
        paths.BENCHMARK_CHART,
        paths.DATA_DETAILS,
        paths.TRAIN_DETAILS,
        paths.EVAL_DETAILS,
        paths.EXPORT_DETAILS,
        paths.BENCHMARK_DETAILS,
    }
    assert {str(p) for p in written} <= all_outputs


def test_metrics_and_plots_live_in_git():
    for stage in stages().values():
        for kind in ("metrics", "plots"):
            for entry in stage.get(kind, []):
                assert isinstance(entry, dict) and next(iter(entry.values()))["cache"] is False


def test_details_are_plain_outputs_in_git_beside_their_metrics():
    """The whole records are committed but are not metrics: `dvc exp show` gets no column."""
    details = {
        str(p)
        for p in (
            paths.DATA_DETAILS,
            paths.TRAIN_DETAILS,
            paths.EVAL_DETAILS,
            paths.EXPORT_DETAILS,
            paths.BENCHMARK_DETAILS,
        )
    }
    for stage in stages().values():
        metrics = {next(iter(entry)) for entry in stage.get("metrics", [])}
        assert not metrics & details
        for entry in stage.get("outs", []):
            if isinstance(entry, dict) and next(iter(entry)) in details:
                assert next(iter(entry.values()))["cache"] is False
                name = Path(next(iter(entry))).name
                assert f"metrics/{name}" in metrics  # beside the figures of the same stage


def test_no_stage_is_always_changed():
    assert not any(stage.get("always_changed") for stage in stages().values())


def test_params_are_checked_before_any_stage_can_lose_outputs():
    all_stages = stages()
    assert "params.yaml" in all_stages["check_params"]["deps"]
    assert str(paths.PARAMS_CHECK) in all_stages["prepare"]["deps"]


# ---- params each stage reads, derived from the code ------------------------------------------


def module_file(name: str) -> Path | None:
    base = ROOT / "src" / Path(*name.split("."))
    for candidate in (base / "__init__.py", base.with_suffix(".py")):
        if candidate.is_file():
            return candidate
    return None


def pipeline_imports(tree: ast.AST) -> set[str]:
    """Every pipeline module a file imports (at the top or inside functions), with parents."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
    modules = set()
    for name in names:
        parts = name.split(".")
        if parts[0] == "pipeline":
            modules |= {".".join(parts[:k]) for k in range(1, len(parts) + 1)}
    return {name for name in modules if module_file(name)}


def reachable_trees(script: Path) -> list[ast.AST]:
    todo, seen, trees = [script], set(), []
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        tree = ast.parse(path.read_text())
        trees.append(tree)
        todo.extend(module_file(name) for name in pipeline_imports(tree))
    return trees


def params_read(script: Path) -> set[str]:
    """``params.<section>`` (or ``params.<section>.<key>``) wherever the code reaching from the
    stage script uses them. ``params.model_dump()`` (handing all params to DDP workers, the
    export's trace hash) is not counted: it feeds no result of the stage's math."""
    found = set()
    for tree in reachable_trees(script):
        parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id == "params"
                and node.attr in SECTIONS
            ):
                parent = parents.get(node)
                key = parent.attr if isinstance(parent, ast.Attribute) else None
                found.add(f"{node.attr}.{key}" if key else node.attr)
    return found


def covers(listed: str, read: str) -> bool:
    return read == listed or read.startswith(f"{listed}.") or listed.startswith(f"{read}.")


def test_every_stage_lists_exactly_the_params_its_code_reads():
    for name, stage in stages().items():
        if name == "check_params":  # reads params.yaml as a whole file dependency
            continue
        listed = set(stage.get("params", []))
        read = params_read(ROOT / "stages" / f"{name}.py")
        missing = {r for r in read if not any(covers(entry, r) for entry in listed)}
        unread = {entry for entry in listed if not any(covers(entry, r) for r in read)}
        assert not missing, f"stage {name} reads {sorted(missing)}; list them in dvc.yaml"
        assert not unread, f"stage {name} lists {sorted(unread)} but never reads them"


def test_the_params_scan_finds_what_the_train_stage_reads():
    # Guards the scan itself: these reads are known (energy: the train stage's energy meter).
    sections = {read.split(".")[0] for read in params_read(ROOT / "stages/train.py")}
    assert {"seed", "model", "train", "energy"} <= sections
    assert "evaluate.batch_size" in params_read(ROOT / "stages/export.py")
