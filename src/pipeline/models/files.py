"""Trained weights (safetensors) and the model card that says how to rebuild and feed them."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
from safetensors import SafetensorError
from torch import nn

from pipeline.core.errors import PipelineError, first_line, short_repr
from pipeline.core.headers import TensorFileError, read_header
from pipeline.core.io import (
    describe_validation_error,
    load_tensors,
    read_json_record,
    save_tensors,
    write_json_record,
)
from pipeline.models import ModelSpec, build_model, check_model_size
from pipeline.models.build import START_WEIGHT_FIELDS
from pipeline.models.preprocess import WithPreprocessing
from pipeline.prepared.classes import classes_problem
from pipeline.prepared.stats import stats_problem

if TYPE_CHECKING:
    from pipeline.core.config import ModelParams
    from pipeline.prepared.storage import PreparedMeta

WEIGHTS_NAME = "model.safetensors"
CARD_NAME = "model.json"
_SAFETENSORS_DTYPES = {
    torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.float64: "F64",
    torch.int64: "I64", torch.int32: "I32", torch.uint8: "U8", torch.bool: "BOOL",
}  # fmt: skip


class ModelFileError(PipelineError):
    pass


@dataclass(frozen=True, kw_only=True)
class Normalisation:
    """How the model's own preprocessing scales pixels: ``(x / 255 - mean) / std`` per channel."""

    mean: tuple[float, ...]
    std: tuple[float, ...]
    scale: Literal["x / 255"] = "x / 255"


@dataclass(frozen=True, kw_only=True)
class ModelCard:
    """models/model.json: how to rebuild the trained model and feed it. The fields are the file's
    keys, in the file's order: changing them changes the card's hash."""

    arch: str
    model_params: dict[str, Any] = field(default_factory=dict)  # params.yaml's model, but arch
    class_names: tuple[str, ...]
    num_classes: int
    input_shape: tuple[int, int, int]  # channels, height, width of one image
    input_dtype: Literal["uint8"] = "uint8"
    input_layout: Literal["NCHW"] = "NCHW"
    normalisation: Normalisation
    # What the start weights were (source, sha256, nominal input size); absent from the file
    # when training started from random weights, so the default card keeps its bytes.
    pretrained: dict[str, Any] | None = None

    @classmethod
    def for_training(
        cls,
        model: ModelParams,
        meta: PreparedMeta,
        normalisation: tuple[tuple[float, ...], tuple[float, ...]] | None = None,
        pretrained: dict[str, Any] | None = None,
    ) -> ModelCard:
        """The card of a model trained with the ``model`` params on the prepared data ``meta``;
        ``normalisation`` (mean, std) when not the train split's (torchvision weights bring
        theirs)."""
        mean, std = normalisation or (meta.mean, meta.std)
        return cls(
            arch=model.arch,
            model_params=model.model_dump(exclude={"arch", *START_WEIGHT_FIELDS}),
            class_names=meta.class_names,
            num_classes=meta.num_classes,
            input_shape=meta.input_shape,
            normalisation=Normalisation(mean=tuple(mean), std=tuple(std)),
            pretrained=pretrained,
        )

    def model_spec(self) -> ModelSpec:
        """The spec to rebuild the model; model_params are checked as params.yaml's would be."""
        # Imported here: scripts that only write cards (benchmarks/gpu_check.py) run without
        # pydantic.
        from pydantic import ValidationError

        from pipeline.core.config import ModelParams

        channels, height, _ = self.input_shape
        try:
            model = ModelParams.model_validate({"arch": self.arch, **self.model_params})
        except ValidationError as error:
            raise ModelFileError(f"model_params {describe_validation_error(error)}") from None
        return ModelSpec.from_params(
            model, in_channels=channels, image_size=height, num_classes=self.num_classes
        )

    @classmethod
    def from_json(cls, path: str | Path) -> ModelCard:
        card = read_json_record(path, cls, ModelFileError, "model card")
        norm = card.normalisation
        # Typed but not yet sane: a std of 0 or NaN divides every later stage's inputs.
        problem = classes_problem(card.class_names, card.num_classes) or stats_problem(
            norm.mean, norm.std, card.input_shape[0], "normalisation."
        )
        if problem:
            raise ModelFileError(f"{path}: {problem}")
        return card

    def to_json(self, path: str | Path) -> None:
        write_json_record(path, self, omit_if_none=("pretrained",))


def read_card(path: str | Path) -> ModelCard:
    """The model card, or a one-line ModelFileError naming the file and the missing or bad field."""
    return ModelCard.from_json(path)


def _skeleton(card: ModelCard, card_path: Path) -> nn.Module:
    """The card's model on the meta device: its tensor names and shapes, nothing allocated."""
    try:
        spec = card.model_spec()
        check_model_size(spec)
        with torch.device("meta"):
            return build_model(spec)
    except PipelineError as error:
        raise ModelFileError(f"{card_path}: {error}") from None
    except (TypeError, ValueError, RuntimeError) as error:
        raise ModelFileError(f"{card_path}: not a buildable model ({error})") from None


def check_weights_match(weights_path: Path, skeleton: nn.Module, arch: str) -> None:
    """Compare the file's header (names, shapes, dtypes) with the model before reading data."""
    try:
        found = read_header(weights_path)
    except TensorFileError as error:
        raise ModelFileError(str(error)) from None
    expected = skeleton.state_dict()
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    if missing or unexpected:
        detail = "; ".join(
            f"{what} {names[0]!r}" + (f" and {len(names) - 1} more" if len(names) > 1 else "")
            for what, names in (("missing", missing), ("unexpected", unexpected))
            if names
        )
        raise ModelFileError(f"{weights_path}: tensors do not match a {arch} model ({detail})")
    for name, tensor in expected.items():
        want = (_SAFETENSORS_DTYPES.get(tensor.dtype), tuple(tensor.shape))
        got = (found[name].dtype, found[name].shape)
        if got != want:
            raise ModelFileError(
                f"{weights_path}: tensor {name!r} is {got[0]}{list(got[1])}, a {arch} model "
                f"needs {want[0]}{list(want[1])}"
            )


def nonfinite_tensors(state: dict[str, torch.Tensor]) -> list[str]:
    """The names of floating tensors holding a NaN or an infinity."""
    return [
        name
        for name, value in state.items()
        if value.is_floating_point() and not torch.isfinite(value).all()
    ]


def save_trained(models_dir: str | Path, model: nn.Module, card: ModelCard) -> None:
    state = model.state_dict()
    bad = nonfinite_tensors(state)
    if bad:
        raise ModelFileError(
            f"refusing to save non-finite weights ({bad[0]} and {len(bad) - 1} more)"
        )
    models_dir = Path(models_dir)
    card.to_json(models_dir / CARD_NAME)
    save_tensors(models_dir / WEIGHTS_NAME, state, metadata={"arch": card.arch})


def card_data_problem(card: ModelCard, data: PreparedMeta) -> str | None:
    """Why a model card does not describe the prepared data it is evaluated, exported or
    benchmarked on (its labels would name other classes, its ONNX metadata another input)."""
    for field_name in ("class_names", "num_classes", "input_shape"):
        theirs, ours = getattr(data, field_name), getattr(card, field_name)
        if ours != theirs:
            return (
                f"field '{field_name}' is {short_repr(ours)}, the prepared data's meta.json says "
                f"{short_repr(theirs)}: the model was trained on other data (re-run train)"
            )
    return None


def weights_problem(state: dict[str, torch.Tensor]) -> str | None:
    """Why loaded weights cannot make figures: a NaN or infinite value, or a negative
    BatchNorm running variance (its square root is NaN in every later output)."""
    if bad := nonfinite_tensors(state):
        return f"tensor {bad[0][:80]!r} holds NaN or infinite values"
    for name, tensor in state.items():
        if name.endswith("running_var") and (tensor < 0).any():
            return f"tensor {name[:80]!r} holds a negative variance"
    return None


def load_trained(
    models_dir: str | Path, data: PreparedMeta | None = None
) -> tuple[WithPreprocessing, ModelCard]:
    """The trained classifier wrapped with its preprocessing (takes uint8 NCHW), and its card.

    Card and weights header are checked before any weights are read, so a wrong, truncated or
    oversized file costs one line, not a traceback or a huge allocation; with ``data`` (the
    prepared data's meta), the card must describe that data; the weights must be finite.
    """
    models_dir = Path(models_dir)
    card = read_card(models_dir / CARD_NAME)
    if data is not None and (problem := card_data_problem(card, data)):
        raise ModelFileError(f"{models_dir / CARD_NAME}: {problem}")
    weights_path = models_dir / WEIGHTS_NAME
    skeleton = _skeleton(card, models_dir / CARD_NAME)
    check_weights_match(weights_path, skeleton, card.arch)
    model = build_model(card.model_spec())
    try:
        state = load_tensors(weights_path)
        model.load_state_dict(state)
    except (SafetensorError, RuntimeError) as error:
        raise ModelFileError(f"{weights_path}: cannot load ({first_line(error)})") from None
    if problem := weights_problem(state):
        raise ModelFileError(f"{weights_path}: {problem}")
    wrapped = WithPreprocessing(model, card.normalisation.mean, card.normalisation.std)
    return wrapped.eval(), card
