"""Does the exported model compute what the PyTorch model computes?"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from pipeline.errors import PipelineError


class ParityError(PipelineError):
    pass


@dataclass(frozen=True)
class Parity:
    samples: int
    max_abs_logit_diff: float
    top1_agreement: float
    torch_accuracy: float
    onnx_accuracy: float

    @property
    def accuracy_delta(self) -> float:
        return self.onnx_accuracy - self.torch_accuracy

    def as_dict(self) -> dict:
        return {**asdict(self), "accuracy_delta": self.accuracy_delta}


def compare(torch_logits: np.ndarray, onnx_logits: np.ndarray, labels: np.ndarray) -> Parity:
    torch_top1 = torch_logits.argmax(1)
    onnx_top1 = onnx_logits.argmax(1)
    return Parity(
        samples=len(labels),
        max_abs_logit_diff=float(np.abs(torch_logits - onnx_logits).max()),
        top1_agreement=float((torch_top1 == onnx_top1).mean()),
        torch_accuracy=float((torch_top1 == labels).mean()),
        onnx_accuracy=float((onnx_top1 == labels).mean()),
    )


def enforce(
    parity: Parity, max_abs_logit_diff: float, min_top1_agreement: float, name: str
) -> None:
    if parity.max_abs_logit_diff > max_abs_logit_diff:
        raise ParityError(
            f"{name}: max abs logit difference {parity.max_abs_logit_diff:.3g} exceeds "
            f"export.max_abs_logit_diff {max_abs_logit_diff:g}"
        )
    if parity.top1_agreement < min_top1_agreement:
        raise ParityError(
            f"{name}: top-1 agreement {parity.top1_agreement:.4f} is below "
            f"export.min_top1_agreement {min_top1_agreement:g}"
        )
