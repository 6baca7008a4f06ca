"""Inference benchmark: backends, timing, statistics and the report."""
