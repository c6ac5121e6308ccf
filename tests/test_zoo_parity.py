"""The CI parity suite: every zoo model and every backend, checked against Paddle Inference.

- The shallowest model of each family (stem/shortcut variant, block type, input size) and the deepest of the zoo
  (synthetic weights, legacy ``.pdmodel`` so OpenVINO reads Paddle directly): paddle → ONNX → ONNX Runtime and
  paddle → OpenVINO, fp32 strict. The other depths' rows are scripts/parity_matrix.py's (docs/parity.md).
- PIR ``.json`` for a plain, a ``vd`` and the 320x320 model: ONNX Runtime and OpenVINO (through ONNX), fp32 strict.
- On the 120 held-out judge photos, each with its precision's profile (docs/parity.md), for one net per block type
  (ResNet18_vd: basic blocks, vd; ResNet50: bottlenecks, plain) and the deepest (ResNet200_vd, fp16 only): fp16
  targets, OpenVINO bf16 (where the CPU computes it) and both int8 targets (accuracy-controlled); the judge photos
  never shaped the weights nor calibrated int8. The same checks on all 16 models are scripts/parity_matrix.py's
  (docs/parity.md), too long for every CI run.
- TensorRT: the same checks, marked ``gpu``.
Guard tests fail when a family of the zoo, or a registered target or variant, is missing from this suite.
"""

from __future__ import annotations

import shutil
import warnings

import pytest

from ppdeploy.converters.pipeline import artifact_root, model_key
from ppdeploy.models import MODELS
from ppdeploy.parity import PROFILES, ParityChecker
from ppdeploy.registry import matrix_names, resolve, runtime_class
from ppdeploy.samples import builtin_set

# The matrix comes from the registry: every target and variant, grouped by the profile that judges it.
CHOICES = {name: resolve(name) for name in matrix_names()}
GPU_TARGETS = tuple(n for n, c in CHOICES.items() if "cpu" not in c.record.devices)
_CPU = {n: c for n, c in CHOICES.items() if n not in GPU_TARGETS}
FP32_BACKENDS = tuple(n for n, c in _CPU.items() if c.profile == "fp32")  # the reference first
JSON_MODELS = ("ResNet50", "ResNet18_vd", "Fix_ResNet50_vd_ssld")
# (model, format): the export the fp32 cases above already made (ResNet200_vd's fp16 artifacts then come from the
# legacy program: OpenVINO's Paddle frontend and paddle2onnx's legacy path, where the json models cover PIR).
LOW_PRECISION_MODELS = (("ResNet18_vd", "json"), ("ResNet50", "json"), ("ResNet200_vd", "pdmodel"))
BF16_MODELS = ("ResNet18_vd", "ResNet50")  # bf16 without AMX is slow: docs/parity.md has all 16
# int8 on one net per block type. ResNet200_vd's int8 rows pass in docs/parity.md (their own process), but ONNX
# Runtime's histogram calibrator keeps every activation of all 64 calibration images before histogramming them:
# inside this long test session that outgrew 24 GB (issue note).
INT8_MODELS = ("ResNet18_vd", "ResNet50")
LOW_PRECISION_CPU = tuple(n for n, c in _CPU.items() if c.profile == "fp16")
INT8_CPU = tuple(n for n, c in _CPU.items() if c.profile == "int8")
BF16_CPU = tuple(n for n, c in _CPU.items() if c.profile == "bf16")


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


def test_suite_covers_every_registered_configuration():
    """Every target and variant the registry offers lands in exactly one group below, each with a profile."""
    groups = (FP32_BACKENDS, LOW_PRECISION_CPU, INT8_CPU, BF16_CPU, GPU_TARGETS)
    assert sorted(n for group in groups for n in group) == sorted(CHOICES)
    assert FP32_BACKENDS[0] == "paddle" and len(FP32_BACKENDS) >= 3 and LOW_PRECISION_CPU and INT8_CPU
    assert all(CHOICES[n].profile in PROFILES for n in CHOICES)


def _family(spec) -> tuple:
    """What shapes the exported graph besides depth: stem/shortcut variant, block type, input size."""
    return spec.variant, spec.bottleneck, spec.input_size


def fp32_models() -> list[str]:
    """The shallowest model of each family, and the deepest of the zoo (rounding error accumulates with depth).

    An ``_ssld`` model is its base architecture with other trained weights: with synthetic weights its export is
    the same graph with the same numbers (docs/parity.md shows equal rows). Deeper members of a family run the same
    block code and ops with more blocks; their rows (and the twins') come from scripts/parity_matrix.py
    (docs/parity.md), outside CI.
    """
    families: dict[tuple, list[tuple[int, str]]] = {}
    for spec in MODELS.values():
        families.setdefault(_family(spec), []).append((spec.depth, spec.name))
    shallowest = [min(members)[1] for members in families.values()]
    deepest = max((spec.depth, spec.name) for spec in MODELS.values())[1]
    return list(dict.fromkeys([*shallowest, deepest]))


FP32_MODELS = fp32_models()
FP32_CASES = [(name, "pdmodel") for name in FP32_MODELS] + [(name, "json") for name in JSON_MODELS]


def test_fp32_suite_covers_every_family_and_graph_kind():
    chosen = {_family(MODELS[name]) for name in FP32_MODELS}
    assert chosen == {_family(spec) for spec in MODELS.values()}
    assert max(MODELS[name].depth for name in FP32_MODELS) == max(spec.depth for spec in MODELS.values())
    assert not any(name.endswith("_ssld") and name.replace("_ssld", "") in MODELS for name in FP32_MODELS)


# Known fp32 gaps: a backend whose fp32 arithmetic misses the fp32 profile on a model, found by this suite and kept
# visible (the profile is not loosened for it; docs/edge.md). A listed pair that fails warns instead of failing;
# one that passes on another CPU is fine.
_MNN_GAP = "MNN 3.6.1 fp32 errs 2-3x ONNX Runtime's on every model and crosses 6e-05 on some (docs/edge.md)"
KNOWN_FP32_GAPS = {
    ("ResNet50_vd", "mnn"): _MNN_GAP + ": max abs 6.6e-05 on 120 judge photos",
    ("ResNet50_vc", "mnn"): _MNN_GAP + ": max abs 1.1e-04 on 16 judge photos",
}


@pytest.mark.slow
@pytest.mark.parametrize(("name", "fmt"), FP32_CASES)
def test_zoo_fp32(synthetic_model, name, fmt):
    checker = _checker(synthetic_model, name, fmt, 16)
    try:
        for backend in FP32_BACKENDS[1:]:
            result = checker.check_backend(backend)
            _report(name, fmt, result)
            if result.status == "fail" and (name, backend) in KNOWN_FP32_GAPS:
                warnings.warn(f"{name} {backend}: known fp32 gap: {KNOWN_FP32_GAPS[name, backend]}", stacklevel=1)
                continue
            assert result.status == "pass", (backend, result.reasons)
            assert result.details.get("inference_precision", "f32") == "f32"
    finally:
        if (name, fmt) not in LOW_PRECISION_MODELS:  # reused by the fixture below
            _free(checker.model)


@pytest.fixture(scope="module", params=LOW_PRECISION_MODELS, ids=lambda case: "-".join(case))
def low_precision_checker(request, synthetic_model):
    checker = _checker(synthetic_model, *request.param, 120)
    yield checker
    _free(checker.model)


@pytest.mark.slow
def test_low_precision_profiles(low_precision_checker):
    for target in LOW_PRECISION_CPU:
        result = low_precision_checker.check_backend(target)
        _report(low_precision_checker.model.name, low_precision_checker.model.paddle.fmt, result)
        assert result.status == "pass", (target, result.reasons)
        assert result.calibration_overlap is None


@pytest.mark.slow
def test_openvino_bf16_profile(low_precision_checker):
    if low_precision_checker.model.name not in BF16_MODELS:
        pytest.skip("bf16 runs on ResNet18_vd and ResNet50 in CI (docs/parity.md: all 16 models)")
    for name in BF16_CPU:
        result = low_precision_checker.check_backend(name)
        if result.status == "skipped":
            pytest.skip(result.reasons[0])
        _report(low_precision_checker.model.name, low_precision_checker.model.paddle.fmt, result)
        assert result.profile == "bf16" and result.metrics.max_abs > 1e-4  # really ran in bf16, not f32
        assert result.status == "pass", result.reasons


@pytest.mark.slow
@pytest.mark.parametrize("target", INT8_CPU)
def test_int8_profile(low_precision_checker, target):
    if low_precision_checker.model.name not in INT8_MODELS:
        pytest.skip(f"int8 of {low_precision_checker.model.name} runs in scripts/parity_matrix.py (docs/parity.md)")
    result = low_precision_checker.check_backend(target)
    _report(low_precision_checker.model.name, low_precision_checker.model.paddle.fmt, result)
    assert result.profile == "int8" and result.metrics.images >= PROFILES["int8"].min_images
    assert result.calibration_overlap is False, "judge photos must not calibrate int8"
    assert result.status == "pass", result.reasons


@pytest.mark.gpu
@pytest.mark.parametrize("target", GPU_TARGETS)
def test_tensorrt_targets(synthetic_model, target):
    ok, reason = runtime_class("tensorrt").availability()
    if not ok:
        pytest.skip(reason)
    checker = _checker(synthetic_model, "ResNet50", "json", 120)
    result = checker.check_backend(target)
    assert result.status == "pass", result.reasons
