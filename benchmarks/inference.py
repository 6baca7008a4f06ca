"""Inference benchmark, side by side: the default model and a ResNet-style 32x32 net.

    python benchmarks/inference.py                      # quick-trained models, ~3-4 minutes
    python benchmarks/inference.py --model-dir models   # the pipeline's trained model instead

For each model: export fp32/fp16/int8 ONNX (the export stage's code, parity gates included), then
time PyTorch eager, PyTorch with the engine's settings, onnxruntime and OpenVINO (at its default
precision and at f32) on the CPU for every variant, `--rounds` times; each row keeps its
fastest round (other work on a shared machine only ever slows a round down) and the matmul
peak keeps its best too. Prints every row, then the figures the issue asks for against their
targets:

- best deployable variant (an onnxruntime row that ran as asked, top-1 within 0.5 points of
  PyTorch fp32) >= 2x PyTorch eager fp32 images/s, at batch 1 and at batch 64;
- fp32 onnxruntime >= 90% of the measured fp32 matmul peak at batch 64;
- int8 >= 1.5x fp32 onnxruntime, top-1 within 0.5 points of PyTorch fp32.

Then the CPU runtimes table: onnxruntime fp32, OpenVINO f32 and OpenVINO's default (with the
precision its compiled model reports) against onnxruntime fp32, for each model file.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.bench.rows import BenchRow
from pipeline.bench.run import machine_context, relate, run_benchmark, with_peak
from pipeline.core.config import BenchmarkParams, parse_params
from pipeline.export.run import export_all
from pipeline.export.variants import variant_path
from pipeline.hardware.cpu import detect as detect_cpu
from pipeline.hardware.peak import Peak
from pipeline.models import ModelSpec, available_archs, build_model
from pipeline.models.files import ModelCard, Normalisation, load_trained
from pipeline.models.preprocess import WithPreprocessing
from pipeline.prepared.stats import channel_stats
from pipeline.prepared.types import LabelledImages
from pipeline.sources import digits

TARGET_SPEEDUP, TARGET_PEAK_SHARE, TARGET_INT8, TARGET_DROP = 2.0, 0.9, 1.5, 0.005


def digits_split(size: int, channels: int, seed: int = 0):
    """The bundled digits (8x8 grey), optionally upsampled: a 70/30 seeded train/test split."""
    pool = digits.load().pools["all"]
    images = torch.from_numpy(pool.images)
    if size != images.shape[-1] or channels != images.shape[1]:
        upsampled = F.interpolate(images.float(), size=size, mode="bilinear", align_corners=False)
        images = upsampled.round().clamp(0, 255).to(torch.uint8).repeat(1, channels, 1, 1)
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))
    images, labels = images[order].numpy(), pool.labels[order.numpy()]
    cut = int(0.7 * len(images))
    return (images[:cut], labels[:cut]), (images[cut:], labels[cut:])


def quick_train(arch: str, width: int, train, epochs: int, lr: float = 3e-3):
    """AdamW, batch 64, a few epochs: enough for real, confident predictions to compare."""
    torch.manual_seed(0)
    images, labels = torch.from_numpy(train[0]), torch.from_numpy(train[1])
    channels, size = images.shape[1], images.shape[2]
    mean, std = channel_stats(train[0])
    spec = ModelSpec(
        arch=arch, in_channels=channels, image_size=size, num_classes=10, width=width, dropout=0.0
    )
    model = WithPreprocessing(build_model(spec), mean, std).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=5e-4)
    started = time.perf_counter()
    for epoch in range(epochs):
        order = torch.randperm(len(images))
        for start in range(0, len(images), 64):
            index = order[start : start + 64]
            loss = F.cross_entropy(model(images[index]), labels[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        print(
            f"  {arch}: epoch {epoch + 1}/{epochs} loss {loss.item():.4f} "
            f"({time.perf_counter() - started:.0f} s)",
            file=sys.stderr,
        )
    card = ModelCard(
        arch=arch,
        model_params={"width": width, "dropout": 0.0},
        class_names=tuple(str(i) for i in range(10)),
        num_classes=10,
        input_shape=(channels, size, size),
        normalisation=Normalisation(mean=tuple(mean), std=tuple(std)),
    )
    return model.eval(), card


def pipeline_model(model_dir: Path, prepared: Path):
    from pipeline.prepared.storage import read_split

    model, card = load_trained(model_dir)
    train, test = read_split(prepared, "train"), read_split(prepared, "test")
    return model, card, (train.images, train.labels), (test.images, test.labels)


def best_of_rounds(runs: list[tuple[list[BenchRow], dict]]) -> tuple[list[BenchRow], dict]:
    """Per row, the round with the most images/s; per peak, the best measurement. Every row
    here runs on the CPU, so each is held against the best CPU peak."""
    best: dict[tuple, BenchRow] = {}
    for rows, _ in runs:
        for row in rows:
            key = (row.backend, row.variant, row.batch_size)
            kept = best.get(key)
            if kept is None or (row.images_per_s or 0) > (kept.images_per_s or 0):
                best[key] = row
    context = runs[0][1]
    for _, other in runs[1:]:
        for key, peak in other["peaks"].items():
            if peak["gflops"] > context["peaks"][key]["gflops"]:
                context["peaks"][key] = peak
    cpu_peak = Peak(**context["peaks"]["cpu"])
    rows = [with_peak(row, context["flops_per_image"], cpu_peak) for row in best.values()]
    return relate(rows), context


def measure(name: str, model, card, train, test, args) -> dict:
    """Export every variant (with the parity gates), benchmark it, and derive the figures."""
    params = parse_params({"seed": 42, "export": {"variants": ["fp16", "int8"]}})
    with tempfile.TemporaryDirectory(prefix="bench-onnx.") as folder:
        tensors = LabelledImages(*test)
        exported = export_all(params, model, card, tensors, torch.from_numpy(train[0]), folder)
        variants = {v: variant_path(folder, v) for v in ("fp32", "fp16", "int8")}
        bench = BenchmarkParams(
            device="cpu",
            providers=["cpu"],
            batch_sizes=[1, 64],
            warmup=args.warmup,
            min_iterations=args.min_iterations,
            min_seconds=args.min_seconds,
            threads=args.threads,
        )
        runs = []
        for round_ in range(args.rounds):
            print(f"{name}: round {round_ + 1}/{args.rounds}", file=sys.stderr)
            runs.append(run_benchmark(bench, model, card, variants, LabelledImages(*test)))
    rows, context = best_of_rounds(runs)
    records = {"fp32": exported, **exported["variants"]}
    return {
        "name": name,
        "rows": rows,
        "context": context,
        "figures": figures(rows, context),
        "export": {variant: record["parity"] for variant, record in records.items()},
    }


def _find(rows, backend, variant, batch):
    wanted = (backend, variant, batch)
    return next((r for r in rows if (r.backend, r.variant, r.batch_size) == wanted), None)


def figures(rows: list[BenchRow], context: dict) -> dict:
    out = {
        "flops_per_image": context["flops_per_image"],
        "peak_gflops": context["peaks"]["cpu"]["gflops"],
        "peak_method": context["peaks"]["cpu"]["method"],
    }
    for batch in (1, 64):
        eager = _find(rows, "pytorch_eager", "fp32", batch)
        deployable = [
            r
            for r in rows
            if r.backend.startswith("onnxruntime")
            and r.batch_size == batch
            and r.status == "ok"
            and r.top1_delta_vs_pytorch is not None
            and r.top1_delta_vs_pytorch >= -TARGET_DROP
        ]
        best = max(deployable, key=lambda r: r.images_per_s)
        out[f"batch_{batch}"] = {
            "eager_images_per_s": eager.images_per_s,
            "best": f"{best.backend} {best.variant}",
            "best_images_per_s": best.images_per_s,
            "best_vs_eager": best.images_per_s / eager.images_per_s,
        }
        fp32, int8 = (_find(rows, "onnxruntime_cpu", v, batch) for v in ("fp32", "int8"))
        out[f"batch_{batch}"].update(
            fp32_gflops=fp32.gflops_per_s,
            fp32_share_of_peak=fp32.share_of_peak,
            int8_vs_fp32=int8.images_per_s / fp32.images_per_s,
            int8_top1_delta=int8.top1_delta_vs_pytorch,
            pytorch_top1=eager.top1_accuracy,
        )
    out["runtimes"] = runtime_table(rows)
    return out


# (label, backend) of the CPU runtimes table; OpenVINO's default row names its precision.
RUNTIME_ROWS = [
    ("onnxruntime CPU", "onnxruntime_cpu"),
    ("OpenVINO, f32 hint", "openvino_f32"),
    ("OpenVINO, its default", "openvino_default"),
    ("PyTorch eager", "pytorch_eager"),
]


def runtime_table(rows: list[BenchRow]) -> list[dict]:
    """Per variant and runtime: precision, images/s at batch 1 and 64, and x onnxruntime."""
    table = []
    for variant in ("fp32", "int8"):
        base = {b: _find(rows, "onnxruntime_cpu", variant, b) for b in (1, 64)}
        for label, backend in RUNTIME_ROWS:
            found = {b: _find(rows, backend, variant, b) for b in (1, 64)}
            if found[1] is None:
                continue
            entry = {"variant": variant, "runtime": label, "precision": found[1].precision}
            if backend == "openvino_default" and _find(rows, "openvino_f32", variant, 1) is None:
                entry["runtime"] += " (= f32 hint here)"
            for b, row in found.items():
                speed = row.images_per_s if row else None
                ref = base[b].images_per_s if base[b] else None
                entry[f"batch_{b}"] = speed
                entry[f"batch_{b}_vs_ort"] = speed / ref if speed and ref else None
                entry[f"batch_{b}_status"] = row.status if row else "missing"
            table.append(entry)
    return table


def print_runtimes(results: list[dict]) -> None:
    print("\n## CPU runtimes: images/s (x onnxruntime CPU on the same file)\n")
    print("| model | file | runtime | precision | batch 1 | batch 64 |")
    print("|---|---|---|---|---|---|")
    for result in results:
        for entry in result["figures"]["runtimes"]:
            cells = [
                f"{entry[f'batch_{b}']:,.0f} ({entry[f'batch_{b}_vs_ort']:.2f}x)"
                if entry[f"batch_{b}"] and entry[f"batch_{b}_vs_ort"]
                else entry[f"batch_{b}_status"]
                for b in (1, 64)
            ]
            print(
                f"| {result['name']} | {entry['variant']} | {entry['runtime']} | "
                f"{entry['precision']} | {cells[0]} | {cells[1]} |"
            )


def print_rows(result: dict) -> None:
    print(f"\n## {result['name']}  ({result['figures']['flops_per_image'] / 1e6:.1f} MFLOP/image)")
    print(
        f"{'backend':<22}{'variant':<8}{'prec':<6}{'batch':>6}{'p50 ms':>10}{'images/s':>12}"
        f"{'x eager':>9}{'GFLOP/s':>9}{'% peak':>8}{'top-1':>8}{'Δ pt':>7}"
    )
    for r in result["rows"]:
        if r.images_per_s is None:
            print(f"{r.backend:<22}{r.variant:<8}{r.batch_size:>6}  {r.status}: {r.reason}")
            continue
        speedup = f"{r.speedup_vs_eager:>8.2f}x" if r.speedup_vs_eager else f"{'–':>9}"
        print(
            f"{r.backend:<22}{r.variant:<8}{r.precision:<6}{r.batch_size:>6}"
            f"{r.latency_ms_p50:>10.3f}{r.images_per_s:>12,.0f}{speedup}"
            f"{r.gflops_per_s:>9.1f}{100 * r.share_of_peak:>7.0f}%{r.top1_accuracy:>8.4f}"
            f"{100 * r.top1_delta_vs_pytorch:>+7.2f}"
        )


def _x(ratio: float | None) -> str:
    """A speed-up, or '–' where there is none (a noisy baseline is never divided by)."""
    return "–" if ratio is None else f"{ratio:.2f}x"


def _verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def print_side_by_side(results: list[dict]) -> None:
    b1, b64 = "batch_1", "batch_64"
    lines = [
        ("peak fp32 GFLOP/s (measured)", lambda f: f"{f['peak_gflops']:.0f}"),
        ("best deployable, batch 1", lambda f: f[b1]["best"]),
        ("  vs PyTorch eager (>= 2x)", lambda f: _ratio(f[b1]["best_vs_eager"], 2.0)),
        ("best deployable, batch 64", lambda f: f[b64]["best"]),
        ("  vs PyTorch eager (>= 2x)", lambda f: _ratio(f[b64]["best_vs_eager"], 2.0)),
        ("fp32 ORT share of peak, b64 (>= 90%)", lambda f: _share(f[b64])),
        ("int8 vs fp32 ORT, batch 1 (>= 1.5x)", lambda f: _ratio(f[b1]["int8_vs_fp32"], 1.5)),
        ("int8 vs fp32 ORT, batch 64 (>= 1.5x)", lambda f: _ratio(f[b64]["int8_vs_fp32"], 1.5)),
        ("int8 top-1 delta (within 0.5 pt)", lambda f: _delta(f[b64]["int8_top1_delta"])),
    ]
    names = [r["name"] for r in results]
    print("\n## Side by side (each row's fastest of the rounds)\n")
    print(f"{'':<40}" + "".join(f"{n:>34}" for n in names))
    for title, show in lines:
        print(f"{title:<40}" + "".join(f"{show(r['figures']):>34}" for r in results))


def _ratio(value: float, target: float) -> str:
    return f"{value:.2f}x {_verdict(value >= target)}"


def _share(entry: dict) -> str:
    share = entry["fp32_share_of_peak"]
    return f"{100 * share:.0f}% ({entry['fp32_gflops']:.0f} GF/s) {_verdict(share >= 0.9)}"


def _delta(value: float) -> str:
    return f"{100 * value:+.2f} pt {_verdict(value >= -TARGET_DROP)}"


def cpu_profile() -> str:
    """The CPU, its tracked extensions and the runtimes' versions, for the tables' caption."""
    context = machine_context()
    return (
        f"{context['cpu']} ({context['cpu_isa']}; {detect_cpu().profile}); "
        f"onnxruntime {context['onnxruntime']}, OpenVINO {context['openvino']}"
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, help="trained pipeline model (else quick-train)")
    parser.add_argument("--prepared", type=Path, default=Path("data/prepared"))
    parser.add_argument("--resnet-width", type=int, default=32, help="resnet_cifar width")
    parser.add_argument("--resnet-epochs", type=int, default=2)
    parser.add_argument("--skip-resnet", action="store_true")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--min-iterations", type=int, default=10)
    parser.add_argument("--min-seconds", type=float, default=1.0)
    parser.add_argument("--threads", type=int, default=0, help="0: physical cores")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    return parser.parse_args(argv)


def model_cases(args: argparse.Namespace) -> list[tuple]:
    """(name, model, card, train, test) per model to benchmark: the pipeline's trained model or
    a quick-trained small_cnn on digits, then resnet_cifar on 32x32 digits unless skipped."""
    cases = []
    if args.model_dir:
        model, card, train, test = pipeline_model(args.model_dir, args.prepared)
        cases.append((f"{card.arch} ({args.model_dir})", model, card, train, test))
    else:
        train, test = digits_split(8, 1)
        model, card = quick_train("small_cnn", 32, train, epochs=5)
        cases.append(("small_cnn digits 8x8", model, card, train, test))
    if args.skip_resnet:
        print("resnet_cifar: skipped (--skip-resnet)", file=sys.stderr)
    elif "resnet_cifar" not in available_archs():
        print("resnet_cifar: not in pipeline.models; skipping the 32x32 net", file=sys.stderr)
    else:
        train, test = digits_split(32, 3)
        model, card = quick_train("resnet_cifar", args.resnet_width, train, args.resnet_epochs)
        name = f"resnet_cifar w{args.resnet_width} 3x32x32"
        cases.append((name, model, card, train, test))
    return cases


def print_report(results: list[dict]) -> None:
    context = results[0]["context"]
    print(
        f"\n# Inference benchmark: {context['threads']} threads, {context['device']}; "
        f"torch {torch.__version__}; {cpu_profile()}"
    )
    for result in results:
        print_rows(result)
    print_side_by_side(results)
    print_runtimes(results)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    results = [measure(*case, args) for case in model_cases(args)]
    print_report(results)
    if args.json:
        figures_only = {r["name"]: r["figures"] | {"export_parity": r["export"]} for r in results}
        args.json.write_text(json.dumps(figures_only, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    np.set_printoptions(precision=4)
    raise SystemExit(main())
