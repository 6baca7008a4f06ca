"""model.pretrained: start weights from a file or torchvision's cache, fitted to the model, and
hostile files refused in one line."""

import os
import pickle
import urllib.error
import warnings

import pytest
import torch

from conftest import fails_within
from pipeline.core.config import ParamsError, parse_params
from pipeline.core.errors import PipelineError
from pipeline.core.io import save_tensors, sha256_file
from pipeline.models import ModelSpec, build_model
from pipeline.models.pretrained import resolve_pretrained, torchvision_cache_file
from pipeline.tools.params_check import check_pretrained

GREY = ModelSpec("small_cnn", 1, 8, 10, width=8)
RGB5 = ModelSpec("small_cnn", 3, 8, 5, width=8)


@pytest.fixture
def weights_file(tmp_path):
    torch.manual_seed(1)
    path = tmp_path / "grey.safetensors"
    save_tensors(path, build_model(GREY).state_dict())
    return path


def one_line(error):
    return "\n" not in str(error.value)


def test_file_weights_fill_the_backbone_replace_the_head_and_adapt_the_first_conv(weights_file):
    torch.manual_seed(1)
    source = build_model(GREY).state_dict()  # the file's tensors (same seed)
    start = resolve_pretrained(RGB5, str(weights_file))
    assert start.info.sha256 == sha256_file(weights_file)
    assert start.info.replaced == ["head.1.bias", "head.1.weight"]
    assert start.info.adapted == ["features.0.weight"]
    torch.manual_seed(7)
    model = build_model(RGB5)
    fresh_head = model.head[1].weight.detach().clone()
    start.load_into(model)
    state = model.state_dict()
    assert torch.equal(state["features.3.weight"], source["features.3.weight"])
    assert torch.equal(state["head.1.weight"], fresh_head)  # 5 classes: never the file's 10
    grey = torch.rand(2, 1, 8, 8)
    # The adapted conv gives an RGB copy of a grey image what the original gave the grey one.
    original = torch.nn.functional.conv2d(grey, source["features.0.weight"], padding=1)
    adapted = torch.nn.functional.conv2d(
        grey.expand(-1, 3, -1, -1), state["features.0.weight"], padding=1
    )
    torch.testing.assert_close(adapted, original)


def test_rgb_weights_are_summed_for_grey_images_and_torch_state_dicts_load(tmp_path):
    torch.manual_seed(2)
    rgb = build_model(ModelSpec("small_cnn", 3, 8, 10, width=8)).state_dict()
    path = tmp_path / "rgb.pt"
    torch.save({"state_dict": rgb}, path)
    start = resolve_pretrained(GREY, str(path))
    torch.testing.assert_close(
        start.tensors["features.0.weight"], rgb["features.0.weight"].sum(1, keepdim=True)
    )


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p, w: p / "absent.safetensors", "cannot read .*No such file"),
        (
            lambda p, w: os.symlink(w, p / "link.safetensors") or p / "link.safetensors",
            "symbolic link",
        ),
        (lambda p, w: truncated(p, w), "truncated"),
        (lambda p, w: other_width(p), "'features.0.weight' is \\[4, 1, 3, 3\\]"),
        (lambda p, w: with_nan(p), "'features.4.weight' holds NaN"),
        (lambda p, w: pickled(p), "not a safetensors file or a weights_only"),
        (lambda p, w: extra_key(p), "lacks: 'extra'"),
        (lambda p, w: p, "not a regular file"),
        (lambda p, w: os.mkfifo(p / "pipe.safetensors") or p / "pipe.safetensors", "not a regular"),
        (lambda p, w: one_tensor(p, torch.zeros(2).to(torch.float8_e4m3fn)), "float8_e4m3fn; "),
        (lambda p, w: one_tensor(p, torch.zeros(2, dtype=torch.complex64)), "complex64; "),
        (lambda p, w: one_tensor(p, torch.empty(2, device="meta")), "not a dense .* on meta"),
        (lambda p, w: one_tensor(p, torch.eye(2).to_sparse()), "not a dense .*sparse_coo"),
        (lambda p, w: one_tensor(p, nested()), "not a dense tensor"),
        (lambda p, w: huge(p), "9.0 GiB, above the 8 GiB"),
    ],
    ids=[
        "missing",
        "symlink",
        "truncated",
        "shapes",
        "nan",
        "pickle",
        "extra",
        "folder",
        "fifo",
        "fp8",
        "complex",
        "meta",
        "sparse",
        "nested",
        "huge",
    ],  # fmt: skip
)
def test_hostile_weights_are_refused_in_one_line(tmp_path, weights_file, make, message):
    path = make(tmp_path, weights_file)
    with fails_within(10), pytest.raises(PipelineError, match=message) as error:
        resolve_pretrained(GREY, str(path))
    assert one_line(error) and "model.pretrained" in str(error.value)


def one_tensor(folder, tensor):
    """A weights_only torch file whose first tensor is ``tensor`` (fp8, meta, sparse...)."""
    path = folder / "odd.pt"
    torch.save({"features.0.weight": tensor}, path)
    return path


def nested():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # nested tensors are a prototype API
        return torch.nested.nested_tensor([torch.zeros(2), torch.zeros(3)])


def huge(folder):
    path = folder / "huge.pt"
    with open(path, "wb") as handle:
        handle.truncate(9 * 1024**3)  # sparse: no disk used, and refused before any read
    return path


def truncated(folder, source):
    path = folder / "cut.safetensors"
    path.write_bytes(source.read_bytes()[:-100])
    return path


def other_width(folder):
    path = folder / "wide.safetensors"
    save_tensors(path, build_model(ModelSpec("small_cnn", 1, 8, 10, width=4)).state_dict())
    return path


def with_nan(folder):
    state = build_model(GREY).state_dict()
    state["features.4.weight"][0] = float("nan")
    path = folder / "nan.safetensors"
    save_tensors(path, state)
    return path


class Payload:
    def __reduce__(self):
        return (print, ("this must never run",))


def pickled(folder):
    path = folder / "evil.pt"
    path.write_bytes(pickle.dumps({"features.0.weight": Payload()}))
    return path


def extra_key(folder):
    state = build_model(GREY).state_dict()
    state["extra"] = torch.zeros(1)
    path = folder / "extra.safetensors"
    save_tensors(path, state)
    return path


def test_torchvision_weights_come_from_the_torch_cache_with_their_normalisation(
    tmp_path, monkeypatch
):
    from torchvision import models

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    weights = models.ResNet18_Weights.DEFAULT
    cached = torchvision_cache_file(weights)
    assert cached.parent == tmp_path / "hub" / "checkpoints"
    spec = ModelSpec("torchvision:resnet18", 1, 32, 10)

    def offline(*args, **kwargs):  # this machine has no network; say so like urllib would
        raise urllib.error.URLError("Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(PipelineError, match="not in the torch cache") as error:
        resolve_pretrained(spec, "torchvision")
    assert one_line(error) and str(cached.parent) in str(error.value)

    cached.parent.mkdir(parents=True, exist_ok=True)
    torch.save(models.resnet18().state_dict(), cached)  # stands in for the downloaded file
    start = resolve_pretrained(spec, "torchvision")
    assert start.info.input_size == 224 and start.info.weights == str(weights)
    assert start.info.mean == [pytest.approx(sum(weights.transforms().mean) / 3)]
    assert start.info.adapted == ["conv1.weight"] and start.info.replaced == [
        "fc.bias",
        "fc.weight",
    ]


def test_params_refuse_torchvision_weights_for_other_archs_and_missing_files(tmp_path):
    with pytest.raises(ParamsError, match="torchvision weights need a torchvision:<name> arch"):
        parse_params({"model": {"arch": "small_cnn", "pretrained": "torchvision"}})
    params = parse_params({"model": {"pretrained": str(tmp_path / "absent.safetensors")}})
    with pytest.raises(ParamsError, match="absent.safetensors'?: no such file"):
        check_pretrained(params)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: os.symlink(p / "absent", p / "link") or p / "link", "is a symbolic link"),
        (lambda p: p, "is not a regular file"),
        (lambda p: os.mkfifo(p / "pipe") or p / "pipe", "is not a regular file"),
    ],
    ids=["symlink", "folder", "fifo"],
)
def test_params_refuse_weights_the_train_stage_would_not_read(tmp_path, make, message):
    """Refused by check_params, before DVC removes any stage's outputs."""
    params = parse_params({"model": {"pretrained": str(make(tmp_path))}})
    with pytest.raises(ParamsError, match=message) as error:
        check_pretrained(params)
    assert one_line(error)


def test_weights_without_batchnorm_batch_counters_load(tmp_path):
    """torchvision's classic ResNet files have no BatchNorm ``num_batches_tracked``."""
    torch.manual_seed(1)
    source = build_model(GREY).state_dict()
    counters = [name for name in source if name.endswith("num_batches_tracked")]
    assert counters  # small_cnn has BatchNorm layers
    path = tmp_path / "classic.safetensors"
    save_tensors(path, {k: v for k, v in source.items() if k not in counters})
    start = resolve_pretrained(GREY, str(path))
    model = build_model(GREY)
    start.load_into(model)
    state = model.state_dict()
    assert all(state[name] == 0 for name in counters)
    assert torch.equal(state["features.3.weight"], source["features.3.weight"])
