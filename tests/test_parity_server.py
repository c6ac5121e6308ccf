"""deploy parity --server: a running server is judged through the Open Inference Protocol like any backend."""

from __future__ import annotations

import subprocess
import sys

import pytest

from ppdeploy.parity import parity
from ppdeploy.serving import ServeSettings, create_app, serve_in_thread


@pytest.mark.parametrize("backend", ["openvino", "openvino-int8"])
def test_a_served_backend_passes_its_profile(tiny_model, backend):
    """fp32 on the tiny model; int8 on a real architecture (ResNet18_vd, synthetic weights: the tiny model's 22k
    parameters quantize worse than any ResNet, and the zoo suite converts this one anyway)."""
    from ppdeploy.classifier import Classifier

    real = backend.endswith("int8")
    source = "ResNet18_vd" if real else tiny_model("json").directory  # the zoo name shares the suite's cache entry
    settings = ServeSettings(port=0)
    with Classifier(source, backend, synthetic=real) as clf, \
            serve_in_thread(create_app(clf, settings), settings) as (url, _):
        report = parity(source, "", synthetic=real, server=url, count=120)  # int8 needs >= 100
    row = report.results[-1]
    assert row.status == "pass", row.reasons
    assert row.profile == ("int8" if backend.endswith("int8") else "fp32")
    assert backend in row.backend and row.metrics.images == 120
    assert row.details["server"] == url


def test_a_server_that_computes_wrong_fails(tiny_model):
    """A planted fault behind the protocol: the served runtime shifts every probability a little."""
    from ppdeploy.converters.pipeline import convert_model
    from ppdeploy.runtimes.ort import OrtRuntime

    class Skewed(OrtRuntime):
        def _infer(self, batch):
            return super()._infer(batch) * 0.97 + 0.03 / 1000

    settings = ServeSettings(port=0)
    with Skewed(convert_model(tiny_model("json"), "onnx")) as runtime, \
            serve_in_thread(create_app(runtime, settings), settings) as (url, _):
        report = parity(tiny_model("json").directory, "", server=url, server_backend="onnx", count=16)
    row = report.results[-1]
    assert row.status == "fail" and row.profile == "fp32"


def test_no_server_is_one_line():
    done = subprocess.run([sys.executable, "-m", "ppdeploy.cli", "parity", "ResNet18", "--synthetic", "--server",
                           "http://127.0.0.1:9", "--count", "8"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 1 and "cannot be reached" in done.stderr and "Traceback" not in done.stderr
