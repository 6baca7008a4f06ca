"""One training run: prepared data in, weights + model card out, the train record returned.

The recipe: build the setup once (train/setup.py), train to the end, resuming this run's
checkpoint if one exists and halving the batch size on CUDA out-of-memory where allowed, then
write the record, the model, and remove the run's checkpoints.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path
from typing import Any

import torch

from pipeline.core import paths
from pipeline.core.config import Params
from pipeline.core.errors import PipelineError
from pipeline.models.files import ModelCard, save_trained
from pipeline.train.accounting import RunAccount, epochs_line
from pipeline.train.checkpoint import Checkpoints, report
from pipeline.train.identity import RunIdentities, RunIdentity
from pipeline.train.loop import Trainer
from pipeline.train.progress import Progress
from pipeline.train.record import train_record
from pipeline.train.setup import TrainSetup, build_setup


def run_training(params: Params, root: Path = Path("."), group=None) -> dict[str, Any] | None:
    """Train and save the model; return the train record on the rank that writes outputs (the
    stage script writes it to metrics/), None on the others."""
    from pipeline.train.distributed import SINGLE

    group = group or SINGLE
    account = RunAccount(group)  # the run's one clock starts here
    setup = build_setup(params, root, group, account)
    trainer, checkpoints = train_with_backoff(setup)
    figures = account.close(trainer)
    if group.is_writer:
        report(epochs_line(trainer))
    record = train_record(setup, trainer, figures)
    if group.is_writer:
        save_model(setup, trainer)
        checkpoints.finish()  # only now: until the model is saved, the run can resume
    group.barrier()
    return record if group.is_writer else None


def train_with_backoff(setup: TrainSetup) -> tuple[Trainer, Checkpoints]:
    """Train to the end; on CUDA out-of-memory, halve the batch size if allowed and retry."""
    identities = RunIdentities(setup)
    batch_size = setup.params.train.batch_size
    while True:
        run = identities.at(batch_size)
        trainer = setup.trainer(batch_size)
        try:
            return trainer, train_to_end(setup, trainer, run)
        except torch.OutOfMemoryError:
            del trainer
            batch_size = smaller_batch(setup, batch_size)
        except RuntimeError as error:
            if (message := nondeterministic_op_message(error)) is None:
                raise
            raise PipelineError(message) from None


def train_to_end(setup: TrainSetup, trainer: Trainer, run: RunIdentity) -> Checkpoints:
    """Resume this run's newest checkpoint if there is one, then train to the end."""
    checkpoints = Checkpoints(setup.checkpoints, run, setup.group, setup.account, trainer.params)
    checkpoints.resume(trainer)
    live = setup.root / paths.TRAIN_LIVE_DIR
    with Progress(trainer, live, setup.group.is_writer) as progress:

        def on_batch(index: int) -> None:
            progress.batch(index)
            checkpoints.after_batch(trainer, index)

        trainer.fit(progress.epoch, checkpoints.after_epoch, on_batch)
    return checkpoints


def smaller_batch(setup: TrainSetup, batch_size: int) -> int:
    """The batch size to retry at after CUDA ran out of memory, or the error to stop with."""
    if setup.device.type == "cuda":
        torch.cuda.empty_cache()
    # Several processes cannot retry alone: the others wait in a collective.
    allowed = setup.params.train.auto_batch_size and setup.group.world_size == 1
    if not allowed or batch_size == 1:
        raise PipelineError(out_of_memory_message(batch_size)) from None
    print(f"train: out of memory; retrying with batch size {batch_size // 2}", file=sys.stderr)
    return batch_size // 2


def out_of_memory_message(batch_size: int) -> str:
    return (
        f"CUDA out of memory at train.batch_size={batch_size}; try train.batch_size="
        f"{max(1, batch_size // 2)}, or set train.auto_batch_size: true"
    )


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


def save_model(setup: TrainSetup, trainer: Trainer) -> None:
    shipped = copy.deepcopy(setup.model)
    shipped.load_state_dict(trainer.shipped_weights())
    start = setup.start
    card = ModelCard.for_training(
        setup.params.model,
        setup.meta,
        normalisation=setup.normalisation,
        pretrained=start.info.record() if start is not None else None,
    )
    save_trained(setup.root / paths.MODELS_DIR, shipped.model, card)
