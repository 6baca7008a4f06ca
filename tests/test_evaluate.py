import torch

from pipeline.evaluate.metrics import classification_metrics, write_confusion_csv


def test_metrics_on_known_predictions(tmp_path):
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    predicted = torch.tensor([0, 1, 1, 1, 2, 0])
    logits = torch.nn.functional.one_hot(predicted, 3).float() * 5
    metrics = classification_metrics(logits, labels, ["a", "b", "c"])
    assert metrics["accuracy"] == 4 / 6
    assert metrics["per_class"]["b"] == {"precision": 2 / 3, "recall": 1.0, "f1": 0.8, "support": 2}
    assert metrics["per_class"]["a"]["recall"] == 0.5
    assert metrics["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    assert metrics["loss"] > 0

    write_confusion_csv(tmp_path / "c.csv", logits, labels, ["a", "b", "c"])
    lines = (tmp_path / "c.csv").read_text().splitlines()
    assert lines[0] == "actual,predicted"
    assert lines[1:3] == ["a,a", "a,b"] and len(lines) == 7
