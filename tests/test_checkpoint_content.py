"""A checkpoint stamped with this run's fingerprint is still read as untrusted: its content is
checked before it is resumed (an edited epoch count, NaN weights, missing parts skip to the
previous checkpoint), and a state the trainer cannot take stops the run in one line."""

from __future__ import annotations

import math

import pytest
import torch
from test_checkpoint_ranks import tiny_trainer

from pipeline.core.errors import PipelineError
from pipeline.train import distributed
from pipeline.train.checkpoint import (
    KEYS,
    checkpoint_path,
    find_resume,
    load_into,
    save_checkpoint,
)

RUN = "a" * 64
LAST_EPOCH = 3


@pytest.fixture(scope="module")
def trainer():
    return tiny_trainer(distributed.SINGLE)


def real_state(trainer, epoch: int) -> dict:
    state = trainer.state_dict()
    state["state"]["epoch"] = epoch
    return {**state, "epoch": epoch}


def test_the_parts_checked_are_the_parts_a_trainer_writes(trainer):
    assert set(KEYS) == set(trainer.state_dict()) - {"progress"}  # progress: batch checkpoints


def set_epoch(value):
    def edit(state):
        state["epoch"] = state["state"]["epoch"] = value

    return edit


def poison(state):
    state["model"]["1.weight"] = torch.full_like(state["model"]["1.weight"], math.nan)


@pytest.mark.parametrize(
    ("edit", "why"),
    [
        (set_epoch(10**9), "is at epoch 1000000000, outside this run's 0..3"),
        (set_epoch(-5), "is at epoch -5, outside this run's 0..3"),
        (set_epoch(True), "says epoch True outside and True inside"),
        (lambda s: s.update(epoch="x"), "says epoch x outside and 2 inside"),
        (lambda s: s["state"].update(epoch=7), "says epoch 2 outside and 7 inside"),
        (lambda s: s.pop("optimizer"), "lacks optimizer"),
        (lambda s: s.update(state="x"), "says epoch 2 outside and None inside"),
        (lambda s: s.update(progress={"batches": "x"}), "is x batches into an epoch"),
        (lambda s: s.update(progress={"batches": 0}), "is 0 batches into an epoch"),
        (poison, "holds NaN or infinite values in '1.weight'"),
        (lambda s: s.update(model=[1, 2]), "holds no model state dict (name -> tensor)"),
    ],
    ids=[
        "epoch-huge", "epoch-negative", "epoch-bool", "epoch-text", "epochs-disagree",
        "no-optimizer", "state-not-a-dict", "batches-text", "batches-zero", "nan-weights",
        "model-not-tensors",
    ],
)  # fmt: skip
def test_an_edited_checkpoint_is_skipped_for_the_previous_one_and_named(
    trainer, tmp_path, edit, why
):
    save_checkpoint(tmp_path, 1, real_state(trainer, 1), RUN)
    edited = real_state(trainer, 2)
    edit(edited)
    save_checkpoint(tmp_path, 2, edited, RUN)
    found = find_resume(tmp_path, RUN, last_epoch=LAST_EPOCH)
    assert found.state["epoch"] == 1 and found.path == checkpoint_path(tmp_path, 1, RUN)
    assert f"skipped epoch-0002-{RUN[:12]}.pt {why}" in found.message


def test_an_edited_checkpoint_alone_means_a_fresh_start_that_says_why(trainer, tmp_path):
    edited = real_state(trainer, 2)
    set_epoch(10**9)(edited)
    save_checkpoint(tmp_path, 2, edited, RUN)
    found = find_resume(tmp_path, RUN, last_epoch=LAST_EPOCH)
    assert found.state is None
    assert found.message.startswith("starting fresh: epoch-0002-") and "outside" in found.message


def test_the_last_epoch_itself_is_resumed(trainer, tmp_path):
    """Killed after its last checkpoint but before the model was saved: resumed, not refused."""
    save_checkpoint(tmp_path, LAST_EPOCH, real_state(trainer, LAST_EPOCH), RUN)
    assert find_resume(tmp_path, RUN, last_epoch=LAST_EPOCH).state["epoch"] == LAST_EPOCH


def test_a_state_the_trainer_cannot_take_stops_in_one_line_naming_the_file(trainer, tmp_path):
    state = real_state(trainer, 1)
    state["model"]["1.weight"] = torch.zeros(3, 3)  # another shape than the model's (2, 4)
    save_checkpoint(tmp_path, 1, state, RUN)
    found = find_resume(tmp_path, RUN, last_epoch=LAST_EPOCH)
    with pytest.raises(PipelineError) as caught:
        load_into(tiny_trainer(distributed.SINGLE), found)
    message = str(caught.value)
    assert message.startswith(f"{found.path}: cannot be resumed (")
    assert "size mismatch for 1.weight" in message and "delete it" in message
    assert "\n" not in message


def test_a_file_where_the_checkpoint_folder_belongs_is_refused_before_training(tmp_path):
    folder = tmp_path / "checkpoints"
    folder.write_text("hi")
    with pytest.raises(PipelineError, match=f"^{folder} is not a folder; checkpoints go there"):
        find_resume(folder, RUN, last_epoch=LAST_EPOCH)
