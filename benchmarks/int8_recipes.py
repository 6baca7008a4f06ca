"""int8 recipes side by side on this CPU: accuracy against PyTorch fp32, speed against fp32 ORT.

    python benchmarks/int8_recipes.py                       # the pipeline's model (dvc repro first)
    python benchmarks/int8_recipes.py --arch resnet_cifar   # a quick-trained ResNet on 32x32 digits
    python benchmarks/int8_recipes.py --accuracy-only       # e.g. under an emulated CPU:
    qemu-x86_64 -cpu Haswell-v4 .venv/bin/python benchmarks/int8_recipes.py --accuracy-only

Each recipe is built by the export stage's own `to_int8` from one fp32 file and one calibration
sample; rows differ only in the recipe. Latency: onnxruntime CPU provider, `--rounds` rounds of
interleaved timing, each row keeping its best round's median (a shared machine only ever slows a
round down). The CPU profile is printed with the table: int8 numerics and speed follow it.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from pipeline.bench.timing import time_call
from pipeline.core.config import Int8Params
from pipeline.export.int8 import to_int8
from pipeline.export.onnx_export import export_onnx, metadata_props
from pipeline.export.parity import compare
from pipeline.export.session import make_session, session_logits
from pipeline.export.variants import calibration_sample
from pipeline.hardware.cpu import detect
from pipeline.models.inference import predict_logits

ACCURACY_BATCH = 256  # images per forward pass of the parity checks
RECIPES = {
    "U8S8": {"activations": "uint8", "reduce_range": False},
    "U8S8 reduce_range": {"activations": "uint8", "reduce_range": True},
    "S8S8": {"activations": "int8", "reduce_range": False},
    "S8S8 reduce_range": {"activations": "int8", "reduce_range": True},
}


def load_model(args):
    sys.path.insert(0, str(Path(__file__).parent))
    from inference import digits_split, pipeline_model, quick_train  # the sibling benchmark

    if args.arch is None:
        return pipeline_model(Path(args.model_dir), Path(args.prepared))
    size, channels = (32, 3) if args.arch == "resnet_cifar" else (8, 1)
    train, test = digits_split(size, channels)
    model, card = quick_train(args.arch, args.width, train, args.epochs)
    return model, card, train, test


def latency_ms(path: Path, images: np.ndarray, batch: int, args) -> float:
    session = make_session(path, "cpu", threads=args.threads)
    feed = {session.get_inputs()[0].name: images[:batch]}
    timing = time_call(lambda: session.run(None, feed), lambda: None, 5, 20, args.min_seconds)
    return float(np.percentile(timing.latencies_ms, 50))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", default="models")
    parser.add_argument("--prepared", default="data/prepared")
    parser.add_argument("--arch", choices=["small_cnn", "resnet_cifar"], default=None)
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--min-seconds", type=float, default=0.5)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--accuracy-only", action="store_true", help="skip timing (emulated CPUs)")
    args = parser.parse_args()

    cpu = detect()
    model, card, train, test = load_model(args)
    images, labels = np.ascontiguousarray(test[0]), np.asarray(test[1])
    torch_logits = predict_logits(model, torch.from_numpy(images), ACCURACY_BATCH).numpy()
    with tempfile.TemporaryDirectory(prefix="int8-recipes.") as folder:
        files = {"fp32": Path(folder) / "fp32.onnx"}
        export_onnx(model, torch.from_numpy(images[:2]), files["fp32"], 18,
                    metadata_props(card, True, "benchmark"))  # fmt: skip
        sample = calibration_sample(np.asarray(train[0]), 512, seed=42)
        for name, recipe in RECIPES.items():
            files[name] = Path(folder) / f"{name.replace(' ', '_')}.onnx"
            to_int8(files["fp32"], files[name], sample, Int8Params(**recipe), cpu=cpu)
        rows = {}
        for name, path in files.items():
            logits = session_logits(make_session(path), images, ACCURACY_BATCH)
            parity = compare(torch_logits, logits, labels)
            rows[name] = {"parity": parity, "ms": {b: [] for b in args.batch_sizes}}
        for _ in range(0 if args.accuracy_only else args.rounds):
            for batch in args.batch_sizes:
                for name, path in files.items():  # interleaved: drift hits every row alike
                    rows[name]["ms"][batch].append(latency_ms(path, images, batch, args))
    print_table(rows, cpu, args)


def print_table(rows: dict, cpu, args) -> None:
    print(f"CPU: {cpu.profile} ({cpu.source}); test images: {rows['fp32']['parity'].samples}")
    timed = not args.accuracy_only
    head = "| recipe | max abs logit diff | top-1 agreement | top-1 change (pt) |"
    if timed:
        head += "".join(f" batch {b}: ms (x fp32 ORT) |" for b in args.batch_sizes)
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    for name, row in rows.items():
        p = row["parity"]
        line = (f"| {name} | {p.max_abs_logit_diff:.3f} | {p.top1_agreement:.4f} | "
                f"{100 * p.accuracy_delta:+.2f} |")  # fmt: skip
        for batch in args.batch_sizes if timed else []:
            best, base = min(row["ms"][batch]), min(rows["fp32"]["ms"][batch])
            line += f" {best:.3f} ({base / best:.2f}x) |"
        print(line)


if __name__ == "__main__":
    main()
