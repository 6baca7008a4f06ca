"""dvc.yaml must declare exactly the paths the code writes (src/pipeline/paths.py)."""

import yaml

from conftest import ROOT
from pipeline import paths


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
        assert "src/pipeline" in stage["deps"] or name == "check_params"


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
    }
    assert {str(p) for p in written} <= all_outputs


def test_metrics_and_plots_live_in_git():
    for stage in stages().values():
        for kind in ("metrics", "plots"):
            for entry in stage.get(kind, []):
                assert isinstance(entry, dict) and next(iter(entry.values()))["cache"] is False


def test_no_stage_is_always_changed():
    assert not any(stage.get("always_changed") for stage in stages().values())


def test_params_are_checked_before_any_stage_can_lose_outputs():
    all_stages = stages()
    assert "params.yaml" in all_stages["check_params"]["deps"]
    assert str(paths.PARAMS_CHECK) in all_stages["prepare"]["deps"]
