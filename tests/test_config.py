"""Tier 1 and 2: the params schema, and the repository's params.yaml against it."""

import pytest
import yaml

from conftest import ROOT
from pipeline.config import Params, ParamsError, load_params, params_table, parse_params


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
