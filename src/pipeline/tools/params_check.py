"""What check_params verifies beyond the schema: every name a stage will look up in a registry,
the size of the model it will build, and that the model fits the images' size (where that is
known without data), before DVC deletes any stage's outputs.

config.py refuses a name that pipeline.core.catalog does not register; this module checks that each
chosen entry's implementation really imports, and what only the implementation knows (whether
torchvision has a model of that name).
"""

from __future__ import annotations

from pipeline.core.catalog import SOURCES, VARIANTS, resolve
from pipeline.core.config import ModelParams, Params, ParamsError
from pipeline.core.errors import PipelineError, describe, first_line
from pipeline.core.reading import LinkRefusedError, NotRegularFileError, open_regular
from pipeline.models import ModelSpec, check_model_size
from pipeline.models.fit import trace_fit

# Stand-ins for what only prepare knows: the head's size barely moves the parameter count.
NOMINAL_CLASSES = 10
NOMINAL_IMAGE_SIZE = 32


def _implementation(key: str, name: str, target: str, package: str) -> None:
    """Import a chosen entry's target: a registry entry without a working one fails here."""
    try:
        resolve(target, package)
    except (ImportError, AttributeError, ValueError) as error:
        raise ParamsError(
            f"params.yaml: {key} {name!r} is registered but its implementation {target!r} does "
            f"not load ({describe(error)})"
        ) from None


def check_registries(params: Params) -> None:
    """The chosen source's loader and variants' converters import (providers are onnxruntime's
    own names; archs are built by model_parameters)."""
    source = SOURCES[params.data.source]
    _implementation("data.source", source.name, source.target, "pipeline.sources")
    for name in params.export.variants:
        _implementation("export.variants", name, VARIANTS[name].target, "pipeline.export")


def model_parameters(model: ModelParams, channels: int | None) -> int:
    """Build the model on the meta device: an unknown arch or a too-large width fails here."""
    spec = ModelSpec.from_params(
        model,
        in_channels=channels or 3,
        image_size=NOMINAL_IMAGE_SIZE,
        num_classes=NOMINAL_CLASSES,
    )
    try:
        return check_model_size(spec)
    except PipelineError as error:
        raise ParamsError(f"params.yaml: {error}") from None
    except (TypeError, ValueError, RuntimeError) as error:  # the arch's own builder failed
        raise ParamsError(
            f"params.yaml: model.arch {model.arch!r} is not a buildable model ({first_line(error)})"
        ) from None


def input_shape(params: Params) -> tuple[int, int] | None:
    """(channels, side) of the prepared images; None for imagefolder without data.image_size
    (only prepare knows its size then)."""
    if shape := SOURCES[params.data.source].shape:
        return shape
    if params.data.image_size is None:
        return None
    return params.data.channels or 3, params.data.image_size


def check_input_fits_model(params: Params) -> None:
    """Refuse an arch whose downsampling shrinks the images to nothing, or to one pixel while
    layers built to shrink it further remain (an input far below the arch's design size)."""
    shape = input_shape(params)
    if shape is None:
        return
    channels, side = shape
    model = params.model
    spec = ModelSpec.from_params(
        model, in_channels=channels, image_size=side, num_classes=NOMINAL_CLASSES
    )
    fit = trace_fit(spec)
    where = f"model.arch {model.arch!r} on data.image_size {side} ({params.data.source}: "
    where += f"{side}x{side})"
    advice = "choose an arch for small images (small_cnn, resnet_cifar) or a larger image size"
    if fit.error is not None:
        raise ParamsError(f"params.yaml: {where} fails: {fit.error}; {advice}")
    if fit.starved_layers:
        raise ParamsError(
            f"params.yaml: {where}: the feature map is 1 pixel before {len(fit.starved_layers)} "
            f"of its {fit.downsampling_layers} downsampling layers (first: "
            f"{fit.starved_layers[0]}), far below the input the arch is built for; {advice}"
        )


def check_pretrained(params: Params) -> None:
    """A weights file that is not there fails now, not after DVC has removed the outputs."""
    pretrained = params.model.pretrained
    if pretrained is None or pretrained == "torchvision":
        return
    try:  # opened as the train stage opens it: no links, a regular file only
        open_regular(pretrained, follow_links=False).close()
    except FileNotFoundError:
        raise ParamsError(f"params.yaml: model.pretrained {pretrained!r}: no such file") from None
    except LinkRefusedError:
        raise ParamsError(
            f"params.yaml: model.pretrained {pretrained!r} is a symbolic link; weights are never "
            "read through links: point to the file itself"
        ) from None
    except NotRegularFileError:
        raise ParamsError(
            f"params.yaml: model.pretrained {pretrained!r} is not a regular file"
        ) from None
    except OSError as error:
        raise ParamsError(
            f"params.yaml: model.pretrained {pretrained!r}: cannot read ({error.strerror or error})"
        ) from None


def check_params(params: Params) -> dict[str, int]:
    """Raise ParamsError (one line) for any name or size a later stage would refuse."""
    check_registries(params)
    check_pretrained(params)
    parameters = model_parameters(params.model, params.data.channels)
    check_input_fits_model(params)
    return {"model_parameters_estimate": parameters}
