"""Training throughput: the way most tutorials write it against this project's engine.

Same model (resnet_cifar), same 32x32 RGB data, same number of optimiser steps, side by side
in one run. Prints images/s of each and the ratio, at equal batch size and at the engine's
preferred batch size (the fastest of --engine-batch-sizes, measured here).

  (a) tutorial: a Dataset of per-sample float tensors + DataLoader(shuffle, 2 workers), fp32,
      default memory format, AdamW with default settings, loss.item() every step.
  (b) engine: pipeline.train.Trainer with the policy's best settings for the device present:
      uint8 data resident on the device, channels_last, fused AdamW, no host sync per step,
      bf16 autocast on GPUs and on CPUs with bf16 units (AVX512-BF16/AMX), else fp32.

    python benchmarks/train_throughput.py [--steps 30] [--width 32] [--batch-size 64]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from pipeline.core.config import TrainParams
from pipeline.models import ModelSpec, build_model
from pipeline.models.preprocess import Normalize, WithPreprocessing
from pipeline.train.loop import trainer_for_tensors
from pipeline.train.policy import resolve_policy

MEAN, STD = [0.49, 0.48, 0.45], [0.25, 0.24, 0.26]


def synthetic_cifar(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=generator)
    return images, torch.randint(0, 10, (n,), generator=generator)


class PerSampleDataset(Dataset):
    """What tutorials build: one normalised float tensor per image, collated by the loader."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        normalize = Normalize(MEAN, STD)
        self.samples = [normalize(image[None])[0] for image in images]
        self.labels = labels.tolist()

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        return self.samples[index], self.labels[index]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def tutorial_images_per_s(model, data, batch_size, steps, warmup, device) -> float:
    loader = DataLoader(
        PerSampleDataset(*data),
        batch_size=batch_size,
        shuffle=True,
        num_workers=2,
        drop_last=True,
        persistent_workers=True,
    )
    model = model.to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    criterion = nn.CrossEntropyLoss()
    running_loss, done, started = 0.0, 0, None
    while done < warmup + steps:
        for inputs, labels in loader:
            if done == warmup:
                sync(device)
                started = time.perf_counter()
            inputs, labels = inputs.to(device), labels.to(device)
            optimizer.zero_grad()
            loss = criterion(model(inputs), labels)
            loss.backward()
            optimizer.step()
            running_loss += loss.item()  # the tutorial's host sync every step
            done += 1
            if done == warmup + steps:
                break
    sync(device)
    return steps * batch_size / (time.perf_counter() - started)


def engine_images_per_s(model, data, batch_size, steps, warmup) -> tuple[float, dict]:
    params = TrainParams(epochs=1, batch_size=batch_size, lr=1e-3)
    device, precision, policy = resolve_policy(params, data[0])
    trainer = trainer_for_tensors(
        WithPreprocessing(model, MEAN, STD),
        data,
        (data[0][:64], data[1][:64]),
        params,
        device,
        precision,
        seed=0,
        channels_last=policy.channels_last,
        data_on_device=policy.data_on_device,
    )
    trainer.model.train()
    batches = iter(trainer.batches)
    for _ in range(warmup):
        trainer.train_step(*next(batches))
    sync(device)
    started = time.perf_counter()
    for _ in range(steps):
        trainer.train_step(*next(batches))
    trainer.loss_sum.item()  # wait for the queued steps, as the engine does once per epoch
    return steps * batch_size / (time.perf_counter() - started), policy.as_dict()


def fresh_model(width: int) -> nn.Module:
    torch.manual_seed(0)
    spec = ModelSpec(arch="resnet_cifar", in_channels=3, image_size=32, num_classes=10, width=width)
    return build_model(spec)


def median_of(repeats: int, measure) -> float:
    return statistics.median(measure() for _ in range(repeats))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30, help="timed optimiser steps per run")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--width", type=int, default=32, help="resnet_cifar width (64 = ResNet-9)")
    parser.add_argument("--batch-size", type=int, default=64, help="the equal batch size")
    parser.add_argument("--engine-batch-sizes", type=int, nargs="+", default=[64, 128, 256])
    parser.add_argument("--repeats", type=int, default=3)
    return parser.parse_args()


def measure_all(args: argparse.Namespace, data, device) -> tuple[float, dict[int, float]]:
    """Median images/s of the tutorial at --batch-size, and of the engine at every batch size."""

    def tutorial():
        model = fresh_model(args.width)
        return tutorial_images_per_s(model, data, args.batch_size, args.steps, args.warmup, device)

    def engine(batch_size):
        return lambda: engine_images_per_s(
            fresh_model(args.width), data, batch_size, args.steps, args.warmup
        )[0]

    baseline = median_of(args.repeats, tutorial)
    sizes = sorted({args.batch_size, *args.engine_batch_sizes})
    return baseline, {b: median_of(args.repeats, engine(b)) for b in sizes}


def engine_label(batch_size: int, equal: int, preferred: int) -> str:
    """'engine', marked where it runs at the tutorial's batch size or at its fastest one."""
    marks = []
    if batch_size == equal:
        marks.append("equal batch")
    if batch_size == preferred:
        marks.append("preferred")
    return f"engine ({', '.join(marks)})" if marks else "engine"


def print_table(baseline: float, by_batch: dict[int, float], equal: int) -> None:
    preferred = max(by_batch, key=by_batch.get)
    print("| run | batch | images/s | vs tutorial |\n|---|---|---|---|")
    print(f"| tutorial | {equal} | {baseline:,.0f} | 1.00x |")
    for batch_size, value in by_batch.items():
        label = engine_label(batch_size, equal, preferred)
        print(f"| {label} | {batch_size} | {value:,.0f} | {value / baseline:.2f}x |")


def main() -> None:
    args = parse_args()
    device = resolve_policy(TrainParams())[0]
    largest = max([args.batch_size, *args.engine_batch_sizes])
    data = synthetic_cifar(largest * (args.steps + args.warmup + 1))
    print(
        f"resnet_cifar width {args.width}, 32x32 RGB, {args.steps} steps after {args.warmup} "
        f"warm-up, median of {args.repeats}; device {device} "
        f"({platform.processor() or platform.machine()}), torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads"
    )
    baseline, by_batch = measure_all(args, data, device)
    policy = engine_images_per_s(fresh_model(args.width), data, args.batch_size, 1, 1)[1]
    print(f"engine policy: {policy}")
    print_table(baseline, by_batch, args.batch_size)


if __name__ == "__main__":
    main()
