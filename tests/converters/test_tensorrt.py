"""TensorRT: unavailability and engine compatibility checks everywhere; engine builds and parity on a GPU only."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from ppdeploy.artifacts import check_compatible, load_manifest, tool_versions
from ppdeploy.converters import onnx_to_trt
from ppdeploy.converters.base import ConvertOptions
from ppdeploy.errors import ArtifactError, BackendUnavailableError, InputSpecError
from ppdeploy.registry import install_hint, targets
from ppdeploy.runtimes.trt import TensorRtRuntime

INSTALL_HINT = install_hint("gpu")

TRT_TARGETS = ("trt-fp32", "trt-fp16", "trt-int8")
TRT_AVAILABLE, TRT_REASON = TensorRtRuntime.availability()


def _one_line(exc: BaseException) -> str:
    text = str(exc)
    assert "\n" not in text
    return text


# --------------------------------------------------------------------------- everywhere


@pytest.mark.skipif(TRT_AVAILABLE, reason="TensorRT and a CUDA GPU are present")
def test_runtime_reports_unavailable_with_the_reason(tmp_path):
    assert not TRT_AVAILABLE
    assert INSTALL_HINT in TRT_REASON or "no CUDA GPU" in TRT_REASON
    with pytest.raises(BackendUnavailableError) as err:
        TensorRtRuntime(tmp_path)
    assert "backend 'tensorrt'" in _one_line(err.value)


@pytest.mark.skipif(TRT_AVAILABLE, reason="TensorRT and a CUDA GPU are present")
@pytest.mark.parametrize("target", TRT_TARGETS)
def test_targets_report_unavailable(target):
    import importlib.util

    ok, reason = targets()[target].availability()
    if importlib.util.find_spec("tensorrt") is None:
        assert not ok and INSTALL_HINT in reason
    assert targets()[target].needs_gpu


@pytest.mark.skipif(TRT_AVAILABLE, reason="TensorRT and a CUDA GPU are present")
def test_converter_refuses_without_tensorrt_or_gpu(tmp_path):
    with pytest.raises(BackendUnavailableError) as err:
        onnx_to_trt.convert(tmp_path / "model.onnx", tmp_path, ConvertOptions(target="trt-fp32"))
    assert INSTALL_HINT in _one_line(err.value) or "no CUDA GPU" in str(err.value)


def test_engine_cache_key_names_the_gpu(tmp_path, monkeypatch):
    """A shared cache must not reuse an engine built on another GPU model: the key holds its name and compute
    capability (the device query is replaced here because this machine has no GPU; nothing is built)."""
    from ppdeploy.converters import pipeline
    from ppdeploy.models.paddle_files import PaddleModel

    (tmp_path / "inference.json").write_text("{}")
    (tmp_path / "inference.pdiparams").write_bytes(b"weights")
    model = PaddleModel(tmp_path, tmp_path / "inference.json", tmp_path / "inference.pdiparams", "json")
    keys = {}
    for gpu in ({"name": "NVIDIA A10", "compute_capability": "8.6"}, {"name": "NVIDIA T4", "compute_capability": "7.5"}):
        monkeypatch.setattr("ppdeploy.gpu.current_gpu", lambda gpu=gpu: gpu)
        keys[gpu["name"]] = pipeline._fingerprint(model, targets()["trt-fp16"], ConvertOptions(), {"artifact_id": "x"})
    assert keys["NVIDIA A10"]["gpu"]["compute_capability"] == "8.6"
    assert keys["NVIDIA A10"] != keys["NVIDIA T4"]
    assert pipeline._fingerprint(model, targets()["onnx"], ConvertOptions(), None)["gpu"] is None  # CPU artifacts
    artifact = tmp_path / "trt-fp16"
    artifact.mkdir()
    (artifact / "model.engine").write_bytes(b"plan")
    (artifact / "manifest.json").write_text(json.dumps({**keys["NVIDIA A10"], "model_file": "model.engine"}))
    assert pipeline._is_valid(artifact, keys["NVIDIA A10"]) and not pipeline._is_valid(artifact, keys["NVIDIA T4"])


def _engine_manifest(**overrides) -> dict:
    manifest = {"backend": "tensorrt", "target": "trt-fp16", "model_name": "ResNet18", "model_file": "model.engine",
                "tools": tool_versions(), "gpu": {"name": "NVIDIA A10", "compute_capability": "8.6"}}
    return {**manifest, **overrides}


def test_engine_from_another_tensorrt_version_is_refused():
    manifest = _engine_manifest(tools={**tool_versions(), "tensorrt": "9.0.0.0"})
    with pytest.raises(ArtifactError) as err:
        check_compatible(manifest, gpu={"name": "NVIDIA A10", "compute_capability": "8.6"})
    message = _one_line(err.value)
    assert "TensorRT 9.0.0.0" in message and "deploy convert ResNet18 --to trt-fp16" in message


def test_engine_for_another_gpu_is_refused():
    manifest = _engine_manifest()
    with pytest.raises(ArtifactError) as err:
        check_compatible(manifest, gpu={"name": "NVIDIA T4", "compute_capability": "7.5"})
    assert "7.5" in _one_line(err.value) and "8.6" in str(err.value)


def test_engine_for_this_gpu_and_version_is_accepted():
    gpu = {"name": "NVIDIA A10", "compute_capability": "8.6"}
    check_compatible(_engine_manifest(gpu=gpu), gpu=gpu)


def test_timing_cache_is_seeded_from_the_artifact_being_replaced(tmp_path):
    staging = tmp_path / ".trt-fp16.abc123.partial"
    assert onnx_to_trt._timing_cache_candidates(staging) == [staging / "timing.cache",
                                                             tmp_path / "trt-fp16" / "timing.cache"]


# --------------------------------------------------------------------------- on a GPU

gpu = pytest.mark.gpu
needs_trt = pytest.mark.skipif(not TRT_AVAILABLE, reason=f"TensorRT unavailable: {TRT_REASON}")


@pytest.fixture(scope="module")
def engines(synthetic_model, photos, tmp_path_factory):
    """ResNet18 (json) built to every TensorRT target, a photo batch and Paddle's answer on it."""
    pytest.importorskip("tensorrt")
    if not TRT_AVAILABLE:
        pytest.skip(f"TensorRT unavailable: {TRT_REASON}")
    from ppdeploy.converters.pipeline import convert_model
    from ppdeploy.preprocess import preprocess_batch
    from ppdeploy.runtimes.paddle_infer import PaddleRuntime

    model = synthetic_model("ResNet18", "json")
    root = tmp_path_factory.mktemp("trt")
    artifacts = {target: convert_model(model, target, out_dir=root / target) for target in TRT_TARGETS}
    batch = preprocess_batch(photos[0][:8], model.spec.preprocess_config())
    with PaddleRuntime(model.paddle.directory) as paddle:
        reference = paddle.infer(batch)
    return {"artifacts": artifacts, "batch": batch, "reference": reference}


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@gpu
@needs_trt
@pytest.mark.parametrize("target,min_cosine,max_abs", [("trt-fp32", None, 1e-5), ("trt-fp16", 0.999, None),
                                                       ("trt-int8", 0.99, None)])
def test_engine_close_to_paddle(engines, target, min_cosine, max_abs):
    with TensorRtRuntime(engines["artifacts"][target]) as runtime:
        out = runtime.infer(engines["batch"])
        assert runtime.details["precision"] == target.split("-")[1]
    reference = engines["reference"]
    if max_abs is not None:
        assert np.abs(out - reference).max() <= max_abs
        assert (out.argmax(1) == reference.argmax(1)).all()
    if min_cosine is not None:
        assert _cosine(out, reference).min() >= min_cosine


@gpu
@needs_trt
def test_engine_manifest_and_dynamic_batch(engines):
    artifact = engines["artifacts"]["trt-fp32"]
    manifest = load_manifest(artifact)
    assert manifest["gpu"]["compute_capability"].count(".") == 1 and manifest["tf32"] is False
    assert (artifact / "timing.cache").stat().st_size > 0
    with TensorRtRuntime(artifact) as runtime:
        one = runtime.infer(engines["batch"][:1])
        many = runtime.infer(engines["batch"])
        np.testing.assert_allclose(one, many[:1], atol=1e-5)
        too_many = np.concatenate([engines["batch"]] * 2)[: manifest["max_batch"] + 1]
        with pytest.raises(InputSpecError):
            runtime.infer(too_many)


@gpu
@needs_trt
def test_engine_for_another_gpu_is_refused_before_loading(engines, tmp_path):
    artifact = Path(shutil.copytree(engines["artifacts"]["trt-fp16"], tmp_path / "trt-fp16"))
    manifest = json.loads((artifact / "manifest.json").read_text())
    manifest["gpu"] = {"name": "Some Other GPU", "compute_capability": "1.0"}
    (artifact / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError) as err:
        TensorRtRuntime(artifact)
    assert "Some Other GPU" in _one_line(err.value)
