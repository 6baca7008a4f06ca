"""The training engine's features, each exercised for a few steps on the CPU."""

import pytest
import torch

from pipeline.core.config import TrainParams
from pipeline.hardware.cpu import OVERRIDE_ENV
from pipeline.hardware.precision import choose_precision
from pipeline.models import ModelSpec, build_model
from pipeline.models.preprocess import WithPreprocessing
from pipeline.train.augment import Augment, random_crop
from pipeline.train.batches import DeviceBatches, HostBatches, epoch_shard
from pipeline.train.loop import trainer_for_tensors
from pipeline.train.policy import resolve_policy
from pipeline.train.schedule import warmup_cosine
from test_train import make_trainer


def rgb_data(n=96, size=32, classes=4, seed=0):
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % classes
    images = torch.randint(0, 60, (n, 3, size, size), dtype=torch.uint8, generator=generator)
    # Class-dependent bright band: learnable in a few steps.
    for c in range(classes):
        images[labels == c, c % 3, c * 4 : c * 4 + 4, :] = 250
    return images, labels


def test_random_crop_shifts_each_image_by_its_own_offset():
    images = torch.arange(2 * 1 * 6 * 6, dtype=torch.uint8).reshape(2, 1, 6, 6) + 1
    generator = torch.Generator().manual_seed(3)
    cropped = random_crop(images, 1, generator)
    assert cropped.shape == images.shape and cropped.dtype == torch.uint8
    offsets = torch.randint(0, 3, (2, 2), generator=torch.Generator().manual_seed(3))
    padded = torch.nn.functional.pad(images, (1, 1, 1, 1))
    for i in range(2):
        dy, dx = offsets[0, i].item(), offsets[1, i].item()
        assert torch.equal(cropped[i], padded[i, :, dy : dy + 6, dx : dx + 6])


def test_augment_is_deterministic_under_a_seed_and_keeps_values():
    images, _ = rgb_data(16)
    first = Augment("crop_flip", 32, torch.device("cpu"), seed=5)(images)
    second = Augment("crop_flip", 32, torch.device("cpu"), seed=5)(images)
    other = Augment("crop_flip", 32, torch.device("cpu"), seed=6)(images)
    assert torch.equal(first, second) and not torch.equal(first, other)
    assert first.dtype == torch.uint8 and first.shape == images.shape
    allowed = set(images.unique().tolist()) | {0}
    assert set(first.unique().tolist()) <= allowed


def test_flip_only_flips_whole_images():
    images, _ = rgb_data(32)
    flipped = Augment("flip", 32, torch.device("cpu"), seed=1)(images)
    same = [torch.equal(a, b) for a, b in zip(flipped, images, strict=True)]
    mirrored = [torch.equal(a, b.flip(2)) for a, b in zip(flipped, images, strict=True)]
    assert all(s or m for s, m in zip(same, mirrored, strict=True))
    assert 0 < sum(mirrored) < 32


def test_warmup_cosine_shape():
    values = [warmup_cosine(step, 100, 10) for step in range(100)]
    assert values[0] == pytest.approx(0.1) and values[9] == pytest.approx(1.0)
    assert values[10] == pytest.approx(1.0) and values[-1] < 0.01
    assert all(a >= b for a, b in zip(values[10:], values[11:], strict=False))


@pytest.mark.parametrize("schedule", ["onecycle", "cosine"])
def test_schedules_train(schedule):
    state = make_trainer(schedule=schedule, epochs=2, warmup_epochs=0.5).fit()
    assert state.history[1]["train_loss"] < state.history[0]["train_loss"]


def test_epoch_shards_are_disjoint_and_cover_the_permutation():
    order = torch.randperm(103, generator=torch.Generator().manual_seed(0))
    shards = [epoch_shard(order, rank, 3) for rank in range(3)]
    union = torch.cat(shards)
    assert len(union) == 102 and len(set(union.tolist())) == 102
    assert set(union.tolist()) <= set(order.tolist())


def test_host_batches_match_device_batches():
    images, labels = rgb_data(64, size=8)
    device = DeviceBatches(images, labels, 16, torch.device("cpu"), seed=4)
    host = HostBatches(images, labels, 16, torch.device("cpu"), seed=4, workers=0)
    for (a, la), (b, lb) in zip(device, host, strict=True):
        assert torch.equal(a, b) and torch.equal(la, lb)


@pytest.mark.parametrize(
    ("flags", "precision", "profile"),
    [("avx2,fma", "fp32", "AVX2"), ("avx2,fma,avx512f,avx512_bf16", "bf16", "AVX-512 bf16")],
)
def test_policy_records_every_choice_on_cpu(monkeypatch, flags, precision, profile):
    """Both CPU branches on any machine: the detected flags are overridden."""
    monkeypatch.setenv(OVERRIDE_ENV, flags)
    _, _, policy = resolve_policy(TrainParams(), torch.zeros(10, 1, 8, 8, dtype=torch.uint8))
    assert policy.as_dict() == {
        "device": "cpu",
        "device_name": "cpu",
        "precision": precision,
        "tf32": "off",
        "channels_last": True,
        "data_on_device": True,
        "compile": False,
        "deterministic": False,
        "cpu": profile,
    }


def test_channels_last_and_ema():
    trainer = make_trainer(epochs=2, ema=0.9)
    conv = next(m for m in trainer.model.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    state = trainer.fit()
    assert state.history[-1]["val_accuracy"] > 0.5
    ema_weights = trainer.final_state_dict()
    raw = trainer.model.state_dict()
    key = next(k for k in raw if k.endswith("weight"))
    assert not torch.equal(ema_weights[key], raw[key])


def test_early_stopping_keeps_the_best_epoch_weights():
    trainer = make_trainer(epochs=10, patience=2, target_accuracy=0.6)
    accuracies = iter([0.5, 0.7, 0.65, 0.6, 0.9])
    snapshots = []
    real_validate = trainer.validate

    def scripted_validate(batch_size):
        loss, _ = real_validate(batch_size)
        snapshots.append(trainer.final_state_dict())
        return loss, next(accuracies)

    trainer.validate = scripted_validate
    state = trainer.fit()
    assert state.stopped_early and state.epoch == 4
    assert state.target_epoch == 2 and state.seconds_to_target > 0
    shipped = trainer.shipped_weights()
    assert all(torch.equal(shipped[k], snapshots[1][k]) for k in shipped)


@pytest.mark.parametrize("arch", ["resnet_cifar", "torchvision:resnet18"])
def test_cifar_class_models_train_on_32x32_rgb(arch):
    torch.manual_seed(0)
    images, labels = rgb_data(96)
    spec = ModelSpec(arch=arch, in_channels=3, image_size=32, num_classes=4, width=8)
    model = WithPreprocessing(build_model(spec), [0.2] * 3, [0.3] * 3)
    params = TrainParams(epochs=3, batch_size=32, lr=0.003, augment="crop_flip")
    trainer = trainer_for_tensors(
        model,
        (images, labels),
        (images[:32], labels[:32]),
        params,
        torch.device("cpu"),
        choose_precision("fp32", "cpu", None),
        seed=0,
    )
    state = trainer.fit()
    losses = [h["train_loss"] for h in state.history]
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0]


@pytest.mark.slow
def test_compiled_model_trains():
    trainer = make_trainer(epochs=2, width=8, compile=True)
    state = trainer.fit()
    assert trainer.forward is not trainer.model
    assert state.history[1]["train_loss"] < state.history[0]["train_loss"]


def test_onecycle_with_very_few_steps_still_trains():
    images, labels = rgb_data(48, size=8)
    spec = ModelSpec(arch="small_cnn", in_channels=3, image_size=8, num_classes=4, width=8)
    model = WithPreprocessing(build_model(spec), [0.2] * 3, [0.3] * 3)
    params = TrainParams(epochs=1, batch_size=16)  # 3 steps in all
    trainer = trainer_for_tensors(
        model,
        (images, labels),
        (images, labels),
        params,
        torch.device("cpu"),
        choose_precision("fp32", "cpu", None),
        seed=0,
    )
    state = trainer.fit()
    assert state.step == 3 and torch.isfinite(torch.tensor(state.history[0]["train_loss"]))
