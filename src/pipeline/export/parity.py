"""Does the exported model compute what the PyTorch model computes?"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from pipeline.config import ParityGate
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


def problems(parity: Parity, gate: ParityGate, name: str) -> list[str]:
    """Every threshold of ``export.gates.<name>`` that ``parity`` misses, as readable phrases."""
    key = f"export.gates.{name}"
    found = []
    # NaN compares False with everything: test for it, or a broken model would pass.
    if not math.isfinite(parity.max_abs_logit_diff):
        found.append("logits are not finite")
    elif (limit := gate.max_abs_logit_diff) is not None and parity.max_abs_logit_diff > limit:
        found.append(
            f"max abs logit difference {parity.max_abs_logit_diff:.3g} exceeds "
            f"{key}.max_abs_logit_diff {limit:g}"
        )
    if parity.top1_agreement < gate.min_top1_agreement:
        found.append(
            f"top-1 agreement {parity.top1_agreement:.4f} is below "
            f"{key}.min_top1_agreement {gate.min_top1_agreement:g}"
        )
    if -parity.accuracy_delta > gate.max_accuracy_drop:
        found.append(
            f"top-1 accuracy falls by {-parity.accuracy_delta:.4f}, more than "
            f"{key}.max_accuracy_drop {gate.max_accuracy_drop:g}"
        )
    return found


def enforce(parity: Parity, gate: ParityGate, name: str) -> None:
    found = problems(parity, gate, name)
    if found:
        raise ParityError(f"{name}: " + "; ".join(found))
