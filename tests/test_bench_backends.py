"""The benchmark matrix with real onnxruntime sessions on the CPU: ok, fallback and failed rows."""

from __future__ import annotations

import pytest
import torch
from test_export_variants import tiny_trained_model

from pipeline.bench.backends import Backend, OrtBackend, TorchBackend
from pipeline.bench.openvino import OpenVinoBackend
from pipeline.bench.report import ROW_FIELDS, headline
from pipeline.bench.run import Spec, backend_specs, benchmark_backend, run_benchmark
from pipeline.config import BenchmarkParams, EnergyParams, parse_params
from pipeline.export.run import export_all
from pipeline.export.variants import variant_path

no_gpu = pytest.mark.skipif(torch.cuda.is_available(), reason="with a GPU, CUDA really runs")
FAST = {"batch_sizes": [1, 8], "warmup": 1, "min_iterations": 3, "min_seconds": 0.0}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    model, card, train, test = tiny_trained_model()
    params = parse_params({"export": {"variants": ["int8"], "int8": {"calibration_images": 64}}})
    folder = tmp_path_factory.mktemp("onnx")
    test_tensors = (torch.from_numpy(test[0]), torch.from_numpy(test[1]))
    export_all(params, model, card, test_tensors, torch.from_numpy(train[0]), folder)
    variants = {name: variant_path(folder, name) for name in ("fp32", "int8")}
    return model, card, variants, test


@pytest.fixture(scope="module")
def matrix(exported):
    model, card, variants, (images, labels) = exported
    params = BenchmarkParams(device="cpu", providers=["cpu", "cuda", "tensorrt"], **FAST)
    energy = EnergyParams(min_window_s=0.05)
    rows, context = run_benchmark(params, model, card, variants, images, labels, energy)
    return rows, context


def test_every_row_says_how_its_energy_was_measured_or_why_not(matrix):
    rows, _ = matrix
    for row in rows:
        if row["status"] == "failed":
            continue
        assert row["energy_method"] in (
            "rapl",
            "nvml_energy_counter",
            "nvml_power_sampling",
            "unavailable",
        )
        if row["energy_method"] == "unavailable":
            assert row["joules_per_image"] is None and row["energy_reason"]
        else:
            assert row["joules_per_image"] > 0


def test_cpu_watts_gives_a_labelled_estimate(exported):
    model, card, variants, (images, labels) = exported
    params = BenchmarkParams(device="cpu", providers=["cpu"], **{**FAST, "batch_sizes": [8]})
    energy = EnergyParams(min_window_s=0.2, cpu_watts=100.0)
    rows, _ = run_benchmark(params, model, card, {"fp32": variants["fp32"]}, images, labels, energy)
    for row in rows:
        if row["energy_method"] == "rapl":
            pytest.skip("this machine has a readable RAPL counter; no estimate is made")
        assert row["energy_method"] == "estimate"
        assert 0 < row["joules_per_image"] < 100.0
        assert "estimate" in row["energy_reason"]


def test_every_backend_variant_provider_and_batch_size_has_a_row(matrix):
    rows, context = matrix
    keys = {(r["backend"], r["variant"], r["batch_size"]) for r in rows}
    expected = {("pytorch_eager", "fp32"), ("pytorch_engine", "fp32")} | {
        (f"onnxruntime_{p}", v) for p in ("cpu", "cuda", "tensorrt") for v in ("fp32", "int8")
    }
    # benchmark.runtimes' default: OpenVINO rows for every variant, at each precision setting.
    expected |= {(f"openvino_{s}", v) for s in OpenVinoBackend.settings() for v in ("fp32", "int8")}
    assert keys == {(b, v, size) for b, v in expected for size in (1, 8)}
    assert all(set(r) == set(ROW_FIELDS) for r in rows)
    timed = [r for r in rows if r["latency_ms_p50"] is not None]
    assert timed and all(r["repeats"] == 3 and r["latency_spread"] is not None for r in timed)
    assert context["flops_per_image"] > 0 and context["peaks"]["cpu"]["gflops"] > 0


def test_cpu_rows_are_complete_and_as_accurate_as_pytorch(matrix):
    rows, _ = matrix
    eager = next(r for r in rows if r["backend"] == "pytorch_eager")
    for r in rows:
        if r["provider_requested"] != "cpu":
            continue
        assert r["status"] == "ok", r["reason"]
        assert r["iterations"] >= 3 and r["warmup"] == 1
        assert r["latency_ms_p50"] <= r["latency_ms_p90"] <= r["latency_ms_p99"]
        assert r["images_per_s"] > 0 and r["gflops_per_s"] > 0 and r["share_of_peak"] > 0
        assert r["session_create_ms"] > 0 and r["first_call_ms"] > 0
        assert r["peak_memory_mb"] is not None and r["memory_method"]
        assert abs(r["top1_accuracy"] - eager["top1_accuracy"]) <= 0.02
    engine = next(r for r in rows if r["backend"] == "pytorch_engine")
    assert engine["note"] == "channels_last"  # no autocast on a CPU


@no_gpu
@pytest.mark.parametrize("provider", ["cuda", "tensorrt"])
def test_a_gpu_provider_without_a_gpu_is_a_fallback_row_with_its_reason(matrix, provider):
    rows, _ = matrix
    asked = [r for r in rows if r["provider_requested"] == provider]
    assert asked
    for r in asked:
        assert r["status"] == "fallback"
        assert r["providers_used"] == "CPUExecutionProvider"  # never a GPU label
        name = "CUDAExecutionProvider" if provider == "cuda" else "TensorrtExecutionProvider"
        assert r["reason"].startswith(f"{name} unavailable (")
        assert "session runs on CPUExecutionProvider" in r["reason"]
        assert r["peak_gflops"] == rows[0]["peak_gflops"]  # measured against the CPU's peak
    winners = {entry["best_backend"] for entry in headline(rows, 1.0).values()}
    assert winners and not winners & {"onnxruntime_cuda", "onnxruntime_tensorrt"}


@no_gpu
def test_asking_for_cuda_builds_a_cpu_session_and_says_why(exported):
    _, card, variants, _ = exported
    norm = card.normalisation
    backend = OrtBackend(variants["fp32"], "fp32", "cuda", 1, norm.mean, norm.std)
    assert backend.session.get_providers() == ["CPUExecutionProvider"]
    assert backend.status == "fallback" and not backend.on_gpu
    assert "CUDAExecutionProvider unavailable" in backend.reason
    assert backend.peak_key == "cpu"  # measured against what ran, not what was asked for


def test_every_backend_states_what_a_row_needs_and_what_it_planned(exported):
    model, card, variants, _ = exported
    norm, device = card.normalisation, torch.device("cpu")
    built = {
        TorchBackend.planned(device): TorchBackend(model, device),
        TorchBackend.planned(device, engine=True): TorchBackend(model, device, engine=True),
        OrtBackend.planned("int8", "cpu"): OrtBackend(
            variants["int8"], "int8", "cpu", 1, norm.mean, norm.std
        ),
    }
    members = [*Backend.__annotations__, "bind", "sync", "logits"]
    for planned, backend in built.items():
        assert [name for name in members if not hasattr(backend, name)] == []
        assert planned == (backend.name, backend.variant, backend.provider, backend.memory_kind)
        assert (backend.peak_key, backend.memory_kind, backend.on_gpu) == ("cpu", "host", False)


def test_a_backend_that_cannot_be_built_or_run_gives_failed_rows(exported):
    model, _, _, (images, labels) = exported
    params = BenchmarkParams(device="cpu", **FAST)
    device = torch.device("cpu")

    def cannot_build():
        raise RuntimeError("no kernel for this variant\nmore detail")

    rows = benchmark_backend(
        Spec("onnxruntime_x", "int4", "cpu", "host", cannot_build), params, device, images, labels
    )
    assert [r["status"] for r in rows] == ["failed", "failed"]
    assert rows[0]["reason"] == "RuntimeError: no kernel for this variant"
    assert rows[0]["images_per_s"] is None

    class BreaksAtBatch8(TorchBackend):
        def bind(self, batch):
            if len(batch) == 8:
                raise MemoryError("out of memory")
            return super().bind(batch)

    spec = Spec("pytorch_eager", "fp32", "cpu", "host", lambda: BreaksAtBatch8(model, device))
    rows = benchmark_backend(spec, params, device, images, labels)
    assert [r["status"] for r in rows] == ["ok", "failed"]
    assert rows[1]["reason"] == "MemoryError: out of memory"
    assert rows[0]["top1_accuracy"] > 0.8


def test_benchmark_params_are_validated():
    params = parse_params({"benchmark": {"max_accuracy_drop": 0.01}})
    assert params.benchmark.max_accuracy_drop == 0.01
    assert BenchmarkParams().providers == ["cpu"]


def test_a_provider_added_to_the_catalog_alone_is_validated_requested_and_reported(
    exported, monkeypatch
):
    """The 'add a backend' recipe: one Provider entry, no other edit. This onnxruntime build
    has no OpenVINO, so the row must say it fell back to the CPU, never claim OpenVINO."""
    from pipeline import catalog
    from pipeline.export.session import provider_chain

    openvino = catalog.Provider(
        "openvino", "Intel OpenVINO", "OpenVINOExecutionProvider", ("cpu",), False, "host", "cpu"
    )
    monkeypatch.setitem(catalog.PROVIDERS._entries, "openvino", openvino)
    model, card, variants, (images, labels) = exported
    params = parse_params({"benchmark": {"device": "cpu", "providers": ["openvino"], **FAST}})
    assert provider_chain("openvino") == ["OpenVINOExecutionProvider", "CPUExecutionProvider"]
    specs, device = backend_specs(params.benchmark, model, card, {"fp32": variants["fp32"]}, 1)
    planned = [spec for spec in specs if spec.provider == "openvino"]
    assert [(spec.name, spec.memory) for spec in planned] == [("onnxruntime_openvino", "host")]
    energy = EnergyParams(min_window_s=0.05)
    rows = benchmark_backend(planned[0], params.benchmark, device, images, labels, energy)
    assert [r["batch_size"] for r in rows] == [1, 8]
    assert all(r["status"] == "fallback" for r in rows), rows[0]["reason"]
    assert all(r["reason"].startswith("OpenVINOExecutionProvider unavailable") for r in rows)
    assert all(r["providers_used"] == "CPUExecutionProvider" for r in rows)
    assert all(r["images_per_s"] > 0 and r["top1_accuracy"] > 0.8 for r in rows)
