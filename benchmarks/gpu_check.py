"""One-command GPU self-check: what this machine's GPU really runs, in one JSON + Markdown report.

On a CUDA machine it
  1. runs the gpu-marked tests (when pytest and the test dependencies are installed),
  2. trains resnet_cifar on a synthetic 32x32 set for a fixed number of steps in fp32 (IEEE),
     TF32 and bf16 with the fast path (uint8 data resident on the GPU, channels_last, fused
     AdamW, no host sync inside a step), with images/s, loss, share of the matching peak and
     NVML energy,
  3. times inference: PyTorch eager and torch.compile, and onnxruntime with every provider
     (CPU, CUDA, TensorRT) through the benchmark stage's own code, so each row says where its
     nodes ran (ok / partial / fallback) and in what precision,
and writes gpu_check.json and gpu_check.md into --out.

It needs only torch, onnx, onnxruntime, numpy, safetensors (and nvidia-ml-py for energy): no DVC,
dvclive or pydantic. Without a GPU it says so and exits 2; ``--dry-run`` runs the same steps on
the CPU, tiny, to check the script itself.

    python benchmarks/gpu_check.py [--out gpu_check] [--steps 200] [--batch-size 256]
    python benchmarks/gpu_check.py --dry-run --steps 3 --batch-size 16 --skip-tests
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
if importlib.util.find_spec("pipeline") is None:
    sys.path.insert(0, str(ROOT / "src"))

from pipeline.bench.run import machine_context, run_benchmark  # noqa: E402
from pipeline.bench.timing import time_call  # noqa: E402
from pipeline.core.errors import describe  # noqa: E402
from pipeline.energy import EnergyReading, cpu_meters, gpu_meters  # noqa: E402
from pipeline.energy.window import EnergyWindow  # noqa: E402
from pipeline.hardware.peak import compute_report, flops_per_image  # noqa: E402
from pipeline.hardware.tf32 import fp32_math, fp32_name, tf32_ops  # noqa: E402
from pipeline.models import ModelSpec, build_model  # noqa: E402
from pipeline.models.files import ModelCard, Normalisation  # noqa: E402
from pipeline.models.preprocess import WithPreprocessing  # noqa: E402
from pipeline.prepared.types import LabelledImages  # noqa: E402

MEAN, STD = [0.49, 0.48, 0.45], [0.25, 0.24, 0.26]
NO_GPU = "no CUDA GPU visible (torch.cuda.is_available() is False): nothing to check"


@dataclass(frozen=True)
class BenchSettings:
    """The attributes of the benchmark params section that run_benchmark reads."""

    device: str
    providers: list[str]
    batch_sizes: list[int]
    warmup: int = 10
    min_iterations: int = 50
    min_seconds: float = 1.0
    threads: int = 0
    repeats: int = 3  # timing rounds over every backend, as benchmark.repeats
    max_repeats: int = 12  # rounds per row at most, as benchmark.max_repeats
    extra_seconds: float = 30.0  # budget of the rounds for noisy rows, as benchmark.extra_seconds
    max_spread: float = 0.125  # rows whose rounds' p50s spread (IQR/median) more are noisy
    # OpenVINO on the host CPU beside onnxruntime; rows say so where it is not installed.
    runtimes: list[str] = field(default_factory=lambda: ["openvino"])


@dataclass(frozen=True)
class EnergySettings:
    cpu_watts: float | None = None
    min_window_s: float = 1.0


def synthetic_set(n: int, classes: int = 10, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Learnable 32x32 RGB images: noise around a colour pattern of each class."""
    generator = torch.Generator().manual_seed(seed)
    patterns = torch.rand(classes, 3, 32, 32, generator=generator) * 120.0
    labels = torch.randint(0, classes, (n,), generator=generator)
    noise = torch.randn(n, 3, 32, 32, generator=generator) * 30.0
    images = (60.0 + patterns[labels] + noise).clamp(0, 255).to(torch.uint8)
    return images, labels


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)  # host-device sync point


def energy_window(device: torch.device) -> EnergyWindow:
    if device.type == "cuda":
        return EnergyWindow(gpu_meters(position=device.index or 0))
    return EnergyWindow(cpu_meters())


def fresh_model(spec: ModelSpec, device: torch.device) -> torch.nn.Module:
    torch.manual_seed(0)
    model = WithPreprocessing(build_model(spec), MEAN, STD)
    return model.to(device, memory_format=torch.channels_last)


def step_function(model, optimizer, data: tuple, batch_size: int, bf16: bool):
    """One optimiser step on the ``index``-th batch of ``data`` (images, labels), resident on
    the device; returns the loss still on the device (no host sync inside a step)."""
    images, labels = data

    def step(index: int) -> torch.Tensor:
        start = (index * batch_size) % (len(images) - batch_size + 1)
        batch = images[start : start + batch_size].contiguous(memory_format=torch.channels_last)
        with torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = F.cross_entropy(model(batch), labels[start : start + batch_size])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.detach()

    return step


def timed_steps(step, steps: int, device) -> tuple[list[torch.Tensor], float, EnergyReading]:
    """3 untimed steps, then ``steps`` timed ones: (their losses, seconds, energy reading)."""
    for index in range(3):
        step(index)
    sync(device)
    window, started = energy_window(device).start(), time.perf_counter()
    losses = [step(3 + index) for index in range(steps)]
    sync(device)
    seconds, reading = time.perf_counter() - started, window.stop()
    return losses, seconds, reading


def train_mode(spec, data, mode: str, steps: int, batch_size: int, device) -> dict:
    """``steps`` timed optimiser steps (after 3 untimed) in fp32, tf32 or bf16."""
    if mode == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return {"mode": mode, "status": "skipped", "reason": "this GPU has no bf16"}
    model = fresh_model(spec, device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, fused=True)
    images, labels = data[0].to(device), data[1].to(device)  # resident: no copies per step
    bf16 = mode == "bf16"
    step = step_function(model, optimizer, (images, labels), batch_size, bf16)
    with fp32_math(tf32=mode == "tf32"):
        ran = "bf16" if bf16 else fp32_name(device)
        losses, seconds, reading = timed_steps(step, steps, device)
        images_per_s = steps * batch_size / seconds
        dtype = torch.bfloat16 if bf16 else None
        compute = compute_report(flops_per_image(model, images[:1]), images_per_s, device, dtype)
        tf32 = "+".join(tf32_ops(device)) or "off"
    return {
        "mode": mode,
        "status": "ok",
        "precision": ran,  # what really ran: "tf32" asked on a pre-Ampere GPU runs fp32
        "tf32_ops": tf32,
        "steps": steps,
        "batch_size": batch_size,
        "seconds": seconds,
        "images_per_s": images_per_s,
        "loss_first": float(losses[0]),
        "loss_last": float(losses[-1]),
        "achieved_gflops": compute["achieved_gflops"],
        "peak_gflops": compute["device_peak_gflops"],
        "peak_method": compute.get("peak_method"),
        "joules_per_image": reading.joules_per(steps * batch_size),
        "energy_method": reading.method,
        "energy_reason": reading.reason,
    }


def export_variants(model: torch.nn.Module, folder: Path) -> tuple[dict[str, Path], str]:
    """fp32 and fp16 ONNX files of ``model`` (uint8 input); ({}, why) when export fails."""
    from pipeline.export.fp16 import to_fp16
    from pipeline.export.onnx_export import export_onnx
    from pipeline.export.variants import variant_path

    example = torch.zeros(2, 3, 32, 32, dtype=torch.uint8)
    try:
        export_onnx(model.to("cpu"), example, variant_path(folder, "fp32"), 18, {})
        to_fp16(variant_path(folder, "fp32"), variant_path(folder, "fp16"))
    except Exception as error:  # e.g. onnxscript missing: report it, keep the other checks
        return {}, f"ONNX export failed: {describe(error)[:200]}"  # one line: a table cell
    return {v: variant_path(folder, v) for v in ("fp32", "fp16")}, ""


def time_compile(model: torch.nn.Module, images: torch.Tensor, settings: BenchSettings) -> dict:
    """torch.compile of the fp32 model at the largest batch; the first call includes compiling."""
    device = torch.device(settings.device)
    model = model.to(device).eval()
    batch = images[: max(settings.batch_sizes)].to(device)
    try:
        compiled = torch.compile(model)
        with torch.inference_mode(), fp32_math(tf32=False):
            timing = time_call(
                lambda: compiled(batch),
                lambda: sync(device),
                settings.warmup,
                settings.min_iterations,
                settings.min_seconds,
            )
    except Exception as error:
        return {"status": "failed", "reason": describe(error)[:300]}  # torch.compile's span lines
    return {"status": "ok", "precision": "fp32", **timing.summary(len(batch))}


def run_gpu_tests() -> dict:
    """pytest -m gpu tests/test_gpu.py, when the test dependencies are installed."""
    missing = [
        name for name in ("pytest", "pydantic", "yaml") if not importlib.util.find_spec(name)
    ]
    if missing:
        return {"status": "skipped", "reason": f"not installed: {', '.join(missing)}"}
    command = [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT / "tests")])}
    done = subprocess.run(
        [*command, "tests/test_gpu.py"], cwd=ROOT, env=env, capture_output=True, text=True
    )
    lines = done.stdout.strip().splitlines()
    summary = next((line for line in reversed(lines) if re.search(r"\d+ \w+ in ", line)), "")
    return {
        "status": "passed" if done.returncode == 0 else "failed",
        "summary": summary.strip("= "),
        "failures": [line for line in lines if line.startswith(("FAILED", "ERROR"))],
    }


def machine_facts(device: torch.device, dry_run: bool) -> dict:
    facts = machine_context() | {"device": str(device)}
    facts["mode"] = "cpu dry run (no GPU figures)" if dry_run else "gpu"
    if device.type == "cuda":
        facts["gpu_capability"] = ".".join(map(str, torch.cuda.get_device_capability(device)))
        facts["cuda"] = torch.version.cuda
    return facts


def inference(model, data, settings: BenchSettings, energy: EnergySettings, folder: Path) -> dict:
    """Eager, engine and every onnxruntime provider through the benchmark stage's code."""
    model = model.to("cpu").eval()
    spec_card = ModelCard(
        arch="resnet_cifar",
        class_names=tuple(str(i) for i in range(10)),
        num_classes=10,
        input_shape=(3, 32, 32),
        normalisation=Normalisation(mean=tuple(MEAN), std=tuple(STD)),
    )
    variants, why = export_variants(model, folder)
    test = LabelledImages(data[0].numpy(), data[1].numpy())
    rows, context = run_benchmark(settings, model, spec_card, variants, test, energy)
    return {"rows": [row.as_dict() for row in rows], "context": context, "onnx_export": why or "ok"}


def train_all(spec, data, args, device) -> list[dict]:
    modes = ["fp32", "tf32", "bf16"]
    results = []
    for mode in modes:
        if mode == "tf32" and device.type != "cuda":
            results.append({"mode": mode, "status": "skipped", "reason": "TF32 is a GPU mode"})
            continue
        result = train_mode(spec, data, mode, args.steps, args.batch_size, device)
        print(f"train {mode}: {json.dumps(result)[:200]}", file=sys.stderr, flush=True)
        results.append(result)
    return results


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value).replace("|", "/")


def _table(rows: list[dict], columns: list[str]) -> list[str]:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(row.get(c)) for c in columns) + " |" for row in rows]
    return lines


def to_markdown(report: dict) -> str:
    facts = report["machine"]
    lines = ["# GPU self-check", ""]
    lines += [f"- {key}: {_cell(value)}" for key, value in facts.items()]
    tests = report["tests"]
    lines += ["", "## gpu-marked tests", "", f"{tests['status']}: "]
    lines[-1] += tests.get("summary") or tests.get("reason", "")
    lines += [f"- {failure}" for failure in tests.get("failures", [])]
    lines += ["", "## Training (resnet_cifar, synthetic 32x32)", ""]
    lines += _table(
        report["training"],
        ["mode", "status", "precision", "tf32_ops", "images_per_s", "loss_first", "loss_last"]
        + ["achieved_gflops", "peak_gflops", "joules_per_image", "energy_method", "reason"],
    )
    lines += ["", "## Inference", "", f"ONNX export: {report['inference']['onnx_export']}", ""]
    lines += _table(
        report["inference"]["rows"],
        ["backend", "variant", "precision", "status", "providers_used", "batch_size"]
        + ["images_per_s", "latency_ms_p50", "share_of_peak", "top1_accuracy"]
        + ["joules_per_image", "energy_method", "reason"],
    )
    compiled = report["compile"]
    lines += ["", f"torch.compile fp32: {compiled.get('status')}"]
    if compiled.get("status") == "ok":
        lines[-1] += (
            f", {compiled['images_per_s']:.4g} images/s at batch {compiled['batch_size']}, "
            f"first call (compiling) {compiled['first_call_ms']:.0f} ms"
        )
    else:
        lines[-1] += f": {compiled.get('reason', '')}"
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("gpu_check"), help="report folder")
    parser.add_argument("--steps", type=int, default=200, help="timed training steps per mode")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--width", type=int, default=32, help="resnet_cifar width")
    parser.add_argument("--images", type=int, default=4096, help="synthetic training images")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 64, 256])
    parser.add_argument("--min-seconds", type=float, default=1.0, help="per timed row")
    parser.add_argument("--dry-run", action="store_true", help="run on the CPU (checks the script)")
    parser.add_argument("--skip-tests", action="store_true", help="do not run gpu-marked tests")
    parser.add_argument("--skip-compile", action="store_true", help="do not time torch.compile")
    args = parser.parse_args(argv)
    if min(args.steps, args.batch_size, args.width, *args.batch_sizes) < 1:
        parser.error("--steps, --batch-size, --width and --batch-sizes must be positive")
    if args.images < args.batch_size:
        parser.error(f"--images {args.images} is fewer than --batch-size {args.batch_size}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not torch.cuda.is_available() and not args.dry_run:
        print(f"gpu_check: {NO_GPU}; --dry-run runs the steps on the CPU", file=sys.stderr)
        return 2
    device = torch.device("cuda" if torch.cuda.is_available() and not args.dry_run else "cpu")
    dry = device.type == "cpu"
    providers = ["cpu"] if dry else ["cpu", "cuda", "tensorrt"]
    settings = BenchSettings(
        str(device), providers, args.batch_sizes, 2 if dry else 10, 3 if dry else 50,
        0.0 if dry else args.min_seconds, repeats=2 if dry else 3,
        extra_seconds=0.0 if dry else 30.0,
    )  # fmt: skip
    energy = EnergySettings(min_window_s=0.05 if dry else 1.0)
    spec = ModelSpec(
        arch="resnet_cifar", in_channels=3, image_size=32, num_classes=10, width=args.width
    )
    data = synthetic_set(args.images)
    skip = "--skip-tests" if args.skip_tests else ""
    report = {
        "machine": machine_facts(device, dry),
        "tests": {"status": "skipped", "reason": skip} if skip else run_gpu_tests(),
        "training": train_all(spec, data, args, device),
    }
    trained = fresh_model(spec, device)  # inference speed does not depend on the weights' values
    held_out = synthetic_set(512, seed=1)
    with tempfile.TemporaryDirectory() as folder:
        report["inference"] = inference(trained, held_out, settings, energy, Path(folder))
    report["compile"] = (
        {"status": "skipped", "reason": "--skip-compile"}
        if args.skip_compile
        else time_compile(trained, held_out[0], settings)
    )
    write_report(report, args.out)
    if report["inference"]["onnx_export"] != "ok":  # every onnxruntime row is missing
        why = report["inference"]["onnx_export"]
        print(f"gpu_check: {why}; no onnxruntime row was measured", file=sys.stderr)
        return 1
    return 0 if report["tests"]["status"] != "failed" else 1


def write_report(report: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for name, text in (
        ("gpu_check.json", json.dumps(report, indent=2, default=str) + "\n"),
        ("gpu_check.md", to_markdown(report)),
    ):
        temporary = out / f".{name}.tmp"
        temporary.write_text(text, encoding="utf-8")
        os.replace(temporary, out / name)  # never a half-written report
    print(f"gpu_check: wrote {out / 'gpu_check.json'} and {out / 'gpu_check.md'}", file=sys.stderr)


if __name__ == "__main__":
    raise SystemExit(main())
