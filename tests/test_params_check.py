"""check_params knows every registry and the model's size, so a bad name fails before DVC
deletes any output (the schema refuses unregistered names; check_params what only the
implementation knows, e.g. whether torchvision has a model)."""

import pytest

from pipeline.core.config import ParamsError, parse_params
from pipeline.models import MAX_PARAMETERS
from pipeline.tools.params_check import check_params


def params_with(**sections):
    return parse_params(sections)


@pytest.mark.parametrize(
    ("arch", "expected"),
    [
        ("resnet9000", "'model.arch': 'resnet9000' .must be one of resnet_cifar, small_cnn, "),
        ("torchvision:not_a_net", "torchvision has no classification model 'not_a_net'"),
    ],
)
def test_unknown_arch_fails_before_any_stage(arch, expected):
    with pytest.raises(ParamsError, match=expected) as caught:
        check_params(params_with(model={"arch": arch}))
    assert "\n" not in str(caught.value)


def test_known_archs_pass_and_report_their_size():
    assert check_params(params_with())["model_parameters_estimate"] > 10_000
    tv = check_params(
        params_with(model={"arch": "torchvision:resnet18"}, data={"source": "cifar10"})
    )
    assert 11_000_000 < tv["model_parameters_estimate"] < 12_000_000


def test_a_model_too_large_to_allocate_fails_before_allocating():
    # width 1024 is within the schema's bound, but resnet_cifar then has 1.68e9 parameters.
    params = params_with(model={"arch": "resnet_cifar", "width": 1024})
    with pytest.raises(ParamsError, match=f"over the limit of {MAX_PARAMETERS:,}"):
        check_params(params)


@pytest.mark.parametrize(
    ("registry", "name", "section"),
    [
        ("SOURCES", "cifar10", {"data": {"source": "cifar10"}}),
        ("VARIANTS", "int8", {"export": {"variants": ["int8"]}}),
    ],
)
def test_a_registered_name_whose_implementation_is_gone_fails(monkeypatch, registry, name, section):
    from dataclasses import replace

    from pipeline.core import catalog

    entries = getattr(catalog, registry)._entries
    broken = replace(entries[name], target=entries[name].target.replace(":", "_gone:"))
    monkeypatch.setitem(entries, name, broken)
    with pytest.raises(ParamsError, match=f"'{name}' is registered but its implementation"):
        check_params(params_with(**section))


@pytest.mark.parametrize(
    ("arch", "source", "expected"),
    [
        # ResNet-18 halves 8x8 to 1x1 by layer2; layer3 and layer4 would look at one pixel.
        ("torchvision:resnet18", "digits", r"the feature map is 1 pixel before 4 of its 8 "),
        # AlexNet's max-pool would shrink 1x1 to 0x0: the forward pass itself fails.
        ("torchvision:alexnet", "digits", r"fails: .*Output size is too small"),
    ],
)
def test_a_model_far_too_large_for_the_images_fails_in_one_line(arch, source, expected):
    params = params_with(model={"arch": arch}, data={"source": source})
    with pytest.raises(ParamsError, match=expected) as caught:
        check_params(params)
    message = str(caught.value)
    assert f"model.arch '{arch}'" in message and "data.image_size 8" in message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("arch", "data"),
    [
        ("small_cnn", {"source": "digits"}),
        ("resnet_cifar", {"source": "digits"}),  # three pools: 8 -> 1 exactly at the end
        ("torchvision:resnet18", {"source": "mnist"}),
        ("torchvision:resnet18", {"source": "cifar10"}),
        ("torchvision:resnet18", {"source": "imagefolder", "image_size": 64, "channels": 3}),
        ("torchvision:resnet18", {"source": "imagefolder"}),  # size unknown before prepare
    ],
)
def test_models_that_fit_their_images_pass(arch, data):
    assert check_params(params_with(model={"arch": arch}, data=data))["model_parameters_estimate"]


def test_a_small_imagefolder_size_is_named():
    data = {"source": "imagefolder", "image_size": 16, "channels": 1}
    params = params_with(model={"arch": "torchvision:resnet18"}, data=data)
    with pytest.raises(ParamsError, match="data.image_size 16 .imagefolder: 16x16."):
        check_params(params)


def test_source_shapes_match_the_loaded_digits():
    from pipeline.core.catalog import SOURCES
    from pipeline.sources import digits

    channels, side = SOURCES["digits"].shape
    assert digits.load().pools["all"].images.shape[1:] == (channels, side, side)


def test_a_regnet_passes_with_the_parameters_of_a_cpu_built_model():
    # RegNet's builder computes its stage widths with .tolist() on tensors: on the meta device
    # alone that fails ("Cannot copy out of meta tensor").
    from pipeline.models import ModelSpec, build_model
    from pipeline.tools.params_check import NOMINAL_CLASSES, NOMINAL_IMAGE_SIZE

    arch = "torchvision:regnet_y_400mf"
    found = check_params(params_with(model={"arch": arch}, data={"source": "cifar10"}))
    spec = ModelSpec(arch, 3, NOMINAL_IMAGE_SIZE, NOMINAL_CLASSES)
    built = sum(parameter.numel() for parameter in build_model(spec).parameters())
    assert found["model_parameters_estimate"] == built


@pytest.mark.parametrize(("source", "side"), [("digits", 8), ("cifar10", 32)])
def test_a_vit_on_images_of_another_size_fails_in_one_line(source, side):
    # torchvision's ViT checks its input size with an assert (AssertionError, not RuntimeError).
    params = params_with(model={"arch": "torchvision:vit_b_16"}, data={"source": source})
    with pytest.raises(ParamsError) as caught:
        check_params(params)
    assert str(caught.value) == (
        f"params.yaml: model.arch 'torchvision:vit_b_16' on data.image_size {side} ({source}: "
        f"{side}x{side}) fails: Wrong image height! Expected 224 but got {side}!; choose an arch "
        "for small images (small_cnn, resnet_cifar) or a larger image size"
    )


def test_an_arch_whose_builder_fails_is_refused_in_one_line(monkeypatch):
    import torchvision

    def broken(name, **kwargs):
        raise RuntimeError(f"{name} cannot be built\nsecond line")

    monkeypatch.setattr(torchvision.models, "get_model", broken)
    with pytest.raises(ParamsError) as caught:
        check_params(params_with(model={"arch": "torchvision:resnet18"}))
    assert str(caught.value) == (
        "params.yaml: model.arch 'torchvision:resnet18' is not a buildable model "
        "(resnet18 cannot be built)"
    )
