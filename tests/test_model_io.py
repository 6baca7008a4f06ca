"""A broken models/ folder costs one line, never a traceback or a huge read: the card and the
safetensors header (names, shapes, dtypes, byte ranges) are checked before any weights load."""

import json
import struct

import pytest
import torch

from pipeline.core.io import save_tensors
from pipeline.models import ModelSpec, build_model
from pipeline.models import files as model_io
from pipeline.models.files import (
    ModelCard,
    ModelFileError,
    Normalisation,
    load_trained,
    save_trained,
)

CARD = ModelCard(
    arch="small_cnn",
    model_params={"width": 4, "dropout": 0.0},
    class_names=("a", "b", "c"),
    num_classes=3,
    input_shape=(1, 8, 8),
    normalisation=Normalisation(mean=(0.5,), std=(0.25,)),
)


@pytest.fixture
def models_dir(tmp_path):
    save_trained(tmp_path, build_model(CARD.model_spec()), CARD)
    return tmp_path


def refused(models_dir, match: str) -> str:
    with pytest.raises(ModelFileError, match=match) as caught:
        load_trained(models_dir)
    assert "\n" not in str(caught.value)
    return str(caught.value)


def test_a_good_folder_loads(models_dir):
    model, card = load_trained(models_dir)
    assert card == CARD
    assert model(torch.zeros(2, 1, 8, 8, dtype=torch.uint8)).shape == (2, 3)


def test_truncated_weights(models_dir):
    weights = models_dir / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    refused(models_dir, "truncated or corrupt")
    weights.write_bytes(data[:5])
    refused(models_dir, "not a safetensors file, or truncated")


def test_header_claiming_huge_tensors_is_refused_before_any_read(models_dir, monkeypatch):
    monkeypatch.setattr(model_io, "load_tensors", pytest.fail)  # data must never be read
    header = {"features.0.weight": {"dtype": "F32", "shape": [100_000, 100_000],
                                    "data_offsets": [0, 4 * 10**10]}}  # fmt: skip
    raw = json.dumps(header).encode()
    (models_dir / "model.safetensors").write_bytes(struct.pack("<Q", len(raw)) + raw + b"\0" * 64)
    refused(models_dir, r"claims bytes \[0, 40000000000\] but the file holds 64 bytes")
    # A header length beyond the file itself.
    (models_dir / "model.safetensors").write_bytes(struct.pack("<Q", 2**62) + b"{}")
    refused(models_dir, "not a safetensors file")


def test_deeply_nested_header_is_one_line_not_a_recursion_traceback(models_dir):
    raw = b"[" * 100_000 + b"]" * 100_000  # json.loads recurses once per bracket
    (models_dir / "model.safetensors").write_bytes(struct.pack("<Q", len(raw)) + raw)
    refused(models_dir, "safetensors header is nested too deeply")


def test_wrong_tensor_names_are_refused_from_the_header(models_dir, monkeypatch):
    monkeypatch.setattr(model_io, "load_tensors", pytest.fail)
    save_tensors(models_dir / "model.safetensors", {"encoder.weight": torch.zeros(4, 4)})
    message = refused(models_dir, "tensors do not match a small_cnn model")
    assert "unexpected 'encoder.weight'" in message and "missing 'features.0.weight'" in message


def test_wrong_shapes_are_refused_from_the_header(models_dir, monkeypatch):
    spec = ModelSpec(arch="small_cnn", in_channels=1, image_size=8, num_classes=3, width=8)
    save_tensors(models_dir / "model.safetensors", build_model(spec).state_dict())
    monkeypatch.setattr(model_io, "load_tensors", pytest.fail)
    refused(models_dir, r"tensor 'features.0.weight' is F32\[8, 1, 3, 3\], a small_cnn model "
                        r"needs F32\[4, 1, 3, 3\]")  # fmt: skip


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("{not json", "model.json: not a model card .Invalid JSON"),
        ("[1, 2]", "model.json: not a model card .Input should be an object"),
        ('{"arch": "small_cnn"}', "model.json: field 'class_names' is missing"),
        (b"\xff\xfe\x00garbage", "model.json: not a model card .Invalid JSON"),
    ],
)
def test_card_that_is_not_a_model_card(models_dir, text, match):
    card = models_dir / "model.json"
    card.write_bytes(text if isinstance(text, bytes) else text.encode())
    refused(models_dir, match)


def test_card_describing_a_huge_or_unknown_model(models_dir):
    card = json.loads((models_dir / "model.json").read_text())
    huge = {**card, "arch": "resnet_cifar", "model_params": {"width": 1024, "dropout": 0.0}}
    (models_dir / "model.json").write_text(json.dumps(huge))
    refused(models_dir, "over the limit of 1,000,000,000")
    (models_dir / "model.json").write_text(json.dumps({**card, "arch": "resnet9000"}))
    refused(models_dir, "'resnet9000'")
    # model_params are a params.yaml model section (less arch), checked as strictly.
    (models_dir / "model.json").write_text(json.dumps({**card, "model_params": {"depth": 3}}))
    refused(models_dir, "model.json: model_params field 'depth': Extra inputs are not permitted")
    too_wide = {**card, "model_params": {"width": 100_000}}
    (models_dir / "model.json").write_text(json.dumps(too_wide))
    refused(models_dir, "model.json: model_params field 'width': Input should be less than")


def tampered(models_dir, name: str, value: float) -> None:
    """Rewrite one tensor of the saved weights, as an edit on disk would (save_trained itself
    refuses non-finite weights)."""
    state = model_io.load_tensors(models_dir / model_io.WEIGHTS_NAME)
    state[name] = torch.full_like(state[name], value)
    save_tensors(models_dir / model_io.WEIGHTS_NAME, state, metadata={"arch": CARD.arch})


@pytest.mark.parametrize(
    ("name", "value", "problem"),
    [
        ("features.0.weight", float("nan"), "holds NaN or infinite values"),
        ("features.0.weight", float("inf"), "holds NaN or infinite values"),
        ("features.1.running_var", -1.0, "holds a negative variance"),
    ],
)
def test_weights_that_cannot_make_figures_are_refused_naming_the_tensor(
    models_dir, name, value, problem
):
    """evaluate exited 0 reporting 0.10 accuracy from such weights; export failed half-way."""
    tampered(models_dir, name, value)
    refused(models_dir, rf"model.safetensors: tensor '{name}' {problem}$")


def meta_like(tmp_path, **changes):
    from pipeline.prepared.storage import PreparedMeta

    meta = {
        "source": "digits", "class_names": ["a", "b", "c"], "num_classes": 3,
        "input_shape": [1, 8, 8], "mean": [0.5], "std": [0.25],
        "counts": {"train": 12, "val": 3, "test": 3}, "input_hashes": {}, "quarantined": [],
        "shards": {},
    }  # fmt: skip
    path = tmp_path / "prepared" / "meta.json"
    path.parent.mkdir()
    path.write_text(json.dumps({**meta, **changes}))
    return PreparedMeta.from_json(path)


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"class_names": ["c", "b", "a"]}, "class_names"),  # ONNX metadata would mislabel
        ({"class_names": ["a", "b", "c", "d"], "num_classes": 4}, "class_names"),
        ({"input_shape": [1, 32, 32]}, "input_shape"),
    ],
)
def test_a_card_that_does_not_describe_the_prepared_data_is_refused(
    models_dir, tmp_path, changes, field
):
    data = meta_like(tmp_path, **changes)
    with pytest.raises(ModelFileError) as caught:
        load_trained(models_dir, data)
    message = str(caught.value)
    assert message.startswith(f"{models_dir / 'model.json'}: field '{field}' is ")
    assert "the prepared data's meta.json says" in message and "\n" not in message


def test_a_card_of_the_prepared_data_loads(models_dir, tmp_path):
    model, card = load_trained(models_dir, meta_like(tmp_path))
    assert card == CARD


def test_logits_that_are_not_numbers_stop_the_figures():
    from pipeline.models.inference import NonFiniteLogitsError, require_finite

    good = torch.tensor([[0.1, 0.9], [0.3, 0.7]])
    assert require_finite(good, "evaluate") is good
    bad = torch.tensor([[0.1, float("nan")], [0.3, 0.7], [float("inf"), 0.0]])
    with pytest.raises(NonFiniteLogitsError, match=r"^evaluate: .* for 2 of 3 images;"):
        require_finite(bad, "evaluate")
