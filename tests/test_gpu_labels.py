"""What GPU rows and policies say about what really ran, checked on the CPU.

Only what this machine lacks is faked (CUDA's answers, NVML); the logic around it is real.
GPU-marked twins of these checks live in tests/test_gpu.py.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
import pytest
import torch
from test_energy import FakeGpu, FakeNvml

from conftest import ROOT
from pipeline.bench.backends import OrtBackend, OrtSetup, ort_precision, placement_status
from pipeline.bench.memory import NvmlMemory, memory_probe
from pipeline.bench.providers import ModelFile, SessionTarget, tensorrt_options
from pipeline.core import paths
from pipeline.core.catalog import PROVIDERS
from pipeline.core.config import TrainParams
from pipeline.export.onnx_export import INPUT_NAME
from pipeline.export.session import make_session, node_placement
from pipeline.hardware.memory import HostMemory
from pipeline.hardware.tf32 import fp32_math, set_tf32, tf32_ops
from pipeline.models import ModelSpec, build_model
from pipeline.train import policy as policy_module

TRT, CUDA, CPU = "TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"


@pytest.fixture(autouse=True)
def _restore_tf32():
    saved = (torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32)
    benchmark = torch.backends.cudnn.benchmark
    yield
    torch.set_float32_matmul_precision(saved[0])
    torch.backends.cudnn.allow_tf32 = saved[1]
    torch.backends.cudnn.benchmark = benchmark


# --- 1, 2: TensorRT engine cache and precision ----------------------------------------------------


class Hashed(ModelFile):
    """A model file whose hash is given, so no file is needed to build options."""

    def __init__(self, sha256: str) -> None:
        super().__init__(Path(sha256))
        self.__dict__["sha256"] = sha256


def trt(sha256: str, variant: str, shape, profile, device_index: int = 0) -> dict:
    return tensorrt_options(SessionTarget(Hashed(sha256), variant, device_index, shape, profile))


def test_tensorrt_engines_are_cached_per_onnx_file_and_batch_inside_the_project(
    tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    fp32 = trt("a" * 64, "fp32", (3, 32, 32), (8, 8, 8))
    other_weights = trt("b" * 64, "fp32", (3, 32, 32), (8, 8, 8))
    batch_one = trt("a" * 64, "fp32", (3, 32, 32), (1, 1, 1))
    cache = tmp_path / paths.TENSORRT_CACHE
    assert fp32["trt_engine_cache_path"] == str(cache / ("a" * 64) / "fp32-b8-8-8")
    folders = {o["trt_engine_cache_path"] for o in (fp32, other_weights, batch_one)}
    assert len(folders) == 3 and all(folder.startswith(str(cache)) for folder in folders)
    assert (fp32["trt_profile_min_shapes"], fp32["trt_profile_max_shapes"]) == (
        f"{INPUT_NAME}:8x3x32x32",
        f"{INPUT_NAME}:8x3x32x32",
    )
    assert batch_one["trt_profile_opt_shapes"] == f"{INPUT_NAME}:1x3x32x32"


def test_the_cache_folder_is_git_ignored():
    probe = (paths.TENSORRT_CACHE / "0" / "engine").as_posix()
    done = subprocess.run(["git", "check-ignore", "-q", probe], cwd=ROOT, check=False)
    assert done.returncode == 0, f"{probe} is not ignored by .gitignore"


def test_only_the_fp16_variant_builds_fp16_engines(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    enabled = {
        variant: trt("c" * 64, variant, (1, 8, 8), (1, 4, 4))["trt_fp16_enable"]
        for variant in ("fp32", "fp16", "int8")
    }
    assert enabled == {"fp32": False, "fp16": True, "int8": False}


def test_rows_name_the_precision_they_ran_and_their_peak():
    tensorrt, cuda, cpu = PROVIDERS["tensorrt"], PROVIDERS["cuda"], PROVIDERS["cpu"]
    assert ort_precision("fp32", tensorrt, (8, 0)) == "tf32"  # TensorRT's TF32 tactics, Ampere+
    assert ort_precision("fp32", tensorrt, (7, 5)) == "fp32"
    assert ort_precision("fp32", cuda, (9, 0)) == "fp32"  # asked for with use_tf32=0
    assert ort_precision("fp16", tensorrt, (9, 0)) == "fp16"
    assert ort_precision("fp32", cpu, None) == "fp32"


class FakeOrt:
    """onnxruntime's answers on a machine with a GPU: the providers a session reports, node
    placement when ``placement`` is on; every session's requested chain is recorded."""

    def __init__(self, runs_on: list[str], placement: bool = True):
        self.runs_on, self.placement, self.chains, self.bound = runs_on, placement, [], []

    def session(self, path, sess_options=None, providers=None):
        self.chains.append(providers)
        tensor = SimpleNamespace(name=INPUT_NAME, type="tensor(float)")
        session = SimpleNamespace(
            get_providers=lambda: list(self.runs_on),
            get_inputs=lambda: [tensor],
            get_outputs=lambda: [tensor],
            io_binding=lambda: SimpleNamespace(
                bind_ortvalue_input=lambda *a: None,
                bind_output=lambda name, device, index: self.bound.append((device, index)),
            ),
        )
        if self.placement:
            nodes = [SimpleNamespace(op_type="Mul"), SimpleNamespace(op_type="Relu")]
            subgraph = SimpleNamespace(ep_name=self.runs_on[0], get_nodes=lambda: nodes)
            session.get_provider_graph_assignment_info = lambda: [subgraph]
        return session

    def install(self, monkeypatch):
        import onnxruntime as ort

        monkeypatch.setattr(ort, "InferenceSession", self.session)
        monkeypatch.setattr(
            ort.OrtValue, "ortvalue_from_numpy",
            lambda array, device, index: self.bound.append((device, index)),
        )  # fmt: skip
        return self


def test_a_backend_is_held_against_the_peak_of_what_really_runs(tmp_path, monkeypatch):
    """Faked: only the session's answer (TensorRT started, or nothing but the CPU did)."""
    monkeypatch.chdir(tmp_path)
    path = tiny_onnx(tmp_path / "m.onnx")
    fake = FakeOrt([TRT, CUDA, CPU]).install(monkeypatch)
    setup = OrtSetup(1, (0.0,), (1.0,), (1, 2, 2), capability=(8, 0))

    def facts(variant, provider):
        backend = OrtBackend(path, variant, provider, setup)
        return backend.facts.on_gpu, backend.facts.precision, backend.facts.peak_key

    assert facts("fp32", "tensorrt") == (True, "tf32", "cuda_tf32")
    assert facts("int8", "tensorrt") == (True, "int8", "cuda_fp16")  # no int8 peak
    fake.runs_on[:] = [CPU]  # the GPU provider did not start: a CPU row
    assert facts("fp16", "cuda") == (False, "fp16", "cpu")
    assert PROVIDERS["cuda"].memory_kind == "ort_cuda"  # though NVML still counts its memory


def test_options_reach_every_provider_of_the_chain_and_iobinding_uses_the_sessions_gpu(
    tmp_path, monkeypatch
):
    """benchmark.device cuda:1, TensorRT asked for: its CUDA fallback runs on GPU 1 in IEEE fp32
    too, and the batch is bound on GPU 1 (before, CUDA ran with defaults: TF32 on, GPU 0)."""
    monkeypatch.chdir(tmp_path)
    path = tiny_onnx(tmp_path / "m.onnx")
    fake = FakeOrt([CUDA, CPU]).install(monkeypatch)  # TensorRT did not start; CUDA did
    setup = OrtSetup(1, (0.0,), (1.0,), (1, 2, 2), device_index=1, capability=(9, 0))
    backend = OrtBackend(path, "fp32", "tensorrt", setup)
    (trt_entry, trt_options), (cuda_entry, cuda_options), cpu_entry = fake.chains[0]
    assert (trt_entry, cuda_entry, cpu_entry) == (TRT, CUDA, CPU)
    assert trt_options["device_id"] == 1
    assert cuda_options == {"device_id": 1, "use_tf32": 0}
    assert backend.facts.status == "fallback" and backend.facts.precision == "fp32"
    backend.bind(np.zeros((4, 1, 2, 2), np.uint8))
    assert fake.bound and set(fake.bound) == {("cuda", 1)}


def test_a_session_whose_placement_is_unknown_says_so_and_is_not_ok(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tiny_onnx(tmp_path / "m.onnx")
    FakeOrt([CUDA, CPU], placement=False).install(monkeypatch)
    backend = OrtBackend(path, "fp32", "cuda", OrtSetup(1, (0.0,), (1.0,), (1, 2, 2)))
    assert backend.facts.status == "unknown"
    assert backend.facts.reason.startswith("placement unknown")
    status, reason, _ = placement_status(CUDA, [CUDA, CPU], None, [])
    assert status == "unknown" and CPU in reason
    assert placement_status(CPU, [CPU], None, [])[0] == "ok"  # nothing else could run a node


def test_a_backend_keys_its_engines_by_its_own_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    paths_ = [tiny_onnx(tmp_path / f"m{i}.onnx", scale=float(i + 1)) for i in range(2)]
    fake = FakeOrt([TRT, CUDA, CPU]).install(monkeypatch)
    setup = OrtSetup(1, (0.0,), (1.0,), (1, 2, 2))
    for path in paths_:
        OrtBackend(path, "fp32", "tensorrt", setup)
    folders = [chain[0][1]["trt_engine_cache_path"] for chain in fake.chains]
    assert folders[0] != folders[1]  # same graph and node names, other weights


# --- 3: TF32 --------------------------------------------------------------------------------------


def test_tf32_counts_only_on_cuda_devices_of_ampere_and_newer():
    set_tf32(True)
    assert tf32_ops("cuda:0", (8, 0)) == ["matmul", "conv"]
    assert tf32_ops("cuda:0", (7, 0)) == [] and tf32_ops("cpu") == []
    set_tf32(False)
    assert tf32_ops("cuda:0", (9, 0)) == []
    with fp32_math(tf32=True):
        assert tf32_ops("cuda:0", (9, 0)) == ["matmul", "conv"]
    assert tf32_ops("cuda:0", (9, 0)) == []  # restored


def test_cudnn_convolutions_default_to_tf32():
    """The reason fp32 on a GPU is not fp32 unless asked: cuDNN's TF32 switch starts on."""
    code = "import torch; print(torch.backends.cudnn.conv.fp32_precision)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "tf32"


@pytest.fixture
def fake_cuda(monkeypatch):
    """CUDA's answers for one GPU of a given capability; everything else is the real policy."""

    def install(capability):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Fake GPU")

    return install


@pytest.mark.parametrize(
    ("capability", "requested", "precision", "tf32"),
    [
        ((8, 0), "fp32", "tf32", "matmul+conv"),
        ((9, 0), "bf16", "bf16", "matmul+conv"),
        ((7, 5), "fp32", "fp32", "off"),
    ],
)
def test_training_policy_names_tf32_when_it_is_on(
    fake_cuda, capability, requested, precision, tf32
):
    fake_cuda(capability)
    params = TrainParams(device="cuda", precision=requested)
    _, _, policy = policy_module.resolve_policy(params)
    assert (policy.precision, policy.tf32) == (precision, tf32)


def test_training_peak_is_measured_in_the_arithmetic_of_the_work(fake_cuda, monkeypatch):
    from pipeline.hardware import peak
    from pipeline.hardware.peak import Peak, compute_report

    fake_cuda((8, 6))
    asked = []
    monkeypatch.setattr(
        peak, "cuda_peak", lambda device, math: asked.append(math) or Peak(1e3, math, {})
    )
    device = torch.device("cuda:0")
    set_tf32(True)
    compute_report(10**6, 100.0, device, None)
    compute_report(10**6, 100.0, device, torch.bfloat16)
    set_tf32(False)
    compute_report(10**6, 100.0, device, None)
    assert asked == ["tf32", "bf16", "fp32"]


# --- 4: partial placement -------------------------------------------------------------------------


def test_placement_decides_ok_partial_and_fallback():
    ok = placement_status(CUDA, [CUDA, CPU], {CUDA: ["Conv", "Relu"]}, [])
    assert ok == ("ok", "", [CUDA])
    status, reason, used = placement_status(
        CUDA, [CUDA, CPU], {CUDA: ["Conv"] * 5, CPU: ["Shape", "Gather"]}, []
    )
    assert status == "partial" and used == [CUDA, CPU]
    assert reason == f"2 of 7 nodes run on {CPU} (Gather, Shape)"
    status, reason, used = placement_status(TRT, [TRT, CUDA, CPU], {CUDA: ["Conv"]}, [])
    assert status == "fallback" and "runs no node" in reason and used == [CUDA]
    status, reason, _ = placement_status(CUDA, [CPU], {CPU: ["Conv"]}, ["with error: no GPU"])
    assert status == "fallback" and "(no GPU)" in reason
    assert placement_status(CPU, [CPU], {CPU: ["Conv"]}, [])[0] == "ok"


def tiny_onnx(path, scale: float = 2.0):
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.full((1,), scale, "float32"), "w")
    value = helper.make_tensor_value_info
    graph = helper.make_graph(
        [helper.make_node("Mul", [INPUT_NAME, "w"], ["m"], name="mul"),
         helper.make_node("Relu", ["m"], ["logits"], name="relu")],
        "tiny",
        [value(INPUT_NAME, TensorProto.FLOAT, ["batch", 1, 2, 2])],
        [value("logits", TensorProto.FLOAT, ["batch", 1, 2, 2])],
        [weight],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)
    onnx.save(model, path)
    return path


def test_node_placement_reads_where_onnxruntime_put_each_node(tmp_path):
    session = make_session(tiny_onnx(tmp_path / "t.onnx"), "cpu")
    placed = node_placement(session)
    assert placed is not None and list(placed) == [CPU]
    assert sorted(placed[CPU]) == ["Mul", "Relu"]


# --- 5: deterministic training --------------------------------------------------------------------


def modules_torch_cannot_make_deterministic() -> set[str]:
    """The module classes torch's own docs list as raising under use_deterministic_algorithms."""
    doc = torch.use_deterministic_algorithms.__doc__ or ""
    section = doc.split("nondeterministic operations will throw a")[1].split("In addition")[0]
    return set(re.findall(r":class:`torch\.nn\.(\w+)`", section))


def test_resnet_cifar_has_no_op_without_a_deterministic_cuda_kernel():
    listed = modules_torch_cannot_make_deterministic()
    assert "AdaptiveMaxPool2d" in listed  # the list was read, not an empty set
    spec = ModelSpec(arch="resnet_cifar", in_channels=3, image_size=32, num_classes=10, width=4)
    used = {type(module).__name__ for module in build_model(spec).modules()}
    assert not used & listed


def test_global_max_pool_matches_adaptive_max_pool():
    from pipeline.models.resnet_cifar import GlobalMaxPool

    x = torch.randn(4, 8, 4, 4, requires_grad=True)
    expected = torch.nn.AdaptiveMaxPool2d(1)(x).flatten(1)
    assert torch.equal(GlobalMaxPool()(x), expected)
    GlobalMaxPool()(x).sum().backward()
    assert torch.equal(x.grad.sum(dim=(2, 3)), torch.ones(4, 8))  # one max per map, no ties


# --- 7: NVML memory follows CUDA_VISIBLE_DEVICES --------------------------------------------------


@pytest.mark.parametrize(
    ("visible", "cuda_index", "nvml_gpu"),
    [(None, 1, "GPU-bbb"), ("2,0", 0, "GPU-ccc"), ("2,0", 1, "GPU-aaa"), ("GPU-bbb", 0, "GPU-bbb")],
)
def test_ort_gpu_memory_reads_the_gpu_cuda_means(monkeypatch, visible, cuda_index, nvml_gpu):
    if visible is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    gpus = [FakeGpu("H100", f"GPU-{name}") for name in ("aaa", "bbb", "ccc")]
    nvml = FakeNvml(*gpus)
    nvml.nvmlDeviceGetMemoryInfo = lambda gpu: SimpleNamespace(used=2**30)
    probe = memory_probe("ort_cuda", torch.device("cuda", cuda_index), nvml=nvml)
    assert isinstance(probe, NvmlMemory)
    assert probe._gpus.handles[0].uuid == nvml_gpu
    probe.close()
    assert nvml.open_sessions == 0


def test_without_nvml_ort_gpu_memory_falls_back_to_host_memory():
    probe = memory_probe("ort_cuda", torch.device("cuda", 0), nvml=FakeNvml(driver=False))
    assert isinstance(probe, HostMemory)


def test_a_missing_deterministic_kernel_becomes_one_line_naming_the_setting():
    from pipeline.train.run import nondeterministic_op_message

    # The text torch raises (torch/_prims_common: "{caller} does not have a deterministic ...").
    error = RuntimeError(
        "adaptive_avg_pool2d_backward_cuda does not have a deterministic implementation, but you "
        "set 'torch.use_deterministic_algorithms(True)'. You can turn off determinism just for "
        "this operation, or you can use the 'warn_only=True' option, if that's acceptable"
    )
    message = nondeterministic_op_message(error)
    assert message.startswith("train.deterministic: adaptive_avg_pool2d_backward_cuda has no")
    assert "train.deterministic: false" in message and "\n" not in message
    assert nondeterministic_op_message(RuntimeError("shape mismatch")) is None
