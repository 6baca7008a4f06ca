"""The one batched-forward loop (pipeline.models.inference.in_batches) and the four passes built
on it: predict_logits, Trainer.validate, TorchBackend.logits and session_logits."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.bench.backends import TorchBackend
from pipeline.export.session import session_logits
from pipeline.models.inference import in_batches, predict_logits
from test_train import make_trainer


def test_batches_are_consecutive_aligned_and_the_last_one_is_short():
    images, labels = np.arange(10), torch.arange(10) * 10
    got = list(in_batches(lambda x, y: (x.tolist(), y.tolist()), 4, images, labels))
    assert got == [
        ([0, 1, 2, 3], [0, 10, 20, 30]),
        ([4, 5, 6, 7], [40, 50, 60, 70]),
        ([8, 9], [80, 90]),
    ]


def test_a_batch_larger_than_the_input_is_one_batch():
    assert [b.tolist() for b in in_batches(lambda x: x, 512, np.arange(3))] == [[0, 1, 2]]


def test_empty_input_gives_no_batches_and_runs_nothing():
    def forward(_):
        raise AssertionError("forward ran on an empty input")

    assert list(in_batches(forward, 4, np.empty((0, 3)))) == []


@pytest.mark.parametrize("size", [0, -1, 2.0, True, None])
def test_a_bad_batch_size_is_refused_before_any_batch(size):
    with pytest.raises(ValueError, match=f"batch_size must be a positive integer, got {size!r}"):
        in_batches(lambda x: x, size, np.arange(3))


def test_arrays_of_different_lengths_are_refused():
    with pytest.raises(ValueError, match="one length"):
        in_batches(lambda x, y: x, 2, np.arange(3), np.arange(4))


class Recorder(torch.nn.Module):
    """Doubles its input as float logits and records the batch sizes it saw."""

    def __init__(self):
        super().__init__()
        self.sizes: list[int] = []
        self.weight = torch.nn.Parameter(torch.ones(1))

    def forward(self, x):
        self.sizes.append(len(x))
        return x.flatten(1).to(torch.float16) * 2  # half: the caller must cast to float32


def test_predict_logits_keeps_order_casts_to_float32_and_handles_empty_input():
    model, images = Recorder(), torch.arange(7, dtype=torch.uint8).reshape(7, 1, 1, 1)
    logits = predict_logits(model, images, 3)
    assert model.sizes == [3, 3, 1]
    assert logits.dtype == torch.float32 and logits.flatten().tolist() == [0, 2, 4, 6, 8, 10, 12]
    assert predict_logits(Recorder(), images[:0], 3).numel() == 0


@pytest.mark.parametrize("engine", [False, True], ids=["eager", "engine"])
def test_torch_backend_logits_take_the_callers_batch_size(engine):
    backend = TorchBackend(Recorder(), torch.device("cpu"), engine=engine)
    images = np.arange(5, dtype=np.uint8).reshape(5, 1, 1, 1)
    logits = backend.logits(images, 2)
    assert backend.model.sizes == [2, 2, 1]
    assert logits.dtype == np.float32 and logits.ravel().tolist() == [0, 2, 4, 6, 8]


class FakeSession:
    """The two members of an onnxruntime InferenceSession that session_logits uses."""

    def __init__(self):
        self.sizes: list[int] = []

    def get_inputs(self):
        return [type("Input", (), {"name": "images"})]

    def run(self, _outputs, feed):
        self.sizes.append(len(feed["images"]))
        return [feed["images"].astype(np.float64) + 1]


def test_session_logits_batch_by_batch_in_order_as_float32():
    session, inputs = FakeSession(), np.arange(5).reshape(5, 1)
    logits = session_logits(session, inputs, 2)
    assert session.sizes == [2, 2, 1]
    assert logits.dtype == np.float32 and logits.ravel().tolist() == [1, 2, 3, 4, 5]


def test_validate_does_not_depend_on_the_batch_size():
    trainer = make_trainer(epochs=1)
    images, labels = trainer.validation.images, trainer.validation.labels
    with torch.no_grad():
        logits = trainer.eval_model.eval()(images).float()
    expected_loss = torch.nn.functional.cross_entropy(logits, labels).item()
    expected_accuracy = (logits.argmax(1) == labels).float().mean().item()
    for batch_size in (7, len(images), 10 * len(images)):
        loss, accuracy = trainer.validate(batch_size)
        assert accuracy == pytest.approx(expected_accuracy, abs=1e-9)
        assert loss == pytest.approx(expected_loss, rel=1e-5)
