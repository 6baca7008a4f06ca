"""A hostile ONNX file is refused by check_onnx_file before onnxruntime ever builds a session."""

from __future__ import annotations

import os
import traceback

import numpy as np
import onnx
import onnxruntime
import pytest
from onnx import TensorProto, helper, numpy_helper

from pipeline.export.safety import UnsafeModelError, check_onnx_file
from pipeline.export.session import make_session


def tiny_model() -> onnx.ModelProto:
    """y = x @ w with a 64x64 weight, big enough to be stored as external data."""
    weight = numpy_helper.from_array(np.eye(64, dtype=np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 64])],
        [weight],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)


def save_with_external_data(folder, location: str = "weights.bin"):
    """Save the model with its weight in ``folder/weights.bin``, then point it at ``location``."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "model.onnx"
    onnx.save_model(
        tiny_model(),
        str(path),
        save_as_external_data=True,
        location="weights.bin",
        size_threshold=0,
    )
    model = onnx.load(str(path), load_external_data=False)
    for entry in model.graph.initializer[0].external_data:
        if entry.key == "location":
            entry.value = location
    onnx.save_model(model, str(path))
    return path


@pytest.fixture
def sessions_built(monkeypatch):
    """Count real InferenceSession constructions; the spy still builds the real thing."""
    built = []
    real = onnxruntime.InferenceSession

    class Spy(real):
        def __init__(self, *args, **kwargs):
            built.append(args[0] if args else kwargs.get("path_or_bytes"))
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(onnxruntime, "InferenceSession", Spy)
    return built


def assert_refused_by_check(path, built, match: str) -> None:
    with pytest.raises(UnsafeModelError, match=match) as caught:
        make_session(path)
    frames = [frame.name for frame in traceback.extract_tb(caught.value.__traceback__)]
    assert frames[-1] == "check_onnx_file"  # raised by the check itself, before any session
    assert built == []


def test_a_benign_model_with_external_data_in_its_folder_runs(tmp_path, sessions_built):
    path = save_with_external_data(tmp_path / "ok")
    check_onnx_file(path)
    session = make_session(path)
    x = np.random.default_rng(0).standard_normal((2, 64), dtype=np.float32)
    np.testing.assert_allclose(session.run(None, {"x": x})[0], x)
    assert sessions_built == [str(path)]  # the spy sees real constructions


def test_external_data_outside_the_folder_is_refused(tmp_path, sessions_built):
    (tmp_path / "secret.bin").write_bytes(b"\0" * 64 * 64 * 4)
    path = save_with_external_data(tmp_path / "model", "../secret.bin")
    assert_refused_by_check(path, sessions_built, "points outside")


def test_external_data_at_an_absolute_path_is_refused(tmp_path, sessions_built):
    target = tmp_path / "abs.bin"
    target.write_bytes(b"\0" * 64 * 64 * 4)
    path = save_with_external_data(tmp_path / "model", str(target))
    assert_refused_by_check(path, sessions_built, "points outside")


def test_external_data_through_a_symlink_is_refused(tmp_path, sessions_built):
    path = save_with_external_data(tmp_path / "model")
    outside = tmp_path / "elsewhere.bin"
    os.replace(path.parent / "weights.bin", outside)
    # A link inside the folder that leads out of it...
    (path.parent / "weights.bin").symlink_to(outside)
    assert_refused_by_check(path, sessions_built, "points outside")
    # ...and one that stays inside: still a link, still refused.
    inside = path.parent / "real.bin"
    os.replace(outside, inside)
    (path.parent / "weights.bin").unlink()
    (path.parent / "weights.bin").symlink_to(inside)
    assert_refused_by_check(path, sessions_built, "symbolic link")


def test_external_data_through_a_symlinked_folder_is_refused(tmp_path, sessions_built):
    path = save_with_external_data(tmp_path / "model", "sub/weights.bin")
    (tmp_path / "outside").mkdir()
    os.replace(path.parent / "weights.bin", tmp_path / "outside" / "weights.bin")
    (path.parent / "sub").symlink_to(tmp_path / "outside", target_is_directory=True)
    assert_refused_by_check(path, sessions_built, "points outside")


def test_a_model_file_that_is_a_symlink_is_refused(tmp_path, sessions_built):
    real = tmp_path / "real.onnx"
    onnx.save_model(tiny_model(), str(real))
    link = tmp_path / "model.onnx"
    link.symlink_to(real)
    assert_refused_by_check(link, sessions_built, "symbolic link")


def test_a_missing_or_invalid_model_is_refused(tmp_path, sessions_built):
    assert_refused_by_check(tmp_path / "none.onnx", sessions_built, "no such ONNX file")
    broken = tiny_model()
    broken.graph.node[0].input[1] = "missing"
    onnx.save_model(broken, str(tmp_path / "broken.onnx"))
    assert_refused_by_check(tmp_path / "broken.onnx", sessions_built, "ONNX check failed")


def not_onnx_files(folder):
    """A zip archive and a pickle, under the names the export stage writes."""
    import io
    import pickle
    import zipfile

    folder.mkdir(parents=True, exist_ok=True)
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as handle:
        handle.writestr("model.onnx", "not a model")
    (folder / "model.onnx").write_bytes(archive.getvalue())
    (folder / "model.int8.onnx").write_bytes(pickle.dumps({"weights": [1.0, 2.0]}))
    return [folder / "model.onnx", folder / "model.int8.onnx"]


def test_a_file_that_is_not_onnx_is_refused_like_a_failed_check(tmp_path, sessions_built):
    for path in not_onnx_files(tmp_path):
        assert_refused_by_check(path, sessions_built, "not an ONNX model")


def test_the_benchmark_fails_on_a_file_that_is_not_onnx(tmp_path):
    """Not a `failed` row in a green stage: the same error as a model failing onnx.checker."""
    from pipeline.bench.backends import OrtBackend, OrtSetup
    from pipeline.bench.run import benchmark_backend
    from pipeline.core.config import BenchmarkParams
    from pipeline.prepared.types import LabelledImages

    params = BenchmarkParams(device="cpu", batch_sizes=[1], min_iterations=1, min_seconds=0.0)
    images = np.zeros((4, 1, 8, 8), np.uint8)
    setup = OrtSetup(threads=1, mean=(0.5,), std=(0.25,), image_shape=(1, 8, 8), max_batch=4)
    for path in not_onnx_files(tmp_path):
        plan = OrtBackend.plan(path, "int8", "cpu", setup)
        with pytest.raises(UnsafeModelError, match="not an ONNX model"):
            benchmark_backend(
                plan, params, "cpu", images, LabelledImages(images, np.zeros(4, np.int64))
            )
