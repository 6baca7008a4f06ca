"""Under DDP each rank resumes with its own RNG states (dropout draws, its CUDA generator), not
rank 0's: two real gloo processes save one checkpoint and restore from it."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from torch import nn

from conftest import run
from pipeline.core.config import TrainParams
from pipeline.hardware.precision import PRECISIONS
from pipeline.train import distributed
from pipeline.train.checkpoint import checkpoint_path, load_checkpoint, save_checkpoint
from pipeline.train.loop import Trainer, trainer_for_tensors

RUN = "e" * 64


def tiny_trainer(group: distributed.Group) -> Trainer:
    images = torch.randint(0, 255, (32, 1, 2, 2), dtype=torch.uint8, generator=torch.Generator())
    labels = torch.zeros(32, dtype=torch.long)
    return trainer_for_tensors(
        nn.Sequential(nn.Flatten(), nn.Linear(4, 2)),
        (images, labels),
        (images, labels),
        TrainParams(epochs=1, batch_size=4, num_workers=0),
        torch.device("cpu"),
        PRECISIONS["fp32"],
        seed=7,
        rank=group.rank,
        world_size=group.world_size,
        all_reduce=group.all_reduce,
    )


def save_then_restore(folder: str, out: str) -> None:
    """Under torchrun: checkpoint every rank's RNG states, scramble them, resume, compare."""
    group = distributed.join_group("cpu")
    trainer = tiny_trainer(group)
    torch.manual_seed(1000 + group.rank)  # ranks' own draws differ, as their CUDA streams do
    torch.rand(5 + group.rank)
    expected = trainer.rng_state()
    gathered = group.gather_rng_states(expected)
    if group.is_writer:
        state = {**trainer.state_dict(gathered), "epoch": 1}
        save_checkpoint(Path(folder), 1, state, RUN)
    group.barrier()
    torch.manual_seed(0)
    trainer.batches.generator.manual_seed(0)
    trainer.load_state_dict(load_checkpoint(checkpoint_path(Path(folder), 1, RUN)))
    restored = trainer.rng_state()
    report = {
        "own": all(torch.equal(restored[key], expected[key]) for key in expected),
        "torch": expected["torch"].tolist(),
        "saved_ranks": len(gathered),
    }
    Path(out, f"rank-{group.rank}.json").write_text(json.dumps(report))
    distributed.leave_group()


def test_each_rank_resumes_its_own_rng_state(tmp_path):
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node"]
    run(tmp_path, *command, "2", __file__, str(tmp_path / "ckpt"), str(tmp_path))
    ranks = [json.loads((tmp_path / f"rank-{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["torch"] != ranks[1]["torch"]  # the ranks really had different states
    assert all(r["saved_ranks"] == 2 and r["own"] for r in ranks)


def test_single_process_checkpoint_round_trips_its_rng_state():
    trainer = tiny_trainer(distributed.SINGLE)
    before = trainer.rng_state()
    saved = trainer.state_dict()
    torch.rand(3)
    trainer.batches.generator.manual_seed(1)
    trainer.load_state_dict(saved)
    after = trainer.rng_state()
    assert saved["rng"][0].keys() == before.keys() == after.keys()
    assert all(torch.equal(before[key], after[key]) for key in before)


if __name__ == "__main__":  # the torchrun worker
    save_then_restore(sys.argv[1], sys.argv[2])
