"""OpenVINO as a benchmark backend: each row's precision is the one the compiled model reports
(both branches of the CPU default, on any CPU), uint8 input, and rows that say why OpenVINO
could not run a file."""

from __future__ import annotations

import sys
from types import SimpleNamespace

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from pipeline.bench import openvino as ov_backend
from pipeline.bench.backends import Backend, OrtSetup, TorchBackend
from pipeline.bench.openvino import MISSING, OpenVinoBackend, compiled_precision
from pipeline.bench.report import headline, rows_to_markdown
from pipeline.bench.rows import BenchRow
from pipeline.bench.run import backend_plans, benchmark_backend
from pipeline.core.config import BenchmarkParams, ParamsError, parse_params
from pipeline.export.session import make_session, session_logits
from pipeline.prepared.types import LabelledImages

openvino = pytest.importorskip("openvino")
FAST = {"batch_sizes": [1, 8], "warmup": 1, "min_iterations": 3, "min_seconds": 0.0}
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def exported(tiny_exported):
    return tiny_exported  # conftest.py: trained and exported once per session


def setup_of(card) -> OrtSetup:
    return OrtSetup(threads=1, mean=card.normalisation.mean, std=card.normalisation.std)


def build(path, variant: str, setting: str, card) -> OpenVinoBackend:
    return OpenVinoBackend(path, variant, setting, setup_of(card))


def rows_of(path, variant: str, setting: str, card, images, labels) -> list[BenchRow]:
    plan = OpenVinoBackend.plan(path, variant, setting, setup_of(card))
    params = BenchmarkParams(device="cpu", **FAST)
    return [
        item.row
        for item in benchmark_backend(plan, params, CPU, images, LabelledImages(images, labels))
    ]


def hint_of(backend: OpenVinoBackend) -> str:
    return backend.compiled.get_property("INFERENCE_PRECISION_HINT").to_string()


def test_the_f32_hint_row_names_the_precision_the_compiled_model_reports(exported):
    model, card, variants, (images, labels) = exported
    rows = rows_of(variants["fp32"], "fp32", "f32", card, images, labels)
    assert [(r.backend, r.status, r.precision) for r in rows] == [
        ("openvino_f32", "ok", "fp32")
    ] * 2
    assert hint_of(build(variants["fp32"], "fp32", "f32", card)) == "f32"
    assert all(r.providers_used == "openvino:CPU" and r.provider_requested == "cpu" for r in rows)
    eager = TorchBackend(model, CPU).logits(images, 256).argmax(1)
    # The same arithmetic as PyTorch fp32: at most one test image may flip.
    assert abs(rows[0].top1_accuracy - (eager == labels).mean()) <= 1 / len(labels) + 1e-9


def test_the_default_row_reports_what_this_cpu_compiled(exported):
    """Whatever this CPU is (f32 on AVX2, bf16 with bf16 units): the row says what OpenVINO
    compiled, never a guess from the CPU."""
    _, card, variants, _ = exported
    backend = build(variants["fp32"], "fp32", "default", card)
    names = {"f32": "fp32", "bf16": "bf16", "f16": "fp16"}
    assert backend.facts.precision == names[hint_of(backend)]
    assert f"INFERENCE_PRECISION_HINT {hint_of(backend)}" in backend.facts.note


class Compiled:
    """A real compiled model that reports ``hint`` as its inference precision."""

    def __init__(self, compiled, hint):
        self._compiled, self._hint = compiled, hint

    def get_property(self, name):
        if name == "INFERENCE_PRECISION_HINT":
            return self._hint
        return self._compiled.get_property(name)

    def __getattr__(self, name):
        return getattr(self._compiled, name)


def bf16_cpu(monkeypatch):
    """OpenVINO as it behaves on a CPU with bf16 units: its default compiles to bf16, and the
    f32 hint to f32 (the compiled models are this machine's, their reported precision is not)."""

    class Core(openvino.Core):
        def get_property(self, device, name):
            if name == "INFERENCE_PRECISION_HINT":
                return openvino.Type.bf16
            return super().get_property(device, name)

        def compile_model(self, model, device, config):
            compiled = super().compile_model(model, device, config)
            return Compiled(compiled, config.get("INFERENCE_PRECISION_HINT", openvino.Type.bf16))

    fake = SimpleNamespace(Core=Core, Type=openvino.Type, get_version=openvino.get_version)
    monkeypatch.setattr(ov_backend, "load_openvino", lambda: fake)


def openvino_plans(model, card, variants):
    params = BenchmarkParams(device="cpu", providers=["cpu"], **FAST)
    plans, _ = backend_plans(params, model, card, variants, 1)
    return [plan for plan in plans if plan.name.startswith("openvino")], params


def test_on_a_bf16_cpu_the_default_row_is_bf16_beside_an_f32_row(exported, monkeypatch):
    model, card, variants, (images, labels) = exported
    bf16_cpu(monkeypatch)
    plans, params = openvino_plans(model, card, {"fp32": variants["fp32"]})
    assert [(p.name, p.variant, p.provider, p.memory_kind) for p in plans] == [
        ("openvino_default", "fp32", "cpu", "host"), ("openvino_f32", "fp32", "cpu", "host")
    ]  # fmt: skip
    rows = {
        p.name: benchmark_backend(p, params, CPU, images, LabelledImages(images, labels))[0].row
        for p in plans
    }
    assert rows["openvino_default"].precision == "bf16"
    assert rows["openvino_f32"].precision == "fp32"
    assert all(row.status == "ok" for row in rows.values())
    assert "also the f32 row" not in rows["openvino_default"].note


def test_where_the_default_is_f32_one_row_stands_for_both(monkeypatch):
    monkeypatch.setattr(ov_backend, "device_default_precision", lambda: "f32")
    assert OpenVinoBackend.settings() == ["default"]
    monkeypatch.setattr(ov_backend, "device_default_precision", lambda: "bf16")
    assert OpenVinoBackend.settings() == ["default", "f32"]


def test_the_int8_file_is_an_int8_row_read_from_its_compiled_layers(exported):
    _, card, variants, _ = exported
    backend = build(variants["int8"], "int8", "f32", card)
    assert backend.facts.precision == "int8"
    assert "Convolution u8" in backend.facts.note or "Convolution i8" in backend.facts.note
    fake = Compiled(backend.compiled, openvino.Type.bf16)  # int8 layers still decide
    assert compiled_precision(fake)[0] == "int8"


def test_uint8_input_gives_onnxruntimes_logits(exported):
    _, card, variants, (images, _) = exported
    backend = build(variants["fp32"], "fp32", "f32", card)
    assert backend.takes_uint8 and images.dtype == np.uint8
    ours = backend.logits(images, 256)
    theirs = session_logits(make_session(variants["fp32"]), images, 256)
    assert ours.dtype == np.float32 and ours.shape == theirs.shape
    np.testing.assert_allclose(ours, theirs, atol=1e-3)


def not_compilable(folder):
    """A valid ONNX file (it passes onnx's full check) with an op no runtime knows."""
    images = helper.make_tensor_value_info("images", TensorProto.UINT8, ["batch", 1, 8, 8])
    logits = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])
    node = helper.make_node("NoSuchOp", ["images"], ["logits"], domain="com.example")
    graph = helper.make_graph([node], "g", [images], [logits])
    opsets = [helper.make_opsetid("", 18), helper.make_opsetid("com.example", 1)]
    path = folder / "model.onnx"
    onnx.save(helper.make_model(graph, opset_imports=opsets), path)
    return path


def test_a_file_openvino_cannot_compile_gives_rows_with_the_reason(exported, tmp_path):
    _, card, _, (images, labels) = exported
    rows = rows_of(not_compilable(tmp_path), "fp32", "default", card, images, labels)
    assert [r.status for r in rows] == ["failed", "failed"]
    assert rows[0].reason == (
        "OpenVinoCompileError: OpenVINO cannot compile model.onnx: Model wasn't fully converted; "
        "No conversion rule found for operations: com.example.NoSuchOp"
    )
    assert rows[0].images_per_s is None


def test_without_openvino_the_rows_say_so(exported, monkeypatch):
    model, card, variants, (images, labels) = exported
    monkeypatch.setitem(sys.modules, "openvino", None)  # `import openvino` raises ImportError
    assert OpenVinoBackend.settings() == ["default"]
    assert ov_backend.openvino_version() == "not installed"
    plans, params = openvino_plans(model, card, variants)
    assert [(p.name, p.variant) for p in plans] == [
        ("openvino_default", "fp32"), ("openvino_default", "int8")
    ]  # fmt: skip
    rows = [
        item.row
        for item in benchmark_backend(plans[0], params, CPU, images, LabelledImages(images, labels))
    ]
    assert [(r.status, r.reason) for r in rows] == [("failed", f"ImportError: {MISSING}")] * 2


def test_an_openvino_row_can_be_the_headline_and_names_its_precision():
    def row(backend, precision, images_per_s):
        return BenchRow(
            backend=backend, variant="fp32", precision=precision, batch_size=1, status="ok",
            noisy=False, latency_spread=0.01, repeats=3, images_per_s=images_per_s,
            top1_accuracy=0.9, speedup_vs_eager=images_per_s / 100.0, speedup_spread=0.02,
        )  # fmt: skip  # speed-ups as derive pairs them round by round

    rows = [row("pytorch_eager", "fp32", 100.0), row("openvino_default", "bf16", 300.0)]
    best = headline(rows, 0.005)["batch_1"]
    figures = best.as_dict()
    assert (figures["best_backend"], figures["best_precision"]) == ("openvino_default", "bf16")
    assert best.speedup == 3.0
    table = rows_to_markdown(rows, {}, headline(rows, 0.005))
    assert "| 1 | openvino_default fp32 | bf16 | 300.0 |" in table


def test_the_backend_has_every_member_a_row_needs(exported):
    _, card, variants, _ = exported
    backend = build(variants["fp32"], "fp32", "f32", card)
    members = [*Backend.__annotations__, "bind", "sync", "logits"]
    assert [name for name in members if not hasattr(backend, name)] == []
    facts = backend.facts
    assert (facts.peak_key, facts.on_gpu, facts.status) == ("cpu", False, "ok")


def test_runtimes_are_validated_by_name():
    assert BenchmarkParams().runtimes == ["openvino"]
    assert parse_params({"benchmark": {"runtimes": []}}).benchmark.runtimes == []
    with pytest.raises(ParamsError, match="'benchmark.runtimes.0': 'tensorflow'"):
        parse_params({"benchmark": {"runtimes": ["tensorflow"]}})
    with pytest.raises(ParamsError, match="lists a runtime twice"):
        parse_params({"benchmark": {"runtimes": ["openvino", "openvino"]}})
    setup = OrtSetup(threads=1, mean=(0.5,), std=(0.2,))
    with pytest.raises(ValueError, match="precision setting 'f16'"):
        OpenVinoBackend("unused.onnx", "fp32", "f16", setup)
