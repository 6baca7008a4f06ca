"""Where stages meet: meta.json and model.json are typed records read and written in one place
each, byte for byte as before (dvc.lock hashes them), and every stage script writes its own
metrics record."""

import ast
import json
from pathlib import Path

import numpy as np
import pytest

from pipeline.core.config import ModelParams
from pipeline.core.io import write_json
from pipeline.models import ModelSpec
from pipeline.models.build import START_WEIGHT_FIELDS
from pipeline.models.files import ModelCard, ModelFileError
from pipeline.prepared.stats import MIN_STD, channel_stats
from pipeline.prepared.storage import PreparedDataError, PreparedMeta

ROOT = Path(__file__).resolve().parents[1]

# The files as the dict-based writers produced them (keys, order, types): the typed records must
# read them and write them back byte for byte.
META_FILE = {
    "source": "digits",
    "class_names": ["0", "1", "2"],
    "num_classes": 3,
    "input_shape": [1, 8, 8],
    "mean": [0.30587037080332935],
    "std": [0.37634972389183974],
    "counts": {"train": 12, "val": 3, "test": 3},
    "input_hashes": {"sklearn:digits": "0b7e9c32"},
    "quarantined": [{"path": "cat/empty.png", "reason": "empty file"}],
    "shards": {
        split: [{"file": f"{split}-00000.safetensors", "count": count, "sha256": "5e1f0a"}]
        for split, count in (("train", 12), ("val", 3), ("test", 3))
    },
}
CARD_FILE = {
    "arch": "small_cnn",
    "model_params": {"width": 32, "dropout": 0.1},
    "class_names": ["0", "1", "2"],
    "num_classes": 3,
    "input_shape": [1, 8, 8],
    "input_dtype": "uint8",
    "input_layout": "NCHW",
    "normalisation": {
        "mean": [0.30587037080332935],
        "std": [0.37634972389183974],
        "scale": "x / 255",
    },
}
RECORDS = [(PreparedMeta, META_FILE, PreparedDataError), (ModelCard, CARD_FILE, ModelFileError)]


@pytest.mark.parametrize(("kind", "content", "_error"), RECORDS)
def test_files_round_trip_byte_for_byte(tmp_path, kind, content, _error):
    original, again = tmp_path / "original.json", tmp_path / "again.json"
    write_json(original, content)
    kind.from_json(original).to_json(again)
    assert again.read_bytes() == original.read_bytes()


def test_the_card_is_built_from_the_model_params_and_the_prepared_meta(tmp_path):
    meta = PreparedMeta.from_json(write_and_return(tmp_path / "meta.json", META_FILE))
    card = ModelCard.for_training(ModelParams(), meta)
    card.to_json(tmp_path / "model.json")
    assert json.loads((tmp_path / "model.json").read_text()) == CARD_FILE
    assert card.model_spec() == ModelSpec(
        arch="small_cnn", in_channels=1, image_size=8, num_classes=3, width=32, dropout=0.1
    )


def write_and_return(path: Path, content) -> Path:
    write_json(path, content)
    return path


BAD_FIELDS = [
    ({"num_classes": "3"}, r"field 'num_classes': Input should be a valid integer, got '3'"),
    ({"num_classes": True}, r"field 'num_classes': Input should be a valid integer, got True"),
    ({"input_shape": [1, 8]}, r"field 'input_shape\[2\]' is missing"),
    ({"class_names": [0, 1, 2]}, r"field 'class_names\[0\]': Input should be a valid string"),
]


@pytest.mark.parametrize(("kind", "content", "error"), RECORDS)
@pytest.mark.parametrize(("change", "message"), BAD_FIELDS)
def test_a_bad_field_is_one_line_naming_the_file_and_the_field(
    tmp_path, kind, content, error, change, message
):
    path = write_and_return(tmp_path / "file.json", {**content, **change})
    with pytest.raises(error, match=rf"^{path}: {message}") as caught:
        kind.from_json(path)
    assert "\n" not in str(caught.value)


BAD_CLASSES = {
    # a 12-output model for 3 names trained silently; 10**9 outputs was an allocation traceback
    "count-above": ({"num_classes": 12}, "field 'num_classes': 12 for 3 class_names"),
    "count-huge": ({"num_classes": 10**9}, "field 'num_classes': 1000000000 for 3 class_names"),
    "count-below": ({"num_classes": 2}, "field 'num_classes': 2 for 3 class_names"),
    "one-class": (
        {"num_classes": 1, "class_names": ["0"]},
        "field 'num_classes': 1; a classifier needs at least 2 classes",
    ),
    # the same name twice merged classes in evaluate's per-class table and confusion labels
    "name-twice": ({"class_names": ["0", "1", "0"]}, "field 'class_names[2]': '0' is named twice"),
    # DVC writes class names into the plots page's <script> unescaped: no plot would be drawn
    "page-breaking": (
        {"class_names": ["0", "1", "<!--<script>"]},
        "field 'class_names[2]': '<!--<script>' holds '<!--'",
    ),
}


@pytest.mark.parametrize(("kind", "content", "error"), RECORDS)
@pytest.mark.parametrize(("change", "message"), BAD_CLASSES.values(), ids=BAD_CLASSES)
def test_classes_that_cannot_label_the_outputs_are_one_line(
    tmp_path, kind, content, error, change, message
):
    path = write_and_return(tmp_path / "file.json", {**content, **change})
    with pytest.raises(error) as caught:
        kind.from_json(path)
    assert str(caught.value) == f"{path}: {message}"


def test_nested_and_missing_fields_are_named(tmp_path):
    card = {**CARD_FILE, "normalisation": {"mean": [None], "std": [0.4]}}
    path = write_and_return(tmp_path / "model.json", card)
    with pytest.raises(ModelFileError, match=r"field 'normalisation.mean\[0\]': .*got None"):
        ModelCard.from_json(path)
    meta = {key: value for key, value in META_FILE.items() if key != "counts"}
    path = write_and_return(tmp_path / "meta.json", meta)
    with pytest.raises(PreparedDataError, match=r"meta.json: field 'counts' is missing$"):
        PreparedMeta.from_json(path)
    with pytest.raises(PreparedDataError, match=r"absent.json: cannot read \(No such file"):
        PreparedMeta.from_json(tmp_path / "absent.json")


def with_stats(path: Path, content: dict, mean: list, std: list) -> str:
    """Write ``content`` with these mean and std (NaN and Infinity as JSON extensions write
    them) to ``path``; returns the fields' prefix ('' or 'normalisation.')."""
    if "normalisation" in content:
        norm = {**content["normalisation"], "mean": mean, "std": std}
        content, prefix = {**content, "normalisation": norm}, "normalisation."
    else:
        content, prefix = {**content, "mean": mean, "std": std}, ""
    path.write_text(json.dumps(content))  # not write_json: that turns NaN into null
    return prefix


STD_RANGE, MEAN_RANGE = "must be from 1e-06 to 1, got", "must be from 0 to 1, got"
BAD_STATS = {
    "std-0": ([0.3], [0.0], rf"std\[0\]': {STD_RANGE} 0.0"),  # a ZeroDivisionError later
    "std-nan": ([0.3], [float("nan")], rf"std\[0\]': {STD_RANGE} nan"),
    "std-inf": ([0.3], [float("inf")], rf"std\[0\]': {STD_RANGE} inf"),
    "std-negative": ([0.3], [-0.25], rf"std\[0\]': {STD_RANGE} -0.25"),
    "std-tiny": ([0.3], [1e-300], rf"std\[0\]': {STD_RANGE} 1e-300"),  # 0 in float32
    "mean-nan": ([float("nan")], [0.4], rf"mean\[0\]': {MEAN_RANGE} nan"),
    "mean-huge": ([-1e300], [0.4], rf"mean\[0\]': {MEAN_RANGE} -1e\+300"),
    "std-extra": ([0.3], [0.4, 0.4], r"std': 2 values for a 1-channel input_shape"),
    "mean-empty": ([], [0.4], r"mean': 0 values for a 1-channel input_shape"),
}


@pytest.mark.parametrize(("kind", "content", "error"), RECORDS)
@pytest.mark.parametrize(("mean", "std", "message"), BAD_STATS.values(), ids=BAD_STATS)
def test_stats_that_cannot_scale_pixels_are_one_line_naming_file_field_and_value(
    tmp_path, kind, content, error, mean, std, message
):
    path = tmp_path / "file.json"
    prefix = with_stats(path, content, mean, std)
    with pytest.raises(error, match=rf"^{path}: field '{prefix}{message}$") as caught:
        kind.from_json(path)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(("kind", "content", "error"), RECORDS)
def test_a_constant_channels_std_floor_reads_back_where_zero_is_refused(
    tmp_path, kind, content, error
):
    mean, std = channel_stats(np.full((4, 1, 8, 8), 7, dtype=np.uint8))  # one colour: std 0
    assert std == [MIN_STD]
    with_stats(tmp_path / "floor.json", content, mean, std)
    assert kind.from_json(tmp_path / "floor.json").input_shape == (1, 8, 8)
    with_stats(tmp_path / "zero.json", content, mean, [0.0])
    with pytest.raises(error, match=rf"std\[0\]': {STD_RANGE} 0.0$"):
        kind.from_json(tmp_path / "zero.json")


def test_from_params_carries_every_model_param_into_the_spec():
    """A field added to ModelParams but not passed on by from_params fails here."""
    defaults = ModelParams()
    changed = ModelParams(arch="resnet_cifar", width=defaults.width + 8, dropout=0.25)
    spec = ModelSpec.from_params(changed, in_channels=3, image_size=16, num_classes=7)
    for name in ModelParams.model_fields.keys() - START_WEIGHT_FIELDS:
        assert getattr(spec, name) == getattr(changed, name) != getattr(defaults, name), name
    assert (spec.in_channels, spec.image_size, spec.num_classes) == (3, 16, 7)


def calls(tree: ast.AST, name: str) -> int:
    return sum(
        isinstance(node, ast.Call)
        and (getattr(node.func, "id", None) == name or getattr(node.func, "attr", None) == name)
        for node in ast.walk(tree)
    )


def test_every_stage_script_writes_its_own_metrics_record():
    """One way for all stages: the recipe in src/pipeline returns its record, the stage script
    writes it with records.write_record."""
    writers = [
        path.relative_to(ROOT).as_posix()
        for path in sorted((ROOT / "src/pipeline").rglob("*.py"))
        if path.name != "records.py" and calls(ast.parse(path.read_text()), "write_record")
    ]
    assert writers == [], "write metrics records from stages/*.py only"
    for stage in ("prepare", "train", "evaluate", "export", "benchmark"):
        tree = ast.parse((ROOT / "stages" / f"{stage}.py").read_text())
        assert calls(tree, "write_record") == 1, stage
