"""Where a classifier's head and first convolution are, for any registered or torchvision arch.

Fine-tuning needs both: the head is replaced for the data's classes (and trained alone while the
backbone is frozen), the first conv is adapted when the weights' input channels differ.
"""

from __future__ import annotations

from torch import nn

from pipeline.core.errors import PipelineError


def head_name(model: nn.Module, num_classes: int) -> str:
    """The last Linear (or 1x1 Conv2d, as in SqueezeNet) with ``num_classes`` outputs: the
    classifier head (``fc`` in a ResNet, ``head.1`` in small_cnn, ``classifier.6`` in VGG).
    The last one, because auxiliary heads (Inception's AuxLogits.fc) come before the main one."""
    found = None
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and module.out_features == num_classes:
            found = name
        elif isinstance(module, nn.Conv2d) and module.out_channels == num_classes:
            found = name
    if found is None:
        raise PipelineError(f"no classifier head with {num_classes} outputs in the model")
    return found


def head_parameter_names(model: nn.Module, num_classes: int) -> set[str]:
    """Names (as in ``named_parameters``/``state_dict``) of the head's tensors."""
    prefix = head_name(model, num_classes) + "."
    return {name for name, _ in model.named_parameters() if name.startswith(prefix)}


def first_conv_weight(model: nn.Module) -> str | None:
    """State-dict key of the first Conv2d's weight (the one that sees the image channels)."""
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            return f"{name}.weight"
    return None
