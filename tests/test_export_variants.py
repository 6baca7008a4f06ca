"""Export: fp32/fp16/int8 files, their parity with PyTorch, and deterministic int8 calibration.

A tiny small_cnn is trained for a few steps on the bundled digits, so parity is measured on a
model with real, confident predictions; nothing here reads the repo's DVC outputs.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

import pipeline
from pipeline.core.catalog import CPU_FP16_NOTE, VARIANTS
from pipeline.core.config import Params, ParamsError, ParityGate, parse_params
from pipeline.core.io import sha256_file
from pipeline.export.int8 import convert as convert_int8
from pipeline.export.int8 import to_int8
from pipeline.export.parity import Parity, ParityError, ParityTally, compare, enforce, problems
from pipeline.export.run import enforce_gates, export_all, parity_of
from pipeline.export.safety import UnsafeModelError
from pipeline.export.session import make_session, session_logits
from pipeline.export.variants import (
    ConvertContext,
    calibration_sample,
    exported_files,
    variant_path,
)
from pipeline.hardware.cpu import CpuFeatures, detect
from pipeline.models import ModelSpec, build_model
from pipeline.models.files import ModelCard, Normalisation
from pipeline.models.preprocess import WithPreprocessing
from pipeline.prepared.stats import channel_stats
from pipeline.prepared.types import LabelledImages
from pipeline.sources import digits

PARAMS = {"export": {"int8": {"calibration_images": 128}}}


def tiny_trained_model(seed: int = 0):
    """small_cnn (width 8) after ~70 AdamW steps on digits: about 90% test accuracy, in a second."""
    torch.manual_seed(seed)
    pool = digits.load().pools["all"]
    train = (pool.images[:1400], pool.labels[:1400])
    test = (pool.images[1400:], pool.labels[1400:])
    mean, std = channel_stats(train[0])
    spec = ModelSpec(
        arch="small_cnn", in_channels=1, image_size=8, num_classes=10, width=8, dropout=0
    )
    model = WithPreprocessing(build_model(spec), mean, std)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    images, labels = torch.from_numpy(train[0]), torch.from_numpy(train[1])
    model.train()
    for _ in range(3):
        for start in range(0, len(images), 64):
            loss = torch.nn.functional.cross_entropy(
                model(images[start : start + 64]), labels[start : start + 64]
            )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    card = ModelCard(
        arch="small_cnn",
        model_params={"width": 8, "dropout": 0.0},
        class_names=tuple(str(i) for i in range(10)),
        num_classes=10,
        input_shape=(1, 8, 8),
        normalisation=Normalisation(mean=tuple(mean), std=tuple(std)),
    )
    return model.eval(), card, train, test


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    model, card, train, test = tiny_trained_model()
    onnx_dir = tmp_path_factory.mktemp("onnx")
    params = parse_params(PARAMS)
    test_tensors = LabelledImages(*test)
    metrics = export_all(params, model, card, test_tensors, torch.from_numpy(train[0]), onnx_dir)
    return {
        "model": model,
        "card": card,
        "train": train,
        "test": test,
        "dir": onnx_dir,
        "metrics": metrics,
        "params": params,
        "cpu": detect(),
    }


def test_every_variant_is_written_checked_and_described(exported):
    metrics = exported["metrics"]
    assert set(metrics["variants"]) == {"fp16", "int8"}
    records = {"fp32": metrics, **metrics["variants"]}
    for name, record in records.items():
        path = variant_path(exported["dir"], name)
        assert path.is_file() and record["file"] == str(path)
        assert record["sha256"] == sha256_file(path) and record["size_bytes"] == path.stat().st_size
        assert record["passed"], (name, record["problems"])
        assert record["parity"]["samples"] == len(exported["test"][1])
        props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
        assert props["variant"] == name and json.loads(props["class_names"])[0] == "0"
    sizes = {name: record["size_bytes"] for name, record in records.items()}
    assert sizes["int8"] < sizes["fp16"] < sizes["fp32"]
    assert metrics["variants"]["int8"]["quantization"]["calibration_seed"] == 42
    enforce_gates(metrics)  # nothing raised


def test_a_variant_file_copied_over_another_is_refused_before_it_is_timed(exported, tmp_path):
    names = ["fp32", "fp16", "int8"]
    assert exported_files(exported["dir"], names) == {
        name: variant_path(exported["dir"], name) for name in names
    }
    shutil.copy(variant_path(exported["dir"], "int8"), variant_path(tmp_path, "fp32"))
    with pytest.raises(UnsafeModelError, match="metadata says variant 'int8', not 'fp32'"):
        exported_files(tmp_path, ["fp32"])


class Chunked:
    """A test split handed out ``size`` rows at a time, as SplitShards hands out shards, with
    no whole-split access; ``largest`` is the most rows any call handed out."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, size: int) -> None:
        self.images, self.labels, self.size, self.largest = images, labels, size, 0

    @property
    def count(self) -> int:
        return len(self.labels)

    def head(self, count: int) -> np.ndarray:
        self.largest = max(self.largest, min(count, self.count))
        return self.images[:count]

    def iter_shards(self):
        for start in range(0, self.count, self.size):
            self.largest = max(self.largest, min(self.size, self.count - start))
            yield self.images[start : start + self.size], self.labels[start : start + self.size]


@pytest.mark.parametrize("variant", ["fp32", "int8"])
def test_parity_reads_the_test_split_a_shard_at_a_time_with_the_same_figures(exported, variant):
    images, labels = exported["test"]
    session, model = make_session(variant_path(exported["dir"], variant)), exported["model"]
    whole = parity_of(model, lambda x: x, session, LabelledImages(images, labels), 16)
    chunked = Chunked(images, labels, 64)  # a multiple of the batch: the same batches
    assert parity_of(model, lambda x: x, session, chunked, 16) == whole
    assert chunked.largest == 64 and whole.samples == len(labels) > 64


def test_a_nan_in_any_chunk_stays_in_the_parity(exported):
    logits, labels = np.zeros((2, 3), np.float32), np.zeros(2, np.int64)
    broken = logits.copy()
    broken[0, 0] = np.nan
    tally = ParityTally()
    tally.add(logits, broken, labels)
    tally.add(logits, logits, labels)  # a later, finite chunk must not hide it
    parity = tally.result()
    assert "logits are not finite" in problems(parity, exported["params"].export.gates.fp32, "x")


@pytest.mark.parametrize("variant", ["fp32", "fp16", "int8"])
def test_no_file_holds_a_path_of_this_checkout(exported, variant):
    # torch's exporter writes each op's Python stack trace into node metadata: absolute paths
    # that made model.onnx differ between clones and shipped a home directory to deployers.
    source_root = str(Path(pipeline.__file__).resolve().parent.parent).encode()
    assert source_root not in variant_path(exported["dir"], variant).read_bytes()


@pytest.mark.parametrize("variant", ["fp32", "fp16", "int8"])
def test_parity_per_variant_on_cpu(exported, variant):
    """Each file, run by onnxruntime on the CPU, against PyTorch fp32 on the whole test split."""
    images, labels = exported["test"]
    session = make_session(variant_path(exported["dir"], variant))
    assert session.get_providers() == ["CPUExecutionProvider"]
    # Same input and output types for every variant: uint8 pixels in, float32 logits out.
    assert session.get_inputs()[0].type == "tensor(uint8)"
    assert session.get_outputs()[0].type == "tensor(float)"
    torch_logits = exported["model"](torch.from_numpy(images)).detach().numpy()
    parity = compare(torch_logits, session_logits(session, images, 256), labels)
    gate = exported["params"].export.gates[variant]
    assert problems(parity, gate, variant) == []
    assert parity.torch_accuracy > 0.8
    if variant == "fp32":
        assert parity.max_abs_logit_diff < 1e-4 and parity.top1_agreement == 1.0


def test_included_preprocessing_takes_raw_uint8_like_pytorch_on_normalised_input(exported):
    images, _ = exported["test"]
    model = exported["model"]
    with torch.inference_mode():
        normalised = model.normalize(torch.from_numpy(images))
        expected = model.model(normalised).numpy()
    session = make_session(variant_path(exported["dir"], "fp32"))
    got = session_logits(session, images, 256)
    assert images.dtype == np.uint8
    np.testing.assert_array_equal(got.argmax(1), expected.argmax(1))
    assert np.abs(got - expected).max() < 1e-4


def test_int8_calibration_is_deterministic_under_the_seed(exported, tmp_path):
    train_images = exported["train"][0]
    first = calibration_sample(train_images, 128, seed=7)
    np.testing.assert_array_equal(first, calibration_sample(train_images, 128, seed=7))
    assert not np.array_equal(first, calibration_sample(train_images, 128, seed=8))
    settings = exported["params"].export.int8
    fp32 = variant_path(exported["dir"], "fp32")
    for name in ("a.onnx", "b.onnx"):
        to_int8(fp32, tmp_path / name, first, settings)
    assert sha256_file(tmp_path / "a.onnx") == sha256_file(tmp_path / "b.onnx")


def _int8_facts(path) -> tuple[set[int], list[int]]:
    """Activation zero-point types, and the number of scales of each weight's DequantizeLinear."""
    graph = onnx.load(str(path)).graph
    consts = {t.name: t for t in graph.initializer}
    zero_point_types = {
        consts[n.input[2]].data_type for n in graph.node if n.op_type == "QuantizeLinear"
    }
    weight_scales = [
        int(np.prod(consts[n.input[1]].dims))
        for n in graph.node
        if n.op_type == "DequantizeLinear" and n.input[0].endswith("weight_quantized")
    ]
    return zero_point_types, weight_scales


def test_int8_choices_reach_the_file(exported, tmp_path):
    # The default: U8S8 (uint8 activations), one scale per output channel.
    types, scales = _int8_facts(variant_path(exported["dir"], "int8"))
    assert types == {onnx.TensorProto.UINT8} and max(scales) > 1
    # S8S8 without per-channel: int8 activations, one scale per weight tensor.
    settings = exported["params"].export.int8.model_copy(
        update={"activations": "int8", "per_channel": False}
    )
    sample = calibration_sample(exported["train"][0], 64, seed=0)
    to_int8(variant_path(exported["dir"], "fp32"), tmp_path / "s8.onnx", sample, settings)
    types, scales = _int8_facts(tmp_path / "s8.onnx")
    assert types == {onnx.TensorProto.INT8} and scales and set(scales) == {1}


def _max_abs_int8_weight(path) -> int:
    graph = onnx.load(str(path)).graph
    weights = [t for t in graph.initializer if t.name.endswith("weight_quantized")]
    return max(int(np.abs(numpy_helper.to_array(t).astype(np.int16)).max()) for t in weights)


AVX2 = CpuFeatures(frozenset({"avx2", "fma"}), "test")
AVX512 = CpuFeatures(frozenset({"avx2", "fma", "avx512f"}), "test")
VNNI = CpuFeatures(frozenset({"avx2", "fma", "avx512f", "avx512_vnni"}), "test")


@pytest.mark.parametrize(
    ("cpu", "setting", "reduced"),
    [(AVX2, "auto", True), (AVX512, "auto", True), (VNNI, "auto", False),
     (VNNI, True, True), (AVX2, False, False)],
)  # fmt: skip
def test_int8_recipe_follows_the_cpu_unless_set_and_reaches_the_file(
    exported, tmp_path, cpu, setting, reduced
):
    settings = exported["params"].export.int8.model_copy(update={"reduce_range": setting})
    sample = calibration_sample(exported["train"][0], 64, seed=0)
    path = tmp_path / "q.onnx"
    described = to_int8(variant_path(exported["dir"], "fp32"), path, sample, settings, cpu=cpu)
    assert described["reduce_range"] is reduced and described["cpu"] == cpu.profile
    assert ("auto" in described["reduce_range_reason"]) == (setting == "auto")
    # Symmetric per-channel weights: each channel's largest reaches the range's end, 64 for
    # 7 bits and 127 for 8.
    assert _max_abs_int8_weight(path) == (64 if reduced else 127)
    props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert json.loads(props["quantization"])["reduce_range"] is reduced


def test_int8_default_passes_its_gate_on_this_cpu_whatever_it_is(exported):
    """The gate that decides is agreement and accuracy; the logit difference is reported."""
    record = exported["metrics"]["variants"]["int8"]
    assert record["gate"]["max_abs_logit_diff"] is None and record["passed"]
    assert record["parity"]["max_abs_logit_diff"] > 0
    assert record["quantization"]["reduce_range"] is not exported["cpu"].int8_dot_product


def test_a_failed_gate_deletes_its_file_and_names_the_setting_to_change(exported, tmp_path):
    """The advice comes from the catalog entry (fp16) or from what the converter chose (int8
    with 8-bit weights: 7-bit ones first); export.json keeps it beside the problems."""
    never = {"max_abs_logit_diff": 1e-9}  # any real conversion differs more than this
    params = parse_params(
        {
            "export": {
                "int8": {"calibration_images": 64, "reduce_range": False},
                "gates": {"fp16": never, "int8": never},
            }
        }
    )
    test = LabelledImages(*exported["test"])
    train = torch.from_numpy(exported["train"][0])
    model, card = exported["model"], exported["card"]
    metrics = export_all(params, model, card, test, train, tmp_path)
    assert "remedy" not in metrics  # fp32 passed
    assert metrics["variants"]["int8"]["gate"]["min_top1_agreement"] == 0.98  # int8's default
    with pytest.raises(ParityError) as raised:
        enforce_gates(metrics)
    fp16, int8 = str(raised.value).split(" | ")
    assert fp16.startswith("fp16: max abs logit difference")
    assert fp16.endswith(f"({VARIANTS['fp16'].remedy})")
    assert int8.endswith("(set export.int8.reduce_range: true, the recipe for CPUs without VNNI)")
    assert metrics["variants"]["int8"]["remedy"] in int8
    assert variant_path(tmp_path, "fp32").is_file()
    assert (
        not variant_path(tmp_path, "fp16").exists() and not variant_path(tmp_path, "int8").exists()
    )


def test_int8_with_7_bit_weights_leaves_the_advice_to_the_catalog(exported, tmp_path):
    params = parse_params({"export": {"int8": {"calibration_images": 64, "reduce_range": True}}})
    train = torch.from_numpy(exported["train"][0])
    context = ConvertContext(params, train, feed=lambda images: images)
    fp32 = variant_path(exported["dir"], "fp32")
    info = convert_int8(fp32, tmp_path / "q.onnx", context)
    assert info.remedy is None and VARIANTS["int8"].remedy.startswith("try export.int8.method")
    assert info.facts["quantization"]["calibration_images"] == 64
    assert info.facts["quantization"]["calibration_seed"] == params.seed


def test_fp16_checked_on_the_cpu_says_what_that_does_not_measure(exported):
    """One note, the catalog's, for export's parity record and the benchmark's rows alike."""
    record = exported["metrics"]["variants"]["fp16"]
    if record["checked_on"] == "CPUExecutionProvider":
        assert record["note"] == CPU_FP16_NOTE == VARIANTS["fp16"].cpu_note
    assert (
        "note" not in exported["metrics"] and "note" not in exported["metrics"]["variants"]["int8"]
    )
    sources = Path(pipeline.__file__).parent.rglob("*.py")
    assert sum("nodes through casts to fp32" in path.read_text() for path in sources) == 1


def test_gates_fail_the_export_with_the_key_to_change():
    gate = ParityGate(max_abs_logit_diff=0.1, min_top1_agreement=0.99, max_accuracy_drop=0.005)
    good = Parity(100, 0.05, 1.0, 0.9, 0.9)
    assert problems(good, gate, "int8") == []
    bad = Parity(100, 0.5, 0.95, 0.9, 0.85)
    found = problems(bad, gate, "int8")
    assert len(found) == 3
    assert "export.gates.int8.max_abs_logit_diff" in found[0]
    assert "export.gates.int8.min_top1_agreement" in found[1]
    assert "export.gates.int8.max_accuracy_drop" in found[2]
    with pytest.raises(ParityError, match="int8: max abs logit"):
        enforce(bad, gate, "int8")
    # NaN compares false with every threshold: it must fail, not pass.
    assert problems(Parity(100, float("nan"), 1.0, 0.9, 0.9), gate, "fp16") == [
        "logits are not finite"
    ]
    # An accuracy gain is no failure.
    assert problems(Parity(100, 0.05, 0.99, 0.9, 0.95), gate, "fp16") == []


def test_export_params_are_validated():
    assert Params().export.variants == ["fp16", "int8"]
    with pytest.raises(ParamsError, match="export.variants"):
        parse_params({"export": {"variants": ["int8", "int8"]}})
    with pytest.raises(ParamsError, match="export.variants.0"):
        parse_params({"export": {"variants": ["int4"]}})
    with pytest.raises(ParamsError, match="export.int8.op_types.0"):
        parse_params({"export": {"int8": {"op_types": ["Convolution"]}}})
    assert Params().export.gates.int8.max_abs_logit_diff is None  # reported, not a gate
    with pytest.raises(ParamsError, match="export.int8.reduce_range"):
        parse_params({"export": {"int8": {"reduce_range": "sometimes"}}})
    with pytest.raises(ParamsError, match="unknown key 'export.gates.int8.max_diff'"):
        parse_params({"export": {"gates": {"int8": {"max_diff": 1}}}})


def test_without_included_preprocessing_every_variant_takes_normalised_float32(tmp_path):
    """The fp16 converter appends the Cast of a float32 input after its readers: must be fixed."""
    model, card, train, test = tiny_trained_model()
    params = parse_params(
        {"export": {"include_preprocessing": False, "int8": {"calibration_images": 64}}}
    )
    tensors = LabelledImages(*test)
    metrics = export_all(params, model, card, tensors, torch.from_numpy(train[0]), tmp_path)
    enforce_gates(metrics)
    for variant in ("fp32", "fp16", "int8"):
        session = make_session(variant_path(tmp_path, variant))
        assert session.get_inputs()[0].type == "tensor(float)"
        props = {
            p.key: p.value for p in onnx.load(str(variant_path(tmp_path, variant))).metadata_props
        }
        assert props["input_dtype"] == "float32" and props["preprocessing"] != "included"
