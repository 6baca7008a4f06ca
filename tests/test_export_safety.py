"""A hostile ONNX file is refused by check_onnx_file before onnxruntime ever builds a session."""

from __future__ import annotations

import os
import traceback

import numpy as np
import onnx
import onnxruntime
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx.external_data_helper import set_external_data

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
    frames = traceback.extract_tb(caught.value.__traceback__)
    # Raised inside the check itself (it or its helpers in safety.py), before any session.
    assert "check_onnx_file" in [frame.name for frame in frames]
    assert frames[-1].filename.endswith("safety.py")
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


# --- offsets, lengths and locations of external data (each value as a hostile file writes it) ---


def rewrite_external_data(path, **entries) -> None:
    """Set (or, with None, drop) keys of the weight's external_data, keeping the others' order."""
    model = onnx.load(str(path), load_external_data=False)
    tensor = model.graph.initializer[0]
    kept = {entry.key: entry.value for entry in tensor.external_data}
    kept.update(entries)
    del tensor.external_data[:]
    for key, value in kept.items():
        if value is not None:
            tensor.external_data.add(key=key, value=str(value))
    onnx.save_model(model, str(path))


WEIGHT_BYTES = 64 * 64 * 4  # the float32 64x64 weight of tiny_model


@pytest.mark.parametrize(
    ("entries", "match"),
    [
        ({"length": 10**15}, "runs past the end of the file"),
        ({"offset": -5}, "offset '-5' is not a byte count"),
        ({"offset": "abc"}, "offset 'abc' is not a byte count"),
        ({"offset": "+0"}, "offset '\\+0' is not a byte count"),
        ({"offset": " 0"}, "offset ' 0' is not a byte count"),
        ({"offset": "\u0660"}, "offset '\u0660' is not a byte count"),  # ARABIC-INDIC ZERO
        ({"length": "1e3"}, "length '1e3' is not a byte count"),
        ({"length": "9" * 5000}, "length '9{60}'\\.\\.\\. is not a byte count"),
        ({"offset": 4, "length": WEIGHT_BYTES}, "offset 4 \\+ 16384 bytes runs past the end"),
        ({"offset": WEIGHT_BYTES + 1, "length": 0}, "runs past the end of the file"),
        ({"length": 16}, "length 16 but its dtype and dims '\\[64, 64\\]' need 16384"),
        ({"offset": 4, "length": None}, "offset 4 \\+ 16384 bytes runs past the end"),
    ],
)
def test_a_bad_offset_or_length_is_refused(tmp_path, sessions_built, entries, match):
    path = save_with_external_data(tmp_path)
    rewrite_external_data(path, **entries)
    assert_refused_by_check(path, sessions_built, match)


def test_a_repeated_external_data_key_is_refused(tmp_path, sessions_built):
    path = save_with_external_data(tmp_path)
    model = onnx.load(str(path), load_external_data=False)
    model.graph.initializer[0].external_data.add(key="offset", value="8")
    onnx.save_model(model, str(path))
    assert_refused_by_check(path, sessions_built, "repeats external data key 'offset'")


def test_external_data_in_the_model_file_itself_is_refused(tmp_path, sessions_built):
    """The reviewer's case: the model's own protobuf bytes read as its weights."""
    path = save_with_external_data(tmp_path, "model.onnx")
    model = onnx.load(str(path), load_external_data=False)
    model.doc_string = "x" * WEIGHT_BYTES  # big enough that onnxruntime would read it silently
    onnx.save_model(model, str(path))
    assert_refused_by_check(path, sessions_built, "'model.onnx' is an ONNX model file")
    # Under another name through a hard link, and in a sibling model (model.int8.onnx).
    os.link(path, tmp_path / "weights.data")
    rewrite_external_data(path, location="weights.data")
    assert_refused_by_check(path, sessions_built, "'weights.data' is an ONNX model file")
    onnx.save_model(tiny_model(), str(tmp_path / "model.int8.ONNX"))
    rewrite_external_data(path, location="model.int8.ONNX")
    assert_refused_by_check(path, sessions_built, "'model.int8.ONNX' is an ONNX model file")


def test_external_data_that_is_not_a_regular_file_is_refused(tmp_path, sessions_built):
    path = save_with_external_data(tmp_path)
    for location in ("", ".", "missing.bin"):
        rewrite_external_data(path, location=location)
        assert_refused_by_check(path, sessions_built, "is not a regular file")
    (tmp_path / "folder.bin").mkdir()
    rewrite_external_data(path, location="folder.bin")
    assert_refused_by_check(path, sessions_built, "'folder.bin' is not a regular file")
    for location in ("weights.bin\0", "w" * 300):
        rewrite_external_data(path, location=location)
        assert_refused_by_check(path, sessions_built, "cannot be opened: (embedded null|File name)")


def mixed_model() -> onnx.ModelProto:
    """y = (x @ w + b)[:, order]: float32 and int64 weights, so the file holds two dtypes."""
    rng = np.random.default_rng(1)
    weights = [
        numpy_helper.from_array(rng.standard_normal((64, 64), dtype=np.float32), "w"),
        numpy_helper.from_array(rng.standard_normal(64, dtype=np.float32), "b"),
        numpy_helper.from_array(rng.permutation(64).astype(np.int64), "order"),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["xw"]),
        helper.make_node("Add", ["xw", "b"], ["sum"]),
        helper.make_node("Gather", ["sum", "order"], ["y"], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "mixed",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 64])],
        weights,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)


def test_legitimate_external_data_at_offsets_still_runs(tmp_path, sessions_built):
    """Three tensors of two dtypes in one file, the last one without a length key."""
    model = mixed_model()
    w, b, order = (numpy_helper.to_array(tensor) for tensor in model.graph.initializer)
    path = tmp_path / "model.onnx"
    onnx.save_model(
        model, str(path), save_as_external_data=True, location="model.onnx.data", size_threshold=0
    )
    saved = onnx.load(str(path), load_external_data=False)
    entries = [{e.key: e.value for e in t.external_data} for t in saved.graph.initializer]
    assert len({tensor["offset"] for tensor in entries}) == 3  # three places in one file
    # No "length" on the last one: readers take what its dtype and dims need.
    assert saved.graph.initializer[2].external_data[2].key == "length"
    del saved.graph.initializer[2].external_data[2]
    onnx.save_model(saved, str(path))
    check_onnx_file(path)
    x = np.random.default_rng(2).standard_normal((3, 64), dtype=np.float32)
    got = make_session(path).run(None, {"x": x})[0]
    np.testing.assert_allclose(got, (x @ w + b)[:, order], rtol=1e-5, atol=1e-5)
    assert sessions_built == [str(path)]


def externalise(folder, tensor: onnx.TensorProto, location: str) -> None:
    """Move the tensor's raw bytes to ``folder/weights.bin`` and point it at ``location``."""
    (folder / "weights.bin").write_bytes(tensor.raw_data)
    length = len(tensor.raw_data)
    set_external_data(tensor, location, offset=0, length=length)
    tensor.ClearField("raw_data")


X = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 64])]
Y = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 64])]
OPSETS = [helper.make_opsetid("", 18)]


def eye_weight(name: str = "w") -> onnx.TensorProto:
    return numpy_helper.from_array(np.eye(64, dtype=np.float32), name)


def sparse_eye(name: str = "w") -> onnx.SparseTensorProto:
    indices = numpy_helper.from_array(np.arange(0, 64 * 64, 65, dtype=np.int64), name + "_idx")
    return helper.make_sparse_tensor(
        numpy_helper.from_array(np.ones(64, np.float32), name), indices, [64, 64]
    )


def weight_in_if_branch():
    branch = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])], "b", [], Y, [eye_weight()]
    )
    flag = numpy_helper.from_array(np.array(True), "flag")
    node = helper.make_node("If", ["flag"], ["y"], then_branch=branch, else_branch=branch)
    model = helper.make_model(helper.make_graph([node], "g", X, Y, [flag]), opset_imports=OPSETS)
    return model, model.graph.node[0].attribute[0].g.initializer[0]


def weight_in_sparse_initializer():
    # onnx's shape inference types a sparse initializer as sparse, which no standard op takes:
    # it sits unused beside the graph (onnxruntime still turns it dense when it loads the file).
    matmul = helper.make_node("MatMul", ["x", "dense"], ["y"])
    graph = helper.make_graph(
        [matmul], "g", X, Y, [eye_weight("dense")], sparse_initializer=[sparse_eye()]
    )
    model = helper.make_model(graph, opset_imports=OPSETS)
    return model, model.graph.sparse_initializer[0].values


def weight_in_sparse_constant():
    constant = helper.make_node("Constant", [], ["w"], sparse_value=sparse_eye())
    nodes = [constant, helper.make_node("MatMul", ["x", "w"], ["y"])]
    model = helper.make_model(helper.make_graph(nodes, "g", X, Y), opset_imports=OPSETS)
    return model, model.graph.node[0].attribute[0].sparse_tensor.values


def weight_in_function_constant():
    constant = helper.make_node("Constant", [], ["w"], value=eye_weight())
    matmul = helper.make_node("MatMul", ["x", "w"], ["y"])
    function = helper.make_function("local", "Eye", ["x"], ["y"], [constant, matmul], OPSETS)
    graph = helper.make_graph([helper.make_node("Eye", ["x"], ["y"], domain="local")], "g", X, Y)
    opsets = [*OPSETS, helper.make_opsetid("local", 1)]
    model = helper.make_model(graph, opset_imports=opsets, functions=[function])
    return model, model.functions[0].node[0].attribute[0].t


@pytest.mark.parametrize(
    "build",
    [
        weight_in_if_branch,
        weight_in_sparse_initializer,
        weight_in_sparse_constant,
        weight_in_function_constant,
    ],
)
def test_external_data_is_checked_wherever_a_tensor_can_hold_it(tmp_path, sessions_built, build):
    model, weight = build()
    model.ir_version = 10
    externalise(tmp_path, weight, "weights.bin")
    path = tmp_path / "model.onnx"
    onnx.save_model(model, str(path))
    check_onnx_file(path)  # the legitimate file passes and runs...
    x = np.random.default_rng(3).standard_normal((2, 64), dtype=np.float32)
    np.testing.assert_allclose(make_session(path).run(None, {"x": x})[0], x)
    sessions_built.clear()
    for entry in weight.external_data:
        entry.value = "model.onnx" if entry.key == "location" else entry.value
    onnx.save_model(model, str(path))
    # ...the same tensor reading the model's own bytes does not.
    assert_refused_by_check(path, sessions_built, "'model.onnx' is an ONNX model file")


def test_lengths_follow_the_dtype_packed_types_and_odd_tensors_included(tmp_path, sessions_built):
    """Three int4 values pack into 2 bytes (onnx.helper's rule); strings and negative dims have
    no byte size at all."""
    model = tiny_model()
    model.graph.initializer.append(
        helper.make_tensor("q", TensorProto.INT4, [3], b"!\x03", raw=True)
    )
    packed = model.graph.initializer[-1]  # append copies: edit the model's own tensor
    externalise(tmp_path, packed, "weights.bin")
    path = tmp_path / "model.onnx"
    onnx.save_model(model, str(path))
    check_onnx_file(path)
    (tmp_path / "weights.bin").write_bytes(b"\0" * 3)
    for length, match in ((3, "length 3 but .* need 2"), ("2", None)):
        packed.external_data[2].value = str(length)
        onnx.save_model(model, str(path))
        if match is None:
            check_onnx_file(path)
        else:
            assert_refused_by_check(path, sessions_built, match)
    for data_type, dims, match in (
        (TensorProto.STRING, [3], "data type 8 cannot be stored as external data"),
        (TensorProto.UNDEFINED, [3], "data type 0 cannot be stored as external data"),
        (TensorProto.INT4, [-3], "negative dimension in '\\[-3\\]'"),
    ):
        packed.data_type = data_type
        packed.ClearField("dims")
        packed.dims.extend(dims)
        onnx.save_model(model, str(path))
        assert_refused_by_check(path, sessions_built, match)
