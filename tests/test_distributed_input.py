"""Hostile input to distributed training: the rendezvous endpoint in params.yaml, and stray
RANK / WORLD_SIZE / LOCAL_RANK variables in the environment. Each gives a one-line error that
names the bad value, before torch sees it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from conftest import ROOT
from pipeline.core.config import ParamsError, parse_params
from pipeline.core.errors import PipelineError
from pipeline.train import distributed, launch


def endpoint_params(endpoint: str):
    return parse_params(
        {"train": {"distributed": {"nproc_per_node": 2, "rdzv_endpoint": endpoint}}}
    )


# ---- train.distributed.rdzv_endpoint ----------------------------------------------------------

HOSTILE_ENDPOINTS = [
    "a b:29400",  # torch: ValueError with a 38-line traceback
    "host\nx:29400",
    "$(touch /tmp/pwn):29400",
    "-x:29400",  # torch: ~85 s of socket errors
    "x-:29400",
    "h:1:2",  # torch reads host "h:1"
    "a..b:29400",
    "ｈost:29400",  # full-width letter
    "999.1.1.1:29400",
    "[::1:29400",
    "[fe80::1%eth0]:29400",
    " localhost:29400",
    "a" * 64 + ":29400",
]


@pytest.mark.parametrize("endpoint", HOSTILE_ENDPOINTS)
def test_hostile_endpoint_is_one_line_params_error(endpoint):
    with pytest.raises(ParamsError) as caught:
        endpoint_params(endpoint)
    message = str(caught.value)
    assert "\n" not in message
    assert "train.distributed.rdzv_endpoint" in message
    assert repr(endpoint)[:20] in message
    assert "host must be" in message


@pytest.mark.parametrize("endpoint", ["h:", "h:0", "h:65536", "h:２９４００", "h:+1", ":29400"])
def test_endpoint_port_checks_stay(endpoint):
    with pytest.raises(ParamsError, match="must be host:port"):
        endpoint_params(endpoint)


@pytest.mark.parametrize(
    "endpoint",
    [
        "localhost:29400",
        "10.0.0.1:29400",
        "[::1]:29411",
        "::1:29400",  # torch splits at the last colon, so this works with it too
        "[2001:db8::7]:29400",
        "node-1.cluster:29400",
        "gpu_node_3:29400",  # torch and /etc/hosts allow underscores
        "Node0.Example.COM:1",
        "a" * 63 + ".b:65535",
    ],
)
def test_legitimate_endpoints_pass(endpoint):
    assert endpoint_params(endpoint).train.distributed.rdzv_endpoint == endpoint


def test_launch_turns_torch_endpoint_error_into_one_line(tmp_path):
    """Belt and braces: an endpoint that bypassed validation still fails in one line."""
    params = parse_params({"train": {"device": "cpu", "distributed": {"nproc_per_node": 2}}})
    dist = params.train.distributed.model_copy(update={"rdzv_endpoint": "a b:29400"})
    params = params.model_copy(
        update={"train": params.train.model_copy(update={"distributed": dist})}
    )
    with pytest.raises(PipelineError) as caught:
        launch.launch(params, tmp_path, 2)
    message = str(caught.value)
    assert "\n" not in message
    assert "rdzv_endpoint 'a b:29400'" in message
    assert "host" in message
    assert list(tmp_path.iterdir()) == []


# ---- RANK / WORLD_SIZE / LOCAL_RANK -------------------------------------------------------------

GOOD = {
    "RANK": "1",
    "WORLD_SIZE": "2",
    "LOCAL_RANK": "1",
    "LOCAL_WORLD_SIZE": "2",
    "MASTER_ADDR": "localhost",
    "MASTER_PORT": "29500",
}


def test_worker_identity_reads_a_launchers_environment():
    assert distributed.worker_identity(GOOD) == distributed.Group(1, 2, 1)
    without_local_size = {key: value for key, value in GOOD.items() if key != "LOCAL_WORLD_SIZE"}
    assert distributed.worker_identity(without_local_size) == distributed.Group(1, 2, 1)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("RANK", "abc"),
        ("RANK", "-1"),
        ("RANK", "2"),  # not below WORLD_SIZE
        ("RANK", " 1"),
        ("RANK", "１"),  # full-width digit: int() reads it
        ("RANK", ""),
        ("WORLD_SIZE", "0"),
        ("WORLD_SIZE", "x"),
        ("WORLD_SIZE", "9" * 40),
        ("LOCAL_RANK", "-1"),
        ("LOCAL_RANK", "1_0"),
        ("LOCAL_WORLD_SIZE", "0"),
        ("MASTER_PORT", "0"),
        ("MASTER_PORT", "65536"),
        ("MASTER_PORT", "http"),
    ],
)
def test_bad_variable_is_named_in_one_line(name, value):
    with pytest.raises(PipelineError) as caught:
        distributed.worker_identity({**GOOD, name: value})
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"{name}='{value[:40]}")
    assert "unset RANK, WORLD_SIZE and LOCAL_RANK" in message


@pytest.mark.parametrize("missing", ["MASTER_ADDR", "MASTER_PORT"])
def test_stray_variables_without_a_rendezvous_address(missing):
    env = {key: value for key, value in GOOD.items() if key != missing}
    with pytest.raises(PipelineError, match=f"{missing}.*unset RANK, WORLD_SIZE and LOCAL_RANK"):
        distributed.worker_identity(env)


def test_join_group_checks_before_torch(monkeypatch):
    """join_group reads os.environ by default; a bad RANK stops it before any rendezvous."""
    for key in ("MASTER_ADDR", "MASTER_PORT", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("LOCAL_RANK", "0")
    with pytest.raises(PipelineError, match="MASTER_ADDR"):
        distributed.join_group("cpu")
    monkeypatch.setenv("RANK", "abc")
    with pytest.raises(PipelineError, match="RANK='abc'"):
        distributed.join_group("cpu")
    assert not distributed.torch.distributed.is_initialized()


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"RANK": "abc", "WORLD_SIZE": "1", "LOCAL_RANK": "0"}, "RANK='abc'"),
        ({"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0"}, "MASTER_ADDR"),
    ],
)
def test_train_stage_with_stray_variables_fails_in_one_line(tmp_path, env, expected):
    """The reviewer's reproduction: ``python stages/train.py`` with stray launcher variables."""
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    clean = {key: value for key, value in os.environ.items() if not key.startswith("MASTER_")}
    done = subprocess.run(
        [sys.executable, str(ROOT / "stages" / "train.py")],
        cwd=tmp_path,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("train: error: ") and expected in lines[0]
    assert "unset RANK, WORLD_SIZE and LOCAL_RANK" in lines[0]
    assert sorted(path.name for path in tmp_path.iterdir()) == ["params.yaml"]
