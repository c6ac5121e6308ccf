"""The parity checker: its metrics, its verdicts, and proof that it fails on planted faults."""

from __future__ import annotations

import json
import shutil
from xml.etree import ElementTree

import numpy as np
import pytest

from ppdeploy.artifacts import artifact_model_file
from ppdeploy.converters.pipeline import convert_model
from ppdeploy.parity import PROFILES, BackendResult, ParityChecker, ParityReport, compare, judge
from ppdeploy.runtimes import RUNTIMES


def _probs(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_compare_measures_what_it_says():
    rng = np.random.default_rng(0)
    ref = _probs(rng.normal(size=(4, 10)) * 3)
    out = ref.copy()
    out[2] = out[2][::-1]  # image 2 now ranks classes in reverse: its top-1 flips
    m = compare(ref, out, ["a", "b", "c", "d"])
    assert m.images == 4
    assert m.max_abs == pytest.approx(np.abs(ref - out).max())
    assert m.top1_agreement == pytest.approx(0.75)
    assert [f["filename"] for f in m.flipped] == ["c"]
    top2 = np.sort(ref[2])[::-1][:2]
    assert m.flipped[0]["reference_margin"] == pytest.approx(top2[0] - top2[1])
    cos = (ref[2] @ out[2]) / np.linalg.norm(ref[2]) / np.linalg.norm(out[2])
    assert m.min_cosine == pytest.approx(cos)
    assert m.non_finite == 0
    assert judge(m, PROFILES["fp32"])  # fails fp32
    same = compare(ref, ref.copy(), list("abcd"))
    assert same.max_abs == 0 and same.top1_agreement == 1 and same.top5_overlap == 1
    assert judge(same, PROFILES["fp32"]) == []


def test_nan_outputs_fail_every_profile():
    ref = _probs(np.random.default_rng(1).normal(size=(2, 5)))
    out = ref.copy()
    out[0, 0] = np.nan
    m = compare(ref, out, ["a", "b"])
    assert m.non_finite == 1
    for profile in PROFILES.values():
        assert any("NaN" in reason for reason in judge(m, profile))


def test_int8_profile_needs_enough_images():
    ref = _probs(np.random.default_rng(2).normal(size=(10, 5)))
    reasons = judge(compare(ref, ref, [str(i) for i in range(10)]), PROFILES["int8"])
    assert reasons and "needs >= 100" in reasons[0]


def test_report_outputs_and_exit_rule():
    ok = BackendResult("onnx", "pass", "fp32")
    skipped = BackendResult("trt-fp16", "skipped", reasons=["no CUDA GPU"])
    report = ParityReport("ResNet18", "Paddle", 8, [ok, skipped], requested=[])
    assert report.passed  # 'all' expanded: unavailable ones are reported, not failed
    assert not ParityReport("ResNet18", "Paddle", 8, [ok, skipped], requested=["trt-fp16"]).passed
    suite = ElementTree.fromstring(report.to_junit())
    assert suite.get("skipped") == "1" and suite.get("failures") == "0"
    assert json.loads(report.to_json())["results"][1]["reasons"] == ["no CUDA GPU"]
    assert "skip" in report.render() and "no CUDA GPU" in report.render()


@pytest.fixture(scope="module")
def checker(synthetic_model, photos):
    images, names = photos
    return ParityChecker(synthetic_model("ResNet18", "json"), images, names, batch_size=8)


def test_onnx_fp32_passes(checker):
    result = checker.check_backend("onnx")
    assert result.status == "pass", result.reasons
    assert result.metrics.max_abs <= 1e-5 and result.metrics.top1_agreement == 1.0


def test_planted_fault_perturbed_onnx_weight_fails(checker, tmp_path):
    import onnx
    from onnx import numpy_helper

    good = convert_model(checker.model, "onnx")
    bad = tmp_path / "bad-onnx"
    shutil.copytree(good, bad)
    proto = onnx.load(str(artifact_model_file(bad)))
    weights = [t for t in proto.graph.initializer if len(t.dims) == 4]
    array = numpy_helper.to_array(weights[0]).copy()
    array.flat[0] += 5.0  # one weight of the first convolution
    weights[0].CopyFrom(numpy_helper.from_array(array, weights[0].name))
    onnx.save(proto, str(artifact_model_file(bad)))
    with RUNTIMES["onnx"](bad) as runtime:
        result = checker.check("onnx (perturbed)", runtime, PROFILES["fp32"])
    assert result.status == "fail"
    assert any("max abs diff" in r for r in result.reasons)


def test_planted_fault_bgr_input_fails(checker):
    artifact = convert_model(checker.model, "onnx")
    with RUNTIMES["onnx"](artifact) as runtime:
        result = checker.check("onnx (BGR)", runtime, PROFILES["fp32"], transform=lambda b: b[:, ::-1])
    assert result.status == "fail" and result.metrics.max_abs > 1e-3


def test_planted_fault_openvino_left_at_bf16_fails(checker):
    artifact = convert_model(checker.model, "openvino")
    with RUNTIMES["openvino"](artifact) as honest:
        assert checker.check("openvino", honest, PROFILES["fp32"]).status == "pass"
    with RUNTIMES["openvino"](artifact, precision_override="bf16") as runtime:
        result = checker.check("openvino (claims fp32, runs bf16)", runtime, PROFILES["fp32"])
    assert result.status == "fail"
    assert "bf16" in result.details.get("inference_precision", "")
