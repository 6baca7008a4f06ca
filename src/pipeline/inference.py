"""Batched forward passes over uint8 images, shared by validation, evaluation and export."""

from __future__ import annotations

import torch
from torch import nn


@torch.inference_mode()
def predict_logits(
    model: nn.Module, images: torch.Tensor, batch_size: int, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """Logits (float32, on the CPU) of ``model`` over uint8 NCHW ``images``, in order."""
    model.eval()
    outputs = []
    for start in range(0, len(images), batch_size):
        batch = images[start : start + batch_size].to(device, non_blocking=True)
        outputs.append(model(batch).float().cpu())
    return torch.cat(outputs) if outputs else torch.empty(0)
