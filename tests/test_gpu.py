"""CUDA-only checks: skipped on machines without a GPU (conftest adds the skip)."""

import pytest
import torch
from test_engine import rgb_data

from pipeline.core.config import BenchmarkParams, EnergyParams, TrainParams, parse_params
from pipeline.energy import meter_from_params
from pipeline.hardware.memory import peak_memory
from pipeline.hardware.peak import compute_report
from pipeline.prepared.types import LabelledImages
from pipeline.train.policy import resolve_policy
from test_train import make_trainer

pytestmark = pytest.mark.gpu


def test_auto_policy_picks_the_gpu_and_its_best_precision():
    device, precision, policy = resolve_policy(TrainParams())
    assert device.type == "cuda"
    expected = "bf16" if torch.cuda.get_device_capability(device) >= (8, 0) else "fp16"
    assert precision.name == expected == policy.precision
    assert policy.data_on_device and torch.backends.cudnn.benchmark


@pytest.mark.parametrize("precision", ["bf16", "fp16", "fp32"])
def test_engine_trains_on_the_gpu_with_data_resident(precision):
    if precision == "bf16" and not torch.cuda.is_bf16_supported():
        pytest.skip("no bf16 on this GPU")
    trainer = make_trainer(epochs=2, augment="crop")
    device = torch.device("cuda")
    params = trainer.params.model_copy(update={"device": "cuda", "precision": precision})
    _, chosen, _ = resolve_policy(params)
    from pipeline.train.loop import trainer_for_tensors

    model = trainer.model.to("cpu")
    gpu = trainer_for_tensors(
        model,
        (trainer.batches.images.cpu(), trainer.batches.labels.cpu()),
        (trainer.validation.images.cpu(), trainer.validation.labels.cpu()),
        params,
        device,
        chosen,
        seed=0,
    )
    assert gpu.batches.images.device.type == "cuda"
    state = gpu.fit()
    assert state.history[1]["train_loss"] < state.history[0]["train_loss"]
    assert state.skipped_steps <= 2  # fp16's scaler may skip its first steps while calibrating
    assert peak_memory(device)["method"] == "torch.cuda.max_memory_allocated"


def test_compute_report_measures_the_device_peak():
    report = compute_report(10**9, 1000.0, torch.device("cuda"), torch.bfloat16)
    assert report["device_peak_gflops"] > 1000 and 0 < report["fraction_of_peak"] < 1


def test_augmentation_on_the_gpu_matches_its_seed():
    from pipeline.train.augment import Augment

    images = rgb_data(32)[0].cuda()
    first = Augment("crop_flip", 32, torch.device("cuda"), seed=3)(images)
    second = Augment("crop_flip", 32, torch.device("cuda"), seed=3)(images)
    assert torch.equal(first, second) and first.device.type == "cuda"


def test_nvml_counter_measures_gpu_work():
    window = meter_from_params(EnergyParams(), "cuda:0")
    a = torch.randn(4096, 4096, device="cuda")
    window.start()
    for _ in range(200):
        a = a @ a / 4096
    torch.cuda.synchronize()
    reading = window.stop()
    assert reading.method in ("nvml_energy_counter", "nvml_power_sampling"), reading.reason
    assert reading.joules > 0


def test_cuda_provider_really_runs_on_the_gpu(tmp_path):
    from test_export_variants import tiny_trained_model

    from pipeline.bench.run import run_benchmark
    from pipeline.export.run import export_all
    from pipeline.export.variants import variant_path

    model, card, train, test = tiny_trained_model()
    params = parse_params({"export": {"variants": ["fp16"]}})
    export_all(
        params,
        model,
        card,
        LabelledImages(*test),
        torch.from_numpy(train[0]),
        tmp_path,
    )
    variants = {name: variant_path(tmp_path, name) for name in ("fp32", "fp16")}
    bench = BenchmarkParams(
        device="cuda",
        providers=["cuda"],
        batch_sizes=[64],
        warmup=2,
        min_iterations=5,
        min_seconds=0.0,
    )
    rows, context = run_benchmark(
        bench, model, card, variants, LabelledImages(*test), EnergyParams(min_window_s=0.2)
    )
    cuda_rows = [r for r in rows if r.backend == "onnxruntime_cuda"]
    # partial (some nodes on the CPU) is allowed, but must say how many: see the placement test.
    assert cuda_rows and all(r.status in ("ok", "partial") for r in cuda_rows), cuda_rows
    assert all(r.providers_used.startswith("CUDAExecutionProvider") for r in cuda_rows)
    assert all(r.status == "ok" or " nodes run on CPU" in r.reason for r in cuda_rows)
    assert {r.precision for r in cuda_rows} == {"fp32", "fp16"}
    eager = next(r for r in rows if r.backend == "pytorch_eager")
    # The baseline runs in IEEE fp32 (not cuDNN's default TF32) and is bounded by the fp32 peak.
    assert eager.precision == "fp32"
    assert eager.peak_gflops == context["peaks"]["cuda_fp32"]["gflops"]


# --- what GPU rows say about what really ran (issue: CPU twins in tests/test_gpu_labels.py) ---


def _exported(tmp_path, variants=("fp16",)):
    from test_export_variants import tiny_trained_model

    from pipeline.export.run import export_all
    from pipeline.export.variants import variant_path

    model, card, train, test = tiny_trained_model()
    params = parse_params({"export": {"variants": list(variants)}})
    tensors = LabelledImages(*test)
    export_all(params, model, card, tensors, torch.from_numpy(train[0]), tmp_path)
    paths_ = {name: variant_path(tmp_path, name) for name in ("fp32", *variants)}
    return model, card, paths_, test


def _tensorrt_or_skip(backend):
    if backend.facts.status == "fallback":
        pytest.skip(f"TensorRT does not start here: {backend.facts.reason}")


def test_tensorrt_engines_are_keyed_by_file_and_fp16_only_for_fp16(tmp_path, monkeypatch):
    from pipeline.bench.backends import OrtBackend, OrtSetup
    from pipeline.core import paths
    from pipeline.core.io import sha256_file

    monkeypatch.chdir(tmp_path)
    _, card, files, (images, _) = _exported(tmp_path / "onnx")
    norm, shape = card.normalisation, tuple(card.input_shape)
    capability = torch.cuda.get_device_capability()
    setup = OrtSetup(1, tuple(norm.mean), tuple(norm.std), shape, 64, 0, capability)
    built = {
        variant: OrtBackend(path, variant, "tensorrt", setup) for variant, path in files.items()
    }
    _tensorrt_or_skip(built["fp32"])
    logits = {variant: backend.logits(images[:64], 64) for variant, backend in built.items()}
    for variant, path in files.items():
        folder = paths.TENSORRT_CACHE / sha256_file(path)
        assert any(folder.rglob("*.engine")), f"no {variant} engine under {folder}"
    assert built["fp32"].facts.precision == ("tf32" if capability >= (8, 0) else "fp32")
    assert built["fp16"].facts.precision == "fp16"
    # An fp32 engine computes in fp32/TF32, not fp16: far closer to the fp32 CPU logits.
    from pipeline.export.session import make_session, session_logits

    reference = session_logits(make_session(files["fp32"]), built["fp32"]._feed(images[:64]), 64)
    fp32_error = abs(logits["fp32"] - reference).max()
    assert fp32_error < 5e-3, fp32_error
    call = built["fp32"].bind(images[:8])  # its own engine, built for batch 8 exactly
    call()
    built["fp32"].sync()


def test_a_node_the_gpu_provider_rejects_makes_the_row_partial(tmp_path):
    import onnxruntime as ort
    from onnx import TensorProto, helper

    from pipeline.bench.backends import placement_status
    from pipeline.export.session import RECORD_PLACEMENT, node_placement

    value = helper.make_tensor_value_info
    graph = helper.make_graph(
        [
            helper.make_node("Mul", ["x", "x"], ["y"], name="square"),
            # ai.onnx.ml operators have CPU kernels only
            helper.make_node("Binarizer", ["y"], ["z"], name="bin", domain="ai.onnx.ml"),
        ],
        "partial",
        [value("x", TensorProto.FLOAT, [4, 4])],
        [value("z", TensorProto.FLOAT, [4, 4])],
    )
    opsets = [helper.make_opsetid("", 18), helper.make_opsetid("ai.onnx.ml", 3)]
    model = helper.make_model(graph, opset_imports=opsets, ir_version=10)
    options = ort.SessionOptions()
    options.add_session_config_entry(RECORD_PLACEMENT, "1")
    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    session = ort.InferenceSession(model.SerializeToString(), options, providers=providers)
    status, reason, used = placement_status(
        "CUDAExecutionProvider", session.get_providers(), node_placement(session), []
    )
    assert status == "partial", (status, reason)
    assert used == providers
    assert reason.startswith("1 of 2 nodes run on CPUExecutionProvider (Binarizer")


def test_training_in_fp32_on_the_gpu_is_named_tf32_when_tf32_is_on():
    device, _, policy = resolve_policy(TrainParams(device="cuda", precision="fp32"))
    if torch.cuda.get_device_capability(device) < (8, 0):
        assert policy.precision == "fp32" and policy.tf32 == "off"
    else:
        assert policy.precision == "tf32" and policy.tf32 == "matmul+conv"


def test_fp32_and_tf32_peaks_are_measured_apart():
    from pipeline.hardware.peak import cuda_peak

    device = torch.device("cuda")
    if torch.cuda.get_device_capability(device) < (8, 0):
        pytest.skip("no TF32 tensor cores before Ampere")
    fp32, tf32 = cuda_peak(device, "fp32"), cuda_peak(device, "tf32")
    assert "fp32" in fp32.method and "tf32" in tf32.method
    assert tf32.gflops > 1.5 * fp32.gflops, (fp32, tf32)


def test_resnet_cifar_trains_deterministically_on_the_gpu():
    from pipeline.models import ModelSpec, build_model
    from pipeline.train.policy import make_deterministic

    make_deterministic()
    spec = ModelSpec(arch="resnet_cifar", in_channels=3, image_size=32, num_classes=10, width=8)
    grads = []
    for _ in range(2):
        torch.manual_seed(0)
        model = build_model(spec).cuda()
        images = torch.randn(16, 3, 32, 32, device="cuda")
        labels = torch.randint(0, 10, (16,), device="cuda")
        torch.nn.functional.cross_entropy(model(images), labels).backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    assert torch.equal(grads[0], grads[1])


def test_ort_gpu_memory_reads_the_gpu_that_cuda_uses():
    from pipeline.bench.memory import NvmlMemory, memory_probe

    probe = memory_probe("ort_cuda", torch.device("cuda", 0))
    assert isinstance(probe, NvmlMemory)
    nvml_uuid = probe._gpus.nvml.nvmlDeviceGetUUID(probe._gpus.handles[0])
    nvml_uuid = nvml_uuid.decode() if isinstance(nvml_uuid, bytes) else nvml_uuid
    assert str(torch.cuda.get_device_properties(0).uuid) in nvml_uuid
    probe.close()


@pytest.mark.gpu
def test_torch_still_raises_the_deterministic_error_text_the_train_stage_translates():
    from pipeline.train.run import nondeterministic_op_message

    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        x = torch.randn(2, 3, 9, 9, device="cuda", requires_grad=True)
        with pytest.raises(RuntimeError) as raised:
            # Output 2, not 1: ATen computes a 1x1 adaptive pool as a (deterministic) mean.
            torch.nn.functional.adaptive_avg_pool2d(x, 2).sum().backward()
    finally:
        torch.use_deterministic_algorithms(before)
    assert "adaptive_avg_pool2d" in nondeterministic_op_message(raised.value)
