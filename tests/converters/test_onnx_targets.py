"""ONNX targets (onnx, onnx-fp16, onnx-int8) from the tiny model in both Paddle formats: what each file holds,
int8 accuracy control, the cache key and the converters' errors. How close each one computes to the numpy golden,
at batch 1 and 8, is tests/test_contract.py; int8 top-1 on real ResNets is tests/test_zoo_parity.py."""

from __future__ import annotations

import dataclasses
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import tiny

from ppdeploy.artifacts import load_manifest
from ppdeploy.converters import onnx_graph, paddle_to_onnx
from ppdeploy.converters.base import ConvertOptions
from ppdeploy.converters.onnx_graph import MODEL_FILE
from ppdeploy.converters.pipeline import convert_model, default_options
from ppdeploy.errors import ConversionError
from ppdeploy.preprocess import PreprocessConfig, preprocess_batch

onnx = pytest.importorskip("onnx")

TARGETS = ("onnx", "onnx-fp16", "onnx-int8", "onnx-int8-qdq")
VAL_COUNT = 32  # validation images of the accuracy control in the fixtures (max_drop stays at the default 0.01)


@pytest.fixture(scope="module", params=["json", "pdmodel"])
def fmt(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def case(fmt, tiny_model, tmp_path_factory):
    """One Paddle model and its three ONNX artifacts (int8 with the default accuracy control)."""
    model = tiny_model(fmt)
    root = tmp_path_factory.mktemp(f"onnx-{fmt}")
    artifacts = {target: convert_model(model, target, out_dir=root / target,
                                       options=default_options(model, target, val_count=VAL_COUNT))
                 for target in TARGETS}
    return {"model": model, "artifacts": artifacts, "root": root}


def test_onnx_is_folded_with_symbolic_batch(case):
    manifest = load_manifest(case["artifacts"]["onnx"])
    model = onnx.load(str(case["artifacts"]["onnx"] / manifest["model_file"]))
    ops = {node.op_type for node in model.graph.node}
    assert "BatchNormalization" not in ops and "Constant" not in ops
    assert manifest["batchnorm_nodes"] == 0
    convs = sum(node.op_type == "Conv" for node in model.graph.node)
    assert manifest["batchnorm_folded"] == convs == len(tiny.conv_units())  # every conv had its BatchNorm
    assert manifest["optimize_tool"] == "none" and manifest["opset"] == 17
    assert manifest["paddle_format"] == case["model"].fmt
    for value in (model.graph.input[0], model.graph.output[0]):  # batches 1 and 8 run: tests/test_contract.py
        assert value.type.tensor_type.shape.dim[0].dim_param == onnx_graph.BATCH_DIM


def test_fp16_has_fp16_weights_and_fp32_io(case):
    manifest = load_manifest(case["artifacts"]["onnx-fp16"])
    model = onnx.load(str(case["artifacts"]["onnx-fp16"] / manifest["model_file"]))
    assert manifest["precision"] == "fp16"
    weights = [init for init in model.graph.initializer if len(init.dims) == 4]
    assert weights and all(init.data_type == onnx.TensorProto.FLOAT16 for init in weights)
    for value in (model.graph.input[0], model.graph.output[0]):
        assert value.type.tensor_type.elem_type == onnx.TensorProto.FLOAT


@pytest.mark.parametrize(("target", "symmetric"), [("onnx-int8", False), ("onnx-int8-qdq", True)])
def test_int8_forms_are_qdq_with_fp32_head(case, target, symmetric):
    """onnx-int8: uint8 activations with their zero points, int8 weights at zero (U8S8, ONNX Runtime's fast form);
    onnx-int8-qdq: every zero point 0 (what TensorRT accepts)."""
    from onnx import numpy_helper

    from ppdeploy.converters.onnx_int8 import check_qdq

    manifest = load_manifest(case["artifacts"][target])
    path = case["artifacts"][target] / manifest["model_file"]
    assert manifest["precision"] == "int8" and manifest["symmetric"] is symmetric and manifest["per_channel"]
    assert manifest["activation_type"] == ("int8" if symmetric else "uint8")
    assert manifest["calibration_count"] == 64 and len(manifest["calibration_hash"]) == 64
    assert check_qdq(path, symmetric=symmetric) == manifest["quantize_nodes"] > 0  # raises on a wrong zero point
    model = onnx.load(str(path))
    inits = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    zero_points = [inits[node.input[2]] for node in model.graph.node
                   if node.op_type == "QuantizeLinear" and len(node.input) > 2 and node.input[2] in inits]
    assert zero_points and {z.dtype for z in zero_points} == {np.dtype(np.int8 if symmetric else np.uint8)}
    if symmetric:
        assert all(not z.any() for z in zero_points)
    else:
        with pytest.raises(ConversionError, match="zero point"):  # the U8S8 file is not the TensorRT form
            check_qdq(path, symmetric=True)
    gemms = [node for node in model.graph.node if node.op_type in ("Gemm", "MatMul")]
    assert gemms and all(node.name in manifest["fp32_nodes"] for node in gemms)


def test_int8_accuracy_control_is_measured_and_honest(case, profile_agreement):
    """The recorded drop is what the artifact does against the fp32 ONNX on the validation images, within max_drop
    or said not to be; the layers the search put back in fp32 are excluded from quantization in the file."""
    from ppdeploy.converters.onnx_int8 import MAX_ROUNDS, run_onnx
    from ppdeploy.samples import image_set, overlap

    manifest = load_manifest(case["artifacts"]["onnx-int8"])
    control = manifest["quantization"]["accuracy_control"]
    assert control["enabled"] and control["metric"] == "top1_agreement" and control["max_drop"] == 0.01
    assert control["reached"] == (control["drop"] <= control["max_drop"])
    assert control["drop"] == pytest.approx(control["fp32_metric"] - control["int8_metric"])
    assert len(control["rounds"]) <= MAX_ROUNDS
    if control["reached"] is False:  # the plain quantization is kept rather than a near-fp32 model that misses too
        assert control["drop"] == control["drop_before"] and not control["fp32_layers"] and control["note"]
    assert not overlap(manifest["calibration_set"], control["validation_set"])["overlap"]
    assert control["validation_set"]["count"] == VAL_COUNT and control["validation_set"]["role"] == "validation"
    batch = preprocess_batch(image_set("validation", n=VAL_COUNT).images, PreprocessConfig(**manifest["preprocess"]))
    fp32, int8 = (case["artifacts"][t] / MODEL_FILE for t in ("onnx", "onnx-int8"))
    agreement = profile_agreement(run_onnx(fp32, batch), run_onnx(int8, batch))
    assert agreement == pytest.approx(control["int8_metric"])
    model = onnx.load(str(int8))
    dequantized = {out for node in model.graph.node if node.op_type == "DequantizeLinear" for out in node.output}
    for node in model.graph.node:
        if node.name in control["fp32_layers"]:
            assert node.name in manifest["fp32_nodes"] and not dequantized & set(node.input), node.name


def test_overlapping_calibration_and_validation_fail_before_quantizing(case, tmp_path, monkeypatch):
    """Copies of the calibration folder (another path, the same pictures) are refused as validation images."""
    import shutil

    from ppdeploy.converters import onnx_int8
    from ppdeploy.samples import write_sample_folder

    def forbidden(*args, **kwargs):
        raise AssertionError("nothing may be quantized")

    monkeypatch.setattr(onnx_int8, "Quantizer", forbidden)
    calib = tmp_path / "calib"
    write_sample_folder(calib, 6, role="calibration")
    copies = Path(shutil.copytree(calib, tmp_path / "copies"))
    (copies / "sample_0000.jpg").unlink()  # a subset of the same files still overlaps
    options = dataclasses.replace(default_options(case["model"], "onnx-int8"), calib_images=calib,
                                  calib_count=6, val_images=copies)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(ConversionError, match=r"share 5 source picture\(s\)") as err:
        onnx_int8.convert(case["artifacts"]["onnx"] / MODEL_FILE, out, options)
    assert "\n" not in str(err.value) and str(err.value).count(" | ") == 2
    assert not any(out.iterdir())


def test_int8_cache_is_rebuilt_when_max_drop_changes(case):
    """An artifact built without accuracy control is reused as such, and rebuilt when max_drop (or the validation
    set) changes. Small sets keep it quick; the onnx source beside it is the fixture's."""
    if case["model"].fmt != "json":
        pytest.skip("the cache key does not depend on the Paddle format: checked once, on the json model")
    out = case["root"] / "onnx-int8-cache"
    lines: list[str] = []

    def build(max_drop: float | None, val_count: int = 8) -> dict:
        options = default_options(case["model"], "onnx-int8", calib_count=8, val_count=val_count, max_drop=max_drop)
        convert_model(case["model"], "onnx-int8", options=options, out_dir=out, log=lines.append)
        return load_manifest(out)

    plain = build(max_drop=None)
    assert plain["max_drop"] is None and plain["quantization"]["accuracy_control"]["enabled"] is False
    assert build(max_drop=None)["artifact_id"] == plain["artifact_id"]
    loose = build(max_drop=0.9)
    assert loose["artifact_id"] != plain["artifact_id"] and loose["max_drop"] == 0.9
    assert loose["quantization"]["accuracy_control"]["max_drop"] == 0.9
    assert build(max_drop=0.9, val_count=9)["artifact_id"] != loose["artifact_id"]
    assert [line.split()[0] for line in lines if line.startswith(("Reusing onnx-int8", "Converting"))] == [
        "Converting", "Reusing", "Converting", "Converting"]


def test_exclusion_search_finds_the_smallest_count():
    from ppdeploy.converters.onnx_int8 import MAX_ROUNDS, search_smallest

    calls: list[int] = []

    def evaluate(count: int, needed: int = 11):
        calls.append(count)
        return f"model-{count}", count >= needed

    assert search_smallest(evaluate, 30, bool) == (11, ("model-11", True))
    assert calls == [1, 2, 4, 8, 16, 12, 10, 11]
    calls.clear()
    assert search_smallest(lambda count: evaluate(count, needed=31), 30, bool) is None
    assert calls == [1, 2, 4, 8, 16, 30]  # never every layer: the caller passes one less than it has
    calls.clear()
    assert search_smallest(lambda count: evaluate(count, needed=1000), 2000, bool) is None
    assert len(calls) == MAX_ROUNDS
    assert search_smallest(evaluate, 0, bool) is None


def test_no_polygraphy_autoinstall_left_set(case):
    # Conversions ran in this process (fixtures above); paddle2onnx's default sets this to "1" for good.
    assert os.environ.get(paddle_to_onnx.AUTOINSTALL_ENV) in (None, "0")
    assert paddle_to_onnx._child_env()[paddle_to_onnx.AUTOINSTALL_ENV] == "0"


def test_autoinstall_guard_restores_environment(monkeypatch):
    monkeypatch.setenv(paddle_to_onnx.AUTOINSTALL_ENV, "keep-me")
    with paddle_to_onnx.autoinstall_guard():
        assert os.environ[paddle_to_onnx.AUTOINSTALL_ENV] == "0"
        os.environ[paddle_to_onnx.AUTOINSTALL_ENV] = "1"  # what paddle2onnx's polygraphy path does
    assert os.environ[paddle_to_onnx.AUTOINSTALL_ENV] == "keep-me"
    monkeypatch.delenv(paddle_to_onnx.AUTOINSTALL_ENV)
    with paddle_to_onnx.autoinstall_guard():
        os.environ[paddle_to_onnx.AUTOINSTALL_ENV] = "1"
    assert paddle_to_onnx.AUTOINSTALL_ENV not in os.environ


@pytest.mark.parametrize("opset", [7, 12, 22, 23])
def test_opset_out_of_range_rejected_before_paddle2onnx(opset, tmp_path, monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("paddle2onnx must not run")

    monkeypatch.setattr(subprocess, "run", forbidden)
    out = tmp_path / "out"
    out.mkdir()
    # The source does not even exist: the opset is the first thing checked.
    with pytest.raises(ConversionError, match=rf"opset {opset} \| not supported \| choose an opset from 13 to 21"):
        paddle_to_onnx.convert(tmp_path / "inference.json", out, ConvertOptions(opset=opset))
    with pytest.raises(ConversionError, match="not supported"):
        paddle_to_onnx.run_paddle2onnx(tmp_path / "inference.json", tmp_path / "inference.pdiparams", opset)
    assert not any(out.iterdir())


def test_paddle2onnx_failure_is_one_line(tmp_path):
    src = tmp_path / "broken"
    src.mkdir()
    (src / "inference.json").write_text('{"not": "a paddle program"}')
    (src / "inference.pdiparams").write_bytes(bytes(64))
    with pytest.raises(ConversionError) as err:
        paddle_to_onnx.convert(src / "inference.json", tmp_path / "out", ConvertOptions())
    message = str(err.value)
    assert "\n" not in message and "paddle2onnx failed" in message and str(src / "inference.json") in message


def test_missing_params_file_named(tmp_path):
    (tmp_path / "inference.json").write_text("{}")
    with pytest.raises(ConversionError, match="inference.pdiparams \\| missing"):
        paddle_to_onnx.convert(tmp_path / "inference.json", tmp_path, ConvertOptions())


def test_fold_batchnorm_is_exact():
    """Conv(+bias) → BatchNorm folds to one Conv with the same outputs; a BN after a non-Conv stays."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    params = {"w": rng.standard_normal((4, 3, 3, 3)), "b": rng.standard_normal(4),
              "scale": rng.random(4) + 0.5, "bias": rng.standard_normal(4),
              "mean": rng.standard_normal(4) * 0.1, "var": rng.random(4) + 0.5}
    inits = [numpy_helper.from_array(value.astype(np.float32), name) for name, value in params.items()
             if name != "scale"]
    inits += [numpy_helper.from_array(value.astype(np.float32), f"{name}2") for name, value in params.items()
              if name in ("scale", "bias", "mean", "var")]
    # paddle2onnx keeps weights in Constant nodes: one here too.
    nodes = [helper.make_node("Constant", [], ["scale"],
                              value=numpy_helper.from_array(params["scale"].astype(np.float32))),
             helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("BatchNormalization", ["c", "scale", "bias", "mean", "var"], ["y"], epsilon=1e-3),
             helper.make_node("Relu", ["y"], ["r"]),
             helper.make_node("BatchNormalization", ["r", "scale2", "bias2", "mean2", "var2"], ["out"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 4, 8, 8])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    folded = onnx_graph.fold_batchnorm(model)
    assert [node.op_type for node in folded.graph.node] == ["Conv", "Relu", "BatchNormalization"]
    assert {init.name for init in folded.graph.initializer}.isdisjoint({"w", "b", "scale", "mean"})
    x = rng.standard_normal((2, 3, 8, 8)).astype(np.float32)

    def run(m):
        return ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]

    np.testing.assert_allclose(run(folded), run(model), atol=1e-5)
