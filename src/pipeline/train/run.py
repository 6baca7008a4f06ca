"""One training run: prepared data in, weights + model card + metrics out."""

from __future__ import annotations

import platform
import random
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline import paths
from pipeline.config import Params
from pipeline.data.storage import read_meta, read_split_tensors
from pipeline.io import write_json
from pipeline.model_io import make_card, save_trained
from pipeline.models import ModelSpec, build_model
from pipeline.preprocess import WithPreprocessing
from pipeline.train.loop import EpochStats, TrainResult, fit
from pipeline.train.policy import resolve_policy


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _progress_line(total_epochs: int, started: float):
    def report(stats: EpochStats) -> None:
        elapsed = time.perf_counter() - started
        eta = elapsed / stats.epoch * (total_epochs - stats.epoch)
        print(
            f"epoch {stats.epoch:>3}/{total_epochs}  loss {stats.train_loss:.4f}  "
            f"acc {stats.train_accuracy:.4f}  val_loss {stats.val_loss:.4f}  "
            f"val_acc {stats.val_accuracy:.4f}  {stats.images_per_s:,.0f} img/s  ETA {eta:.0f}s",
            file=sys.stderr,
            flush=True,
        )

    return report


def _live_logger(live):
    def log(stats: EpochStats) -> None:
        for name in ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr"):
            live.log_metric(name, getattr(stats, name), plot=True)
        live.next_step()

    return log


def _chain(*callbacks):
    def call(stats: EpochStats) -> None:
        for callback in callbacks:
            callback(stats)

    return call


def train_metrics(result: TrainResult, policy: dict, wall_seconds: float) -> dict[str, Any]:
    last = result.history[-1]
    return {
        "train_loss": last.train_loss,
        "train_accuracy": last.train_accuracy,
        "val_loss": last.val_loss,
        "val_accuracy": last.val_accuracy,
        "best_val_accuracy": max(s.val_accuracy for s in result.history),
        "epochs": len(result.history),
        "images_per_s": result.images_seen / result.train_seconds,
        "seconds_per_epoch": result.train_seconds / len(result.history),
        "wall_seconds": wall_seconds,
        "policy": policy,
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
    }


def run_training(params: Params, root: Path = Path(".")) -> dict[str, Any]:
    from dvclive import Live  # heavy import; only the train stage needs it

    started = time.perf_counter()
    seed_everything(params.seed)
    meta = read_meta(root / paths.PREPARED_DIR)
    train = read_split_tensors(root / paths.PREPARED_DIR, "train")
    val = read_split_tensors(root / paths.PREPARED_DIR, "val")
    device, precision, policy = resolve_policy(params.train.device, params.train.precision)
    spec = ModelSpec(
        arch=params.model.arch,
        in_channels=meta["input_shape"][0],
        image_size=meta["input_shape"][1],
        num_classes=meta["num_classes"],
        width=params.model.width,
        dropout=params.model.dropout,
    )
    model = build_model(spec)
    wrapped = WithPreprocessing(model, meta["mean"], meta["std"])
    print(f"training {spec.arch} on {policy.device_name} ({policy.precision})", file=sys.stderr)
    with Live(str(root / paths.TRAIN_LIVE_DIR), dvcyaml=False, save_dvc_exp=False) as live:
        result = fit(
            wrapped,
            train,
            val,
            params.train,
            device,
            precision,
            params.seed,
            channels_last=policy.channels_last,
            on_epoch=_chain(_progress_line(params.train.epochs, started), _live_logger(live)),
        )
    card = make_card(spec, meta, params.model.model_dump(exclude={"arch"}))
    save_trained(root / paths.MODELS_DIR, model.to("cpu"), card)
    metrics = train_metrics(result, policy.as_dict(), time.perf_counter() - started)
    write_json(root / paths.TRAIN_METRICS, metrics)
    return metrics
