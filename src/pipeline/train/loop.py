"""The training loop: one precision path, device-side running sums, few host syncs.

Host<->device synchronisation points are marked ``# sync``; there is none inside a step.
"""

from __future__ import annotations

import contextlib
import copy
import time
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from pipeline.core.config import TrainParams
from pipeline.core.errors import PipelineError
from pipeline.hardware.precision import Precision
from pipeline.train.augment import Augment
from pipeline.train.batches import EpochOrder
from pipeline.train.feeders import Feeder, InMemory, StepSetup, Validation
from pipeline.train.finetune import param_groups, set_backbone_trainable, sync_batchnorm
from pipeline.train.schedule import make_scheduler
from pipeline.train.state import EpochProgress, EpochStats, ProcessWork, TrainState

NONFINITE_CHECK_EVERY = 50  # steps between reads of the non-finite counter (each read syncs)


class NonFiniteLossError(PipelineError):
    pass


def make_optimizer(
    model: nn.Module, params: TrainParams, head: set[str] | None = None
) -> torch.optim.Optimizer:
    # Fused AdamW: one kernel for all parameters, and it takes GradScaler's inf check without a
    # host sync (non-fused optimizers make scaler.step() read found_inf on the host every step).
    return torch.optim.AdamW(
        param_groups(model, params, head),
        lr=params.lr,
        weight_decay=params.weight_decay,
        fused=True,
    )


def make_scaler(device: torch.device, precision: Precision) -> torch.amp.GradScaler:
    """fp16 needs loss scaling. Other precisions get a fixed scale of 1 that never grows: the
    scaler then only serves to skip steps whose gradients are not finite, without a sync."""
    if precision.use_grad_scaler:
        return torch.amp.GradScaler(device.type)
    return torch.amp.GradScaler(device.type, init_scale=1.0, growth_interval=2**30)


class Trainer:
    """Owns model, optimiser, schedule, scaler, EMA and data order; checkpointable as a whole."""

    def __init__(
        self,
        model: nn.Module,
        feeder: Feeder,
        validation: Validation,
        params: TrainParams,
        step: StepSetup,
    ) -> None:
        self.params, self.step = params, step
        self.device, self.precision = step.device, step.precision
        self.channels_last, self.all_reduce = step.channels_last, step.all_reduce
        self.rank, self.world_size, self.head = step.rank, step.world_size, step.head
        layout = torch.channels_last if step.channels_last else torch.contiguous_format
        self.synced_batchnorm = sync_batchnorm(
            model, params.distributed.sync_batchnorm, step.world_size, step.device
        )
        self.model = model.to(step.device, memory_format=layout)
        self.batches, self.validation = feeder, validation
        self.augment = Augment(params.augment, feeder.image_side, step.device, step.seed + 1)
        self.steps_per_epoch = self._steps_per_epoch()
        self.optimizer = make_optimizer(self.model, params, step.head)
        self.scheduler = make_scheduler(self.optimizer, params, self.steps_per_epoch)
        self.scaler = make_scaler(step.device, step.precision)
        self.loss_fn = nn.CrossEntropyLoss(label_smoothing=params.label_smoothing)
        self.ema = (
            AveragedModel(
                self.model, multi_avg_fn=get_ema_multi_avg_fn(params.ema), use_buffers=True
            )
            if params.ema
            else None
        )
        self.best_weights: dict[str, torch.Tensor] | None = None
        self.state = TrainState()
        self.work = ProcessWork()
        self.resume_at: EpochProgress | None = None  # a batch checkpoint's place, until used
        self._reset_counters()
        self.frozen = False
        self._set_frozen(self._frozen_at(0))
        self._build_forward()

    def _build_forward(self) -> None:
        # Train steps go through DDP (gradients all-reduced in backward); self.model stays the
        # plain module, for state_dict, EMA and validation (which must not sync). Rebuilt when
        # the backbone thaws: DDP syncs only the parameters that required grad when wrapped.
        self.ddp = self._distributed(self.world_size)
        train_model = self.ddp or self.model
        self.forward = torch.compile(train_model) if self.params.compile else train_model

    def _distributed(self, world_size: int) -> DistributedDataParallel | None:
        if world_size == 1 or not torch.distributed.is_initialized():
            return None
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(self.model, device_ids=device_ids)

    def _steps_per_epoch(self) -> int:
        """Optimiser steps per epoch: whole groups of grad_accumulation micro-batches."""
        batches, group = len(self.batches), self.params.grad_accumulation
        if batches < group:
            raise PipelineError(
                f"train.grad_accumulation {group} needs at least {group} batches per epoch; "
                f"this train split gives {batches} at train.batch_size {self.batches.batch_size}"
            )
        return batches // group

    def _frozen_at(self, epoch: int) -> bool:
        """Whether the backbone is frozen in the epoch after ``epoch`` finished ones."""
        return epoch < self.params.freeze_backbone_epochs

    def _set_frozen(self, frozen: bool) -> bool:
        """Freeze or thaw the backbone; whether that changed anything."""
        if frozen == self.frozen:
            return False
        set_backbone_trainable(self.model, self.head, not frozen)
        self.frozen = frozen
        return True

    def _reset_counters(self) -> None:
        zeros = {"device": self.device}
        self.loss_sum = torch.zeros((), **zeros)
        self.correct = torch.zeros((), dtype=torch.long, **zeros)
        self.nonfinite = torch.zeros((), dtype=torch.long, **zeros)
        self.skipped = torch.zeros((), dtype=torch.long, **zeros)

    @property
    def eval_model(self) -> nn.Module:
        return self.ema.module if self.ema is not None else self.model

    def _input(self, images: torch.Tensor) -> torch.Tensor:
        return (
            images.contiguous(memory_format=torch.channels_last) if self.channels_last else images
        )

    def _autocast(self):
        return torch.autocast(
            self.device.type,
            dtype=self.precision.autocast_dtype or torch.float32,
            enabled=self.precision.autocast_enabled,
        )

    def _no_sync(self, last: bool):
        """DDP all-reduces gradients only on the last micro-batch of an accumulation group."""
        if last or self.ddp is None:
            return contextlib.nullcontext()
        return self.ddp.no_sync()

    def train_step(self, images: torch.Tensor, labels: torch.Tensor, micro: int = 0) -> None:
        """One micro-batch; ``micro``: its place in the accumulation group (0 = first). The
        optimiser steps after the group's last one."""
        group = self.params.grad_accumulation
        last = micro == group - 1
        if self.augment.active:
            images = self.augment(images)
        with self._no_sync(last):
            with self._autocast():
                logits = self.forward(self._input(images))
                loss = self.loss_fn(logits, labels)
            if micro == 0:
                self.optimizer.zero_grad(set_to_none=True)
            # Mean over the group: summed micro-batch grads then equal one group-sized batch's.
            scaled = self.scaler.scale(loss / group if group > 1 else loss)
            scaled.backward()
        if last:
            self._optimizer_step()
        finite = torch.isfinite(loss.detach())
        self.loss_sum += torch.where(finite, loss.detach().float(), 0.0) * len(labels)
        self.nonfinite += (~finite).long()
        self.correct += (logits.argmax(1) == labels).sum()

    def _optimizer_step(self) -> None:
        scale_before = self.scaler._scale.clone()  # no public tensor accessor; get_scale() syncs
        if self.params.grad_clip_norm is not None:
            self.scaler.unscale_(self.optimizer)  # clip the true gradients, not scaled ones
            nn.utils.clip_grad_norm_(self.model.parameters(), self.params.grad_clip_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        if self.ema is not None:
            self.ema.update_parameters(self.model)
        self.skipped += (self.scaler._scale < scale_before).long()
        self.state.step += 1

    def _check_finite(self, epoch: int, step: int) -> int:
        """This epoch's non-finite steps so far; raises past train.max_nonfinite_steps."""
        bad = int(self.nonfinite.item())  # sync, every NONFINITE_CHECK_EVERY steps
        if bad > self.params.max_nonfinite_steps:
            raise NonFiniteLossError(
                f"loss was NaN/inf in {self.state.nonfinite_steps + bad} step(s), more than "
                f"train.max_nonfinite_steps={self.params.max_nonfinite_steps} (epoch {epoch}, "
                f"step {step}); lower train.lr or try train.precision: fp32"
            )
        return bad

    @property
    def usable_batches(self) -> int:
        """Micro-batches an epoch trains: a partial accumulation group at the end is left out."""
        return self.steps_per_epoch * self.params.grad_accumulation

    def _begin_epoch(self) -> int:
        """Counters, learning rate and batch order for the next epoch; a resume from a batch
        checkpoint restores its sums (rank 0: they are group totals), replays the epoch's
        order from its generator state and skips the batches done. Returns batches done."""
        self._reset_counters()
        resume, self.resume_at = self.resume_at, None
        if resume is None:
            self.epoch_lr = self.scheduler.get_last_lr()[0]
            self.epoch_order_rng = self.batches.generator.get_state()
            self.epoch_seconds_before, self.images_before = 0.0, 0
            return 0
        self.epoch_lr, self.epoch_seconds_before = resume.lr, resume.seconds
        self.batches.generator.set_state(resume.order_rng)
        self.epoch_order_rng = resume.order_rng
        self.batches.skip_next_epoch(resume.batches)
        loss_sum, correct, nonfinite, skipped, images = resume.sums.tolist()
        self.images_before = int(images)
        if self.rank == 0:
            self.loss_sum.fill_(loss_sum)
            self.correct.fill_(int(correct))
            self.nonfinite.fill_(int(nonfinite))
            self.skipped.fill_(int(skipped))
        return resume.batches

    def run_epoch(
        self, on_batch: Callable[[int], None] | None = None
    ) -> tuple[float, float, int, int]:
        """(train loss, train accuracy, the epoch's images over the group, the part of them
        trained before a resume from a batch checkpoint: 0 for an epoch trained whole)."""
        self.model.train()
        if self._set_frozen(self._frozen_at(self.state.epoch)):
            self._build_forward()
        done = self._begin_epoch()
        self.epoch_started = time.perf_counter()
        epoch = self.state.epoch + 1
        group, usable = self.params.grad_accumulation, self.usable_batches
        # This rank's images of the epoch; rank 0 also holds the group's from before a resume.
        self.epoch_images = self.images_before if self.rank == 0 else 0
        for index, (images, labels) in enumerate(self.batches, start=done + 1):
            if index > usable:
                break
            self.train_step(images, labels, (index - 1) % group)
            self.epoch_images += len(labels)
            if on_batch is not None:
                on_batch(index)
            if index % NONFINITE_CHECK_EVERY == 0:
                self._check_finite(epoch, index)
        nonfinite = self._check_finite(epoch, usable)
        totals = self.all_reduce(
            torch.stack(
                [
                    self.loss_sum,
                    self.correct.float(),
                    torch.tensor(float(self.epoch_images), device=self.device),
                ]
            )
        )
        self.state.nonfinite_steps += nonfinite
        self.state.skipped_steps += int(self.skipped.item())
        loss_sum, correct, total = totals.tolist()  # sync: once per epoch
        return loss_sum / max(total, 1), correct / max(total, 1), int(total), self.images_before

    def epoch_progress(self, batches: int) -> EpochProgress:
        """Where this epoch stands after ``batches`` micro-batches, for a batch checkpoint (a
        collective under DDP: the sums are reduced over the group)."""
        sums = torch.stack(
            [
                self.loss_sum.double(),
                self.correct.double(),
                self.nonfinite.double(),
                self.skipped.double(),
                torch.tensor(float(self.epoch_images), dtype=torch.float64, device=self.device),
            ]
        )
        seconds = self.epoch_seconds_before + time.perf_counter() - self.epoch_started
        return EpochProgress(
            batches, self.epoch_lr, self.epoch_order_rng, seconds, self.all_reduce(sums).cpu()
        )

    def _share_buffers(self) -> None:
        """BatchNorm running stats drift apart between ranks after DDP's last broadcast of them
        (and EMA averages them per rank): validate every slice with rank 0's, which ship."""
        if self.world_size > 1 and torch.distributed.is_initialized():
            for buffer in self.eval_model.buffers():
                torch.distributed.broadcast(buffer, src=0)

    @torch.inference_mode()
    def validate(self, batch_size: int) -> tuple[float, float]:
        self._share_buffers()
        model = self.eval_model.eval()
        sums = torch.zeros(3, device=self.device)

        def loss_and_correct(batch: torch.Tensor, target: torch.Tensor):
            with self._autocast():
                logits = model(self._input(batch)).float()
            loss = nn.functional.cross_entropy(logits, target, reduction="sum")
            return loss, (logits.argmax(1) == target).sum()

        for images, labels in self.validation.batches(batch_size):
            loss, correct = loss_and_correct(images, labels)
            sums[0] += loss
            sums[1] += correct
            sums[2] += len(images)
        loss_sum, correct, count = self.all_reduce(sums).tolist()  # sync
        return loss_sum / count, correct / count

    def _record(self, stats: EpochStats, images: int, here: int, seconds: float) -> None:
        """``images``: the epoch's, over the group; ``here``: the part this process trained, in
        ``seconds`` (the whole run's totals add the time before a mid-epoch resume)."""
        state = self.state
        state.epoch = stats.epoch
        state.history.append(stats.as_dict())
        state.images_seen += images
        state.train_seconds += self.epoch_seconds_before + seconds
        state.warmup.append(len(state.epoch_images) == len(self.work.earlier.epoch_images))
        state.epoch_images.append(here)
        state.epoch_seconds.append(seconds)
        target = self.params.target_accuracy
        if target is not None and state.target_epoch is None and stats.val_accuracy >= target:
            state.target_epoch, state.seconds_to_target = stats.epoch, state.train_seconds
        if stats.val_accuracy > state.best_val_accuracy:
            state.best_val_accuracy, state.epochs_since_best = stats.val_accuracy, 0
            if self.params.patience:
                self.best_weights = copy.deepcopy(self.final_state_dict())
        else:
            state.epochs_since_best += 1
        patience = self.params.patience
        state.stopped_early = bool(patience) and state.epochs_since_best >= patience

    def fit(
        self,
        on_epoch: Callable[[EpochStats], None] | None = None,
        on_checkpoint: Callable[[Trainer], None] | None = None,
        on_batch: Callable[[int], None] | None = None,
    ) -> TrainState:
        while self.state.epoch < self.params.epochs and not self.state.stopped_early:
            started = time.perf_counter()
            train_loss, train_acc, images, before = self.run_epoch(on_batch)
            step_seconds = time.perf_counter() - started
            val_loss, val_acc = self.validate(self.params.batch_size * 4)
            here = images - before
            stats = EpochStats(
                self.state.epoch + 1,
                train_loss,
                train_acc,
                val_loss,
                val_acc,
                self.epoch_lr,
                time.perf_counter() - started,
                here / step_seconds,
            )
            self._record(stats, images, here, step_seconds)
            # Checkpoint first: once an epoch is reported, a kill can no longer lose it.
            if on_checkpoint is not None:
                on_checkpoint(self)
            if on_epoch is not None:
                on_epoch(stats)
        return self.state

    def final_state_dict(self) -> dict[str, torch.Tensor]:
        """Weights to ship: the EMA's when EMA is on, else the model's."""
        return {k: v.detach().to("cpu", copy=True) for k, v in self.eval_model.state_dict().items()}

    def shipped_weights(self) -> dict[str, torch.Tensor]:
        """With early stopping, the best epoch's weights; otherwise the last epoch's."""
        return self.best_weights if self.best_weights is not None else self.final_state_dict()

    def rng_state(self) -> dict[str, torch.Tensor]:
        """This process's generators. Under DDP every rank has its own (its CUDA device's, its
        dropout draws), so a checkpoint stores one of these per rank."""
        state = {
            "torch": torch.get_rng_state(),
            "batches": self.batches.generator.get_state(),
            "augment": self.augment.generator.get_state(),
        }
        if self.device.type == "cuda":
            state["cuda"] = torch.cuda.get_rng_state(self.device)
        return state

    def set_rng_state(self, rng: dict[str, torch.Tensor]) -> None:
        torch.set_rng_state(rng["torch"])
        if "cuda" in rng:
            torch.cuda.set_rng_state(rng["cuda"], self.device)
        self.batches.generator.set_state(rng["batches"])
        self.augment.generator.set_state(rng["augment"])

    def state_dict(
        self,
        rng_by_rank: list[dict[str, torch.Tensor]] | None = None,
        progress: EpochProgress | None = None,
    ) -> dict[str, Any]:
        """``rng_by_rank``: every rank's :meth:`rng_state`, gathered (one process: its own);
        ``progress``: where the epoch in progress stands (a batch checkpoint)."""
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "best_weights": self.best_weights,
            "rng": rng_by_rank if rng_by_rank is not None else [self.rng_state()],
            "state": asdict(self.state),
            "progress": progress.as_dict() if progress is not None else None,
        }

    def load_state_dict(self, saved: dict[str, Any]) -> None:
        self.model.load_state_dict(saved["model"])
        self.optimizer.load_state_dict(saved["optimizer"])
        self.scheduler.load_state_dict(saved["scheduler"])
        self.scaler.load_state_dict(saved["scaler"])
        if self.ema is not None and saved["ema"] is not None:
            self.ema.load_state_dict(saved["ema"])
        self.best_weights = saved["best_weights"]
        if len(saved["rng"]) != self.world_size:
            raise PipelineError(
                f"checkpoint holds RNG states of {len(saved['rng'])} processes, this run has "
                f"{self.world_size}"
            )
        self.set_rng_state(saved["rng"][self.rank])  # each rank its own, never rank 0's
        self.state = TrainState(**saved["state"])
        progress = saved.get("progress")
        self.resume_at = EpochProgress(**progress) if progress is not None else None
        batches = self.resume_at.batches if self.resume_at is not None else None
        earlier = TrainState(**copy.deepcopy(saved["state"]))  # not the lists self.state grows
        self.work = ProcessWork(self.state.epoch, earlier, batches)


def trainer_for_tensors(
    model: nn.Module,
    train: tuple[torch.Tensor, torch.Tensor],
    val: tuple[torch.Tensor, torch.Tensor],
    params: TrainParams,
    device: torch.device,
    precision: Precision,
    seed: int,
    **step: Any,
) -> Trainer:
    """A trainer over whole tensors (tests, benchmarks); ``step``: the rest of StepSetup."""
    data = InMemory(train, val, EpochOrder.whole(len(train[0])))
    setup = StepSetup(device, precision, seed, **step)
    return Trainer(model, data.feeder(params, setup), data.validation(setup), params, setup)
