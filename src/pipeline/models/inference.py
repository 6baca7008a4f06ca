"""Batched forward passes: one loop shared by validation, evaluation, export parity and the
benchmark's accuracy pass."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import torch
from torch import nn

from pipeline.core.errors import PipelineError

Out = TypeVar("Out")


class NonFiniteLogitsError(PipelineError):
    """The model's outputs on real inputs are not numbers: no figure can be made from them."""


def in_batches(forward: Callable[..., Out], batch_size: int, *arrays: Any) -> Iterator[Out]:
    """``forward`` over aligned, consecutive slices of ``arrays`` (tensors or numpy arrays),
    lazily and in order: at most ``batch_size`` items each, the last batch possibly shorter,
    nothing for empty arrays. Checked here, before the first batch, not when first consumed."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    lengths = {len(array) for array in arrays}
    if len(lengths) != 1:
        raise ValueError(f"in_batches needs one or more arrays of one length, got {lengths}")
    return (
        forward(*(array[start : start + batch_size] for array in arrays))
        for start in range(0, lengths.pop(), batch_size)
    )


def require_finite(logits: torch.Tensor, what: str) -> torch.Tensor:
    """``logits``, if every value is finite: weights that overflow float32 on real inputs give
    inf or NaN, which argmax would score as class 0 and metrics would report as a result."""
    bad = int((~torch.isfinite(logits)).any(dim=-1).sum()) if logits.numel() else 0
    if bad:
        raise NonFiniteLogitsError(
            f"{what}: the model's logits are NaN or infinite for {bad} of {len(logits)} images; "
            "models/model.safetensors holds weights that overflow or are invalid: re-run train"
        )
    return logits


@torch.inference_mode()
def predict_logits(
    model: nn.Module, images: torch.Tensor, batch_size: int, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """Logits (float32, on the CPU) of ``model`` over uint8 NCHW ``images``, in order."""
    model.eval()

    def forward(batch: torch.Tensor) -> torch.Tensor:
        return model(batch.to(device, non_blocking=True)).float().cpu()

    outputs = list(in_batches(forward, batch_size, images))
    return torch.cat(outputs) if outputs else torch.empty(0)
