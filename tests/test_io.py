import json
import os
from pathlib import Path

import numpy as np
import pytest

from pipeline.core.io import atomic_open, load_arrays, read_json, save_arrays, write_json


def test_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "out.json"
    write_json(target, {"version": 1})
    with pytest.raises(RuntimeError):
        with atomic_open(target, "w") as handle:
            handle.write('{"version": 2')
            raise RuntimeError("killed mid-write")
    assert read_json(target) == {"version": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_json_has_no_nan(tmp_path):
    write_json(tmp_path / "m.json", {"loss": float("nan"), "vals": [float("inf"), 1.0]})
    assert json.loads((tmp_path / "m.json").read_text()) == {"loss": None, "vals": [None, 1.0]}


def test_arrays_round_trip_without_pickle(tmp_path):
    images = np.arange(2 * 3 * 4 * 4, dtype=np.uint8).reshape(2, 3, 4, 4)
    save_arrays(tmp_path / "a.safetensors", {"images": images})
    assert (tmp_path / "a.safetensors").read_bytes()[:1] != b"\x80"  # not a pickle stream
    np.testing.assert_array_equal(load_arrays(tmp_path / "a.safetensors")["images"], images)


def test_atomic_files_get_ordinary_permissions(tmp_path):
    import os

    write_json(tmp_path / "m.json", {"a": 1})
    mask = os.umask(0)
    os.umask(mask)
    assert (tmp_path / "m.json").stat().st_mode & 0o777 == 0o666 & ~mask


def test_staged_folder_replaces_whole_or_leaves_the_old_one(tmp_path, monkeypatch):
    from pipeline.core import io as pipeline_io

    target = tmp_path / "out"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with pipeline_io.staged_folder(target) as staging:
        (staging / "new.txt").write_text("new")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert [p.name for p in target.iterdir()] == ["new.txt"]
    with pytest.raises(RuntimeError), pipeline_io.staged_folder(target) as staging:
        (staging / "half.txt").write_text("half")
        raise RuntimeError("killed while writing")
    real_replace, calls = os.replace, []

    def second_replace_fails(src, dst):
        calls.append(dst)
        if len(calls) == 2:  # the old folder moved away, the new one cannot move in
            raise OSError("disk full")
        return real_replace(src, dst)

    monkeypatch.setattr(pipeline_io.os, "replace", second_replace_fails)
    with pytest.raises(OSError, match="disk full"), pipeline_io.staged_folder(target) as staging:
        (staging / "other.txt").write_text("other")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no staging, no retired folder
    assert [p.name for p in target.iterdir()] == ["new.txt"]


def test_a_killed_runs_staging_folders_go_at_the_next_run_and_git_ignores_them(tmp_path):
    import subprocess
    import sys

    from pipeline.core.io import staged_folder

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    killed = [f".prepared.{dead}.k1ll3d.tmp", f".prepared.{dead}.r3t.old", ".prepared.n0p1d.tmp"]
    alive = [f".prepared.{os.getpid()}.runs.tmp", ".other.12.x.tmp"]
    for name in killed + alive:
        (tmp_path / name).mkdir()
        (tmp_path / name / "train-00000.safetensors").write_bytes(b"half")
    with staged_folder(tmp_path / "prepared") as staging:
        (staging / "meta.json").write_text("{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["prepared", *alive])
    root = Path(__file__).resolve().parents[1]
    for name in [f"data/{name}" for name in killed] + ["models/.onnx.1.ab.tmp"]:
        check = ["git", "check-ignore", "-q", "--no-index", name]
        assert subprocess.run(check, cwd=root).returncode == 0, f"git does not ignore {name}"
