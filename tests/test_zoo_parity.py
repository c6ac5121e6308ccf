"""The CI parity suite: every zoo model and every backend, checked against Paddle Inference.

- Every model (synthetic weights, legacy ``.pdmodel`` so OpenVINO reads Paddle directly): paddle → ONNX → ONNX
  Runtime and paddle → OpenVINO, fp32 strict.
- PIR ``.json`` for a plain, a ``vd`` and the 320x320 model: ONNX Runtime and OpenVINO (through ONNX), fp32 strict.
- ResNet18_vd, ResNet34, ResNet50, ResNet101_vd and ResNet200_vd on the 120 held-out judge photos: fp16
  targets, OpenVINO bf16 (where the CPU computes it) and both int8 targets (accuracy-controlled), each with its
  precision's profile (docs/parity.md); the judge photos never shaped the weights nor calibrated int8.
- TensorRT: the same checks, marked ``gpu``.
A guard test fails when a zoo model or a registered backend/target is missing from this suite.
"""

from __future__ import annotations

import shutil

import pytest

from ppdeploy.converters.base import TARGETS
from ppdeploy.converters.pipeline import artifact_root, model_key
from ppdeploy.models import MODELS
from ppdeploy.parity import PROFILES, ParityChecker
from ppdeploy.runtimes import RUNTIMES
from ppdeploy.samples import builtin_set

FP32_BACKENDS = ("paddle", "onnx", "openvino")
JSON_MODELS = ("ResNet34", "ResNet18_vd", "Fix_ResNet50_vd_ssld")
LOW_PRECISION_MODELS = ("ResNet18_vd", "ResNet34", "ResNet50", "ResNet101_vd", "ResNet200_vd")
BF16_MODELS = ("ResNet18_vd", "ResNet34", "ResNet50")  # bf16 without AMX is slow: docs/parity.md has all 16
# ResNet200_vd's int8 rows pass in docs/parity.md (their own process), but ONNX Runtime's histogram calibrator keeps
# every activation of all 64 calibration images before histogramming them: inside this long test session that
# outgrew 24 GB. Until calibration is fed in strides (issue note), CI judges ResNet200_vd in fp32 and fp16 only.
INT8_MODELS = ("ResNet18_vd", "ResNet34", "ResNet50", "ResNet101_vd")
LOW_PRECISION_CPU = ("onnx-fp16", "openvino-fp16")
INT8_CPU = ("onnx-int8", "openvino-int8")
GPU_TARGETS = ("trt-fp32", "trt-fp16", "trt-int8")
SUITE = {
    "models_pdmodel": tuple(MODELS),
    "models_json": JSON_MODELS,
    "backends": FP32_BACKENDS + LOW_PRECISION_CPU + INT8_CPU + ("openvino-bf16",) + GPU_TARGETS,
}


def _free(model) -> None:
    """Drop a model's export and artifacts once checked: the whole zoo would otherwise take gigabytes."""
    shutil.rmtree(artifact_root() / model_key(model), ignore_errors=True)
    shutil.rmtree(model.paddle.directory, ignore_errors=True)


def _report(name: str, fmt: str, result) -> None:
    """One line per checked pair, shown with ``pytest -rP`` / ``-s`` (the figures quoted in docs/parity.md)."""
    m = result.metrics
    print(f"{name:22s} {fmt:7s} {result.backend:14s} {result.status:4s} max_abs={m.max_abs:.2e} "
          f"max_tv={m.max_tv:.2e} mean_tv={m.mean_tv:.2e} shift={m.max_margin_shift:.3f} "
          f"decisive_top1={m.decisive_top1:.2%} of {m.decisive}, flips={len(m.flipped)} ties={len(m.near_ties)} "
          f"({result.seconds:.1f} s)")


def _checker(synthetic_model, name, fmt, count):
    return ParityChecker(synthetic_model(name, fmt), builtin_set("judge", count))


def test_suite_covers_every_model_and_backend():
    assert set(SUITE["models_pdmodel"]) == set(MODELS)
    covered = set(SUITE["backends"])
    assert set(RUNTIMES) <= {"paddle", "onnx", "openvino", "tensorrt"} and {"paddle", "onnx", "openvino"} <= covered
    assert set(TARGETS) <= covered, f"targets missing from the parity suite: {set(TARGETS) - covered}"
    assert "tensorrt" in RUNTIMES and all(t in covered for t in GPU_TARGETS)


FP32_CASES = [(name, "pdmodel") for name in MODELS] + [(name, "json") for name in JSON_MODELS]


@pytest.mark.slow
@pytest.mark.parametrize(("name", "fmt"), FP32_CASES)
def test_zoo_fp32(synthetic_model, name, fmt):
    checker = _checker(synthetic_model, name, fmt, 16)
    try:
        for backend in FP32_BACKENDS[1:]:
            result = checker.check_backend(backend)
            _report(name, fmt, result)
            assert result.status == "pass", (backend, result.reasons)
            assert result.details.get("inference_precision", "f32") == "f32"
    finally:
        _free(checker.model)


@pytest.fixture(scope="module", params=LOW_PRECISION_MODELS)
def low_precision_checker(request, synthetic_model):
    checker = _checker(synthetic_model, request.param, "json", 120)
    yield checker
    _free(checker.model)


@pytest.mark.slow
def test_low_precision_profiles(low_precision_checker):
    for target in LOW_PRECISION_CPU:
        result = low_precision_checker.check_backend(target)
        _report(low_precision_checker.model.name, "json", result)
        assert result.status == "pass", (target, result.reasons)
        assert result.calibration_overlap is None


@pytest.mark.slow
def test_openvino_bf16_profile(low_precision_checker):
    from ppdeploy.converters.pipeline import convert_model

    if low_precision_checker.model.name not in BF16_MODELS:
        pytest.skip("bf16 runs on ResNet18_vd, ResNet34 and ResNet50 in CI (docs/parity.md: all 16 models)")
    artifact = convert_model(low_precision_checker.model, "openvino")
    with RUNTIMES["openvino"](artifact, precision_override="bf16") as runtime:
        if "bf16" not in runtime.details.get("inference_precision", ""):
            pytest.skip(f"this CPU runs {runtime.details.get('inference_precision')}, not bf16")
        result = low_precision_checker.check("openvino-bf16", runtime, PROFILES["bf16"])
    _report(low_precision_checker.model.name, "json", result)
    assert result.metrics.max_abs > 1e-4  # really ran in bf16, not f32
    assert result.status == "pass", result.reasons


@pytest.mark.slow
@pytest.mark.parametrize("target", INT8_CPU)
def test_int8_profile(low_precision_checker, target):
    if low_precision_checker.model.name not in INT8_MODELS:
        pytest.skip("int8 of ResNet200_vd runs in scripts/parity_matrix.py, not in this session (memory; see above)")
    result = low_precision_checker.check_backend(target)
    _report(low_precision_checker.model.name, "json", result)
    assert result.profile == "int8" and result.metrics.images >= PROFILES["int8"].min_images
    assert result.calibration_overlap is False, "judge photos must not calibrate int8"
    assert result.status == "pass", result.reasons


@pytest.mark.gpu
@pytest.mark.parametrize("target", GPU_TARGETS)
def test_tensorrt_targets(synthetic_model, target):
    ok, reason = RUNTIMES["tensorrt"].availability()
    if not ok:
        pytest.skip(reason)
    checker = _checker(synthetic_model, "ResNet50", "json", 120)
    result = checker.check_backend(target)
    assert result.status == "pass", result.reasons
