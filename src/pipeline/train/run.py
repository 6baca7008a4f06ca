"""One training run: prepared data in, weights + model card out, the train record returned."""

from __future__ import annotations

import contextlib
import platform
import random
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.core import paths
from pipeline.core.config import Params, TrainParams
from pipeline.core.errors import PipelineError
from pipeline.core.io import sha256_json
from pipeline.core.versioning import code_version
from pipeline.hardware.memory import peak_memory
from pipeline.hardware.peak import flops_per_image
from pipeline.models import build_model
from pipeline.models.files import ModelCard, save_trained
from pipeline.models.parts import head_parameter_names
from pipeline.models.preprocess import WithPreprocessing
from pipeline.models.pretrained import StartWeights
from pipeline.prepared.storage import split_shards
from pipeline.train.accounting import RunAccount, epochs_line
from pipeline.train.checkpoint import (
    RunIdentity,
    find_resume,
    remove_run,
    report,
    save_checkpoint,
)
from pipeline.train.distributed import gather_rng_states, maybe_inject_fault
from pipeline.train.feeders import StepSetup
from pipeline.train.loop import Trainer
from pipeline.train.progress import log_live, progress_line, step_bar
from pipeline.train.resources import compute_report
from pipeline.train.setup import TrainSetup, build_setup
from pipeline.train.state import EpochStats


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def prepared_hashes(prepared: Path) -> dict[str, list[str]]:
    """Every train and val shard's sha256, checked against meta.json's index (one read pass)."""
    return {name: split_shards(prepared, name).verify() for name in ("train", "val")}


def resolved_choices(device: torch.device, policy) -> dict[str, str]:
    """What ``auto`` resolved to on this machine, which a resumed run must share: the device
    kind, the precision (``tf32`` where fp32 runs on TF32 units) and the CPU profile."""
    return {"device": device.type, "precision": policy.precision, "cpu": policy.cpu}


def fingerprint(
    params: Params,
    batch_size: int,
    data: dict[str, str],
    world_size: int = 1,
    resolved: dict[str, str] | None = None,
) -> str:
    """What a checkpoint must match to be resumed: the math of the run, the data it saw
    (``data``: :func:`prepared_hashes`), the code that ran it (docs/architecture.md says
    why the code is in) and what ``auto`` resolved to (``resolved``: the params' ``device``
    and ``precision`` as written are left out, ``cuda:1`` and ``auto`` alike)."""
    train = params.train.model_dump(
        exclude={
            "device",
            "precision",
            "data_path",  # memory and stream give the same batches
            "data_on_device",
            "checkpoint_every",
            "num_workers",
            "auto_batch_size",
            "distributed",
            "stream_prefetch_batches",
        }
    )
    train["batch_size"] = batch_size
    train["effective_batch_size"] = batch_size * params.train.grad_accumulation * world_size
    if params.train.distributed.sync_batchnorm:
        train["sync_batchnorm"] = True
    if world_size > 1:  # shards and global batch; absent for one process, so old checkpoints match
        train["world_size"] = world_size
    payload = {
        "seed": params.seed,
        "train": train,
        "model": params.model.model_dump(),
        "data": data,
        "code": code_version(),
    }
    if resolved is not None:
        payload["resolved"] = resolved
    return sha256_json(payload)


def run_identity(params: Params, batch_size: int, data: dict, world_size: int, resolved: dict):
    return RunIdentity(
        fingerprint(params, batch_size, data, world_size, resolved),
        fingerprint(params, batch_size, data, world_size),
        resolved,
    )


def checkpointer(folder: Path, every: int, run: RunIdentity, group, account: RunAccount):
    def save(trainer: Trainer) -> None:
        epoch = trainer.state.epoch
        if every and (epoch % every == 0 or epoch == trainer.params.epochs):
            account.stamp(trainer)  # whole-run totals so far (a collective)
            rng = gather_rng_states(group, trainer.rng_state())  # every rank's own (a collective)
            if group.is_writer:
                state = {**trainer.state_dict(rng), "epoch": epoch, **run.stamp()}
                save_checkpoint(folder, epoch, state, run.fingerprint)
            group.barrier()  # rank 0 has finished writing before any rank can go on (or die)
        maybe_inject_fault(group, epoch)

    return save


def batch_checkpointer(folder: Path, every: int, run: RunIdentity, group, account):
    """train.checkpoint_every_batches: a checkpoint inside the epoch, at the end of every
    ``every``-th micro-batch (the epoch's own checkpoint covers its last batch)."""

    def save(trainer: Trainer, index: int) -> None:
        if every and index % every == 0 and index < trainer.usable_batches:
            account.stamp(trainer)
            progress = trainer.epoch_progress(index)  # the epoch's sums so far (a collective)
            rng = gather_rng_states(group, trainer.rng_state())
            if group.is_writer:
                state = {**trainer.state_dict(rng, progress), "epoch": trainer.state.epoch}
                state.update(run.stamp())
                save_checkpoint(folder, trainer.state.epoch, state, run.fingerprint, index)
            group.barrier()
        maybe_inject_fault(group, trainer.state.epoch + 1, index)

    return save


def out_of_memory_message(batch_size: int) -> str:
    return (
        f"CUDA out of memory at train.batch_size={batch_size}; try train.batch_size="
        f"{max(1, batch_size // 2)}, or set train.auto_batch_size: true"
    )


def build_trainer(setup: TrainSetup, batch_size: int) -> Trainer:
    seed_everything(setup.params.seed)
    spec, start, group = setup.spec, setup.start, setup.group
    network = build_model(spec)  # random init first: the head's is the same with or without start
    if start is not None:
        start.load_into(network)
    model = WithPreprocessing(network, *setup.normalisation())
    head = frozenset(f"model.{name}" for name in head_parameter_names(network, spec.num_classes))
    train_params = setup.params.train.model_copy(update={"batch_size": batch_size})
    policy = setup.policy
    step = StepSetup(
        setup.device, setup.precision, setup.params.seed, policy.channels_last,
        policy.data_on_device, group.rank, group.world_size, group.all_reduce, head,
    )  # fmt: skip
    feeder, validation = setup.data.feeder(train_params, step), setup.data.validation(step)
    return Trainer(model, feeder, validation, train_params, step)


def train_once(setup: TrainSetup, trainer: Trainer, run: RunIdentity, live) -> Trainer:
    """Resume if a matching checkpoint exists, then train to the end, checkpointing."""
    params, group, account, folder = setup.params, setup.group, setup.account, setup.checkpoints
    resume = find_resume(folder, run.fingerprint, run)
    if group.is_writer:
        report(resume.message)
    resumed_epoch = resume.state["epoch"] if resume.state is not None else 0
    progress = resume.state.get("progress") if resume.state is not None else None
    resumed_batch = progress["batches"] if progress is not None else 0
    if not (group.same_everywhere(resumed_epoch) and group.same_everywhere(resumed_batch)):
        raise PipelineError(f"ranks found different checkpoints in {folder}; is it shared?")
    if resume.state is not None:
        trainer.load_state_dict(resume.state)
    for past in trainer.state.history if group.is_writer else ():
        log_live(live, past)  # curves stay whole across a resume
    line = progress_line(params.train.epochs, trainer.state.epoch + 1)
    save = checkpointer(folder, params.train.checkpoint_every, run, group, account)
    with step_bar(trainer, group.is_writer and sys.stderr.isatty()) as bar:

        def on_epoch(stats: EpochStats) -> None:
            if group.is_writer:
                bar.write(line(stats))
                log_live(live, stats.as_dict())

        every = params.train.checkpoint_every_batches
        save_batch = batch_checkpointer(folder, every, run, group, account)

        def on_batch(index: int) -> None:
            if bar.advance is not None:
                bar.advance(index)
            save_batch(trainer, index)

        trainer.fit(on_epoch=on_epoch, on_checkpoint=save, on_batch=on_batch)
    return trainer


def train_metrics(trainer: Trainer, policy, group, figures: dict[str, Any]) -> dict[str, Any]:
    """Time, images and energy (``figures``): the whole run's, this process's under
    ``process``; the rest describes the trained model and the setup."""
    state = trainer.state
    last = state.history[-1]
    return {
        **{k: last[k] for k in ("train_loss", "train_accuracy", "val_loss", "val_accuracy")},
        "best_val_accuracy": state.best_val_accuracy,
        "epochs": state.epoch,
        "stopped_early": state.stopped_early,
        **figures,
        "target_accuracy": trainer.params.target_accuracy,
        "target_epoch": state.target_epoch,
        "seconds_to_target": state.seconds_to_target,
        "batch_size": trainer.params.batch_size,
        "global_batch_size": trainer.params.batch_size * group.world_size,
        "grad_accumulation": trainer.params.grad_accumulation,
        "effective_batch_size": (
            trainer.params.batch_size * trainer.params.grad_accumulation * group.world_size
        ),
        "world_size": group.world_size,
        "nonfinite_steps": state.nonfinite_steps,
        "skipped_steps": state.skipped_steps,
        "policy": policy.as_dict(),
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
    }


def nondeterministic_op_message(error: RuntimeError) -> str | None:
    """One line for torch's "X does not have a deterministic implementation" (e.g. adaptive
    average pooling's CUDA backward in torchvision models), or None for any other error."""
    text = str(error)
    if "does not have a deterministic implementation" not in text:
        return None
    op = text.split(" does not have", 1)[0].split()[-1]
    return (
        f"train.deterministic: {op} has no deterministic implementation on this device; "
        "set train.deterministic: false, or pick a model.arch without that op"
    )


def train_with_backoff(setup: TrainSetup) -> tuple[Trainer, str]:
    """Train to the end; on CUDA out-of-memory, halve the batch size if allowed and retry.
    Returns the trainer and the fingerprint of the run it finished."""
    from dvclive import Live  # heavy import; only the train stage needs it

    params, group, root = setup.params, setup.group, setup.root
    data_hashes: dict = prepared_hashes(root / paths.PREPARED_DIR)
    if setup.start is not None:  # the same path may later hold other weights: resume on these
        data_hashes["pretrained"] = setup.start.info.sha256
    resolved = resolved_choices(setup.device, setup.policy)
    batch_size = params.train.batch_size
    while True:
        run = run_identity(params, batch_size, data_hashes, group.world_size, resolved)
        trainer = build_trainer(setup, batch_size)
        # Live clears its folder on start: one process owns it.
        live = (
            Live(str(root / paths.TRAIN_LIVE_DIR), dvcyaml=False, save_dvc_exp=False, resume=False)
            if group.is_writer
            else contextlib.nullcontext()
        )
        try:
            with live as logger:
                trained = train_once(setup, trainer, run, logger)
                return trained, run.fingerprint
        except torch.OutOfMemoryError:
            del trainer
            if setup.device.type == "cuda":
                torch.cuda.empty_cache()
            # Several processes cannot retry alone: the others wait in a collective.
            if not params.train.auto_batch_size or batch_size == 1 or group.world_size > 1:
                raise PipelineError(out_of_memory_message(batch_size)) from None
            batch_size //= 2
            print(f"train: out of memory; retrying with batch size {batch_size}", file=sys.stderr)
        except RuntimeError as error:
            if (message := nondeterministic_op_message(error)) is None:
                raise
            raise PipelineError(message) from None


def run_training(params: Params, root: Path = Path("."), group=None) -> dict[str, Any] | None:
    """Train and save the model; return the train record on the rank that writes outputs (the
    stage script writes it to metrics/), None on the others."""
    from pipeline.train.distributed import SINGLE

    group = group or SINGLE
    account = RunAccount(group)  # the run's one clock starts here
    setup = build_setup(params, root, group, account)
    trainer, run_fingerprint = train_with_backoff(setup)
    metrics = train_metrics(trainer, setup.policy, group, account.close(trainer))
    metrics["memory_peak"] = peak_memory(setup.device)
    metrics["data_path"] = setup.data_path
    metrics["compute"] = compute_figures(setup, metrics["process"])
    metrics["fine_tuning"] = fine_tuning_record(params.train, trainer, setup.start)
    if group.is_writer:
        save_model(setup, trainer)
        report(epochs_line(trainer))
        removed = remove_run(setup.checkpoints, run_fingerprint)
        if removed:
            report(f"run finished: removed its {removed} checkpoint(s), it is never resumed")
    group.barrier()
    return metrics if group.is_writer else None


def compute_figures(setup: TrainSetup, process: dict) -> dict:
    """Achieved FLOP/s from this process's steady-state rate (after its warm-up epoch) when
    there is one: the device it ran on is this process's."""
    rate = process["steady_state_images_per_s"] or process["images_per_s"]
    if rate is None:
        return {"achieved_gflops": None, "reason": "no epoch was trained in this process"}
    shape = setup.meta.input_shape
    forward_flops = flops_per_image(build_model(setup.spec), torch.zeros(1, *shape))
    per_rank = rate / setup.group.world_size
    return compute_report(forward_flops, per_rank, setup.device, setup.precision.autocast_dtype)


def fine_tuning_record(train: TrainParams, trainer: Trainer, start: StartWeights | None) -> dict:
    """What metrics/details/train.json says about the start weights and fine-tuning controls."""
    return {
        "pretrained": start.info.record() if start is not None else None,
        "freeze_backbone_epochs": train.freeze_backbone_epochs,
        "backbone_lr_factor": train.backbone_lr_factor,
        "grad_clip_norm": train.grad_clip_norm,
        "sync_batchnorm": trainer.synced_batchnorm,
    }


def save_model(setup: TrainSetup, trainer: Trainer) -> None:
    mean, std = setup.normalisation()
    shipped = WithPreprocessing(build_model(setup.spec), mean, std)
    shipped.load_state_dict(trainer.shipped_weights())
    start = setup.start
    card = ModelCard.for_training(
        setup.params.model,
        setup.meta,
        normalisation=(mean, std),
        pretrained=start.info.record() if start is not None else None,
    )
    save_trained(setup.root / paths.MODELS_DIR, shipped.model, card)
