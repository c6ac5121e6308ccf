"""Foreign artifacts: precision read from what the file computes, adoption into runtime folders, one-line errors.

Every model here is built by the test from a tiny seeded ONNX CNN (Conv+Relu+GlobalAveragePool+Flatten+Gemm+
Softmax, a few KB), with the tools a user would use: onnxconverter-common, ONNX Runtime's quantizer, OpenVINO's
converter and NNCF. Nothing is read or written outside the test's temporary folders.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from ppdeploy.artifacts import load_manifest, write_manifest
from ppdeploy.errors import ArtifactError, BackendUnavailableError, DeployError, InputSpecError
from ppdeploy.foreign import ForeignArtifact, adopt_artifact, inspect_artifact
from ppdeploy.registry import runtime_class

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
ov = pytest.importorskip("openvino")

INPUT_SHAPE = [None, 3, 32, 32]
# file name → (backend, precision) that inspect_artifact must find
KINDS = {
    "tiny.onnx": ("onnx", "fp32"),
    "tiny_fp16.onnx": ("onnx", "fp16"),
    "tiny_int8.onnx": ("onnx", "int8"),
    "tiny_fp32.xml": ("openvino", "fp32"),
    "tiny_fp16.xml": ("openvino", "fp16"),
    "tiny_int8.xml": ("openvino", "int8"),
}
# Largest allowed difference from ONNX Runtime on the fp32 original (observed: 0, 5e-5, 1e-2, 2e-7, 5e-5, 3e-3).
TOLERANCE = {"fp32": 1e-5, "fp16": 1e-3, "int8": 5e-2}


def _random_batches(count: int, seed: int, batch: int = 1) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((batch, 3, 32, 32)).astype(np.float32) for _ in range(count)]


def tiny_cnn():
    """Conv(3→8, 3x3, pad 1)+Relu+GlobalAveragePool+Flatten+Gemm(8→10)+Softmax, seeded weights, batch dynamic."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weights = {"w": rng.standard_normal((8, 3, 3, 3)) * 0.3, "b": rng.standard_normal(8) * 0.1,
               "fc_w": rng.standard_normal((10, 8)) * 0.5, "fc_b": rng.standard_normal(10) * 0.1}
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["conv"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["conv"], ["relu"]),
             helper.make_node("GlobalAveragePool", ["relu"], ["pool"]),
             helper.make_node("Flatten", ["pool"], ["flat"], axis=1),
             helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["logits"], transB=1),
             helper.make_node("Softmax", ["logits"], ["y"], axis=1)]
    graph = helper.make_graph(
        nodes, "tiny_cnn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 32, 32])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])],
        [numpy_helper.from_array(value.astype(np.float32), name) for name, value in weights.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="ppdeploy-tests")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model, {name: value.astype(np.float32) for name, value in weights.items()}


def numpy_forward(weights: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    """The tiny CNN computed with numpy only (an independent check of the ONNX graph)."""
    padded = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    windows = np.lib.stride_tricks.sliding_window_view(padded, (3, 3), axis=(2, 3))  # N, C, H, W, 3, 3
    conv = np.einsum("nchwij,ocij->nohw", windows, weights["w"]) + weights["b"][None, :, None, None]
    pooled = np.maximum(conv, 0).mean(axis=(2, 3))
    logits = pooled @ weights["fc_w"].T + weights["fc_b"]
    exp = np.exp(logits - logits.max(axis=1, keepdims=True))
    return exp / exp.sum(axis=1, keepdims=True)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    """Every kind in ``KINDS``, built once for the module in its own temporary folder."""
    import nncf
    from onnxconverter_common import float16
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static

    folder = tmp_path_factory.mktemp("foreign")
    model, _ = tiny_cnn()
    onnx.save(model, folder / "tiny.onnx")
    onnx.save(float16.convert_float_to_float16(model, keep_io_types=True), folder / "tiny_fp16.onnx")

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter({"x": batch} for batch in _random_batches(8, seed=1))

        def get_next(self):
            return next(self.items, None)

    quantize_static(str(folder / "tiny.onnx"), str(folder / "tiny_int8.onnx"), Reader(), quant_format=QuantFormat.QDQ)
    ov.save_model(ov.convert_model(str(folder / "tiny.onnx")), str(folder / "tiny_fp32.xml"), compress_to_fp16=False)
    ov.save_model(ov.convert_model(str(folder / "tiny.onnx")), str(folder / "tiny_fp16.xml"), compress_to_fp16=True)
    quantized = nncf.quantize(ov.convert_model(str(folder / "tiny.onnx")), nncf.Dataset(_random_batches(8, seed=2)),
                              subset_size=8)
    ov.save_model(quantized, str(folder / "tiny_int8.xml"), compress_to_fp16=False)
    return {name: folder / name for name in KINDS}


@pytest.fixture(scope="module")
def batch() -> np.ndarray:
    return _random_batches(1, seed=3, batch=5)[0]


def ort_outputs(model_file: Path, batch: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(model_file), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": batch})[0]


def _message(error: pytest.ExceptionInfo) -> str:
    text = str(error.value)
    assert "\n" not in text, text
    return text


def _fingerprint(folder: Path) -> dict[str, tuple[str, int]]:
    """Each file's sha256 and mtime: proof that nothing was written to it."""
    return {p.name: (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns) for p in folder.iterdir()}


# --------------------------------------------------------------------------- inspect_artifact


def test_tiny_model_is_what_numpy_computes(models, batch):
    _, weights = tiny_cnn()
    np.testing.assert_allclose(ort_outputs(models["tiny.onnx"], batch), numpy_forward(weights, batch), atol=1e-6)


@pytest.mark.parametrize("name", list(KINDS))
def test_inspect_finds_backend_and_precision(models, name):
    backend, precision = KINDS[name]
    info = inspect_artifact(models[name])
    assert isinstance(info, ForeignArtifact)
    assert (info.backend, info.precision) == (backend, precision), info.evidence
    assert info.input_name == "x" and info.input_shape == INPUT_SHAPE
    assert info.model_file == models[name] and info.path == models[name]
    assert info.evidence["decided_by"]
    json.dumps(info.evidence)  # it goes into the manifest
    if backend == "openvino":
        assert info.data_files == (models[name].with_suffix(".bin"),)


def test_fp16_inside_fp32_io_is_fp16(models):
    """keep_io_types: the graph's IO stays float32, the Conv/Gemm weights are float16 inside."""
    model = onnx.load(str(models["tiny_fp16.onnx"]))
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    info = inspect_artifact(models["tiny_fp16.onnx"])
    assert info.precision == "fp16"
    assert set(info.evidence["io_dtypes"].values()) == {"float"}
    assert info.evidence["weight_dtypes"] == {"float16": 2}


def test_int8_evidence_counts_quantize_ops(models):
    onnx_info = inspect_artifact(models["tiny_int8.onnx"])
    assert onnx_info.evidence["quantize_ops"]["QuantizeLinear"] > 0
    assert onnx_info.evidence["quantize_ops"]["DequantizeLinear"] > 0
    ir_info = inspect_artifact(models["tiny_int8.xml"])
    assert ir_info.evidence["fake_quantize"] > 0


def test_compressed_ir_says_it_computes_in_f32(models):
    fp16 = inspect_artifact(models["tiny_fp16.xml"])
    assert fp16.evidence["weight_types"] == {"f16": 2}
    assert "decompresses" in fp16.evidence["note"] and "f32" in fp16.evidence["note"]
    fp32 = inspect_artifact(models["tiny_fp32.xml"])
    assert fp32.evidence["weight_types"] == {"f32": 2} and "note" not in fp32.evidence


def test_folder_with_one_model_file(models, tmp_path):
    shutil.copy(models["tiny_fp16.xml"], tmp_path / "inference.xml")
    shutil.copy(models["tiny_fp16.xml"].with_suffix(".bin"), tmp_path / "inference.bin")
    (tmp_path / "inference.yml").write_text("Global: {}\n")
    info = inspect_artifact(tmp_path)
    assert info.path == tmp_path and info.model_file == tmp_path / "inference.xml"
    assert (info.backend, info.precision) == ("openvino", "fp16")


def test_ppdeploy_folder_is_inspected_not_trusted(models, tmp_path):
    shutil.copy(models["tiny_fp16.onnx"], tmp_path / "model.onnx")
    write_manifest(tmp_path, {"model_file": "model.onnx", "backend": "onnx", "precision": "fp32"})
    for given in (tmp_path, tmp_path / "manifest.json"):
        info = inspect_artifact(given)
        assert info.precision == "fp16" and info.model_file == tmp_path / "model.onnx"
        assert info.evidence["manifest_precision"] == "fp32"


def test_input_that_is_not_float32_is_noted(models, tmp_path):
    from onnxconverter_common import float16

    model, _ = tiny_cnn()
    onnx.save(float16.convert_float_to_float16(model, keep_io_types=False), tmp_path / "all_fp16.onnx")
    info = inspect_artifact(tmp_path / "all_fp16.onnx")
    assert info.precision == "fp16" and "input 'x' is float16" in info.evidence["input_note"]
    assert "input_note" not in inspect_artifact(models["tiny_fp16.onnx"]).evidence  # keep_io_types: float32 IO


# --------------------------------------------------------------------------- adopt_artifact + the real runtimes


@pytest.mark.parametrize("name", list(KINDS))
def test_adopted_folder_runs_like_onnxruntime(models, batch, tmp_path, name):
    info = inspect_artifact(models[name])
    folder = adopt_artifact(info, tmp_path)
    with runtime_class(info.backend)(folder, threads=1) as runtime:
        output = runtime.infer(batch)
        details = dict(runtime.details)
    reference = ort_outputs(models["tiny.onnx"], batch)
    assert output.shape == (5, 10) and output.dtype == np.float32
    np.testing.assert_allclose(output, reference, atol=TOLERANCE[info.precision], rtol=0)
    if info.precision == "fp16":
        assert np.abs(output - reference).max() > 0  # the fp16 weights really are in there
    if info.backend == "onnx":  # the same file run directly: the adopted folder changes nothing
        np.testing.assert_allclose(output, ort_outputs(models[name], batch), atol=1e-5, rtol=0)
    assert details["precision"] == info.precision
    if info.backend == "openvino":
        assert details["inference_precision"] == "f32"


@pytest.mark.parametrize("name", ["tiny.onnx", "tiny_fp16.xml"])
def test_adopted_manifest(models, tmp_path, name):
    info = inspect_artifact(models[name])
    folder = adopt_artifact(info, tmp_path)
    assert folder.parent == tmp_path
    manifest = load_manifest(folder)
    assert manifest["foreign"] is True and manifest["source_path"] == str(models[name])
    assert manifest["backend"] == info.backend and manifest["precision"] == info.precision
    assert manifest["model_file"] == models[name].name
    assert manifest["input_name"] == "x" and manifest["input_shape"] == INPUT_SHAPE
    assert manifest["precision_evidence"] == info.evidence
    for linked in [info.model_file, *info.data_files]:
        assert (folder / linked.name).resolve() == linked.resolve()
    if info.backend == "openvino":
        assert manifest["inference_precision"] == "f32" and manifest["weights_precision"] == "fp16"
        assert set(manifest["files"]) == {"tiny_fp16.xml", "tiny_fp16.bin"}


def test_onnx_external_data_is_checked_and_linked(batch, tmp_path):
    model, _ = tiny_cnn()
    source = tmp_path / "source"
    source.mkdir()
    onnx.save_model(model, source / "big.onnx", save_as_external_data=True, all_tensors_to_one_file=True,
                    location="big.onnx.data", size_threshold=0)
    info = inspect_artifact(source / "big.onnx")
    assert info.data_files == (source / "big.onnx.data",) and info.precision == "fp32"
    folder = adopt_artifact(info, tmp_path / "adopted")
    assert (folder / "big.onnx.data").resolve() == (source / "big.onnx.data").resolve()
    with runtime_class("onnx")(folder, threads=1) as runtime:
        np.testing.assert_allclose(runtime.infer(batch), ort_outputs(source / "big.onnx", batch), atol=1e-5, rtol=0)
    (source / "big.onnx.data").unlink()
    with pytest.raises(ArtifactError) as error:
        inspect_artifact(source / "big.onnx")
    assert "big.onnx.data' missing" in _message(error)


def test_adopt_leaves_the_users_files_alone_and_is_repeatable(models, tmp_path):
    before = _fingerprint(models["tiny.onnx"].parent)
    info = inspect_artifact(models["tiny_int8.xml"])
    first = adopt_artifact(info, tmp_path)
    with runtime_class("openvino")(first, threads=1) as runtime:
        runtime.infer(_random_batches(1, seed=4)[0])
    second = adopt_artifact(info, tmp_path)
    assert first == second and sorted(p.name for p in tmp_path.iterdir()) == [first.name]
    shutil.rmtree(second)
    assert _fingerprint(models["tiny.onnx"].parent) == before


def test_openvino_inference_precision_can_be_asked_for(models, tmp_path):
    folder = adopt_artifact(inspect_artifact(models["tiny_fp16.xml"]), tmp_path, inference_precision="fp16")
    assert load_manifest(folder)["inference_precision"] == "f16"
    with pytest.raises(InputSpecError) as error:
        adopt_artifact(inspect_artifact(models["tiny.onnx"]), tmp_path, inference_precision="f16")
    assert "takes none" in _message(error)
    with pytest.raises(InputSpecError):
        adopt_artifact(inspect_artifact(models["tiny_fp16.xml"]), tmp_path, inference_precision="fp8")


# --------------------------------------------------------------------------- bad input


# kind → (file name, its bytes from the built models or None for no file, write a .bin beside it, message part)
BAD_INPUTS = {
    "missing": ("nowhere.onnx", None, False, "no such file"),
    "text_file": ("notes.txt", lambda models: b"not a model\n", False, "unknown kind"),
    "xml_without_bin": ("lonely.xml", lambda models: models["tiny_fp32.xml"].read_bytes(), False,
                        "lonely.bin missing"),
    "corrupt_onnx": ("broken.onnx", lambda models: b"this is not an onnx model at all", False,
                     "not a readable ONNX model"),
    "truncated_onnx": ("truncated.onnx", lambda models: models["tiny.onnx"].read_bytes()[:300], False,
                       "not a readable ONNX model"),
    "empty_onnx": ("empty.onnx", lambda models: b"", False, "empty file"),
    "corrupt_ir": ("garbled.xml", lambda models: b"<net><layers><layer", True, "not a readable OpenVINO IR"),
    "paddle_model": ("inference.pdmodel", lambda models: b"\0" * 16, False, "Paddle model"),
}


@pytest.mark.parametrize("kind", list(BAD_INPUTS))
def test_bad_input_is_a_one_line_artifact_error(models, tmp_path, kind):
    name, content, with_bin, says = BAD_INPUTS[kind]
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content(models))
    if with_bin:
        path.with_suffix(".bin").write_bytes(b"\0" * 16)
    with pytest.raises(ArtifactError) as error:
        inspect_artifact(path)
    assert isinstance(error.value, DeployError)
    message = _message(error)
    assert path.name in message and says in message


def test_folder_without_exactly_one_model(models, tmp_path):
    with pytest.raises(ArtifactError) as error:
        inspect_artifact(tmp_path)
    assert "holds no .onnx" in _message(error)
    shutil.copy(models["tiny.onnx"], tmp_path / "a.onnx")
    shutil.copy(models["tiny_fp16.onnx"], tmp_path / "b.onnx")
    with pytest.raises(ArtifactError) as error:
        inspect_artifact(tmp_path)
    assert "a.onnx, b.onnx" in _message(error) and "give the model file itself" in str(error.value)


# --------------------------------------------------------------------------- TensorRT


@pytest.mark.skipif(runtime_class("tensorrt").availability()[0], reason="TensorRT and a CUDA GPU are present")
def test_engine_without_tensorrt_is_unavailable_with_the_reason(tmp_path):
    engine = tmp_path / "resnet.plan"
    engine.write_bytes(b"\0" * 64)
    with pytest.raises(BackendUnavailableError) as error:
        inspect_artifact(engine)
    message = _message(error)
    assert "resnet.plan" in message and "NVIDIA GPU" in message and "gpu extra" in message


def _layer(kind: str, fmt: str, tactic: str = "") -> dict:
    tensor = {"Name": "t", "Format/Datatype": fmt}
    return {"Name": f"/{kind}", "LayerType": kind, "Inputs": [tensor], "Outputs": [tensor], "TacticName": tactic}


# What the TensorRT inspector reports (detailed, or layer names only) → precision and compute precision.
ENGINE_LAYERS = {
    "detailed_fp32": ([_layer("CaskConvolution", "Row major linear FP32")], "fp32", "f32"),
    "detailed_fp16": ([_layer("Reformat", "Row major linear FP32"), _layer("CaskConvolution", "Half")], "fp16", "f16"),
    "detailed_int8": ([_layer("CaskConvolution", "Thirty-two wide channel vectorized row major Int8 format")],
                      "int8", "int8"),
    "detailed_tf32": ([_layer("CaskConvolution", "Float", "sm80_xmma_fprop_implicit_gemm_tf32f32_tf32f32")],
                      "fp16", "tf32"),
    "names_only": (["/conv/Conv + /relu/Relu", "/fc/Gemm"], "fp32", "f32"),
    "names_only_qdq": (["/conv/QuantizeLinear", "/conv/Conv"], "int8", "int8"),
}


@pytest.mark.parametrize("kind", list(ENGINE_LAYERS))
def test_engine_precision_from_inspector_layers(kind):
    from ppdeploy.foreign.tensorrt_files import engine_precision

    layers, precision, compute = ENGINE_LAYERS[kind]
    found, evidence = engine_precision(layers, {"x": "float", "y": "float"})
    assert (found, evidence["inference_precision"]) == (precision, compute), evidence
    assert evidence["tf32"] == ("unknown" if kind.startswith("names") else kind == "detailed_tf32")
    if kind.startswith("names"):
        assert "profilingVerbosity=detailed" in evidence["note"]


@pytest.mark.gpu
def test_engine_is_inspected_adopted_and_run(models, batch, tmp_path):
    if importlib.util.find_spec("tensorrt") is None:
        pytest.skip("tensorrt is not importable (needs an NVIDIA GPU and the gpu extra)")
    ok, reason = runtime_class("tensorrt").availability()
    if not ok:
        pytest.skip(reason)
    from ppdeploy.converters import onnx_to_trt
    from ppdeploy.converters.base import ConvertOptions

    build = tmp_path / "build"
    build.mkdir()
    onnx_to_trt.convert(models["tiny.onnx"], build, ConvertOptions(target="trt-fp32", input_size=32, max_batch=8))
    info = inspect_artifact(build / "model.engine")
    assert (info.backend, info.precision, info.input_name) == ("tensorrt", "fp32", "x")
    assert info.input_shape == INPUT_SHAPE
    folder = adopt_artifact(info, tmp_path / "adopted")
    with runtime_class("tensorrt")(folder) as runtime:
        output = runtime.infer(batch)
    np.testing.assert_allclose(output, ort_outputs(models["tiny.onnx"], batch), atol=1e-4, rtol=0)
