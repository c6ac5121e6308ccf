"""PaddleRuntime: specs, details, both formats, and one-line errors for damaged or missing files."""

from __future__ import annotations

import shutil
import subprocess
import sys

import numpy as np
import pytest

from ppdeploy.errors import ArtifactError, BackendUnavailableError, InputSpecError, ModelNotFoundError
from ppdeploy.registry import runtime_class
from ppdeploy.runtimes.paddle_infer import PaddleRuntime

pytest.importorskip("paddle")


@pytest.fixture(scope="module", params=["json", "pdmodel"])
def model(request, synthetic_model):
    return synthetic_model("ResNet18", request.param)


@pytest.fixture(scope="module")
def batch(photos):
    from ppdeploy.preprocess import PreprocessConfig, preprocess_batch

    return preprocess_batch(photos[0][:4], PreprocessConfig())


def test_registered():
    assert runtime_class("paddle") is PaddleRuntime
    assert PaddleRuntime.record().devices == ("cpu", "gpu")


def test_specs_details_and_inference(model, batch):
    with PaddleRuntime(model.paddle.directory, threads=1) as runtime:
        assert runtime.inputs[0].shape == (None, 3, 224, 224) and runtime.inputs[0].dtype == "float32"
        assert runtime.outputs[0].shape == (None, 1000) and runtime.outputs[0].dtype == "float32"
        assert runtime.details == {"precision": "fp32", "device": "cpu", "format": model.paddle.fmt,
                                   "onednn": "on", "threads": "1"}
        probs = runtime.infer(batch)
        assert probs.shape == (4, 1000) and probs.dtype == np.float32
        np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-4)
        np.testing.assert_array_equal(runtime.infer(batch[:1]), probs[:1])  # batch size may change per call
        with pytest.raises(InputSpecError, match="expected float32 \\(N, 3, 224, 224\\)"):
            runtime.infer(batch[:, :, :200, :200])


def test_truncated_params_is_one_line_artifact_error(model, tmp_path):
    copy = tmp_path / "model"
    shutil.copytree(model.paddle.directory, copy)
    params = copy / "inference.pdiparams"
    params.write_bytes(params.read_bytes()[: params.stat().st_size // 3])
    with pytest.raises(ArtifactError) as err:
        PaddleRuntime(copy)
    message = str(err.value)
    assert "\n" not in message and "Traceback" not in message
    assert message.startswith(str(params) + " | Paddle cannot load the model")
    assert "export or download the model again" in message


def test_missing_params_is_model_not_found(model, tmp_path):
    copy = tmp_path / "model"
    shutil.copytree(model.paddle.directory, copy)
    (copy / "inference.pdiparams").unlink()
    with pytest.raises(ModelNotFoundError, match="inference.pdiparams \\| missing"):
        PaddleRuntime(copy)


def test_gpu_on_cpu_build_is_unavailable(model):
    import paddle

    if paddle.device.is_compiled_with_cuda() and paddle.device.cuda.device_count() > 0:
        pytest.skip("a CUDA GPU is present")
    with pytest.raises(BackendUnavailableError, match="backend 'paddle' on gpu"):
        PaddleRuntime(model.paddle.directory, device="gpu")


def test_runtime_modules_import_no_backend_library():
    code = ("import sys, ppdeploy.runtimes.paddle_infer, ppdeploy.runtimes.ort; "
            "print(sorted(m for m in ('paddle', 'onnxruntime', 'onnx') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
