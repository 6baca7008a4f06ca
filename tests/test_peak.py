"""FLOPs per image are counted where the model's weights are, whatever device the example is on."""

import torch

from pipeline.hardware.peak import flops_per_image
from pipeline.models import ModelSpec, build_model


def test_flops_are_counted_on_the_models_device():
    spec = ModelSpec("small_cnn", in_channels=1, image_size=8, num_classes=10, width=8, dropout=0.0)
    model = build_model(spec)
    example = torch.zeros(2, 1, 8, 8)
    on_cpu = flops_per_image(model, example)
    # A model trained on a GPU keeps its weights there; the meta device stands in for it here.
    assert flops_per_image(model.to("meta"), example) == on_cpu > 0
