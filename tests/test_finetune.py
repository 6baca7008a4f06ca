"""Fine-tuning controls in the Trainer: frozen backbone, backbone LR factor, clipping,
gradient accumulation, SyncBatchNorm conversion. A few CPU steps each on the digits data."""

import functools

import pytest
import torch
from torch import nn

from pipeline.core.config import TrainParams
from pipeline.core.errors import PipelineError
from pipeline.models import ModelSpec, build_model
from pipeline.models.parts import head_parameter_names
from pipeline.models.preprocess import WithPreprocessing
from pipeline.train.finetune import sync_batchnorm
from pipeline.train.loop import trainer_for_tensors
from pipeline.train.policy import choose_precision
from test_train import digits_tensors as split_digits

FP32 = choose_precision("fp32", "cpu", None)


@functools.cache
def digits_tensors():
    return split_digits()


def digits_trainer(width=8, model=None, head=None, **train):
    torch.manual_seed(0)
    train_data, val, mean, std = digits_tensors()
    if model is None:
        network = build_model(ModelSpec("small_cnn", 1, 8, 10, width=width))
        model = WithPreprocessing(network, mean, std)
        head = {f"model.{name}" for name in head_parameter_names(network, 10)}
    params = TrainParams(**{"epochs": 2, "batch_size": 64, "channels_last": False, **train})
    return trainer_for_tensors(
        model, train_data, val, params, torch.device("cpu"), FP32, seed=0, head=head
    )


def snapshot(trainer):
    return {name: p.detach().clone() for name, p in trainer.model.named_parameters()}


def changed(before, after, names):
    return {name for name in names if not torch.equal(before[name], after[name])}


def test_frozen_backbone_does_not_move_in_frozen_epochs_and_does_after():
    trainer = digits_trainer(epochs=2, freeze_backbone_epochs=1, batch_size=256)
    backbone = set(snapshot(trainer)) - trainer.head
    start = snapshot(trainer)
    trainer.params = trainer.params.model_copy(update={"epochs": 1})
    trainer.fit()
    after_frozen = snapshot(trainer)
    assert changed(start, after_frozen, backbone) == set()
    assert changed(start, after_frozen, trainer.head) == trainer.head
    trainer.params = trainer.params.model_copy(update={"epochs": 2})
    trainer.fit()
    assert changed(after_frozen, snapshot(trainer), backbone) == backbone


def test_backbone_lr_factor_makes_two_param_groups_with_their_own_peaks():
    trainer = digits_trainer(lr=0.01, backbone_lr_factor=0.1)
    groups = {group["name"]: group for group in trainer.optimizer.param_groups}
    assert groups["backbone"]["max_lr"] == pytest.approx(0.001)
    assert groups["head"]["max_lr"] == pytest.approx(0.01)
    head_ids = {id(p) for name, p in trainer.model.named_parameters() if name in trainer.head}
    assert {id(p) for p in groups["head"]["params"]} == head_ids
    every = len(list(trainer.model.parameters()))
    assert len(groups["backbone"]["params"]) + len(head_ids) == every
    # The default keeps today's single group.
    assert len(digits_trainer().optimizer.param_groups) == 1


def test_grad_clip_norm_bounds_the_gradient_norm():
    images, labels = digits_tensors()[0]
    norms = {}
    for clip in (None, 0.01):
        trainer = digits_trainer(grad_clip_norm=clip)
        trainer.model.train()
        trainer.train_step(images[:64], labels[:64])
        grads = [p.grad for p in trainer.model.parameters() if p.grad is not None]
        norms[clip] = torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])).item()
    assert norms[None] > 0.1  # the clip below really bites
    assert norms[0.01] <= 0.01 * (1 + 1e-4)


class Linear(nn.Module):
    """No BatchNorm, no dropout: k micro-batches and one k-times batch see the same math."""

    def __init__(self):
        super().__init__()
        self.flat = nn.Flatten()
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        return self.fc(self.flat(x))


def test_accumulating_micro_batches_equals_one_larger_batch_in_fp32():
    weights = {}
    for batch, group in ((128, 1), (32, 4)):
        torch.manual_seed(0)
        model = WithPreprocessing(Linear(), [0.3], [0.4])
        head = {"model.fc.weight", "model.fc.bias"}
        trainer = digits_trainer(
            model=model, head=head, batch_size=batch, grad_accumulation=group, epochs=1
        )
        assert trainer.steps_per_epoch == len(trainer.batches) // group
        initial = snapshot(trainer)
        trainer.fit()
        assert trainer.state.step == trainer.steps_per_epoch
        weights[group] = snapshot(trainer)
    assert changed(initial, weights[4], initial) == set(initial)  # both really trained
    for name in weights[1]:
        torch.testing.assert_close(weights[4][name], weights[1][name], rtol=1e-4, atol=1e-5)


def test_accumulation_larger_than_an_epoch_is_refused_in_one_line():
    with pytest.raises(PipelineError, match="grad_accumulation 1000 needs at least 1000 batches"):
        digits_trainer(grad_accumulation=1000)


def test_sync_batchnorm_converts_under_ddp_and_refuses_cpu(tmp_path):
    model = build_model(ModelSpec("small_cnn", 1, 8, 10, width=4))
    # One process, or no process group: nothing to synchronise, nothing converted.
    assert sync_batchnorm(model, True, 1, torch.device("cpu")) is False
    assert sync_batchnorm(model, True, 2, torch.device("cpu")) is False  # no group joined
    store = torch.distributed.FileStore(str(tmp_path / "store"), 1)
    torch.distributed.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        with pytest.raises(PipelineError, match="GPUs only"):
            sync_batchnorm(model, True, 2, torch.device("cpu"))
        assert sync_batchnorm(model, False, 2, torch.device("cuda")) is False
        # The conversion itself needs no GPU; only SyncBatchNorm's training forward does.
        assert sync_batchnorm(model, True, 2, torch.device("cuda")) is True
    finally:
        torch.distributed.destroy_process_group()
    kinds = {type(m) for m in model.modules()}
    assert nn.SyncBatchNorm in kinds and nn.BatchNorm2d not in kinds
