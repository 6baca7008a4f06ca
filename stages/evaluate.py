"""Stage evaluate: the trained model on the test split -> metrics/eval.json (figures),
metrics/details/eval.json (with the per-class table) and the confusion plot."""

import sys
from pathlib import Path

# This checkout's src/ before any installed copy (docs/architecture.md, "Every stage runs ...").
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from pipeline.core import paths
from pipeline.core.config import Params
from pipeline.core.records import EVAL_FIGURES, write_record
from pipeline.core.stage import run_stage
from pipeline.evaluate.metrics import classification_metrics, predict_split, write_confusion_csv
from pipeline.models.files import load_trained
from pipeline.prepared.storage import read_meta


def evaluate(params: Params) -> None:
    meta = read_meta(paths.PREPARED_DIR)
    model, _card = load_trained(paths.MODELS_DIR, meta)  # the card must describe this data
    class_names = list(meta.class_names)
    logits, labels = predict_split(model, paths.PREPARED_DIR, "test", params.evaluate.batch_size)
    metrics = classification_metrics(logits, labels, class_names)
    write_confusion_csv(paths.CONFUSION_PLOT, logits, labels, class_names)
    write_record(paths.EVAL_METRICS, metrics, EVAL_FIGURES)
    print(f"evaluate: test accuracy {metrics['accuracy']:.4f} on {metrics['samples']} images")


if __name__ == "__main__":
    run_stage("evaluate", evaluate)
