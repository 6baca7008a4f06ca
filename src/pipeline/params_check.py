"""What check_params verifies beyond the schema: every name a stage will look up in a registry,
and the size of the model it will build, before DVC deletes any stage's outputs.

config.py keeps its own Literal lists for the fixed registries (sources, providers, variants);
this module also asks the registries themselves, so the two cannot drift apart unnoticed.
"""

from __future__ import annotations

from pipeline.config import ModelParams, Params, ParamsError
from pipeline.errors import PipelineError
from pipeline.models import ModelSpec, check_model_size

# Stand-ins for what only prepare knows: the head's size barely moves the parameter count.
NOMINAL_CLASSES = 10
NOMINAL_IMAGE_SIZE = 32


def _check_name(key: str, value: str, known: dict | set) -> None:
    if value not in known:
        raise ParamsError(f"params.yaml: {key} {value!r} is unknown; choose one of {sorted(known)}")


def check_registries(params: Params) -> None:
    from pipeline.data.sources import LOADERS
    from pipeline.export.session import PROVIDER_NAMES
    from pipeline.export.variants import VARIANT_FILES

    _check_name("data.source", params.data.source, LOADERS)
    for provider in params.benchmark.providers:
        _check_name("benchmark.providers", provider, PROVIDER_NAMES)
    for variant in params.export.variants:
        _check_name("export.variants", variant, VARIANT_FILES)


def model_parameters(model: ModelParams, channels: int | None) -> int:
    """Build the model on the meta device: an unknown arch or a too-large width fails here."""
    spec = ModelSpec(
        arch=model.arch,
        in_channels=channels or 3,
        image_size=NOMINAL_IMAGE_SIZE,
        num_classes=NOMINAL_CLASSES,
        width=model.width,
        dropout=model.dropout,
    )
    try:
        return check_model_size(spec)
    except PipelineError as error:
        raise ParamsError(f"params.yaml: {error}") from None


def check_params(params: Params) -> dict[str, int]:
    """Raise ParamsError (one line) for any name or size a later stage would refuse."""
    check_registries(params)
    return {"model_parameters_estimate": model_parameters(params.model, params.data.channels)}
