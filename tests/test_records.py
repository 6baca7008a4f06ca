"""Metrics files hold the figures; the details file beside each holds the whole record."""

from pipeline.core.io import read_json
from pipeline.core.records import (
    benchmark_figures,
    details_path,
    export_figures,
    pick,
    write_record,
)


def test_pick_keeps_the_nesting_and_skips_absent_keys():
    record = {"a": 1, "b": {"c": 2, "d": "text"}, "e": [1, 2]}
    assert pick(record, ["a", "b.c", "missing", "b.missing"]) == {"a": 1, "b": {"c": 2}}


def test_write_record_puts_context_only_in_the_details_file(tmp_path):
    record = {"accuracy": 0.9, "sha256": "ab" * 32, "policy": {"precision": "bf16", "cpu": "x"}}
    metrics = tmp_path / "metrics" / "train.json"
    write_record(metrics, record, ["accuracy", "policy.precision"])
    assert details_path(metrics) == tmp_path / "metrics" / "details" / "train.json"
    assert read_json(metrics) == {"accuracy": 0.9, "policy": {"precision": "bf16"}}
    assert read_json(details_path(metrics)) == record


def test_export_and_benchmark_figures_follow_the_variants_and_batch_sizes():
    figures = export_figures({"variants": {"int8": {}}})
    assert "variants.int8.parity.top1_agreement" in figures and "sha256" not in figures
    assert not [key for key in figures if "gate" in key or "quantization" in key]
    summary = {"headline": {"batch_1": {}, "batch_64": {}}, "context": {"cpu_isa": "avx2"}}
    figures = benchmark_figures(summary)
    assert "headline.batch_64.best_images_per_s" in figures
    assert not [key for key in figures if key.startswith("context")]
