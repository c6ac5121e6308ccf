"""What is particular to the edge backends (MNN, ncnn) and not covered by the registry-driven suites
(tests/test_contract.py, tests/test_zoo_parity.py): the AveragePool rewrite that keeps pnnx from padding the ``_vd``
shortcut, MNN's fp16 weights rounded to nearest, a clean stdout despite MNN's import banner, and why ncnn-int8,
mnn-int8 and Paddle Lite are not targets."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ppdeploy.registry import targets

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

DOCS = Path(__file__).parents[2] / "docs" / "edge.md"


def _pool_graph(size: int) -> onnx.ModelProto:
    """One AveragePool as paddle2onnx writes the ``_vd`` shortcut's (kernel 2, stride 2, SAME_UPPER, ceil_mode)."""
    pool = helper.make_node("AveragePool", ["x"], ["y"], name="shortcut_pool", kernel_shape=[2, 2], strides=[2, 2],
                            auto_pad="SAME_UPPER", ceil_mode=1, count_include_pad=0)
    graph = helper.make_graph([pool], "pool",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, size, size])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, "H", "W"])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _block_means(x: np.ndarray) -> np.ndarray:
    n, c, h, w = x.shape
    return x.reshape(n, c, h // 2, 2, w // 2, 2).mean(axis=(3, 5))


def _ort(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    ort = pytest.importorskip("onnxruntime")
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def test_even_same_pools_get_explicit_zero_pads_and_compute_the_same():
    from ppdeploy.converters.onnx_to_ncnn import explicit_zero_pads, set_static_batch

    model = _pool_graph(8)
    set_static_batch(model)
    assert explicit_zero_pads(model) == ["shortcut_pool"]
    attrs = {a.name: helper.get_attribute_value(a) for a in model.graph.node[0].attribute}
    assert "auto_pad" not in attrs and attrs["pads"] == [0, 0, 0, 0] and attrs["count_include_pad"] == 0
    onnx.checker.check_model(model)
    x = np.random.default_rng(0).standard_normal((1, 4, 8, 8)).astype(np.float32)
    np.testing.assert_allclose(_ort(model, x), _block_means(x), rtol=1e-6, atol=1e-6)


def test_pools_that_really_pad_are_left_alone():
    from ppdeploy.converters.onnx_to_ncnn import explicit_zero_pads, set_static_batch

    model = _pool_graph(7)  # SAME on 7: output 4, one row and column of padding
    set_static_batch(model)
    before = model.SerializeToString()
    assert explicit_zero_pads(model) == [] and model.SerializeToString() == before


def test_pnnx_keeps_the_rewritten_pool_unpadded(tmp_path):
    """Through the real pnnx and ncnn: the rewritten pool is one ncnn Pooling, no Padding, and averages 2x2 blocks."""
    ncnn = pytest.importorskip("ncnn")
    from ppdeploy.converters.edge_tools import run_tool
    from ppdeploy.converters.onnx_to_ncnn import explicit_zero_pads, param_blobs, pnnx_binary, set_static_batch

    try:
        binary = pnnx_binary()
    except Exception as exc:
        pytest.skip(str(exc))
    model = _pool_graph(8)
    set_static_batch(model)
    explicit_zero_pads(model)
    onnx.save(model, str(tmp_path / "model.onnx"))
    run_tool([binary, "model.onnx", "inputshape=[1,4,8,8]", "fp16=0"], what="pnnx", cwd=tmp_path)
    layers = [line.split()[0] for line in (tmp_path / "model.ncnn.param").read_text().splitlines()[2:]]
    assert "Padding" not in layers and "Pooling" in layers, layers
    net = ncnn.Net()
    assert net.load_param(str(tmp_path / "model.ncnn.param")) == 0
    assert net.load_model(str(tmp_path / "model.ncnn.bin")) == 0
    blob_in, blob_out = param_blobs(tmp_path / "model.ncnn.param")
    x = np.random.default_rng(1).standard_normal((4, 8, 8)).astype(np.float32)
    with net.create_extractor() as extractor:
        extractor.input(blob_in, ncnn.Mat(x))
        _, out = extractor.extract(blob_out)
    np.testing.assert_allclose(np.array(out), _block_means(x[None])[0], rtol=1e-6, atol=1e-6)


def test_mnn_fp16_weights_are_rounded_to_nearest():
    from ppdeploy.converters.onnx_to_mnn import round_weights_to_fp16

    rng = np.random.default_rng(2)
    weight, bias, other = (rng.standard_normal(shape).astype(np.float32) for shape in ((4, 3, 3, 3), (4,), (4,)))
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"]), helper.make_node("Add", ["c", "k"], ["y"])]
    inits = [numpy_helper.from_array(a, n) for a, n in ((weight, "w"), (bias, "b"), (other.reshape(1, 4, 1, 1), "k"))]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph)
    assert round_weights_to_fp16(model) == 2
    after = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    for name, original in (("w", weight), ("b", bias)):
        value = after[name]
        assert value.dtype == np.float32 and np.array_equal(value.astype(np.float16).astype(np.float32), value)
        # nearest: within half a unit in the last place of fp16 (11 significant bits)
        assert np.all(np.abs(value - original) <= np.abs(original) * 2.0 ** -11 * 1.0001)
    np.testing.assert_array_equal(after["k"], other.reshape(1, 4, 1, 1))  # not a weight: untouched


def test_importing_mnn_keeps_stdout_clean():
    pytest.importorskip("MNN")
    code = "from ppdeploy.runtimes.mnn import import_mnn; import_mnn(); print('done')"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "done\n"  # MNN's "The device supports: ..." banner went to stderr


def test_missing_int8_targets_and_paddle_lite_are_explained():
    from ppdeploy.converters.onnx_to_ncnn import NO_INT8
    from ppdeploy.doctor import PADDLE_LITE, Diagnosis

    assert "ncnn-int8" not in targets() and "mnn-int8" not in targets()
    assert "ncnn2table" in NO_INT8
    text = DOCS.read_text()
    for needle in ("ncnn-int8", "ncnn2table", "mnn-int8", "Paddle Lite", "pip install --no-deps \"pnnx=="):
        assert needle in text, needle
    assert PADDLE_LITE in Diagnosis(cpu="cpu", isa={}, gpus=[]).render()
