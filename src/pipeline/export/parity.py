"""Does the exported model compute what the PyTorch model computes?"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from pipeline.core.config import ParityGate
from pipeline.core.errors import PipelineError


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


class ParityTally:
    """Parity over a split read chunk by chunk: sums and a running maximum, never the logits
    of the whole split (memory flat in its size)."""

    def __init__(self) -> None:
        self.samples = self.agree = self.torch_correct = self.onnx_correct = 0
        self.max_diff = -math.inf

    def add(self, torch_logits: np.ndarray, onnx_logits: np.ndarray, labels: np.ndarray) -> None:
        torch_top1, onnx_top1 = torch_logits.argmax(1), onnx_logits.argmax(1)
        self.samples += len(labels)
        # np.maximum, not max(): a NaN must stay NaN (problems() tests for it).
        diff = np.abs(torch_logits - onnx_logits).max()
        self.max_diff = float(np.maximum(self.max_diff, diff))
        self.agree += int((torch_top1 == onnx_top1).sum())
        self.torch_correct += int((torch_top1 == labels).sum())
        self.onnx_correct += int((onnx_top1 == labels).sum())

    def result(self) -> Parity:
        return Parity(
            samples=self.samples,
            max_abs_logit_diff=self.max_diff,
            top1_agreement=self.agree / self.samples,
            torch_accuracy=self.torch_correct / self.samples,
            onnx_accuracy=self.onnx_correct / self.samples,
        )


def compare(torch_logits: np.ndarray, onnx_logits: np.ndarray, labels: np.ndarray) -> Parity:
    tally = ParityTally()
    tally.add(torch_logits, onnx_logits, labels)
    return tally.result()


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
