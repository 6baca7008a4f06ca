"""The evaluate stage's figures: accuracy, loss, per-class table, confusion matrix."""
