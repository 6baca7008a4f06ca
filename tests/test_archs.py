"""Every registered arch (and one member of each arch family) builds, runs forward, exports to ONNX
and gives PyTorch's logits under onnxruntime, on tiny data: width 4, 16x16 RGB, 16 images.

A new entry in pipeline.core.catalog.ARCHS is tested here with no edit to this file.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.core.catalog import ARCH_FAMILIES, ARCHS
from pipeline.export.onnx_export import INPUT_NAME, OUTPUT_NAME, export_onnx
from pipeline.export.parity import compare
from pipeline.export.session import make_session, session_logits
from pipeline.models import ModelSpec, build_model
from pipeline.models.preprocess import WithPreprocessing

# One small, quick-to-export member per family (the family itself is only a name pattern).
FAMILY_MEMBERS = {"torchvision:": "resnet18"}
ARCH_UNDER_TEST = [
    *ARCHS.names(),
    *(f"{family.prefix}{FAMILY_MEMBERS[family.prefix]}" for family in ARCH_FAMILIES),
]
CHANNELS, SIDE, CLASSES, IMAGES = 3, 16, 5, 16


def test_every_family_has_a_member_under_test():
    assert {family.prefix for family in ARCH_FAMILIES} == set(FAMILY_MEMBERS)


@pytest.fixture(scope="module", params=ARCH_UNDER_TEST)
def exported(request, tmp_path_factory):
    torch.manual_seed(0)
    spec = ModelSpec(request.param, CHANNELS, SIDE, CLASSES, width=4, dropout=0.0)
    model = WithPreprocessing(build_model(spec), [0.5] * CHANNELS, [0.25] * CHANNELS).eval()
    generator = torch.Generator().manual_seed(1)
    images = torch.randint(
        0, 256, (IMAGES, CHANNELS, SIDE, SIDE), dtype=torch.uint8, generator=generator
    )
    path = tmp_path_factory.mktemp("arch") / "model.onnx"
    export_onnx(model, images[:2], path, 18, {"arch": request.param})
    return model, images, path


def test_forward_gives_finite_logits_per_class(exported):
    model, images, _ = exported
    with torch.inference_mode():
        logits = model(images)
    assert logits.shape == (IMAGES, CLASSES) and torch.isfinite(logits).all()
    assert logits.std() > 0  # not a constant function of the input


def test_onnx_export_takes_uint8_images_of_any_batch(exported):
    _, _, path = exported
    session = make_session(path)
    (given,), (returned,) = session.get_inputs(), session.get_outputs()
    assert (given.name, given.type, returned.name) == (INPUT_NAME, "tensor(uint8)", OUTPUT_NAME)
    assert isinstance(given.shape[0], str)  # the dynamic batch axis
    assert given.shape[1:] == [CHANNELS, SIDE, SIDE]


def test_onnxruntime_logits_match_pytorch(exported):
    model, images, path = exported
    with torch.inference_mode():
        expected = model(images).numpy()
    # Odd batches, so a last partial batch is compared too.
    actual = session_logits(make_session(path), images.numpy(), batch_size=5)
    parity = compare(expected, actual, np.zeros(IMAGES, dtype=np.int64))
    scale = float(np.abs(expected).max())
    assert parity.max_abs_logit_diff <= 1e-4 * max(scale, 1.0), parity
    assert parity.top1_agreement == 1.0


# RegNet's builder reads tensors (.tolist() on its stage widths), which the meta device cannot.
REGNETS = ["torchvision:regnet_y_400mf", "torchvision:regnet_x_400mf"]


@pytest.mark.parametrize("arch", REGNETS)
def test_a_builder_that_reads_tensors_still_builds_on_the_meta_device(arch):
    spec = ModelSpec(arch, 1, SIDE, CLASSES)
    with torch.device("meta"):
        skeleton = build_model(spec)
    tensors = [*skeleton.parameters(), *skeleton.buffers()]
    assert all(tensor.is_meta for tensor in tensors)  # nothing allocated
    shapes = {name: tensor.shape for name, tensor in skeleton.state_dict().items()}
    built = build_model(spec).state_dict()
    assert shapes == {name: tensor.shape for name, tensor in built.items()}
    assert skeleton.stem[0].in_channels == 1  # the first conv was adapted on meta too


def test_a_regnet_card_loads_for_evaluation(tmp_path):
    from pipeline.models.files import ModelCard, Normalisation, load_trained, save_trained

    card = ModelCard(
        arch=REGNETS[0],
        class_names=tuple("abcde"),
        num_classes=CLASSES,
        input_shape=(CHANNELS, SIDE, SIDE),
        normalisation=Normalisation(mean=(0.5,) * CHANNELS, std=(0.25,) * CHANNELS),
    )
    save_trained(tmp_path, build_model(card.model_spec()), card)
    model, loaded = load_trained(tmp_path)  # once "not a buildable model"
    assert loaded == card
    images = torch.zeros(2, CHANNELS, SIDE, SIDE, dtype=torch.uint8)
    assert model(images).shape == (2, CLASSES)
