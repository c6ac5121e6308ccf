"""OrtRuntime: specs, providers, device checks and one-line errors for broken artifacts."""

from __future__ import annotations

import importlib.util
import shutil
import sys
from types import ModuleType, SimpleNamespace

import numpy as np
import pytest
from artifact_edits import reseal

from ppdeploy.converters.pipeline import convert_model
from ppdeploy.errors import ArtifactError, BackendUnavailableError
from ppdeploy.registry import runtime_class
from ppdeploy.runtimes import ort as ort_module
from ppdeploy.runtimes.ort import OrtRuntime

ort = pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def model(tiny_model):
    return tiny_model("json")


@pytest.fixture(scope="module")
def artifact(model, tmp_path_factory):
    return convert_model(model, "onnx", out_dir=tmp_path_factory.mktemp("ort") / "onnx")


@pytest.fixture(scope="module")
def batch(tiny_golden):
    return tiny_golden.batch[:5]


def test_registered():
    assert runtime_class("onnx") is OrtRuntime
    assert OrtRuntime.record().devices == ("cpu", "gpu")


def test_cpu_details_and_an_odd_batch_size(artifact, batch):
    """Specs, batches 1 and 8, precision and closing are the contract's (tests/test_contract.py)."""
    with OrtRuntime(artifact, threads=1) as runtime:
        assert runtime.details["provider"] == "CPUExecutionProvider" and runtime.details["threads"] == "1"
        probs = runtime.infer(batch)
        assert probs.shape == (5, 1000) and probs.dtype == np.float32


def test_corrupt_onnx_is_one_line_artifact_error(artifact, model, tmp_path):
    broken = tmp_path / "onnx"
    shutil.copytree(artifact, broken)
    model_file = broken / "model.onnx"
    model_file.write_bytes(model_file.read_bytes()[:4096])
    reseal(broken)  # a converter that wrote a broken file (a changed file is refused earlier: tests/test_hostile.py)
    with pytest.raises(ArtifactError) as err:
        OrtRuntime(broken)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"{model_file} | ONNX Runtime cannot load it")
    assert f"delete {broken} and reconvert: deploy convert {model.directory.name} --to onnx" in message


def test_missing_model_file_is_artifact_error(artifact, tmp_path):
    broken = tmp_path / "onnx"
    shutil.copytree(artifact, broken)
    (broken / "model.onnx").unlink()
    with pytest.raises(ArtifactError, match="model.onnx \\| missing from the artifact"):
        OrtRuntime(broken)


def test_gpu_without_cuda_provider_names_the_fix(artifact):
    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("onnxruntime-gpu is installed")
    with pytest.raises(BackendUnavailableError) as err:
        OrtRuntime(artifact, device="gpu")
    assert "pip install onnxruntime-gpu" in str(err.value) and "keep only the GPU wheel" in str(err.value)


def _fake_ort(active: str) -> ModuleType:
    """An onnxruntime stand-in whose GPU providers are listed but whose session runs on ``active``."""
    fake = ModuleType("onnxruntime")
    fake.__spec__ = importlib.util.find_spec("onnxruntime")  # Runtime.availability() looks it up
    fake.__version__ = "test"
    fake.get_available_providers = lambda: ["TensorrtExecutionProvider", "CUDAExecutionProvider",
                                            "CPUExecutionProvider"]
    fake.session = SimpleNamespace(
        get_providers=lambda: [active, "CPUExecutionProvider"],
        get_inputs=lambda: [SimpleNamespace(name="x", shape=["N", 3, 224, 224], type="tensor(float)")],
        get_outputs=lambda: [SimpleNamespace(name="y", shape=["N", 1000], type="tensor(float)")])
    return fake


def test_gpu_falling_back_to_cpu_is_refused(artifact, monkeypatch):
    fake = _fake_ort("CPUExecutionProvider")
    seen = {}

    def open_session(ort_mod, model_file, providers, threads, manifest):
        seen["providers"] = providers
        return fake.session

    monkeypatch.setitem(sys.modules, "onnxruntime", fake)
    monkeypatch.setattr(ort_module, "_open_session", open_session)
    with pytest.raises(BackendUnavailableError, match="CUDA provider did not start \\(running on CPUExecution"):
        OrtRuntime(artifact, device="gpu")
    names = [p[0] if isinstance(p, tuple) else p for p in seen["providers"]]
    assert names == ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    trt_options = seen["providers"][0][1]
    assert trt_options["trt_profile_max_shapes"] == "x:8x3x224x224" and not trt_options["trt_int8_enable"]


def test_gpu_reports_the_provider_that_runs(artifact, monkeypatch):
    fake = _fake_ort("CUDAExecutionProvider")
    monkeypatch.setitem(sys.modules, "onnxruntime", fake)
    monkeypatch.setattr(ort_module, "_open_session", lambda *args: fake.session)
    with OrtRuntime(artifact, device="gpu") as runtime:
        assert runtime.details["provider"] == "CUDAExecutionProvider"
