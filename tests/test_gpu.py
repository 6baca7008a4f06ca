"""CUDA-only checks: skipped on machines without a GPU (conftest adds the skip)."""

import pytest
import torch
from test_engine import rgb_data

from pipeline.config import BenchmarkParams, EnergyParams, TrainParams, parse_params
from pipeline.energy import meter_from_params
from pipeline.train.policy import resolve_policy
from pipeline.train.resources import compute_report, peak_memory
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
    from pipeline.train.loop import Trainer

    model = trainer.model.to("cpu")
    gpu = Trainer(
        model,
        (trainer.batches.images.cpu(), trainer.batches.labels.cpu()),
        (trainer.val[0].cpu(), trainer.val[1].cpu()),
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
        (torch.from_numpy(test[0]), torch.from_numpy(test[1])),
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
    rows, _ = run_benchmark(
        bench, model, card, variants, test[0], test[1], EnergyParams(min_window_s=0.2)
    )
    cuda_rows = [r for r in rows if r["backend"] == "onnxruntime_cuda"]
    assert cuda_rows and all(r["status"] == "ok" for r in cuda_rows), cuda_rows
    assert all(r["providers_used"].startswith("CUDAExecutionProvider") for r in cuda_rows)
