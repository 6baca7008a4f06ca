"""Typed params: the only place params.yaml is parsed.

Every section of params.yaml is a pydantic model with ``extra="forbid"``, so a typo'd key,
a wrong type or an out-of-range value is refused before a stage does any work. ``load_params``
turns the first validation problem into a one-line :class:`ParamsError` that names the key and
the bad value.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from pipeline.errors import PipelineError

DEFAULT_PARAMS_PATH = Path("params.yaml")


class ParamsError(PipelineError):
    """A params.yaml problem, phrased as one line that names the key and the value."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


Fraction = Annotated[float, Field(gt=0.0, lt=1.0)]
PositiveInt = Annotated[int, Field(gt=0)]


def _check_device(device: str) -> str:
    if device in ("auto", "cpu", "cuda"):
        return device
    if device.startswith("cuda:") and device[5:].isdigit():
        return device
    raise ValueError("must be auto, cpu, cuda or cuda:N")


class DataParams(Section):
    """Where images come from and how they are split."""

    source: Literal["digits", "mnist", "fashion_mnist", "cifar10", "imagefolder"] = Field(
        "digits", description="digits is scikit-learn's bundled 8x8 set: no network, no files."
    )
    root: str = Field("data/raw", description="Folder holding the raw files of file sources.")
    download: bool = Field(False, description="Download torchvision datasets when missing.")
    image_size: PositiveInt | None = Field(
        None, description="Resize imagefolder images to this square side, in pixels."
    )
    channels: Literal[1, 3] | None = Field(
        None, description="Convert imagefolder images to 1 (grey) or 3 (RGB) channels."
    )
    val_fraction: Fraction = Field(0.15, description="Share of the labelled data held for val.")
    test_fraction: Fraction = Field(
        0.15, description="Share held for test (sources without an official test split)."
    )
    max_bad_fraction: Annotated[float, Field(ge=0.0, le=1.0)] = Field(
        0.01, description="Fail prepare when more than this share of files is unreadable."
    )
    max_image_pixels: PositiveInt = Field(
        50_000_000, description="Larger images are quarantined as decompression bombs."
    )
    workers: Annotated[int, Field(ge=0)] = Field(
        0, description="Decoding processes; 0 means one per CPU core."
    )

    @field_validator("test_fraction")
    @classmethod
    def _splits_leave_training_data(cls, test: float, info: Any) -> float:
        val = info.data.get("val_fraction", 0.0)
        if val + test >= 0.9:
            raise ValueError(f"val_fraction + test_fraction = {val + test:g} leaves < 10% to train")
        return test


class ModelParams(Section):
    """Which network to build (see pipeline.models for the registry)."""

    arch: str = Field("small_cnn", description="Registry name, or torchvision:<name>.")
    width: PositiveInt = Field(32, description="Channels of the first conv layer.")
    dropout: Annotated[float, Field(ge=0.0, lt=1.0)] = Field(0.1, description="Before the head.")


class TrainParams(Section):
    """Optimisation, and the device and precision policy."""

    device: str = Field("auto", description="auto | cpu | cuda | cuda:N")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="auto: bf16 on GPUs with it, fp16 on older GPUs, fp32 on CPU."
    )
    epochs: PositiveInt = Field(15, description="Passes over the train split.")
    batch_size: PositiveInt = Field(64, description="Images per optimiser step (per process).")
    lr: Annotated[float, Field(gt=0.0, le=10.0)] = Field(
        0.003, description="Peak learning rate of the schedule."
    )
    weight_decay: Annotated[float, Field(ge=0.0, le=1.0)] = Field(5e-4, description="AdamW decay.")
    label_smoothing: Annotated[float, Field(ge=0.0, lt=1.0)] = Field(
        0.0, description="CE smoothing."
    )

    _device = field_validator("device")(_check_device)


class EvaluateParams(Section):
    batch_size: PositiveInt = Field(512, description="Images per forward pass.")


class ExportParams(Section):
    """ONNX export and its parity gate against PyTorch."""

    opset: Annotated[int, Field(ge=18, le=23)] = Field(18, description="ONNX opset version.")
    include_preprocessing: bool = Field(
        True, description="Fold normalisation into the graph: the model takes raw uint8 pixels."
    )
    max_abs_logit_diff: Annotated[float, Field(gt=0.0)] = Field(
        1e-3, description="Fail export when ONNX logits differ more than this from PyTorch."
    )
    min_top1_agreement: Annotated[float, Field(gt=0.0, le=1.0)] = Field(
        0.999, description="Fail export when fewer predictions agree with PyTorch."
    )


class BenchmarkParams(Section):
    """Inference timing of PyTorch against onnxruntime."""

    device: str = Field(
        "auto", description="Device of the PyTorch backends: auto | cpu | cuda[:N]."
    )
    providers: list[Literal["cpu", "cuda", "tensorrt"]] = Field(
        ["cpu"], min_length=1, description="onnxruntime execution providers to try."
    )
    batch_sizes: list[PositiveInt] = Field([1, 64], min_length=1, description="Batch sizes.")
    warmup: Annotated[int, Field(ge=0)] = Field(10, description="Untimed calls before timing.")
    min_iterations: PositiveInt = Field(30, description="At least this many timed calls.")
    min_seconds: Annotated[float, Field(ge=0.0)] = Field(
        0.5, description="Keep timing until this long has passed, for stable tails."
    )
    threads: Annotated[int, Field(ge=0)] = Field(
        0, description="Intra-op threads for both backends; 0 means physical cores."
    )

    _device = field_validator("device")(_check_device)


class EnergyParams(Section):
    """Energy measurement (see pipeline.energy for the meters and their order)."""

    cpu_watts: Annotated[float, Field(gt=0.0)] | None = Field(
        None, description="If set, estimate CPU energy from CPU time x this power (labelled)."
    )
    min_window_s: Annotated[float, Field(ge=0.0)] = Field(
        1.0, description="Benchmark energy windows last at least this long (meters tick slowly)."
    )


class Params(Section):
    seed: Annotated[int, Field(ge=0)] = Field(42, description="One seed for split and training.")
    data: DataParams = DataParams()
    model: ModelParams = ModelParams()
    train: TrainParams = TrainParams()
    evaluate: EvaluateParams = EvaluateParams()
    export: ExportParams = ExportParams()
    benchmark: BenchmarkParams = BenchmarkParams()
    energy: EnergyParams = EnergyParams()


def _describe(error: ValidationError) -> str:
    first = error.errors()[0]
    key = ".".join(str(part) for part in first["loc"]) or "<root>"
    if first["type"] == "extra_forbidden":
        return f"unknown key '{key}' (check its spelling)"
    if first["type"] == "missing":
        return f"missing key '{key}'"
    message = first["msg"].removeprefix("Value error, ")
    return f"bad value for '{key}': {first.get('input')!r} ({message})"


def parse_params(raw: Any, *, source: str = "params") -> Params:
    """Validate an already-loaded mapping; raise ParamsError with a one-line message."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ParamsError(
            f"{source}: expected a mapping at the top level, got {type(raw).__name__}"
        )
    try:
        return Params.model_validate(raw)
    except ValidationError as error:
        raise ParamsError(f"{source}: {_describe(error)}") from None


def load_params(path: str | Path = DEFAULT_PARAMS_PATH) -> Params:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise ParamsError(f"{path}: cannot read ({error.strerror})") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ParamsError(f"{path}: not valid YAML ({str(error).splitlines()[0]})") from None
    return parse_params(raw, source=str(path))


def _cell(text: str | None) -> str:
    return (text or "").replace("|", "\\|")


def params_table() -> str:
    """Markdown table of every param with its default and description (for the README)."""
    rows = ["| param | default | meaning |", "|---|---|---|"]
    for name, field in Params.model_fields.items():
        section = field.annotation
        if not hasattr(section, "model_fields"):
            rows.append(f"| `{name}` | `{field.default}` | {_cell(field.description)} |")
            continue
        for key, sub in section.model_fields.items():
            rows.append(f"| `{name}.{key}` | `{sub.default}` | {_cell(sub.description)} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(params_table())
