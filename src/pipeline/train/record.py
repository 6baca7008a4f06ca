"""The train record: what metrics/train.json (its figures) and metrics/details/train.json (the
whole record) say about a finished run."""

from __future__ import annotations

import copy
import platform
from typing import Any

import torch

from pipeline.hardware.memory import peak_memory
from pipeline.hardware.peak import compute_report, flops_per_image
from pipeline.train.loop import Trainer
from pipeline.train.setup import TrainSetup

LAST_EPOCH = ("train_loss", "train_accuracy", "val_loss", "val_accuracy")


def train_record(setup: TrainSetup, trainer: Trainer, figures: dict[str, Any]) -> dict[str, Any]:
    """``figures``: the account's time, images and energy (the whole run's, this process's
    under ``process``); the rest describes the trained model, the setup and what it used."""
    record = {**model_figures(trainer), **figures, **batch_figures(trainer, setup.group)}
    fine_tuning = fine_tuning_record(setup, trainer)
    memory_peak, compute = device_figures(setup, figures["process"])
    record.update(
        nonfinite_steps=trainer.state.nonfinite_steps,
        skipped_steps=trainer.state.skipped_steps,
        policy=setup.policy.as_dict(),
        torch_version=torch.__version__,
        python_version=platform.python_version(),
        memory_peak=memory_peak,
        data_path=setup.data_path,
        compute=compute,
        fine_tuning=fine_tuning,
    )
    return record


def model_figures(trainer: Trainer) -> dict[str, Any]:
    state = trainer.state
    return {
        **{key: state.history[-1][key] for key in LAST_EPOCH},
        "best_val_accuracy": state.best_val_accuracy,
        "epochs": state.epoch,
        "stopped_early": state.stopped_early,
    }


def batch_figures(trainer: Trainer, group) -> dict[str, Any]:
    state, train = trainer.state, trainer.params
    return {
        "target_accuracy": train.target_accuracy,
        "target_epoch": state.target_epoch,
        "seconds_to_target": state.seconds_to_target,
        "batch_size": train.batch_size,
        "global_batch_size": train.batch_size * group.world_size,
        "grad_accumulation": train.grad_accumulation,
        "effective_batch_size": train.batch_size * train.grad_accumulation * group.world_size,
        "world_size": group.world_size,
    }


def device_figures(setup: TrainSetup, process: dict) -> tuple[dict, dict]:
    """(this process's device memory peak, its achieved FLOP/s). The peak is read first: on
    CUDA, measuring the device's peak FLOP/s allocates memory of its own. FLOP/s come from the
    steady-state rate (after the warm-up epoch) when there is one."""
    memory_peak = peak_memory(setup.device)
    rate = process["steady_state_images_per_s"] or process["images_per_s"]
    if rate is None:
        return memory_peak, {
            "achieved_gflops": None,
            "reason": "no epoch was trained in this process",
        }
    network = copy.deepcopy(setup.model.model)  # counting puts it in eval mode
    forward_flops = flops_per_image(network, torch.zeros(1, *setup.meta.input_shape))
    per_rank = rate / setup.group.world_size
    dtype = setup.precision.autocast_dtype
    return memory_peak, compute_report(forward_flops, per_rank, setup.device, dtype)


def fine_tuning_record(setup: TrainSetup, trainer: Trainer) -> dict:
    """What the record says about the start weights and fine-tuning controls."""
    train, start = setup.params.train, setup.start
    return {
        "pretrained": start.info.record() if start is not None else None,
        "freeze_backbone_epochs": train.freeze_backbone_epochs,
        "backbone_lr_factor": train.backbone_lr_factor,
        "grad_clip_norm": train.grad_clip_norm,
        "sync_batchnorm": trainer.synced_batchnorm,
    }
