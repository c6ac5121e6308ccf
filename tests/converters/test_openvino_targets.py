"""OpenVINO targets (openvino, openvino-fp16, openvino-int8) from the tiny model in both Paddle formats: .pdmodel
read directly, .json through ONNX. What precision each one really computes in (read back from the compiled model),
what the IR holds, int8 accuracy control, runtime options and one-line errors for damaged IRs. How close each one
computes to the numpy golden is tests/test_contract.py; int8 top-1 on real ResNets is tests/test_zoo_parity.py."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from artifact_edits import reseal

from ppdeploy.artifacts import load_manifest
from ppdeploy.converters import to_openvino
from ppdeploy.converters.base import ConvertOptions
from ppdeploy.converters.pipeline import convert_model, default_options
from ppdeploy.errors import ArtifactError, ConversionError, InputSpecError
from ppdeploy.preprocess import PreprocessConfig, preprocess_batch

ov = pytest.importorskip("openvino")
pytest.importorskip("nncf")

from ppdeploy.runtimes.ov import OpenVinoRuntime, native_precisions  # noqa: E402

TARGETS = ("openvino", "openvino-fp16", "openvino-int8")
BF16_FAULT_MIN_DIFF = 1e-4
# Accuracy control in the fixtures: 32 validation images (built-in, apart from the calibration photos) are enough to
# exercise NNCF's ranking and keep the module fast; max_drop stays at the default 0.01 (no flipped image).
VAL_COUNT = 32


@pytest.fixture(scope="module", params=["pdmodel", "json"])
def fmt(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def case(fmt, tiny_model, tiny_golden, tmp_path_factory):
    """One Paddle model, its three OpenVINO artifacts, a photo batch and the numpy golden's answer on it."""
    model = tiny_model(fmt)
    root = tmp_path_factory.mktemp(f"openvino-{fmt}")
    artifacts = {target: convert_model(model, target, out_dir=root / target,
                                       options=default_options(model, target, val_count=VAL_COUNT))
                 for target in TARGETS}
    return {"fmt": fmt, "model": model, "artifacts": artifacts, "batch": tiny_golden.batch,
            "reference": tiny_golden.probs}


def _run(artifact: Path, batch: np.ndarray, **kwargs) -> tuple[np.ndarray, dict[str, str]]:
    with OpenVinoRuntime(artifact, **kwargs) as runtime:
        return runtime.infer(batch), dict(runtime.details)


def _copy(artifact: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(artifact, tmp_path / artifact.name))


def test_fp32_computes_in_f32_and_names_its_frontend(case):
    _, details = _run(case["artifacts"]["openvino"], case["batch"][:1])
    assert details["inference_precision"] == "f32"  # read back from the compiled model, not the request
    manifest = load_manifest(case["artifacts"]["openvino"])
    assert manifest["precision"] == "fp32" and manifest["inference_precision"] == "f32"
    assert manifest["openvino_frontend"] == ("paddle" if case["fmt"] == "pdmodel" else "onnx")


def test_fp32_ir_is_fp32_and_twice_the_fp16_ir(case):
    fp32, fp16 = (load_manifest(case["artifacts"][t]) for t in ("openvino", "openvino-fp16"))
    assert "f16" not in fp32["ir_constant_types"] and fp32["ir_constant_types"]["f32"] > 0
    assert "f32" not in fp16["ir_constant_types"] and fp16["ir_constant_types"]["f16"] > 0
    ratio = fp32["files"]["model.bin"] / fp16["files"]["model.bin"]
    assert 1.9 < ratio < 2.1


def test_fp16_never_computes_in_bf16(case):
    _, details = _run(case["artifacts"]["openvino-fp16"], case["batch"][:1])
    manifest = load_manifest(case["artifacts"]["openvino-fp16"])
    assert manifest["precision"] == "fp16"
    # The artifact asks for f16 compute; the runtime grants it where the CPU has native f16, else f32 (never bf16).
    wanted = "f16" if "f16" in native_precisions(ov.Core(), "CPU") else "f32"
    assert manifest["inference_precision"] == "f16" and details["inference_precision"] == wanted


def test_int8_computes_in_f32_between_its_quantized_layers(case):
    _, details = _run(case["artifacts"]["openvino-int8"], case["batch"][:1])
    assert details["inference_precision"] == "f32"


def test_int8_manifest_records_calibration(case):
    from ppdeploy.samples import set_hash

    manifest = load_manifest(case["artifacts"]["openvino-int8"])
    assert manifest["precision"] == "int8" and manifest["backend"] == "openvino"
    assert manifest["calibration_hash"] == set_hash("calibration", None, 64)
    assert manifest["validation_hash"] == set_hash("validation", None, VAL_COUNT)
    assert manifest["calibration_count"] == 64
    assert manifest["quantization"]["fake_quantize_nodes"] > 0
    assert "f16" not in to_openvino.ir_constant_types(case["artifacts"]["openvino-int8"] / "model.xml")


def test_int8_accuracy_control_is_measured_and_honest(case, profile_agreement):
    """The recorded drop is what the artifact does against the fp32 IR on the validation images, within max_drop
    or said not to be; the validation photos are not calibration photos; reverted layers really are fp32."""
    from ppdeploy.converters.openvino_int8 import infer, int8_inputs
    from ppdeploy.samples import image_set, overlap

    manifest = load_manifest(case["artifacts"]["openvino-int8"])
    control = manifest["quantization"]["accuracy_control"]
    assert control["enabled"] and control["metric"] == "top1_agreement" and control["max_drop"] == 0.01
    assert control["reached"] == (control["drop"] <= control["max_drop"])
    assert control["drop"] == pytest.approx(control["fp32_metric"] - control["int8_metric"])
    assert control["tool"] in ("nncf.quantize_with_accuracy_control", "nncf.quantize")
    assert not overlap(manifest["calibration_set"], control["validation_set"])["overlap"]
    assert control["validation_set"]["count"] == VAL_COUNT and control["validation_set"]["role"] == "validation"
    core = ov.Core()
    fp32, int8 = (core.read_model(str(case["artifacts"][t] / "model.xml")) for t in ("openvino", "openvino-int8"))
    batch = preprocess_batch(image_set("validation", n=VAL_COUNT).images, PreprocessConfig(**manifest["preprocess"]))
    agreement = profile_agreement(infer(fp32, batch), infer(int8, batch))
    assert agreement == pytest.approx(control["int8_metric"])
    quantized = int8_inputs(int8)
    assert control["int8_layers"] == len(quantized) > 0
    assert not set(control["fp32_layers"]) & set(quantized)


def test_same_folder_for_calibration_and_validation_fails_before_any_work(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from ppdeploy.cli import app
    from ppdeploy.models import resolve
    from ppdeploy.samples import write_sample_folder

    def forbidden(*args, **kwargs):
        raise AssertionError("the model must not be resolved or exported")

    monkeypatch.setattr(resolve, "resolve_model", forbidden)
    folder = tmp_path / "photos"
    write_sample_folder(folder, 4, role="calibration")
    result = CliRunner().invoke(app, ["convert", "ResNet18", "--synthetic", "--to", "openvino-int8",
                                      "--calib-images", str(folder), "--val-images", str(folder)])
    assert result.exit_code != 0 and isinstance(result.exception, ConversionError)
    message = str(result.exception)
    assert "\n" not in message and message.count(" | ") == 2 and "--val-images" in message
    with pytest.raises(ConversionError, match="calibration images folder"):
        ConvertOptions(calib_images=folder, val_images=folder)


def test_bf16_override_is_a_measurable_fault(case):
    if "bf16" not in native_precisions(ov.Core(), "CPU"):
        pytest.skip("this CPU has no native bf16: the planted fault cannot show here")
    out, details = _run(case["artifacts"]["openvino"], case["batch"], precision_override="bf16")
    diff = float(np.abs(out - case["reference"]).max())
    assert diff > BF16_FAULT_MIN_DIFF, f"bf16 compute gave only {diff:.2e}"
    assert details["inference_precision"] == "bf16"
    assert details["precision_override"].startswith("bf16")


def test_dynamic_batch_and_options(case):
    batch = case["batch"][:3]
    with OpenVinoRuntime(case["artifacts"]["openvino"], threads=1, performance_hint="throughput") as runtime:
        assert runtime.inputs[0].shape == (None, 3, 224, 224)
        assert runtime.outputs[0].shape == (None, 1000)
        whole = runtime.infer(batch)
        first = runtime.infer(batch[:1])
        assert runtime.details["threads"] == "1" and runtime.details["performance_hint"] == "THROUGHPUT"
    np.testing.assert_allclose(first, whole[:1], atol=1e-6)
    with pytest.raises(InputSpecError):
        OpenVinoRuntime(case["artifacts"]["openvino"], performance_hint="fastest")


def test_auto_device_reports_the_real_precision(case):
    _, details = _run(case["artifacts"]["openvino"], case["batch"][:1], device="auto", threads=1)
    assert details["device"].startswith("AUTO") and details["inference_precision"] == "f32"


def test_missing_bin_is_one_line_artifact_error(case, tmp_path):
    artifact = _copy(case["artifacts"]["openvino"], tmp_path)
    (artifact / "model.bin").unlink()
    with pytest.raises(ArtifactError) as err:
        OpenVinoRuntime(artifact)
    assert "model.bin" in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("damage", ["truncated_xml", "truncated_bin"])
def test_corrupt_ir_is_one_line_artifact_error(case, tmp_path, damage):
    artifact = _copy(case["artifacts"]["openvino"], tmp_path)
    name = "model.xml" if damage == "truncated_xml" else "model.bin"
    path = artifact / name
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ArtifactError, match="content changed since it was written"):  # the tamper check first
        OpenVinoRuntime(artifact)
    reseal(artifact)  # as a converter that wrote a broken file would leave it: OpenVINO's own error, in one line
    with pytest.raises(ArtifactError) as err:
        OpenVinoRuntime(artifact)
    assert "model.xml" in str(err.value) and "\n" not in str(err.value)


def test_f16_request_falls_back_up_not_down(case, tmp_path):
    """An artifact asking for f16 compute on a CPU without native fp16 runs f32, never OpenVINO's bf16."""
    artifact = _copy(case["artifacts"]["openvino-fp16"], tmp_path)
    manifest = json.loads((artifact / "manifest.json").read_text())
    (artifact / "manifest.json").write_text(json.dumps({**manifest, "inference_precision": "f16"}))
    _, details = _run(artifact, case["batch"][:1])
    if "f16" in native_precisions(ov.Core(), "CPU"):
        assert details["inference_precision"] == "f16"
    else:
        assert details["inference_precision"] == "f32"
        assert "no native f16" in details["precision_note"]


def test_pir_json_is_refused_directly_with_the_way_out(tiny_model, tmp_path):
    with pytest.raises(ConversionError, match="through ONNX"):
        to_openvino.convert(tiny_model("json").model_file, tmp_path, ConvertOptions(target="openvino"))


def test_import_does_not_load_backends():
    code = ("import sys, ppdeploy.runtimes, ppdeploy.converters.to_openvino, ppdeploy.converters.openvino_int8, "
            "ppdeploy.converters.onnx_to_trt; "
            "print(sorted(m for m in ('openvino', 'nncf', 'tensorrt', 'cuda') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
