"""The parity checker: its metrics, its verdicts, its evidence records, and proof that it fails on planted faults."""

from __future__ import annotations

import json
import shutil
from xml.etree import ElementTree

import numpy as np
import pytest
from artifact_edits import reseal

from ppdeploy.artifacts import artifact_model_file
from ppdeploy.converters.pipeline import convert_model, default_options
from ppdeploy.parity import PROFILES, BackendResult, ParityChecker, ParityReport, compare, judge, rebatch
from ppdeploy.registry import runtime_class
from ppdeploy.samples import builtin_set, write_sample_folder


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
    assert m.max_tv == pytest.approx(0.5 * np.abs(ref[2] - out[2]).sum())
    assert m.top1_agreement == pytest.approx(0.75)
    assert [f["filename"] for f in m.flipped] == ["c"] and not m.near_ties
    top2 = np.sort(ref[2])[::-1][:2]
    assert m.flipped[0]["reference_margin"] == pytest.approx(np.log(top2[0] / top2[1]))
    assert m.decisive == 4 and m.decisive_top1 == pytest.approx(0.75)
    assert m.non_finite == 0
    assert judge(m, PROFILES["fp32"])[0]  # fails fp32
    same = compare(ref, ref.copy(), list("abcd"))
    assert same.max_abs == 0 and same.max_tv == 0 and same.top1_agreement == 1 and same.top5_overlap == 1
    assert judge(same, PROFILES["fp32"])[0] == []


def test_a_flip_within_the_precisions_error_is_a_near_tie_not_an_error():
    ref = np.array([[0.40, 0.38, 0.22], [0.90, 0.05, 0.05]])
    out = np.array([[0.38, 0.40, 0.22], [0.05, 0.90, 0.05]])
    m = compare(ref, out, ["tie", "clear"], tie_margin=0.1)  # log(0.40/0.38) = 0.05 <= 0.1 < log(0.9/0.05)
    assert [t["filename"] for t in m.near_ties] == ["tie"]
    assert [f["filename"] for f in m.flipped] == ["clear"]
    assert m.decisive == 1 and m.decisive_top1 == 0.0 and m.top1_agreement == 0.0


def test_total_variation_sees_what_cosine_misses_on_flat_outputs():
    """Flat outputs (every probability near 1/1000) with the classes shuffled: a cosine test passes, TV fails."""
    rng = np.random.default_rng(3)
    ref = _probs(rng.normal(0.0, 0.03, size=(8, 1000)))
    out = ref[:, rng.permutation(1000)]  # every class gets another class's probability
    m = compare(ref, out, [str(i) for i in range(8)], PROFILES["fp16"].tie_margin)
    assert m.min_cosine > 0.999  # the old fp16 profile (min cosine 0.999) passed this
    assert m.decisive == 0  # flat: no top-1 is decisive, so only the output-error criteria can judge it
    reasons, _ = judge(m, PROFILES["fp16"])
    assert any("total variation" in r for r in reasons)


def test_few_decisive_images_means_top1_is_not_judged_and_the_report_says_so():
    ref = np.tile([[0.34, 0.33, 0.33]], (30, 1))
    m = compare(ref, ref[:, [1, 0, 2]], [str(i) for i in range(30)], PROFILES["fp16"].tie_margin)
    assert m.decisive == 0 and len(m.near_ties) == 30
    reasons, notes = judge(m, PROFILES["fp16"])
    assert not any("top-1" in r for r in reasons) and "only 0 of 30 images are decisive" in notes[0]


def test_nan_outputs_fail_every_profile():
    ref = _probs(np.random.default_rng(1).normal(size=(2, 5)))
    out = ref.copy()
    out[0, 0] = np.nan
    m = compare(ref, out, ["a", "b"])
    assert m.non_finite == 1
    for profile in PROFILES.values():
        assert any("NaN" in reason for reason in judge(m, profile)[0])


def test_int8_profile_needs_enough_images():
    ref = _probs(np.random.default_rng(2).normal(size=(10, 5)))
    reasons, _ = judge(compare(ref, ref, [str(i) for i in range(10)]), PROFILES["int8"])
    assert reasons and "needs >= 100" in reasons[0]


def test_report_outputs_exit_rule_and_overlap():
    ok = BackendResult("onnx", "pass", "fp32")
    skipped = BackendResult("trt-fp16", "skipped", reasons=["no CUDA GPU"])
    calibration = {"role": "calibration", "provenance": "user calibration images 'x'", "sha256": "ab" * 32}
    leaky = BackendResult("onnx-int8", "pass", "int8", calibration_set=calibration, calibration_overlap=True)
    sets = {"judge": {"provenance": "built-in judge photos", "sha256": "cd" * 32, "fingerprints": ["0"]}}
    report = ParityReport("ResNet18", "Paddle", 8, [ok, skipped], requested=[], image_sets=sets, shape_overlap=False)
    assert report.passed  # 'all' expanded: unavailable ones are reported, not failed
    assert not ParityReport("ResNet18", "Paddle", 8, [ok, skipped], requested=["trt-fp16"]).passed
    suite = ElementTree.fromstring(report.to_junit())
    assert suite.get("skipped") == "1" and suite.get("failures") == "0"
    assert suite.find("properties/property[@name='judge_set']") is not None
    data = json.loads(report.to_json())
    assert data["results"][1]["reasons"] == ["no CUDA GPU"] and data["any_overlap"] is False
    assert "fingerprints" not in data["image_sets"]["judge"]
    assert "skip" in report.render() and "no CUDA GPU" in report.render()
    lenient = ParityReport("ResNet18", "Paddle", 120, [ok, leaky], image_sets=sets, shape_overlap=False)
    assert lenient.passed and json.loads(lenient.to_json())["results"][1]["calibration_overlap"] is True
    assert "PASS*" in lenient.render() and "not evidence" in lenient.render()
    strict = ParityReport("ResNet18", "Paddle", 120, [ok, leaky], image_sets=sets, shape_overlap=False, strict=True)
    assert not strict.passed and json.loads(strict.to_json())["any_overlap"] is True


def test_rebatch_keeps_every_image_in_order():
    batches = [np.arange(8).reshape(8, 1), np.arange(8, 13).reshape(5, 1)]
    again = rebatch(batches, 4)
    assert [len(b) for b in again] == [4, 4, 4, 4] and np.concatenate(again)[:13, 0].tolist() == list(range(13))


# --- a real model ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def checker(synthetic_model):
    return ParityChecker(synthetic_model("ResNet18", "json"), builtin_set("judge", 16), batch_size=8)


def test_report_names_every_set_and_finds_no_overlap_on_builtin_sets(checker):
    sets, shape_overlap = checker.image_sets()
    assert "matplotlib:grace_hopper.jpg" in sets["judge"]["sources"]
    assert sets["shape"]["role"] == "shape" and "astronaut.png" in sets["shape"]["provenance"]
    assert shape_overlap is False


def test_onnx_fp32_passes(checker):
    result = checker.check_backend("onnx")
    assert result.status == "pass", result.reasons
    assert result.metrics.max_abs <= PROFILES["fp32"].max_abs and result.metrics.top1_agreement == 1.0
    assert result.calibration_overlap is None  # nothing calibrated


def _perturbed_onnx(checker, tmp_path, factor: float):
    """The fp32 ONNX artifact with the middle convolution's weights scaled by ``factor``."""
    import onnx
    from onnx import numpy_helper

    good = convert_model(checker.model, "onnx")
    bad = tmp_path / f"bad-onnx-{factor}"
    shutil.copytree(good, bad)
    proto = onnx.load(str(artifact_model_file(bad)))
    inits = {t.name: t for t in proto.graph.initializer}
    convs = [node for node in proto.graph.node if node.op_type == "Conv"]
    weight = inits[convs[len(convs) // 2].input[1]]
    weight.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(weight) * np.float32(factor), weight.name))
    onnx.save(proto, str(artifact_model_file(bad)))
    return reseal(bad)  # a converter that got one weight wrong


def test_planted_fault_one_percent_on_a_middle_conv_fails_fp32(checker, tmp_path):
    with runtime_class("onnx")(_perturbed_onnx(checker, tmp_path, 1.01)) as runtime:
        result = checker.check("onnx (middle conv +1%)", runtime, PROFILES["fp32"])
    assert result.status == "fail"
    assert any("max abs diff" in r for r in result.reasons)


def test_planted_fault_bgr_input_fails(checker):
    artifact = convert_model(checker.model, "onnx")
    with runtime_class("onnx")(artifact) as runtime:
        result = checker.check("onnx (BGR)", runtime, PROFILES["fp32"], transform=lambda b: b[:, ::-1])
    assert result.status == "fail" and result.metrics.max_abs > 1e-3


def test_planted_fault_openvino_left_at_bf16_fails(checker):
    artifact = convert_model(checker.model, "openvino")
    with runtime_class("openvino")(artifact) as honest:
        assert checker.check("openvino", honest, PROFILES["fp32"]).status == "pass"
    with runtime_class("openvino")(artifact, precision_override="bf16") as runtime:
        if "bf16" not in runtime.details.get("inference_precision", ""):
            pytest.skip(f"this CPU runs {runtime.details.get('inference_precision')} when asked for bf16")
        result = checker.check("openvino (claims fp32, runs bf16)", runtime, PROFILES["fp32"])
    assert result.status == "fail"


def test_artifact_made_elsewhere_is_judged_by_what_it_computes(checker, tmp_path):
    """A bare fp16 ONNX file (no manifest): detected as fp16 and passes that profile; judged as fp32 it fails."""
    fp16 = artifact_model_file(convert_model(checker.model, "onnx-fp16"))
    bare = tmp_path / "from-elsewhere.onnx"
    shutil.copyfile(fp16, bare)
    detected = checker.check_artifact(bare)
    assert detected.profile == "fp16" and detected.status == "pass", detected.reasons
    as_fp32 = checker.check_artifact(bare, profile=PROFILES["fp32"])
    assert as_fp32.status == "fail" and any("max abs diff" in r for r in as_fp32.reasons)


def test_fixed_batch_file_is_rebatched(checker, tmp_path):
    """A file exported for batch 1 (as paddle2onnx's CLI or trtexec often make them) still sees every image."""
    import onnx

    source = artifact_model_file(convert_model(checker.model, "onnx"))
    proto = onnx.load(str(source))
    for value in (*proto.graph.input, *proto.graph.output):
        value.type.tensor_type.shape.dim[0].dim_value = 1
    onnx.save(proto, str(tmp_path / "batch1.onnx"))
    result = checker.check_artifact(tmp_path / "batch1.onnx")
    assert result.status == "pass", result.reasons
    assert result.metrics.images == 16


# --- int8: the evidence must be on data the quantizer never saw ---------------------------------------------------


@pytest.fixture(scope="module")
def int8_checker(synthetic_model):
    return ParityChecker(synthetic_model("ResNet18", "json"), builtin_set("judge", 100), batch_size=8)


def test_calibrating_on_the_judge_photos_is_flagged_and_strict_fails_it(int8_checker, tmp_path):
    from ppdeploy.parity import finish_report

    folder = tmp_path / "judge-copies"
    write_sample_folder(folder, 16, role="judge")  # JPEG/PNG copies of judge photos and their variations
    options = default_options(int8_checker.model, "onnx-int8", calib_images=folder, calib_count=16, max_drop=None)
    artifact = convert_model(int8_checker.model, "onnx-int8", options=options, out_dir=tmp_path / "leaky")
    from ppdeploy.artifacts import load_manifest

    calibration = load_manifest(artifact)["calibration_set"]
    with runtime_class("onnx")(artifact) as runtime:
        result = int8_checker.check("onnx-int8 (calibrated on judge photos)", runtime, PROFILES["int8"],
                                    calibration=calibration)
    assert result.calibration_overlap is True
    assert any("not evidence" in note for note in result.notes)
    report = finish_report(int8_checker, [result], [], strict=True)
    assert not report.passed and any("--strict" in r for r in report.results[0].reasons)
    assert json.loads(report.to_json())["results"][0]["calibration_overlap"] is True


def test_planted_fault_int8_weight_scale_off_by_two_fails(int8_checker, tmp_path):
    """The stem convolution's int8 weight scale doubled (its DequantizeLinear): the int8 profile fails it."""
    import onnx
    from onnx import numpy_helper

    good = convert_model(int8_checker.model, "onnx-int8")
    with runtime_class("onnx")(good) as runtime:
        honest = int8_checker.check("onnx-int8", runtime, PROFILES["int8"])
    bad = tmp_path / "bad-int8"
    shutil.copytree(good, bad)
    proto = onnx.load(str(artifact_model_file(bad)))
    inits = {t.name: t for t in proto.graph.initializer}
    weight_dq = [n for n in proto.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inits
                 and len(inits[n.input[0]].dims) == 4]  # the convolution weights' dequantizers
    scale = inits[weight_dq[0].input[1]]
    scale.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(scale) * np.float32(2.0), scale.name))
    onnx.save(proto, str(artifact_model_file(bad)))
    reseal(bad)  # a quantizer that got one scale wrong
    with runtime_class("onnx")(bad) as runtime:
        result = int8_checker.check("onnx-int8 (stem weight scale x2)", runtime, PROFILES["int8"])
    assert result.status == "fail", (result.metrics, honest.metrics)
    assert honest.metrics.mean_tv < result.metrics.mean_tv


# --- the command line ----------------------------------------------------------------------------------------------


def test_cli_parity_records_every_set_and_exits_zero(synthetic_model, tmp_path):
    from typer.testing import CliRunner

    from ppdeploy.cli import app

    synthetic_model("ResNet18", "json")  # exported once per session
    out = tmp_path / "report.json"
    junit = tmp_path / "report.xml"
    result = CliRunner().invoke(app, ["parity", "ResNet18", "--synthetic", "--backends", "onnx", "--count", "16",
                                      "--json", str(out), "--junit", str(junit)])
    assert result.exit_code == 0, result.output
    assert "judge set: built-in judge photos" in result.output and "shape set: built-in shape photos" in result.output
    data = json.loads(out.read_text())
    assert data["image_sets"]["judge"]["count"] == 16 and data["shape_overlap"] is False
    assert data["any_overlap"] is False and data["results"][0]["calibration_overlap"] is None
    assert ElementTree.parse(junit).getroot().find("properties/property[@name='shape_set']") is not None


def test_cli_artifact_errors_are_one_line_before_any_work(tmp_path):
    import subprocess
    import sys

    notes = tmp_path / "notes.txt"
    notes.write_text("not a model")
    for extra, needle in (([], "notes.txt"), (["--profile", "fp8"], "fp8")):
        run = subprocess.run([sys.executable, "-m", "ppdeploy.cli", "parity", "ResNet18", "--synthetic", "--artifact",
                              str(notes), *extra], capture_output=True, text=True, timeout=120)
        assert run.returncode == 1, run.stderr
        lines = [line for line in run.stderr.splitlines() if line.startswith("error:")]
        assert len(lines) == 1 and needle in lines[0] and "Traceback" not in run.stderr


def test_cli_exit_codes_tell_a_failed_verdict_from_could_not_run(checker, tmp_path):
    """4: a verdict failed (a planted fault); 1: a requested backend could not be checked; 0: all passed."""
    import subprocess
    import sys

    bad = artifact_model_file(_perturbed_onnx(checker, tmp_path, 1.01))
    runs = {}
    for label, args in (("fault", ["--artifact", str(bad)]), ("pass", ["--backends", "onnx"]),
                        ("skipped", ["--backends", "trt-fp16"])):
        runs[label] = subprocess.run([sys.executable, "-m", "ppdeploy.cli", "parity", "ResNet18", "--synthetic",
                                      "--count", "16", *args], capture_output=True, text=True, timeout=600)
    assert runs["fault"].returncode == 4, runs["fault"].stdout + runs["fault"].stderr
    assert "FAIL" in runs["fault"].stdout
    assert runs["pass"].returncode == 0, runs["pass"].stderr
    if not runtime_class("tensorrt").availability()[0]:
        assert runs["skipped"].returncode == 1 and "skip" in runs["skipped"].stdout
