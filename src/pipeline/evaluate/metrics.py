"""Test-split metrics and the confusion-matrix plot data."""

from __future__ import annotations

import csv
import io
from typing import Any

import numpy as np
import torch
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

from pipeline.core.io import write_text
from pipeline.models.inference import predict_logits, require_finite
from pipeline.prepared.storage import split_shards


def predict_split(
    model: torch.nn.Module, prepared_dir, split: str, batch_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and labels of a prepared split, read shard by shard: memory holds one shard of
    images at a time, and the logits of the whole split."""
    logits, labels = [], []
    for images, shard_labels in split_shards(prepared_dir, split).iter_shards():
        shard_logits = predict_logits(model, torch.from_numpy(images), batch_size)
        logits.append(require_finite(shard_logits, f"evaluate on the {split} split"))
        labels.append(torch.from_numpy(shard_labels))
    return torch.cat(logits), torch.cat(labels)


def classification_metrics(
    logits: torch.Tensor, labels: torch.Tensor, class_names: list[str]
) -> dict[str, Any]:
    predicted = logits.argmax(1).numpy()
    actual = labels.numpy()
    classes = np.arange(len(class_names))
    precision, recall, f1, support = precision_recall_fscore_support(
        actual, predicted, labels=classes, zero_division=0
    )
    per_class = {
        name: {
            "precision": float(precision[i]),
            "recall": float(recall[i]),
            "f1": float(f1[i]),
            "support": int(support[i]),
        }
        for i, name in enumerate(class_names)
    }
    return {
        "accuracy": float((predicted == actual).mean()),
        "loss": float(torch.nn.functional.cross_entropy(logits, labels)),
        "macro_f1": float(f1.mean()),
        "samples": int(len(actual)),
        "per_class": per_class,
        "confusion_matrix": confusion_matrix(actual, predicted, labels=classes).tolist(),
    }


def write_confusion_csv(path, logits: torch.Tensor, labels: torch.Tensor, class_names: list[str]):
    """One row per test image: what DVC's `confusion` template counts."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["actual", "predicted"])
    for actual, predicted in zip(labels.tolist(), logits.argmax(1).tolist(), strict=True):
        writer.writerow([class_names[actual], class_names[predicted]])
    write_text(path, buffer.getvalue())
