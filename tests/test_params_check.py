"""check_params knows every registry and the model's size, so a bad name fails before DVC
deletes any output (the schema alone passes a free-text arch)."""

import pytest

from pipeline.config import ParamsError, parse_params
from pipeline.models import MAX_PARAMETERS
from pipeline.params_check import check_params


def params_with(**sections):
    return parse_params(sections)


@pytest.mark.parametrize(
    ("arch", "expected"),
    [
        ("resnet9000", "model.arch 'resnet9000' is unknown"),
        ("torchvision:not_a_net", "torchvision has no classification model 'not_a_net'"),
    ],
)
def test_unknown_arch_fails_in_check_params(arch, expected):
    params = params_with(model={"arch": arch})
    with pytest.raises(ParamsError, match=expected) as caught:
        check_params(params)
    assert "\n" not in str(caught.value)


def test_known_archs_pass_and_report_their_size():
    assert check_params(params_with())["model_parameters_estimate"] > 10_000
    tv = check_params(params_with(model={"arch": "torchvision:resnet18"}))
    assert 11_000_000 < tv["model_parameters_estimate"] < 12_000_000


def test_a_model_too_large_to_allocate_fails_before_allocating():
    # width 1024 is within the schema's bound, but resnet_cifar then has 1.68e9 parameters.
    params = params_with(model={"arch": "resnet_cifar", "width": 1024})
    with pytest.raises(ParamsError, match=f"over the limit of {MAX_PARAMETERS:,}"):
        check_params(params)


def test_registry_names_are_checked_against_the_registries(monkeypatch):
    from pipeline.data import sources

    monkeypatch.delitem(sources.LOADERS, "cifar10")
    with pytest.raises(ParamsError, match="data.source 'cifar10' is unknown"):
        check_params(params_with(data={"source": "cifar10"}))
