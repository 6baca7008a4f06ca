"""The benchmark matrix with real onnxruntime sessions on the CPU: ok, fallback and failed rows."""

from __future__ import annotations

import pytest
import torch

from pipeline.bench.backends import Backend, OrtBackend, OrtSetup, Plan, TorchBackend
from pipeline.bench.openvino import OpenVinoBackend
from pipeline.bench.report import headline
from pipeline.bench.rows import BenchRow
from pipeline.bench.run import backend_plans, benchmark_backend, run_benchmark, split_accuracy
from pipeline.core.config import BenchmarkParams, EnergyParams, parse_params
from pipeline.prepared.types import LabelledImages

no_gpu = pytest.mark.skipif(torch.cuda.is_available(), reason="with a GPU, CUDA really runs")
FAST = {
    "batch_sizes": [1, 8],
    "warmup": 1,
    "min_iterations": 3,
    "min_seconds": 0.0,
    "extra_seconds": 0,
}


@pytest.fixture(scope="module")
def exported(tiny_exported):
    return tiny_exported  # conftest.py: trained and exported once per session


@pytest.fixture(scope="module")
def matrix(exported):
    model, card, variants, (images, labels) = exported
    params = BenchmarkParams(device="cpu", providers=["cpu", "cuda", "tensorrt"], **FAST)
    energy = EnergyParams(min_window_s=0.05)
    rows, context = run_benchmark(
        params, model, card, variants, LabelledImages(images, labels), energy
    )
    return rows, context


def test_every_row_says_how_its_energy_was_measured_or_why_not(matrix):
    rows, _ = matrix
    for row in rows:
        if row.status == "failed":
            continue
        assert row.energy_method in (
            "rapl",
            "nvml_energy_counter",
            "nvml_power_sampling",
            "unavailable",
        )
        if row.energy_method == "unavailable":
            assert row.joules_per_image is None and row.energy_reason
        else:
            assert row.joules_per_image > 0


def test_cpu_watts_gives_a_labelled_estimate(exported):
    model, card, variants, (images, labels) = exported
    params = BenchmarkParams(device="cpu", providers=["cpu"], **{**FAST, "batch_sizes": [8]})
    energy = EnergyParams(min_window_s=0.2, cpu_watts=100.0)
    rows, _ = run_benchmark(
        params, model, card, {"fp32": variants["fp32"]}, LabelledImages(images, labels), energy
    )
    for row in rows:
        if row.energy_method == "rapl":
            pytest.skip("this machine has a readable RAPL counter; no estimate is made")
        assert row.energy_method == "estimate"
        assert 0 < row.joules_per_image < 100.0
        assert "estimate" in row.energy_reason


def test_every_backend_variant_provider_and_batch_size_has_a_row(matrix):
    rows, context = matrix
    keys = {(r.backend, r.variant, r.batch_size) for r in rows}
    expected = {("pytorch_eager", "fp32"), ("pytorch_engine", "fp32")} | {
        (f"onnxruntime_{p}", v) for p in ("cpu", "cuda", "tensorrt") for v in ("fp32", "int8")
    }
    # benchmark.runtimes' default: OpenVINO rows for every variant, at each precision setting.
    expected |= {(f"openvino_{s}", v) for s in OpenVinoBackend.settings() for v in ("fp32", "int8")}
    assert keys == {(b, v, size) for b, v in expected for size in (1, 8)}
    assert all(isinstance(r, BenchRow) for r in rows)
    timed = [r for r in rows if r.latency_ms_p50 is not None]
    assert timed and all(r.repeats == 3 and r.latency_spread is not None for r in timed)
    assert context["flops_per_image"] > 0 and context["peaks"]["cpu"]["gflops"] > 0


def test_cpu_rows_are_complete_and_as_accurate_as_pytorch(matrix):
    rows, _ = matrix
    eager = next(r for r in rows if r.backend == "pytorch_eager")
    for r in rows:
        if r.provider_requested != "cpu":
            continue
        assert r.status == "ok", r.reason
        assert r.iterations >= 3 and r.warmup == 1
        assert r.latency_ms_p50 <= r.latency_ms_p90 <= r.latency_ms_p99
        assert r.images_per_s > 0 and r.gflops_per_s > 0 and r.share_of_peak > 0
        assert r.session_create_ms > 0 and r.first_call_ms > 0
        assert r.peak_memory_mb is not None and r.memory_method
        assert abs(r.top1_accuracy - eager.top1_accuracy) <= 0.02
    engine = next(r for r in rows if r.backend == "pytorch_engine")
    assert engine.note == "channels_last"  # no autocast on a CPU


@no_gpu
@pytest.mark.parametrize("provider", ["cuda", "tensorrt"])
def test_a_gpu_provider_without_a_gpu_is_a_fallback_row_with_its_reason(matrix, provider):
    rows, _ = matrix
    asked = [r for r in rows if r.provider_requested == provider]
    assert asked
    for r in asked:
        assert r.status == "fallback"
        assert r.providers_used == "CPUExecutionProvider"  # never a GPU label
        name = "CUDAExecutionProvider" if provider == "cuda" else "TensorrtExecutionProvider"
        assert r.reason.startswith(f"{name} unavailable (")
        assert "session runs on CPUExecutionProvider" in r.reason
        assert r.peak_gflops == rows[0].peak_gflops  # measured against the CPU's peak
    winners = {entry.best.backend for entry in headline(rows, 1.0).values() if entry.best}
    assert winners and not winners & {"onnxruntime_cuda", "onnxruntime_tensorrt"}


def setup_of(card, threads: int = 1) -> OrtSetup:
    norm = card.normalisation
    return OrtSetup(threads, tuple(norm.mean), tuple(norm.std), tuple(card.input_shape))


@no_gpu
def test_asking_for_cuda_builds_a_cpu_session_and_says_why(exported):
    _, card, variants, _ = exported
    backend = OrtBackend(variants["fp32"], "fp32", "cuda", setup_of(card))
    assert backend.session.get_providers() == ["CPUExecutionProvider"]
    assert backend.facts.status == "fallback" and not backend.facts.on_gpu
    assert "CUDAExecutionProvider unavailable" in backend.facts.reason
    assert backend.facts.peak_key == "cpu"  # measured against what ran, not what was asked for


def test_every_backend_states_what_a_row_needs_and_its_plan_who_it_is(exported):
    model, card, variants, _ = exported
    device = torch.device("cpu")
    plans = [
        TorchBackend.plan(model, device),
        TorchBackend.plan(model, device, engine=True),
        OrtBackend.plan(variants["int8"], "int8", "cpu", setup_of(card)),
    ]
    assert [(p.name, p.variant, p.provider, p.memory_kind) for p in plans] == [
        ("pytorch_eager", "fp32", "cpu", "host"),
        ("pytorch_engine", "fp32", "cpu", "host"),
        ("onnxruntime_cpu", "int8", "cpu", "host"),
    ]
    members = [*Backend.__annotations__, "bind", "sync", "logits"]
    for planned in plans:
        backend = planned.build()
        assert [name for name in members if not hasattr(backend, name)] == []
        facts = backend.facts
        assert (facts.status, facts.peak_key, facts.on_gpu) == ("ok", "cpu", False)


def test_a_backend_that_cannot_be_built_or_run_gives_failed_rows(exported):
    model, _, _, (images, labels) = exported
    params = BenchmarkParams(device="cpu", **FAST)
    device = torch.device("cpu")
    test = LabelledImages(images, labels)

    def cannot_build():
        raise RuntimeError("no kernel for this variant\nmore detail")

    plan = Plan("onnxruntime_x", "int4", "cpu", "host", cannot_build)
    rows = [item.row for item in benchmark_backend(plan, params, device, images, test)]
    assert [r.status for r in rows] == ["failed", "failed"]
    assert rows[0].reason == "RuntimeError: no kernel for this variant"
    assert rows[0].images_per_s is None

    class BreaksAtBatch8(TorchBackend):
        def bind(self, batch):
            if len(batch) == 8:
                raise MemoryError("out of memory")
            return super().bind(batch)

    plan = Plan("pytorch_eager", "fp32", "cpu", "host", lambda: BreaksAtBatch8(model, device))
    items = benchmark_backend(plan, params, device, images, test)
    assert [item.row.status for item in items] == ["ok", "failed"]
    assert items[1].row.reason == "MemoryError: out of memory"
    assert items[0].row.top1_accuracy > 0.8
    assert items[1].facts is None  # a failed size is not timed again


def test_the_benchmark_reads_the_test_split_a_shard_at_a_time(exported):
    from test_export_variants import Chunked

    model, card, variants, (images, labels) = exported
    params = BenchmarkParams(device="cpu", providers=["cpu"], **{**FAST, "batch_sizes": [8]})
    chunked = Chunked(images, labels, 100)
    energy = EnergyParams(min_window_s=0.05)
    rows, _ = run_benchmark(params, model, card, {"fp32": variants["fp32"]}, chunked, energy)
    assert chunked.largest == 100 < len(labels)  # never the whole split at once
    eager = TorchBackend(model, torch.device("cpu"))
    whole = split_accuracy(eager, LabelledImages(images, labels))
    assert whole == float((eager.logits(images, 256).argmax(1) == labels).mean()) > 0.8
    assert {row.backend: row.top1_accuracy for row in rows}["pytorch_eager"] == whole


def test_benchmark_params_are_validated():
    params = parse_params({"benchmark": {"max_accuracy_drop": 0.01}})
    assert params.benchmark.max_accuracy_drop == 0.01
    assert BenchmarkParams().providers == ["cpu"]


def test_a_provider_added_to_the_catalog_alone_is_validated_requested_and_reported(
    exported, monkeypatch
):
    """The 'add a backend' recipe: one Provider entry, no other edit. This onnxruntime build
    has no OpenVINO, so the row must say it fell back to the CPU, never claim OpenVINO."""
    from pipeline.core import catalog
    from pipeline.export.session import provider_chain

    openvino = catalog.Provider(
        name="openvino", description="Intel OpenVINO", ort_name="OpenVINOExecutionProvider",
        fallback=("cpu",),
    )  # fmt: skip
    monkeypatch.setitem(catalog.PROVIDERS._entries, "openvino", openvino)
    model, card, variants, (images, labels) = exported
    params = parse_params({"benchmark": {"device": "cpu", "providers": ["openvino"], **FAST}})
    assert provider_chain("openvino") == ["OpenVINOExecutionProvider", "CPUExecutionProvider"]
    plans, device = backend_plans(params.benchmark, model, card, {"fp32": variants["fp32"]}, 1)
    planned = [plan for plan in plans if plan.provider == "openvino"]
    assert [(plan.name, plan.memory_kind) for plan in planned] == [("onnxruntime_openvino", "host")]
    energy = EnergyParams(min_window_s=0.05)
    test = LabelledImages(images, labels)
    items = benchmark_backend(planned[0], params.benchmark, device, images, test, energy)
    rows = [item.row for item in items]
    assert [r.batch_size for r in rows] == [1, 8]
    assert all(r.status == "fallback" for r in rows), rows[0].reason
    assert all(r.reason.startswith("OpenVINOExecutionProvider unavailable") for r in rows)
    assert all(r.providers_used == "CPUExecutionProvider" for r in rows)
    assert all(r.top1_accuracy > 0.8 for r in rows)
