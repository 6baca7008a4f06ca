"""Start weights for fine-tuning: a local file or torchvision's, checked, then fitted to the model.

``model.pretrained`` is a path to a ``.safetensors`` file or a ``weights_only`` torch state dict
(read through ``O_NOFOLLOW``, never through a link; non-finite tensors refused), or
``torchvision``: the arch's default torchvision weights, from the torch cache (downloaded there
once, by an online run). Every tensor must match the model by name and shape except two: the
classifier head, always left at its fresh initialisation for the data's classes, and the first
conv, whose input channels are adapted (3 -> 1: summed over channels; 1 -> 3: spread evenly).
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors_bytes
from torch import nn

from pipeline.core.errors import PipelineError
from pipeline.core.headers import TensorFileError, header_of
from pipeline.core.io import sha256_bytes
from pipeline.core.reading import LinkRefusedError, NotRegularFileError, open_regular
from pipeline.models.build import ModelSpec, build_model
from pipeline.models.parts import first_conv_weight, head_parameter_names

TORCHVISION = "torchvision"
# Above torchvision's largest weights (about 2.6 GB): a bigger file is not start weights, and
# reading it whole could exhaust memory before any check ran.
MAX_WEIGHTS_BYTES = 8 * 1024**3
# What a model's state dict holds; fp8, complex and quantized tensors are not start weights.
PLAIN_DTYPES = {
    torch.float16, torch.bfloat16, torch.float32, torch.float64,
    torch.bool, torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64,
}  # fmt: skip


class PretrainedError(PipelineError):
    pass


@dataclass(frozen=True)
class Pretrained:
    """What was loaded (and what the model card records about it)."""

    source: str  # the model.pretrained value
    weights: str  # file name, or torchvision's weights enum (e.g. ResNet18_Weights.IMAGENET1K_V1)
    sha256: str
    mean: list[float] | None = None  # the weights' own normalisation (torchvision), else None
    std: list[float] | None = None
    input_size: int | None = None  # the weights' nominal input side (torchvision), else None
    replaced: list[str] = field(default_factory=list)  # head tensors: fresh init, never loaded
    adapted: list[str] = field(default_factory=list)  # first-conv tensors with channels adapted

    def record(self) -> dict:
        return {
            "source": self.source,
            "weights": self.weights,
            "sha256": self.sha256,
            "input_size": self.input_size,
            "replaced": self.replaced,
            "adapted": self.adapted,
        }


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _read_no_follow(path: Path, what: str) -> bytes:
    try:
        with open_regular(path, follow_links=False) as handle:
            size = os.fstat(handle.fileno()).st_size
            if size > MAX_WEIGHTS_BYTES:
                raise PretrainedError(
                    f"{what}: {path} is {size / 1024**3:.1f} GiB, above the "
                    f"{MAX_WEIGHTS_BYTES / 1024**3:.0f} GiB a start-weights file may hold"
                )
            return handle.read()
    except MemoryError:
        raise PretrainedError(f"{what}: {path} does not fit in memory") from None
    except LinkRefusedError:
        raise PretrainedError(
            f"{what}: {path} is a symbolic link; weights are never read through links: "
            "point to the file itself"
        ) from None
    except NotRegularFileError:
        raise PretrainedError(f"{what}: {path} is not a regular file") from None
    except OSError as error:
        raise PretrainedError(f"{what}: cannot read {path} ({error.strerror or error})") from None


def _parse(path: Path, data: bytes, what: str) -> dict:
    if path.suffix == ".safetensors":
        try:
            header_of(data, path)  # truncated or malformed: one line before parsing any tensor
            return load_safetensors_bytes(data)
        except (TensorFileError, SafetensorError) as error:
            raise PretrainedError(f"{what}: {_first_line(error)}") from None
    try:
        # weights_only: tensors, numbers, strings and containers; a pickled object is refused.
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as error:  # UnpicklingError, RuntimeError, EOFError from a bad file
        raise PretrainedError(
            f"{what}: {path} is not a safetensors file or a weights_only torch state dict "
            f"({type(error).__name__}: {_first_line(error)[:160]})"
        ) from None


def _tensors(loaded: object, path: Path, what: str) -> dict[str, torch.Tensor]:
    """A flat name -> tensor mapping (also found under a checkpoint's state_dict or model)."""
    if isinstance(loaded, dict):
        for nested in ("state_dict", "model"):
            if isinstance(loaded.get(nested), dict):
                loaded = loaded[nested]
                break
    if not isinstance(loaded, dict) or not loaded:
        raise PretrainedError(f"{what}: {path} holds no state dict (name -> tensor)")
    for name, value in loaded.items():
        _check_tensor(name, value, f"{what}: {path}")
    return loaded


def _check_tensor(name: object, value: object, where: str) -> None:
    if not isinstance(name, str) or not isinstance(value, torch.Tensor):
        raise PretrainedError(f"{where}: entry {name!r} is not a named tensor")
    # Sparse, nested and meta tensors hold no plain values to check or load.
    if value.layout != torch.strided or value.is_nested or value.device.type != "cpu":
        raise PretrainedError(
            f"{where}: tensor {name!r} is not a dense tensor in memory "
            f"({value.layout}, on {value.device.type})"
        )
    if value.dtype not in PLAIN_DTYPES:
        raise PretrainedError(
            f"{where}: tensor {name!r} is {value.dtype}; start weights hold float16, bfloat16, "
            "float32 or float64 tensors (and integer or bool buffers)"
        )
    if value.is_floating_point() and not torch.isfinite(value).all():
        raise PretrainedError(f"{where}: tensor {name!r} holds NaN or infinite values")


def read_weights_file(path: str | Path, what: str) -> tuple[dict[str, torch.Tensor], str]:
    """(tensors, sha256 of the file) after every check; ``what`` names the param in errors."""
    path = Path(path)
    data = _read_no_follow(path, what)
    return _tensors(_parse(path, data, what), path, what), sha256_bytes(data)


def _adapt_first_conv(name: str, weight: torch.Tensor, want: torch.Size, what: str):
    have_in, want_in = weight.shape[1], want[1]
    same_rest = weight.shape[0] == want[0] and weight.shape[2:] == want[2:]
    if not same_rest or {have_in, want_in} != {1, 3}:
        raise PretrainedError(
            f"{what}: first conv {name!r} is {list(weight.shape)}, the model needs {list(want)}"
        )
    if want_in == 1:  # grey input: the sum is what the RGB filters give a grey image
        return weight.sum(dim=1, keepdim=True)
    return weight.expand(-1, 3, -1, -1) / 3.0  # the same response to a grey image


def untracked_batches(
    state: dict[str, torch.Tensor], loaded: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """BatchNorm's ``num_batches_tracked`` counters the file lacks (torchvision's classic ResNet
    files predate them), as a fresh model has them: 0. They only matter with momentum=None."""
    suffix = ".num_batches_tracked"
    return {
        name: torch.zeros((), dtype=torch.long)
        for name in state
        if name.endswith(suffix) and name not in loaded
    }


def fit_state(
    model: nn.Module, num_classes: int, loaded: dict[str, torch.Tensor], what: str
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """(tensors to load, keys of adapted first-conv tensors) for ``model`` (the meta device will
    do: only names, shapes and dtypes are read). Any other tensor the model lacks, the file
    lacks, or whose shape differs is an error naming it."""
    state = model.state_dict()
    head = head_parameter_names(model, num_classes)
    conv = first_conv_weight(model)
    loaded = {**untracked_batches(state, loaded), **loaded}
    missing = sorted(set(state) - set(loaded) - head)
    unexpected = sorted(set(loaded) - set(state))
    for problem, names in (("lack", missing), ("hold a tensor the model lacks:", unexpected)):
        if names:
            more = f" (and {len(names) - 1} more)" if len(names) > 1 else ""
            raise PretrainedError(f"{what}: the weights {problem} {names[0]!r}{more}")
    fitted, adapted = {}, []
    for name, want in state.items():  # the model's order: the first mismatch is reported
        if name in head:
            continue
        tensor = loaded[name]
        if tensor.shape != want.shape:
            if name != conv:
                raise PretrainedError(
                    f"{what}: tensor {name!r} is {list(tensor.shape)}, the model needs "
                    f"{list(want.shape)}"
                )
            tensor = _adapt_first_conv(name, tensor, want.shape, what)
            adapted.append(name)
        if tensor.is_floating_point() != want.is_floating_point():
            raise PretrainedError(f"{what}: tensor {name!r} is {tensor.dtype}, not {want.dtype}")
        fitted[name] = tensor.to(want.dtype).contiguous()
    return fitted, adapted


def torchvision_cache_file(weights) -> Path:
    """Where torch.hub keeps (and looks for) a torchvision weights file."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(weights.url)


def _fetch_torchvision(weights, what: str) -> Path:
    cached = torchvision_cache_file(weights)
    if cached.is_file() or cached.is_symlink():
        return cached
    match = torch.hub.HASH_REGEX.search(cached.name)
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(
            weights.url, str(cached), hash_prefix=match.group(1) if match else None, progress=False
        )
    except Exception as error:  # offline: URLError/OSError; a bad download: RuntimeError
        raise PretrainedError(
            f"{what}: {cached.name} is not in the torch cache ({cached.parent}) and could not be "
            f"downloaded ({_first_line(error)[:120]}); run once online, copy {weights.url} "
            "there, or set model.pretrained to a local weights file"
        ) from None
    return cached


def torchvision_weights(name: str, channels: int, what: str) -> tuple[Pretrained, dict]:
    """The arch's default torchvision weights and their normalisation (averaged to one channel
    for grey images, whose first conv is summed over RGB)."""
    from torchvision import models

    try:
        weights = models.get_model_weights(name).DEFAULT
    except (KeyError, ValueError, AttributeError):
        raise PretrainedError(
            f"{what}: torchvision has no pretrained weights for {name!r}"
        ) from None
    cached = _fetch_torchvision(weights, what)
    tensors, digest = read_weights_file(cached, what)
    preset = weights.transforms()
    mean, std = list(preset.mean), list(preset.std)
    if channels == 1:
        mean, std = [sum(mean) / len(mean)], [sum(std) / len(std)]
    info = Pretrained(TORCHVISION, str(weights), digest, mean, std, int(preset.crop_size[0]))
    return info, tensors


@dataclass(frozen=True)
class StartWeights:
    info: Pretrained
    tensors: dict[str, torch.Tensor]  # every state-dict entry but the head's, fitted to the model

    def load_into(self, model: nn.Module) -> None:
        result = model.load_state_dict(self.tensors, strict=False)
        left = set(result.missing_keys) - set(self.info.replaced)
        if left or result.unexpected_keys:  # fit_state checked the names: a bug, not bad input
            raise PretrainedError(f"pretrained weights did not fit the model: {sorted(left)[:3]}")


def resolve_pretrained(spec: ModelSpec, pretrained: str) -> StartWeights:
    """Read and check ``pretrained`` against the model ``spec`` builds (on the meta device)."""
    what = f"model.pretrained {pretrained!r}"
    if pretrained == TORCHVISION:
        name = spec.arch.removeprefix("torchvision:")
        info, tensors = torchvision_weights(name, spec.in_channels, what)
    else:
        tensors, digest = read_weights_file(pretrained, what)
        info = Pretrained(pretrained, Path(pretrained).name, digest)
    with torch.device("meta"):
        skeleton = build_model(spec)
    fitted, adapted = fit_state(skeleton, spec.num_classes, tensors, what)
    head = sorted(head_parameter_names(skeleton, spec.num_classes))
    info = Pretrained(**{**info.__dict__, "replaced": head, "adapted": adapted})
    return StartWeights(info, fitted)
