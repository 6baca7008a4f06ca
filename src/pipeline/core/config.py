"""Typed params: the only place params.yaml is parsed.

Every section of params.yaml is a pydantic model with ``extra="forbid"``, so a typo'd key,
a wrong type or an out-of-range value is refused before a stage does any work. Types are strict
(``yes`` is not an epoch count, ``2.0`` is not a batch size), floats must be finite, and every
number has an upper bound (the README's params table lists them). ``load_params`` turns the
first validation problem into a one-line :class:`ParamsError` that names the key and the bad
value.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    create_model,
    field_validator,
    model_validator,
)

from pipeline.core.catalog import (
    PROVIDERS,
    RUNTIMES,
    SOURCES,
    VARIANTS,
    arch_names,
    derived_variants,
    is_known_arch,
)
from pipeline.core.errors import MAX_SHOWN, PipelineError, first_line, short_repr
from pipeline.core.reading import open_regular

DEFAULT_PARAMS_PATH = Path("params.yaml")


class ParamsError(PipelineError):
    """A params.yaml problem, phrased as one line that names the key and the value."""


MAX_TEXT = 4_096  # characters in any string value (PATH_MAX)


class Section(BaseModel):
    # strict: YAML's `yes`/`true` is a bool, never the number 1; allow_inf_nan: `.inf` and
    # `.nan` would make loops endless or comparisons meaningless; str_max_length: no path or
    # name is longer than Linux's PATH_MAX, and a megabyte one would be quoted in every error.
    model_config = ConfigDict(
        extra="forbid", frozen=True, strict=True, allow_inf_nan=False, str_max_length=MAX_TEXT
    )


# Upper bounds: far above any sensible run, low enough that a typo'd extra digit group fails
# here instead of as an allocation traceback, an endless run or a library's overflow.
MAX_COUNT = 2**31 - 1  # what every int must fit (C int in torch, numpy and onnxruntime APIs)
MAX_EPOCHS = 10_000
MAX_BATCH = 65_536  # images per step or inference call
MAX_PROCESSES = 1_024  # decode workers, DataLoader workers, threads, DDP processes and nodes
MAX_SECONDS = 3_600.0  # timing and energy windows

Fraction = Annotated[float, Field(gt=0.0, lt=1.0)]
PositiveInt = Annotated[int, Field(gt=0, le=MAX_COUNT)]
BatchSize = Annotated[int, Field(gt=0, le=MAX_BATCH)]
Workers = Annotated[int, Field(ge=0, le=MAX_PROCESSES)]
EpochCount = Annotated[int, Field(ge=0, le=MAX_EPOCHS)]
Seconds = Annotated[float, Field(ge=0.0, le=MAX_SECONDS)]

_DEVICE = re.compile(r"auto|cpu|cuda(:[0-9]{1,4})?", re.ASCII)


def _check_device(device: str) -> str:
    # ASCII digits only: str.isdigit() also accepts e.g. Arabic-Indic digits, which torch refuses.
    if _DEVICE.fullmatch(device):
        return device
    raise ValueError("must be auto, cpu, cuda or cuda:N")


def _one_of(names: Callable[[], list[str]]) -> AfterValidator:
    """A str that must be one of ``names()``: a registry's, read from pipeline.core.catalog when a
    value is checked (so an entry added there is all it takes)."""

    def check(value: str) -> str:
        if value not in names():
            raise ValueError(f"must be one of {', '.join(names())}")
        return value

    return AfterValidator(check)


def _check_arch(arch: str) -> str:
    # Whether torchvision really has <name> is check_params' question (it imports torchvision).
    if is_known_arch(arch):
        return arch
    raise ValueError(f"must be one of {', '.join(arch_names())}")


def _choices(names: list[str]) -> dict[str, Any]:
    return {"choices": names}  # the README's params table lists them


SourceName = Annotated[str, _one_of(SOURCES.names)]
ProviderName = Annotated[str, _one_of(PROVIDERS.names)]
RuntimeName = Annotated[str, _one_of(RUNTIMES.names)]
VariantName = Annotated[str, _one_of(derived_variants)]
ArchName = Annotated[str, AfterValidator(_check_arch)]


class DataParams(Section):
    """Where images come from and how they are split."""

    source: SourceName = Field(
        "digits",
        description="digits is scikit-learn's bundled 8x8 set: no network, no files.",
        json_schema_extra=_choices(SOURCES.names()),
    )
    root: str = Field("data/raw", description="Folder holding the raw files of file sources.")
    download: bool = Field(False, description="Download torchvision datasets when missing.")
    image_size: Annotated[int, Field(gt=0, le=4096)] | None = Field(
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
    max_image_pixels: Annotated[int, Field(gt=0, le=500_000_000)] = Field(
        50_000_000, description="Larger images are quarantined as decompression bombs."
    )
    workers: Workers = Field(0, description="Decoding processes; 0 means one per CPU core.")
    shard_images: Annotated[int, Field(gt=0, le=MAX_COUNT)] = Field(
        4096,
        description="Images per prepared shard file; bounds prepare's and streamed training's "
        "memory (README: memory budget).",
    )

    @field_validator("channels", mode="before")
    @classmethod
    def _channels_not_bool(cls, value: Any) -> Any:
        # Literal[1, 3] alone would take `true` (True == 1).
        if isinstance(value, bool):
            raise ValueError("must be 1, 3 or null")
        return value

    @field_validator("test_fraction")
    @classmethod
    def _splits_leave_training_data(cls, test: float, info: Any) -> float:
        val = info.data.get("val_fraction", 0.0)
        if val + test >= 0.9:
            raise ValueError(f"val_fraction + test_fraction = {val + test:g} leaves < 10% to train")
        return test


class ModelParams(Section):
    """Which network to build (see pipeline.models for the registry)."""

    arch: ArchName = Field(
        "small_cnn",
        description="Registry name, or torchvision:<name>.",
        json_schema_extra=_choices(arch_names()),
    )
    width: Annotated[int, Field(gt=0, le=1024)] = Field(
        32,
        description="Channels of the first conv layer (check_params also refuses models over "
        "1e9 parameters).",
    )
    dropout: Annotated[float, Field(ge=0.0, lt=1.0)] = Field(0.1, description="Before the head.")
    pretrained: str | None = Field(
        None,
        description="Start weights: null = random; torchvision = the arch's default torchvision "
        "weights (torchvision:<name> archs; downloaded once to the torch cache); or a path to a "
        ".safetensors file or a weights_only torch state dict. The head is replaced.",
    )

    @field_validator("pretrained")
    @classmethod
    def _pretrained_source(cls, pretrained: str | None, info: Any) -> str | None:
        if pretrained is None:
            return None
        if not pretrained.strip():
            raise ValueError("must be null, torchvision or a path to a weights file")
        arch = info.data.get("arch", "")
        if pretrained == "torchvision" and not arch.startswith("torchvision:"):
            raise ValueError(f"torchvision weights need a torchvision:<name> arch, not {arch!r}")
        return pretrained


# A DNS label (RFC 1123): ASCII letters and digits, inner hyphens, at most 63 characters;
# also '_', which torch's check and /etc/hosts names (container names) allow.
_DNS_LABEL = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?")


def is_endpoint_host(host: str) -> bool:
    """Whether torch's rendezvous can use ``host`` (the part before the port's colon).

    Checked offline, with no DNS lookup: a DNS name, an IPv4 address, or an IPv6 address,
    bracketed (``[::1]``) or bare as torch also reads ``::1:29400`` (it splits at the last
    colon). torch's own check (``[\\w.:-]+``) lets through names that fail only after
    seconds of socket errors, such as ``-x`` or ``h:1``.
    """
    if host.startswith("[") and host.endswith("]"):
        return _is_ipv6(host[1:-1])
    if ":" in host:
        return _is_ipv6(host)
    labels = host.split(".")
    if labels[-1].isdigit():  # all-digit top label: only an IPv4 address, not 999.1.1.1
        return _is_ipv4(host)
    return len(host) <= 253 and all(_DNS_LABEL.fullmatch(label) for label in labels)


def _is_ipv4(text: str) -> bool:
    try:
        ipaddress.IPv4Address(text)
    except ValueError:
        return False
    return True


def _is_ipv6(text: str) -> bool:
    # No zone id (fe80::1%eth0): torch's hostname check refuses the '%'.
    if not text.isascii() or "%" in text:
        return False
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True


class DistributedParams(Section):
    """Data-parallel training (DDP) over several processes, started by torch's elastic launcher."""

    nproc_per_node: Literal["auto"] | Annotated[int, Field(gt=0, le=MAX_PROCESSES)] = Field(
        1, description="Training processes per node: N, or auto = one per visible GPU (1 on CPU)."
    )
    nnodes: Annotated[int, Field(gt=0, le=MAX_PROCESSES)] = Field(
        1, description="Nodes; each runs `python stages/train.py`."
    )
    rdzv_endpoint: str | None = Field(
        None,
        validate_default=True,
        description="host:port of the c10d rendezvous, the same on every node (needed when "
        "nnodes > 1); null = localhost on a free port.",
    )
    max_restarts: Annotated[int, Field(ge=0, le=100)] = Field(
        0, description="Restart the group this often after a worker dies; resumes from checkpoint."
    )
    sync_batchnorm: bool = Field(
        False,
        description="Under DDP, BatchNorm statistics over the global batch (SyncBatchNorm; GPUs "
        "only: torch refuses it on CPU tensors).",
    )

    @field_validator("nproc_per_node", mode="before")
    @classmethod
    def _positive_or_auto(cls, value: Any) -> Any:
        if value == "auto" or (type(value) is int and 0 < value <= MAX_PROCESSES):
            return value
        raise ValueError(f"must be auto or an integer from 1 to {MAX_PROCESSES}")

    @field_validator("rdzv_endpoint")
    @classmethod
    def _endpoint_is_host_port(cls, endpoint: str | None, info: Any) -> str | None:
        if endpoint is None:
            if info.data.get("nnodes", 1) > 1:
                raise ValueError("nnodes > 1 needs a host:port that every node can reach")
            return None
        host, _, port = endpoint.rpartition(":")
        # ASCII digits only: int() reads full-width digits, torchrun's rendezvous does not.
        if not host or not (port.isascii() and port.isdigit()) or not 0 < int(port) < 65536:
            raise ValueError("must be host:port, e.g. node0.example.com:29400")
        if not is_endpoint_host(host):
            raise ValueError(
                "host must be a DNS name (letters, digits, '_', inner hyphens), an IPv4 address or "
                "[IPv6], e.g. node0.example.com:29400 or [::1]:29400"
            )
        return endpoint


class TrainParams(Section):
    """Optimisation, and the device and precision policy."""

    device: str = Field("auto", description="auto | cpu | cuda | cuda:N")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto",
        description="auto: bf16 on GPUs and CPUs with bf16 units, fp16 on older GPUs, else fp32.",
    )
    epochs: Annotated[int, Field(gt=0, le=MAX_EPOCHS)] = Field(
        15, description="Passes over the train split."
    )
    batch_size: BatchSize = Field(64, description="Images per optimiser step (per process).")
    lr: Annotated[float, Field(gt=0.0, le=10.0)] = Field(
        0.003, description="Peak learning rate of the schedule."
    )
    weight_decay: Annotated[float, Field(ge=0.0, le=1.0)] = Field(5e-4, description="AdamW decay.")
    label_smoothing: Annotated[float, Field(ge=0.0, lt=1.0)] = Field(
        0.0, description="Cross-entropy label smoothing."
    )
    schedule: Literal["onecycle", "cosine"] = Field(
        "onecycle", description="LR schedule: one-cycle, or linear warm-up then cosine decay."
    )
    warmup_epochs: Annotated[float, Field(ge=0.0, le=MAX_EPOCHS)] = Field(
        1.0, description="Warm-up length of the cosine schedule, in epochs."
    )
    augment: Literal["none", "flip", "crop", "crop_flip"] = Field(
        "none", description="On-device augmentation: random crop (pad 2..4 px) and/or h-flip."
    )
    ema: Annotated[float, Field(ge=0.0, lt=1.0)] = Field(
        0.0, description="Weight EMA decay per step (e.g. 0.999); 0 turns EMA off."
    )
    patience: EpochCount = Field(
        0, description="Stop after this many epochs without a better val accuracy; 0 = never."
    )
    target_accuracy: Annotated[float, Field(gt=0.0, le=1.0)] | None = Field(
        0.95, description="Record the time until val accuracy first reaches this; null = off."
    )
    channels_last: bool = Field(True, description="NHWC memory layout (faster convs on GPU/CPU).")
    compile: bool = Field(False, description="torch.compile the model (slow start, faster steps).")
    data_on_device: Literal["auto"] | bool = Field(
        "auto", description="Keep the uint8 dataset on the device; auto = when it fits."
    )
    num_workers: Workers = Field(
        2, description="DataLoader workers when the data does not live on the device."
    )
    data_path: Literal["auto", "memory", "stream"] = Field(
        "auto",
        description="memory: the train split loaded whole (then data_on_device applies); "
        "stream: read shard by shard from disk; auto = memory when it fits (README).",
    )
    stream_window_shards: Annotated[int, Field(gt=0, le=MAX_PROCESSES)] = Field(
        2, description="Streaming: shards held and shuffled together (memory: README budget)."
    )
    stream_prefetch_batches: Annotated[int, Field(gt=0, le=MAX_PROCESSES)] = Field(
        4, description="Streaming: batches read ahead by the background reader."
    )
    checkpoint_every: EpochCount = Field(
        1, description="Save a resumable checkpoint every N epochs; 0 = never."
    )
    deterministic: bool = Field(
        False, description="Deterministic algorithms: identical weights from identical runs."
    )
    max_nonfinite_steps: Annotated[int, Field(ge=0, le=MAX_COUNT)] = Field(
        0, description="Stop when more steps than this had a NaN/inf loss (they are skipped)."
    )
    auto_batch_size: bool = Field(
        False, description="On CUDA out-of-memory, halve the batch size and retry."
    )
    freeze_backbone_epochs: EpochCount = Field(
        0, description="Train only the classifier head for this many first epochs (fine-tuning)."
    )
    backbone_lr_factor: Annotated[float, Field(gt=0.0, le=1.0)] = Field(
        1.0, description="The backbone's learning rate is train.lr times this (the head's: lr)."
    )
    grad_clip_norm: Annotated[float, Field(gt=0.0, le=1e6)] | None = Field(
        None, description="Clip the global gradient norm to this; null = no clipping."
    )
    grad_accumulation: Annotated[int, Field(gt=0, le=1024)] = Field(
        1,
        description="Micro-batches summed per optimiser step: effective batch = batch_size x "
        "this x processes.",
    )
    checkpoint_every_batches: Annotated[int, Field(ge=0, le=MAX_COUNT)] = Field(
        0,
        description="Also checkpoint inside each epoch, every N micro-batches (a kill then "
        "loses at most N batches: long epochs over big data); a multiple of grad_accumulation; "
        "0 = at epoch ends only.",
    )
    distributed: DistributedParams = Field(
        DistributedParams(), description="Multi-process (multi-GPU, multi-node) DDP training."
    )

    _device = field_validator("device")(_check_device)

    @field_validator("checkpoint_every_batches")
    @classmethod
    def _whole_accumulation_groups(cls, every: int, info: Any) -> int:
        group = info.data.get("grad_accumulation", 1)
        if every % group:
            raise ValueError(
                f"must be a multiple of train.grad_accumulation ({group}): a checkpoint falls "
                "between optimiser steps"
            )
        return every


class EvaluateParams(Section):
    batch_size: BatchSize = Field(512, description="Images per forward pass.")


class ParityGate(Section):
    """What one exported variant must match of PyTorch fp32, over the whole test split; the
    defaults are the variant's catalog entry's (``catalog.Gate``)."""

    max_abs_logit_diff: Annotated[float, Field(gt=0.0)] | None = Field(
        description="Fail export when any logit differs more than this from PyTorch's; null = "
        "report it only (int8: its size follows the logits' scale, not the predictions).",
    )
    min_top1_agreement: Annotated[float, Field(gt=0.0, le=1.0)] = Field(
        description="Fail export when a smaller share of top-1 predictions agree."
    )
    max_accuracy_drop: Annotated[float, Field(ge=0.0, le=1.0)] = Field(
        description="Fail export when top-1 accuracy falls more (0.005 = 0.5 points)."
    )


class _GatesByVariant(Section):
    """``export.gates``: one :class:`ParityGate` per registered variant (fields made from
    ``catalog.VARIANTS`` below), each threshold defaulting to the variant's catalog entry."""

    @model_validator(mode="before")
    @classmethod
    def _catalog_defaults(cls, raw: Any) -> Any:
        # A gate that sets some thresholds keeps its variant's defaults for the others.
        if not isinstance(raw, dict):
            return raw
        return {
            name: {**asdict(VARIANTS[name].gate), **given}
            if name in VARIANTS and isinstance(given, dict)
            else given
            for name, given in raw.items()
        }

    def __getitem__(self, variant: str) -> ParityGate:
        return getattr(self, VARIANTS[variant].name)


ParityGates = create_model(
    "ParityGates",
    __base__=_GatesByVariant,
    **{
        variant.name: (
            ParityGate,
            Field(ParityGate(**asdict(variant.gate)), description=variant.description),
        )
        for variant in VARIANTS
    },
)


QuantizableOp = Literal[
    "Conv", "Gemm", "MatMul", "MaxPool", "AveragePool", "GlobalAveragePool", "Add", "Mul",
    "Sub", "Relu", "Clip", "Concat", "Reshape", "Flatten", "Transpose", "Resize", "Sigmoid",
    "Softmax",
]  # fmt: skip


class Int8Params(Section):
    """Static int8 quantisation (QDQ) for CPUs, calibrated on a seeded sample of the train split."""

    calibration_images: PositiveInt = Field(
        512, description="Train images in the calibration sample (drawn with the top-level seed)."
    )
    activations: Literal["uint8", "int8"] = Field(
        "uint8",
        description="uint8 activations x int8 weights (U8S8) take the u8*s8 dot-product path of "
        "AVX2/VNNI CPUs; int8 (S8S8) is what TensorRT and some NPUs need.",
    )
    per_channel: bool = Field(True, description="One weight scale per output channel.")
    reduce_range: Literal["auto"] | bool = Field(
        "auto",
        description="7-bit weights, so u8*s8 pairs summed in int16 cannot saturate on CPUs "
        "without VNNI (AVX2, AVX-512F); auto = on unless this CPU has VNNI or AMX-INT8. "
        "true gives the same file on every CPU.",
    )
    op_types: list[QuantizableOp] = Field(
        ["Conv", "Gemm", "MatMul", "MaxPool", "AveragePool", "GlobalAveragePool", "Add"],
        min_length=1,
        description="Operator types to quantise; the rest stay fp32 between DQ/Q pairs.",
    )
    method: Literal["minmax", "entropy", "percentile"] = Field(
        "minmax", description="How activation ranges are calibrated."
    )


def _no_duplicates(kind: str):
    """A validator refusing a list that names one ``kind`` twice."""

    def check(cls, values: list[str]) -> list[str]:
        if len(set(values)) != len(values):
            raise ValueError(f"lists a {kind} twice")
        return values

    return classmethod(check)


class ExportParams(Section):
    """ONNX export: fp32 model.onnx, the variants derived from it, and their parity gates."""

    opset: Annotated[int, Field(ge=18, le=23)] = Field(18, description="ONNX opset version.")
    include_preprocessing: bool = Field(
        True, description="Fold normalisation into the graph: the model takes raw uint8 pixels."
    )
    variants: list[VariantName] = Field(
        ["fp16", "int8"],
        description="Derived from the fp32 model (always exported): fp16 for GPUs, int8 for CPUs.",
        json_schema_extra=_choices(derived_variants()),
    )
    int8: Int8Params = Field(Int8Params(), description="How the int8 variant is quantised.")
    gates: ParityGates = Field(  # type: ignore[valid-type]  (made from the catalog)
        ParityGates(), description="Parity thresholds per variant; a miss fails the stage."
    )

    _no_duplicate_variants = field_validator("variants")(_no_duplicates("variant"))


class BenchmarkParams(Section):
    """Inference timing of PyTorch against onnxruntime (and other runtimes), for every exported
    variant."""

    device: str = Field(
        "auto", description="Device of the PyTorch backends: auto | cpu | cuda[:N]."
    )
    providers: list[ProviderName] = Field(
        ["cpu"],
        min_length=1,
        description="onnxruntime execution providers to try.",
        json_schema_extra=_choices(PROVIDERS.names()),
    )
    runtimes: list[RuntimeName] = Field(
        ["openvino"],
        description="Other runtimes that run every exported variant on the CPU; [] for none.",
        json_schema_extra=_choices(RUNTIMES.names()),
    )
    batch_sizes: list[BatchSize] = Field(
        [1, 64], min_length=1, max_length=64, description="Batch sizes."
    )
    warmup: Annotated[int, Field(ge=0, le=100_000)] = Field(
        10, description="Untimed calls before timing."
    )
    min_iterations: Annotated[int, Field(gt=0, le=1_000_000)] = Field(
        30, description="At least this many timed calls."
    )
    min_seconds: Seconds = Field(
        0.5, description="Keep timing until this long has passed, for stable tails."
    )
    repeats: Annotated[int, Field(ge=2, le=1_000)] = Field(
        3,
        description="Timing rounds, each over every backend in turn; a row reports the median "
        "of its rounds' p50s and their spread (at least 2, so a spread is always measured).",
    )
    max_repeats: Annotated[int, Field(ge=2, le=1_000)] = Field(
        12,
        description="Rounds a row may get in all: rows still noisy after `repeats` rounds are "
        "timed again (the PyTorch eager baseline first) up to this many, within extra_seconds.",
    )
    extra_seconds: Seconds = Field(
        30.0,
        description="Wall-clock budget (s) for the rounds beyond `repeats`; 0 = none. A quiet "
        "machine needs none; a busy one spends up to this to settle its noisy rows.",
    )
    max_spread: Annotated[float, Field(gt=0.0, le=100.0)] = Field(
        0.125,
        description="A row whose rounds' p50s spread, interquartile range / median, exceeds "
        "this is marked noisy and never chosen as the best (0.125: with 3 rounds, (max - min) "
        "/ median above 0.25).",
    )
    threads: Workers = Field(
        0, description="Intra-op threads for both backends; 0 means physical cores."
    )
    max_accuracy_drop: Annotated[float, Field(ge=0.0, le=1.0)] = Field(
        0.005,
        description="The headline's best backend must keep top-1 within this of PyTorch fp32.",
    )

    _device = field_validator("device")(_check_device)

    @field_validator("max_repeats")
    @classmethod
    def _at_least_repeats(cls, max_repeats: int, info: Any) -> int:
        repeats = info.data.get("repeats", 2)
        if max_repeats < repeats:
            raise ValueError(f"must be at least benchmark.repeats ({repeats})")
        return max_repeats

    _no_duplicate_runtimes = field_validator("runtimes")(_no_duplicates("runtime"))


class EnergyParams(Section):
    """Energy measurement (see pipeline.energy for the meters and their order)."""

    cpu_watts: Annotated[float, Field(gt=0.0, le=10_000.0)] | None = Field(
        None,
        description="CPU package power at full load (W); if set, CPU runs without RAPL get an "
        "estimate (CPU-seconds / cores x watts), labelled 'estimate'.",
    )
    min_window_s: Seconds = Field(
        1.0, description="Benchmark energy windows last at least this long (meters tick slowly)."
    )


class Params(Section):
    # split() also uses seed + 1, and scikit-learn takes seeds below 2**32.
    seed: Annotated[int, Field(ge=0, le=MAX_COUNT)] = Field(
        42, description="One seed for split and training."
    )
    data: DataParams = DataParams()
    model: ModelParams = ModelParams()
    train: TrainParams = TrainParams()
    evaluate: EvaluateParams = EvaluateParams()
    export: ExportParams = ExportParams()
    benchmark: BenchmarkParams = BenchmarkParams()
    energy: EnergyParams = EnergyParams()


def _shown_key(key: str) -> str:
    if len(key) <= MAX_SHOWN:
        return key
    return f"{key[: MAX_SHOWN - 3]}... ({len(key):,} characters)"


def _describe(error: ValidationError) -> str:
    first = error.errors()[0]
    key = _shown_key(".".join(str(part) for part in first["loc"]) or "<root>")
    if first["type"] == "extra_forbidden":
        return f"unknown key '{key}' (check its spelling)"
    if first["type"] == "missing":
        return f"missing key '{key}'"
    message = first["msg"].removeprefix("Value error, ")
    return f"bad value for '{key}': {short_repr(first.get('input'))} ({message})"


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


class ParamsLoader(yaml.SafeLoader):
    """PyYAML's safe loader, also reading exponent floats without a dot (``1e-07``) as floats.

    PyYAML follows YAML 1.1, where ``1e-07`` is a string; DVC writes YAML 1.2 and emits small
    values that way, so ``dvc exp run -S ...=0.0000001`` used to fail as 'not a valid number'.
    """


ParamsLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


MAX_INT_TEXT = 100  # characters of a YAML integer; MAX_COUNT has 10 digits


def _construct_int(loader: ParamsLoader, node: yaml.ScalarNode) -> int:
    # Python refuses to convert an integer of over 4,300 digits with a bare ValueError, which
    # would escape as a traceback; no params value needs a tenth of MAX_INT_TEXT.
    if len(node.value) > MAX_INT_TEXT:
        raise yaml.constructor.ConstructorError(
            problem=f"an integer of {len(node.value):,} characters at line "
            f"{node.start_mark.line + 1}, far beyond any params value"
        )
    return loader.construct_yaml_int(node)


ParamsLoader.add_constructor("tag:yaml.org,2002:int", _construct_int)


def parse_yaml(text: str) -> Any:
    """``text`` through :class:`ParamsLoader` (safe: plain data only, no Python objects)."""
    loader = ParamsLoader(text)
    try:
        return loader.get_single_data()
    except RecursionError:
        # PyYAML's composer recurses once per nesting level: a few hundred levels exhaust the stack.
        mark = loader.get_mark()
        raise yaml.YAMLError(
            f"nested too deeply at line {mark.line + 1}, column {mark.column + 1}"
        ) from None
    finally:
        loader.dispose()


def _read_text(path: Path) -> str:
    """The text of ``path``, or a one-line ParamsError: opened only as a regular file (a named
    pipe would block the read forever waiting for a writer), and decoded as strict UTF-8."""
    try:
        with open_regular(path) as handle:
            data = handle.read()
    except OSError as error:
        raise ParamsError(f"{path}: cannot read ({error.strerror or error})") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        bad = data[error.start]
        raise ParamsError(
            f"{path}: not UTF-8 text (byte {bad:#04x} at offset {error.start})"
        ) from None


def load_params(path: str | Path = DEFAULT_PARAMS_PATH) -> Params:
    path = Path(path)
    text = _read_text(path)
    try:
        raw = parse_yaml(text)
    except yaml.YAMLError as error:
        raise ParamsError(f"{path}: not valid YAML ({first_line(error)})") from None
    return parse_params(raw, source=str(path))
