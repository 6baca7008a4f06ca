import pytest
import torch

from pipeline.core.config import Params, TrainParams
from pipeline.hardware.device import DeviceError, resolve_device
from pipeline.hardware.precision import choose_precision
from pipeline.models import ModelSpec, build_model
from pipeline.models.build import UnknownModelError
from pipeline.models.files import (
    ModelCard,
    ModelFileError,
    Normalisation,
    load_trained,
    save_trained,
)
from pipeline.models.preprocess import WithPreprocessing
from pipeline.prepared.stats import channel_stats
from pipeline.sources import digits
from pipeline.sources.split import split
from pipeline.train.loop import trainer_for_tensors


@pytest.mark.parametrize(
    ("requested", "device", "capability", "cpu_bf16", "expected", "scaler"),
    [
        ("auto", "cpu", None, False, "fp32", False),
        ("auto", "cpu", None, True, "bf16", False),
        ("auto", "cuda", (9, 0), False, "bf16", False),
        ("auto", "cuda", (8, 0), False, "bf16", False),
        ("auto", "cuda", (7, 5), False, "fp16", True),
        ("bf16", "cpu", None, False, "bf16", False),
        ("fp32", "cpu", None, True, "fp32", False),
        ("fp32", "cuda", (9, 0), False, "fp32", False),
        ("fp16", "cuda", (9, 0), False, "fp16", True),
    ],
)
def test_precision_policy(requested, device, capability, cpu_bf16, expected, scaler):
    choice = choose_precision(requested, device, capability, cpu_bf16)
    assert choice.name == expected
    assert choice.use_grad_scaler is scaler


def test_fp16_on_cpu_is_refused():
    with pytest.raises(DeviceError, match="fp16"):
        choose_precision("fp16", "cpu", None)


def test_auto_device_is_cpu_here_and_cuda_is_refused_clearly():
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert resolve_device("auto").type == "cpu"
    with pytest.raises(DeviceError, match="CUDA is not available"):
        resolve_device("cuda:0")


def test_unknown_arch_lists_the_choices():
    with pytest.raises(UnknownModelError, match="small_cnn"):
        build_model(ModelSpec(arch="no_such_net", in_channels=1, image_size=8, num_classes=10))


def digits_tensors(seed=0):
    parts = split(digits.load(), 0.15, 0.15, seed)
    mean, std = channel_stats(parts["train"].images)

    def as_tensors(name):
        return torch.from_numpy(parts[name].images), torch.from_numpy(parts[name].labels)

    return as_tensors("train"), as_tensors("val"), mean, std


def make_trainer(precision="fp32", width=16, **train):
    torch.manual_seed(0)
    train_data, val, mean, std = digits_tensors()
    spec = ModelSpec(arch="small_cnn", in_channels=1, image_size=8, num_classes=10, width=width)
    model = WithPreprocessing(build_model(spec), mean, std)
    params = TrainParams(**{"epochs": 3, "batch_size": 64, "lr": 0.003, **train})
    return trainer_for_tensors(
        model,
        train_data,
        val,
        params,
        torch.device("cpu"),
        choose_precision(precision, "cpu", None),
        seed=0,
    )


def test_fit_learns_digits_on_cpu():
    trainer = make_trainer()
    seen = []
    state = trainer.fit(on_epoch=seen.append)
    assert len(state.history) == 3 == len(seen)
    assert state.history[-1]["train_loss"] < state.history[0]["train_loss"]
    assert state.history[-1]["val_accuracy"] > 0.8
    assert state.images_seen == 3 * (len(trainer.batches.images) // 64) * 64


def test_bf16_autocast_runs_on_cpu_with_finite_improving_loss():
    state = make_trainer("bf16", width=8, epochs=2, batch_size=128).fit()
    losses = [epoch["train_loss"] for epoch in state.history]
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[1] < losses[0]


def test_model_round_trip_and_nonfinite_weights_refused(tmp_path):
    spec = ModelSpec(arch="small_cnn", in_channels=1, image_size=8, num_classes=10, width=8)
    model = build_model(spec).eval()
    card = ModelCard(
        arch="small_cnn",
        model_params={"width": 8, "dropout": 0.1},
        class_names=tuple("0123456789"),
        num_classes=10,
        input_shape=(1, 8, 8),
        normalisation=Normalisation(mean=(0.3,), std=(0.4,)),
    )
    save_trained(tmp_path, model, card)
    loaded, loaded_card = load_trained(tmp_path)
    images = torch.randint(0, 256, (4, 1, 8, 8), dtype=torch.uint8)
    expected = WithPreprocessing(model, [0.3], [0.4])(images)
    torch.testing.assert_close(loaded(images), expected)
    assert loaded_card == card

    with torch.no_grad():
        next(model.parameters())[0] = float("nan")
    before = (tmp_path / "model.safetensors").read_bytes()
    with pytest.raises(ModelFileError, match="non-finite"):
        save_trained(tmp_path, model, card)
    assert (tmp_path / "model.safetensors").read_bytes() == before


def test_default_params_train_config_is_cpu_friendly():
    params = Params()
    assert params.train.device == "auto" and params.train.precision == "auto"


def test_step_bar_counts_every_step_of_every_epoch():
    from pipeline.train.progress import step_bar

    trainer = make_trainer(epochs=2, batch_size=256)
    calls = []
    with step_bar(trainer, enabled=False) as silent:
        assert silent.advance is None
    trainer.fit(on_batch=calls.append)
    assert calls == list(range(1, len(trainer.batches) + 1)) * 2


def test_step_bar_completes_and_prints_the_epoch_line_above_it(monkeypatch):
    import io
    import sys

    from pipeline.train.progress import step_bar

    trainer = make_trainer(epochs=2, batch_size=256)
    steps = len(trainer.batches)
    sink = io.StringIO()
    monkeypatch.setattr(sys, "stderr", sink)
    with step_bar(trainer, enabled=True) as bar:
        for index in range(1, steps + 1):  # faster than tqdm's 0.1 s redraw interval
            bar.advance(index)
        bar.write("epoch   1/2  loss 0.1")
    shown = sink.getvalue()
    before = shown[: shown.index("epoch   1/2  loss")]
    assert f"{steps}/{steps}" in before  # the bar reached 100% before the line
    assert before.endswith(("\r", "\n")) or before.rstrip(" ").endswith(("\r", "\n"))
    # Off a terminal: the plain line, no bar.
    plain = io.StringIO()
    monkeypatch.setattr(sys, "stderr", plain)
    with step_bar(trainer, enabled=False) as bar:
        bar.write("epoch   1/2  loss 0.1")
    assert plain.getvalue() == "epoch   1/2  loss 0.1\n"


def test_steady_rates_skip_each_process_warm_up_epoch_and_spread_needs_two_more():
    from pipeline.train.accounting import rates

    # A run trained by two processes: epochs 1 and 3 are their warm-ups.
    images, seconds = [100, 100, 100, 100], [10.0, 1.0, 20.0, 2.0]
    warmup = [True, False, True, False]
    figures = rates(images[:2], seconds[:2], warmup[:2])
    assert figures["steady_state_spread"] is None  # one steady epoch: no spread to measure
    figures = rates(images, seconds, warmup)  # steady rates 100 and 50 images/s
    assert figures["steady_state_images_per_s"] == pytest.approx(200 / 3.0)
    assert figures["steady_state_spread"] == pytest.approx(2 * 50 / 150)  # (100 - 50) / 75
    assert figures["images_per_s"] == pytest.approx(400 / 33.0)
