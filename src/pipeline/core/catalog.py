"""The registries: every name a params.yaml choice can take, and where its implementation lives.

Pure data (no torch, no onnxruntime, no pydantic): config.py validates params against these
lists, check_params and the README's params table read them, and the package that owns each
choice imports its implementation from the entry's ``target`` ("pipeline.<package>.<module>:
<attr>") through :func:`resolve`. Adding a model, a data source, an onnxruntime provider,
an export variant or another runtime is one entry here (plus the module that implements it).
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar


class _Named(Protocol):
    @property
    def name(self) -> str: ...


Entry = TypeVar("Entry", bound=_Named)


class Registry(Generic[Entry]):
    """Entries by name, in the order they were declared; ``key`` is the params key they fill."""

    def __init__(self, key: str, entries: Iterable[Entry]) -> None:
        self.key = key
        self._entries = {entry.name: entry for entry in entries}

    def names(self) -> list[str]:
        return list(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[Entry]:
        return iter(self._entries.values())

    def __len__(self) -> int:
        return len(self._entries)

    def __getitem__(self, name: str) -> Entry:
        try:
            return self._entries[name]
        except KeyError:
            known = ", ".join(self.names())
            raise KeyError(f"{self.key} {name!r} is unknown; choose one of {known}") from None


@dataclass(frozen=True)
class Source:
    """A ``data.source``: target is ``load(params: DataParams) -> SourceData``."""

    name: str
    description: str
    target: str
    shape: tuple[int, int] | None = None  # (channels, square side) when the source fixes it


@dataclass(frozen=True)
class Arch:
    """A ``model.arch``: target is ``constructor(in_channels=, num_classes=, width=, dropout=)``
    returning an ``nn.Module`` that maps normalised float NCHW images to logits."""

    name: str
    description: str
    target: str


@dataclass(frozen=True)
class ArchFamily:
    """``<prefix><name>`` archs: target is ``build(name, in_channels, num_classes)``, which
    raises KeyError for a name the family does not have."""

    prefix: str
    description: str
    target: str
    missing: str  # the error for a member it lacks; {name} is filled in

    @property
    def name(self) -> str:
        return f"{self.prefix}<name>"


@dataclass(frozen=True, kw_only=True)
class Provider:
    """A ``benchmark.providers`` entry: an onnxruntime execution provider and the device its
    nodes run on. The memory counter that sees it and the peak its rows are held against follow
    from ``device``; ``options`` ("pipeline.bench.<module>:<function>") takes a
    bench.providers.SessionTarget and returns its onnxruntime provider options, and is applied
    wherever the provider sits in a chain (as another one's fallback too)."""

    name: str
    description: str
    ort_name: str  # what onnxruntime calls it
    device: str = "cpu"  # cpu, or the onnxruntime device type its nodes run on (cuda)
    fallback: tuple[str, ...] = ()  # registry names requested after it, in order
    options: str | None = None  # target of its provider options; None: onnxruntime's defaults
    engine_per_batch: bool = False  # builds a fixed-shape engine per batch size (TensorRT)
    fp32_as_tf32: bool = False  # computes fp32 layers in TF32 on Ampere+ with no switch to stop it

    @property
    def on_gpu(self) -> bool:
        return self.device != "cpu"

    @property
    def memory_kind(self) -> str:
        """host | ort_<device>: the counter that sees its memory (bench/memory.py)."""
        return f"ort_{self.device}" if self.on_gpu else "host"

    def peak_key(self, precision: str) -> str:
        """The key of hardware/peak.py's peaks: 'cpu', or the GPU peak of the row's arithmetic.
        No int8 matmul peak is measured, so int8 rows are held against the fp16 one."""
        if not self.on_gpu:
            return "cpu"
        return f"{self.device}_{'fp16' if precision == 'int8' else precision}"


@dataclass(frozen=True)
class Runtime:
    """A ``benchmark.runtimes`` entry: a framework other than onnxruntime that runs the exported
    ONNX files; target is its backend class in pipeline.bench (bench/runtimes.py says what it
    must have)."""

    name: str
    description: str
    target: str


@dataclass(frozen=True)
class Gate:
    """A variant's default parity gate (``export.gates.<variant>`` overrides any threshold):
    what it must match of PyTorch fp32 over the whole test split."""

    max_abs_logit_diff: float | None  # None: reported, not gated
    min_top1_agreement: float
    max_accuracy_drop: float


# What a parity check or a timing on onnxruntime's CPU provider does not measure of an fp16 file.
CPU_FP16_NOTE = (
    "onnxruntime's CPU provider runs fp16 nodes through casts to fp32: its figures are of the "
    "graph, the fp16 weights and the input/output types, not of fp16 arithmetic"
)


@dataclass(frozen=True, kw_only=True)
class Variant:
    """An exported ONNX file. The base (``derived=False``, fp32) is always exported; target is
    the function that writes it from the PyTorch model. A derived variant is made from the base
    when ``export.variants`` lists it; its target is a converter
    ``convert(fp32_path, out_path, context: ConvertContext) -> VariantInfo``
    (pipeline/export/variants.py)."""

    name: str
    description: str
    file: str  # its file name in models/onnx/
    target: str
    precision: str  # the arithmetic it computes in: fp32 | fp16 | int8
    gate: Gate
    remedy: str  # what to change when it misses its gate ("" for none)
    derived: bool = True
    check_on_gpu: bool = False  # made for GPUs: its parity is checked on one when there is one
    cpu_note: str = ""  # what onnxruntime's CPU provider does not measure of it


SOURCES: Registry[Source] = Registry("data.source", [
    Source("digits", "scikit-learn's bundled 8x8 digits: no network, no files",
           "pipeline.sources.digits:load", (1, 8)),
    Source("mnist", "MNIST idx files under data.root", "pipeline.sources.mnist:load", (1, 28)),
    Source("fashion_mnist", "Fashion-MNIST idx files under data.root",
           "pipeline.sources.mnist:load", (1, 28)),
    Source("cifar10", "CIFAR-10 python batches under data.root", "pipeline.sources.cifar:load",
           (3, 32)),
    Source("imagefolder", "data.root/<class>/<image> files of any size",
           "pipeline.sources.imagefolder:load"),
])  # fmt: skip

ARCHS: Registry[Arch] = Registry("model.arch", [
    Arch("small_cnn", "a small conv net for tiny images (digits 8x8, MNIST 28x28); the default",
         "pipeline.models.small_cnn:SmallCNN"),
    Arch("resnet_cifar", "a ResNet-9 style residual net for 32x32 images",
         "pipeline.models.resnet_cifar:ResNetCifar"),
])  # fmt: skip

ARCH_FAMILIES: list[ArchFamily] = [
    ArchFamily("torchvision:", "a torchvision classification model, randomly initialised",
               "pipeline.models.torchvision_models:build_torchvision",
               "torchvision has no classification model {name!r}"),
]  # fmt: skip

PROVIDERS: Registry[Provider] = Registry("benchmark.providers", [
    Provider(name="cpu", description="onnxruntime's CPU kernels",
             ort_name="CPUExecutionProvider"),
    Provider(name="cuda", description="CUDA and cuDNN kernels, IEEE fp32 (no TF32)",
             ort_name="CUDAExecutionProvider", device="cuda", fallback=("cpu",),
             options="pipeline.bench.providers:cuda_options"),
    Provider(name="tensorrt", description="TensorRT engines, one per batch size",
             ort_name="TensorrtExecutionProvider", device="cuda", fallback=("cuda", "cpu"),
             options="pipeline.bench.providers:tensorrt_options", engine_per_batch=True,
             fp32_as_tf32=True),
])  # fmt: skip

RUNTIMES: Registry[Runtime] = Registry("benchmark.runtimes", [
    Runtime("openvino", "Intel OpenVINO on the CPU, at its default precision and at f32",
            "pipeline.bench.openvino:OpenVinoBackend"),
])  # fmt: skip

VARIANTS: Registry[Variant] = Registry("export.variants", [
    Variant(name="fp32", description="the exported model itself", file="model.onnx",
            target="pipeline.export.onnx_export:export_onnx", precision="fp32",
            gate=Gate(max_abs_logit_diff=1e-3, min_top1_agreement=0.999,
                      max_accuracy_drop=0.001),
            remedy="", derived=False),
    Variant(name="fp16",
            description="fp16 weights and activations, fp32 inputs and logits; for GPUs",
            file="model.fp16.onnx", target="pipeline.export.fp16:convert", precision="fp16",
            gate=Gate(max_abs_logit_diff=0.1, min_top1_agreement=0.995,
                      max_accuracy_drop=0.005),
            remedy="check the model, or leave fp16 out of export.variants",
            check_on_gpu=True, cpu_note=CPU_FP16_NOTE),
    # int8's logit difference follows the logits' scale, not the predictions: reported only.
    Variant(name="int8", description="static int8 QDQ, calibrated on a train sample; for CPUs",
            file="model.int8.onnx", target="pipeline.export.int8:convert", precision="int8",
            gate=Gate(max_abs_logit_diff=None, min_top1_agreement=0.98,
                      max_accuracy_drop=0.01),
            remedy="try export.int8.method: percentile, or leave int8 out of export.variants"),
])  # fmt: skip


def base_variant() -> str:
    """The variant every other one is derived from (fp32): the one entry not derived."""
    (base,) = (variant.name for variant in VARIANTS if not variant.derived)
    return base


def derived_variants() -> list[str]:
    """What ``export.variants`` may list."""
    return [variant.name for variant in VARIANTS if variant.derived]


def exported_variants(asked: Iterable[str]) -> list[str]:
    """Every file the export stage writes for ``export.variants`` = ``asked``: the base first."""
    return [base_variant(), *asked]


def arch_family(arch: str) -> tuple[ArchFamily, str] | None:
    """(family, member name) of a ``<prefix><name>`` arch; None for any other string."""
    for family in ARCH_FAMILIES:
        if arch.startswith(family.prefix) and arch != family.prefix:
            return family, arch.removeprefix(family.prefix)
    return None


def arch_names() -> list[str]:
    """What ``model.arch`` accepts, as a person reads it."""
    return [*sorted(ARCHS.names()), *(family.name for family in ARCH_FAMILIES)]


def is_known_arch(arch: str) -> bool:
    """A registered arch, or a family member by its form (whether the family really has that
    member is for the owning package to say: torchvision is not imported here)."""
    return arch in ARCHS or arch_family(arch) is not None


def fallback_chain(provider: str) -> list[Provider]:
    """The providers one backend requests: the one asked for, then its fallbacks, in order."""
    entry = PROVIDERS[provider]
    return [entry, *(PROVIDERS[name] for name in entry.fallback)]


def resolve(target: str, package: str) -> Any:
    """Import ``target`` ("module:attr"); it must live inside ``package`` (the one that owns the
    choice), so a registry entry cannot make a package import code from another layer."""
    module, _, attr = target.partition(":")
    if not attr or not module.startswith(f"{package}."):
        raise ValueError(f"target {target!r} is not a module:attr inside {package}")
    return getattr(importlib.import_module(module), attr)
