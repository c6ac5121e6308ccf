"""PaddleRuntime: specs, details, both formats, and one-line errors for damaged or missing files."""

from __future__ import annotations

import shutil
import subprocess
import sys

import numpy as np
import pytest

from ppdeploy.errors import ArtifactError, BackendUnavailableError, ModelNotFoundError
from ppdeploy.registry import runtime_class
from ppdeploy.runtimes.paddle_infer import PaddleRuntime

pytest.importorskip("paddle")


@pytest.fixture(scope="module", params=["json", "pdmodel"])
def model(request, tiny_model):
    return tiny_model(request.param)


@pytest.fixture(scope="module")
def batch(tiny_golden):
    return tiny_golden.batch[:4]


def test_registered():
    assert runtime_class("paddle") is PaddleRuntime
    assert PaddleRuntime.record().devices == ("cpu", "gpu")


def test_details_and_batch_size_changes_nothing(model, batch):
    """Specs, batches 1 and 8 against the numpy golden and wrong inputs are the contract's (tests/test_contract.py)."""
    with PaddleRuntime(model.directory, threads=1) as runtime:
        assert runtime.details == {"precision": "fp32", "device": "cpu", "format": model.fmt,
                                   "onednn": "on", "threads": "1", "mode": "latency"}
        probs = runtime.infer(batch)
        assert probs.shape == (4, 1000) and probs.dtype == np.float32
        np.testing.assert_array_equal(runtime.infer(batch[:1]), probs[:1])  # batch size may change per call


def test_truncated_params_of_any_model_is_refused(model, tmp_path):
    """Paddle itself loads a cut .pdiparams of a small model and computes NaN (or, cut near the end, plausible wrong
    probabilities): the runtime checks the file first, as the ONNX path does."""
    copy = tmp_path / "model"
    shutil.copytree(model.directory, copy)
    params = copy / "inference.pdiparams"
    params.write_bytes(params.read_bytes()[: params.stat().st_size // 3])
    with pytest.raises(ArtifactError) as err:
        PaddleRuntime(copy)
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"{params} | truncated: tensor ")
    assert "export or download the model again" in message


def test_missing_params_is_model_not_found(model, tmp_path):
    copy = tmp_path / "model"
    shutil.copytree(model.directory, copy)
    (copy / "inference.pdiparams").unlink()
    with pytest.raises(ModelNotFoundError, match="inference.pdiparams \\| missing"):
        PaddleRuntime(copy)


def test_gpu_on_cpu_build_is_unavailable(model):
    import paddle

    if paddle.device.is_compiled_with_cuda() and paddle.device.cuda.device_count() > 0:
        pytest.skip("a CUDA GPU is present")
    with pytest.raises(BackendUnavailableError, match="backend 'paddle' on gpu"):
        PaddleRuntime(model.directory, device="gpu")


def test_runtime_modules_import_no_backend_library():
    code = ("import sys, ppdeploy.runtimes.paddle_infer, ppdeploy.runtimes.ort; "
            "print(sorted(m for m in ('paddle', 'onnxruntime', 'onnx') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
