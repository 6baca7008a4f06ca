"""Tier 1 and 2: the params schema, and the repository's params.yaml against it."""

import os
import re

import pytest
import yaml

from conftest import ROOT, fails_within
from pipeline.core.config import Params, ParamsError, load_params, parse_params
from pipeline.tools.params_table import params_table


def default_raw() -> dict:
    return yaml.safe_load((ROOT / "params.yaml").read_text())


def test_repository_params_file_is_valid():
    params = load_params(ROOT / "params.yaml")
    assert params.data.source == "digits"
    assert params.train.batch_size > 0


def test_params_yaml_spells_out_every_section_the_schema_has():
    assert set(default_raw()) == set(Params.model_fields)


def test_every_param_has_a_description():
    rows = params_table().splitlines()[2:]
    assert len(rows) > 50
    for row in rows:
        name, _default, meaning = (cell.strip() for cell in row.strip("|").split(" | ", 2))
        assert meaning, f"{name} has no description"


@pytest.mark.parametrize(
    ("section", "key", "value", "expected"),
    [
        ("train", "batch_size", -1, "'train.batch_size': -1"),
        ("train", "batch_size", "big", "'train.batch_size': 'big'"),
        ("train", "device", "tpu", "'train.device': 'tpu'"),
        ("train", "precision", "fp8", "'train.precision': 'fp8'"),
        ("data", "source", "imagenet", "'data.source': 'imagenet'"),
        ("data", "val_fraction", 1.5, "'data.val_fraction': 1.5"),
        ("export", "opset", 7, "'export.opset': 7"),
        ("benchmark", "batch_sizes", [], "'benchmark.batch_sizes': []"),
        ("benchmark", "providers", ["gpu"], "'benchmark.providers.0': 'gpu'"),
    ],
)
def test_bad_value_is_one_line_naming_key_and_value(section, key, value, expected):
    raw = default_raw()
    raw[section][key] = value
    with pytest.raises(ParamsError) as caught:
        parse_params(raw)
    message = str(caught.value)
    assert "\n" not in message
    assert expected in message


@pytest.mark.parametrize(
    ("section", "key", "value", "shown"),
    [
        ("model", "arch", "torchvision:" + "a" * 10**6, "'model.arch': 'torchvision:aaa"),
        ("data", "root", "r" * 5_000, "'data.root': 'rrr"),
        ("model", "pretrained", "p" * 10**5, "'model.pretrained': 'ppp"),
        ("train", "batch_size", list(range(10**5)), "'train.batch_size': [0, 1, 2"),
        ("train", "lr", {"a": {"b": {"c": {"d": 1}}}}, "'train.lr': {'a': {'b': {'c': {...}}}}"),
        ("evaluate", "batch_size", 10**5000, "'evaluate.batch_size': <an integer of 16,610 bits>"),
    ],
    ids=["arch", "root", "pretrained", "list", "nested", "int"],  # not the values' own reprs
)
def test_a_huge_bad_value_is_quoted_short_on_one_line(section, key, value, shown):
    # A megabyte value used to be quoted whole: a megabyte-long "one line" error.
    raw = default_raw()
    raw[section][key] = value
    with pytest.raises(ParamsError) as caught:
        parse_params(raw)
    message = str(caught.value)
    assert shown in message
    assert len(message) < 300 and "\n" not in message


def test_a_string_as_long_as_path_max_is_still_a_value():
    raw = default_raw()
    raw["data"]["root"] = "r" * 4_096
    assert parse_params(raw).data.root == "r" * 4_096


def test_an_integer_too_long_for_python_is_one_line_naming_its_line(tmp_path):
    # int() refuses over 4,300 digits with a bare ValueError: it escaped as a traceback.
    path = tmp_path / "params.yaml"
    path.write_text("seed: 1\nevaluate:\n  batch_size: " + "9" * 5_000 + "\n")
    with pytest.raises(ParamsError) as caught:
        load_params(path)
    assert str(caught.value) == (
        f"{path}: not valid YAML (an integer of 5,000 characters at line 3, "
        "far beyond any params value)"
    )


def test_yaml_integers_in_every_spelling_still_load(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("seed: 1_000\nevaluate:\n  batch_size: 0x40\n")
    params = load_params(path)
    assert (params.seed, params.evaluate.batch_size) == (1000, 64)


def test_a_huge_unknown_key_is_named_by_its_start_and_length():
    raw = default_raw()
    raw["train"]["batch_sise" * 10**4] = 32
    with pytest.raises(ParamsError) as caught:
        parse_params(raw)
    message = str(caught.value)
    assert "unknown key 'train.batch_sisebatch_sise" in message
    assert "(100,006 characters)" in message and len(message) < 300


def test_typo_key_is_named():
    raw = default_raw()
    raw["train"]["batch_sise"] = 32
    with pytest.raises(ParamsError, match=r"unknown key 'train.batch_sise'"):
        parse_params(raw)


def test_unknown_section_is_named():
    raw = default_raw()
    raw["trian"] = {}
    with pytest.raises(ParamsError, match=r"unknown key 'trian'"):
        parse_params(raw)


def test_splits_must_leave_training_data():
    raw = default_raw()
    raw["data"]["val_fraction"] = 0.5
    raw["data"]["test_fraction"] = 0.45
    with pytest.raises(ParamsError, match=r"data.test_fraction.*leaves < 10% to train"):
        parse_params(raw)


def test_missing_sections_take_defaults():
    assert parse_params({"seed": 1}).train == Params().train


def test_not_yaml_and_not_a_mapping(tmp_path):
    bad_yaml = tmp_path / "params.yaml"
    bad_yaml.write_text("train: [unclosed\n")
    with pytest.raises(ParamsError, match="not valid YAML"):
        load_params(bad_yaml)
    bad_yaml.write_text("- a\n- b\n")
    with pytest.raises(ParamsError, match="expected a mapping"):
        load_params(bad_yaml)
    with pytest.raises(ParamsError, match="cannot read"):
        load_params(tmp_path / "missing.yaml")


def refused(path, match: str) -> str:
    """load_params(path) fails with one ParamsError line matching ``match``."""
    with pytest.raises(ParamsError, match=match) as caught:
        load_params(path)
    assert "\n" not in str(caught.value)
    return str(caught.value)


def test_a_pipe_or_folder_as_params_yaml_fails_in_one_line_instead_of_hanging(tmp_path):
    pipe = tmp_path / "params.yaml"
    os.mkfifo(pipe)  # no writer: a plain read would wait forever
    with fails_within(10):
        refused(pipe, r"params.yaml: cannot read \(not a regular file")
    refused(tmp_path, r"cannot read \(not a regular file")


def test_a_linked_params_yaml_still_loads(tmp_path):
    link = tmp_path / "params.yaml"
    link.symlink_to(ROOT / "params.yaml")
    assert load_params(link) == load_params(ROOT / "params.yaml")


def test_params_yaml_that_is_not_utf8_names_the_byte_and_its_offset(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_bytes(b"seed: 4\xff2\n")  # Latin-1 or binary junk, not UTF-8
    refused(path, r"params.yaml: not UTF-8 text \(byte 0xff at offset 7\)$")


@pytest.mark.parametrize(
    "text",
    [
        "[" * 20_000 + "]" * 20_000,
        "train: " + "{a: " * 20_000 + "1" + "}" * 20_000,
        "seed:\n" + "".join(" " * depth + "- \n" for depth in range(1, 2_000)),
    ],
    ids=["flow-sequences", "flow-mappings", "block-sequences"],
)
def test_params_yaml_nested_too_deeply_is_one_line_not_a_recursion_traceback(tmp_path, text):
    path = tmp_path / "params.yaml"
    path.write_text(text)
    refused(path, r"params.yaml: not valid YAML \(nested too deeply at line \d+, column \d+\)$")


def test_small_floats_as_dvc_writes_them_are_numbers(tmp_path):
    # `dvc exp run -S export.gates.fp32.max_abs_logit_diff=0.0000001` writes `1e-07` (YAML 1.2,
    # through DVC's own serializer); YAML 1.1 (PyYAML) reads that as the string '1e-07'.
    from dvc.utils.serialize import dumps_yaml

    raw = default_raw()
    raw["export"]["gates"]["fp32"]["max_abs_logit_diff"] = 1e-7
    raw["train"]["lr"] = 2.5e-5
    raw["train"]["weight_decay"] = 1e-10
    path = tmp_path / "params.yaml"
    path.write_text(dumps_yaml(raw))
    assert "max_abs_logit_diff: 1e-07" in path.read_text()
    params = load_params(path)
    assert params.export.gates.fp32.max_abs_logit_diff == 1e-7
    assert (params.train.lr, params.train.weight_decay) == (2.5e-5, 1e-10)
    path.write_text("train:\n  lr: 1e-07x\n")  # still not a number: named as before
    with pytest.raises(ParamsError, match="'train.lr': '1e-07x'"):
        load_params(path)


@pytest.mark.parametrize(
    ("section", "key", "value", "expected"),
    [
        # YAML's `yes` and `true` are booleans: never an epoch count or a channel count.
        ("train", "epochs", True, "'train.epochs': True (Input should be a valid integer"),
        ("data", "channels", True, "'data.channels': True"),
        ("train", "lr", True, "'train.lr': True (Input should be a valid number"),
        ("train", "batch_size", 64.0, "'train.batch_size': 64.0"),
        ("benchmark", "min_seconds", float("inf"), "'benchmark.min_seconds': inf (Input should "
         "be a finite number)"),
        ("train", "warmup_epochs", float("inf"), "'train.warmup_epochs': inf"),
        ("train", "lr", float("nan"), "'train.lr': nan"),
        ("train", "device", "cuda:\u0663", "'train.device': 'cuda:\u0663'"),
        ("benchmark", "device", "cuda:\uff11", "'benchmark.device'"),
    ],
)  # fmt: skip
def test_numbers_are_strict_and_finite(section, key, value, expected):
    raw = default_raw()
    raw[section][key] = value
    with pytest.raises(ParamsError) as caught:
        parse_params(raw)
    assert "\n" not in str(caught.value)
    assert expected in str(caught.value)


@pytest.mark.parametrize(
    ("dotted", "value"),
    [
        ("seed", 123456789012345678901234567890),
        ("seed", 2**32),
        ("model.width", 1_000_000_000_000),
        ("train.epochs", 1_000_000_000_000),
        ("train.batch_size", 10**9),
        ("evaluate.batch_size", 10**9),
        ("benchmark.batch_sizes", [1, 10**9]),
        ("benchmark.min_seconds", 1e300),
        ("benchmark.min_iterations", 10**12),
        ("benchmark.repeats", 10**6),
        ("benchmark.max_spread", 1e9),
        ("data.image_size", 10**6),
        ("data.workers", 10**6),
        ("train.distributed.nproc_per_node", 10**6),
        ("energy.min_window_s", 1e12),
    ],
)
def test_every_number_has_an_upper_bound(dotted, value):
    raw = default_raw()
    *sections, key = dotted.split(".")
    target = raw
    for section in sections:
        target = target[section]
    target[key] = value
    with pytest.raises(ParamsError, match=rf"bad value for '{dotted}"):
        parse_params(raw)


def test_params_table_documents_the_bounds():
    rows = {row.split(" | ")[0].strip("| `"): row for row in params_table().splitlines()[2:]}
    assert "| 1..10000 |" in rows["train.epochs"]
    assert "| 0..3600 |" in rows["benchmark.min_seconds"]
    assert "| 0..2147483647 |" in rows["seed"]


def test_a_gate_that_sets_some_thresholds_keeps_its_variants_defaults_for_the_rest():
    gates = parse_params({"export": {"gates": {"int8": {"min_top1_agreement": 0.9}}}}).export.gates
    assert gates.int8.min_top1_agreement == 0.9
    assert gates.int8.max_abs_logit_diff is None and gates.int8.max_accuracy_drop == 0.01
    assert gates.fp16 == Params().export.gates.fp16
    for bad, expected in [
        ({"int4": {}}, "unknown key 'export.gates.int4'"),
        ({"int8": {"max_diff": 1}}, "unknown key 'export.gates.int8.max_diff'"),
        ({"int8": 3}, "'export.gates.int8': 3"),
        ({"fp16": {"min_top1_agreement": 2}}, "'export.gates.fp16.min_top1_agreement': 2"),
        ({"fp32": {"max_abs_logit_diff": "0.1"}}, "'export.gates.fp32.max_abs_logit_diff'"),
    ]:
        with pytest.raises(ParamsError, match=re.escape(expected)):
            parse_params({"export": {"gates": bad}})
