"""The Open Inference Protocol (KServe v2) in ``deploy serve``, driven by the real ``tritonclient.http``.

A real uvicorn server on loopback serves the tiny model (``tests/tiny.py``) on ONNX Runtime. The judge photos are
the real files of the ``judge`` role (never used to build the tiny model's weights). References are independent
of the server: ``deploy run --json`` on the same file, ``Classifier.predict`` with batch size 1, Paddle Inference
on the same preprocessed batch, and the ONNX graph read with ``onnx``.
"""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
httpclient = pytest.importorskip("tritonclient.http")

from tritonclient.utils import InferenceServerException

from ppdeploy.serving import ServeSettings, create_app, serve_in_thread

SETTINGS = {"max_batch": 8, "max_delay_ms": 20, "max_images": 8, "max_pixels": 4_000_000}


def _jpeg(rgb: np.ndarray) -> bytes:
    import cv2

    return cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))[1].tobytes()


def _bytes_input(images: list[bytes]):
    tensor = httpclient.InferInput("image", [len(images)], "BYTES")
    tensor.set_data_from_numpy(np.array(images, dtype=object))
    return tensor


def _metric(url: str, name: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(httpx.get(f"{url}/metrics").text):
        for sample in family.samples:
            if sample.name == name:
                return sample.value
    return 0.0


@pytest.fixture(scope="module")
def judge_files():
    from ppdeploy.samples import sample_photo_paths

    return sample_photo_paths("judge")  # the real JPEG files, read where their package installed them


@pytest.fixture(scope="module")
def eight_jpegs(judge_files):
    """The 3 judge photo files as they are, then 5 judge variations encoded as JPEG."""
    from ppdeploy.samples import sample_images

    return [path.read_bytes() for path in judge_files] + [_jpeg(img) for img in sample_images(8, role="judge")[3:]]


@pytest.fixture(scope="module")
def served(onnx_classifier):
    settings = ServeSettings(port=0, **SETTINGS)
    with serve_in_thread(create_app(onnx_classifier, settings), settings) as (url, _):
        client = httpclient.InferenceServerClient(url.removeprefix("http://"), network_timeout=60)
        try:
            yield client, url, onnx_classifier.model.name
        finally:
            client.close()


def test_server_and_model_ready_and_metadata_from_the_artifact(served, onnx_classifier):
    import onnx

    client, url, name = served
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready(name) and client.is_model_ready(name, "1")
    assert not client.is_model_ready("ResNet50") and not client.is_model_ready(name, "2")
    assert "binary_tensor_data" in client.get_server_metadata()["extensions"]
    graph = onnx.load(onnx_classifier.artifact_dir / "model.onnx").graph
    dims = [d.dim_value or -1 for d in graph.input[0].type.tensor_type.shape.dim]
    meta = client.get_model_metadata(name)
    assert meta["name"] == name and meta["versions"] == ["1"]
    assert {"name": "image", "datatype": "BYTES", "shape": [-1]} in meta["inputs"]
    assert {"name": graph.input[0].name, "datatype": "FP32", "shape": [-1, *dims[1:]]} in meta["inputs"]
    classes = graph.output[0].type.tensor_type.shape.dim[1].dim_value
    assert meta["outputs"][0] == {"name": "probabilities", "datatype": "FP32", "shape": [-1, classes]}
    with pytest.raises(InferenceServerException, match="not served here"):
        client.get_model_metadata("ResNet50")
    assert httpx.head(f"{url}/v2/health/ready").status_code == 200


def test_one_jpeg_as_bytes_gives_the_top5_of_deploy_run_json(served, model_dir, judge_files):
    from typer.testing import CliRunner

    from ppdeploy.cli import app

    client, _, name = served
    photo = judge_files[0]
    done = CliRunner().invoke(app, ["run", "--model", str(model_dir), "--backend", "onnx", "--images", str(photo),
                                    "--json"])
    assert done.exit_code == 0, done.output
    expected = json.loads(done.stdout.strip().splitlines()[-1])
    outputs = [httpclient.InferRequestedOutput(n) for n in ("topk_ids", "topk_scores", "topk_labels")]
    outputs.append(httpclient.InferRequestedOutput("probabilities", class_count=5))  # Triton's classification
    result = client.infer(name, [_bytes_input([photo.read_bytes()])], outputs=outputs)
    assert result.as_numpy("topk_ids")[0].tolist() == expected["class_ids"]
    assert np.round(result.as_numpy("topk_scores")[0].astype(np.float64), 5).tolist() == expected["scores"]
    assert [label.decode() for label in result.as_numpy("topk_labels")[0]] == expected["label_names"]
    classified = [item.decode().split(":", 2) for item in result.as_numpy("probabilities")[0]]
    assert [int(index) for _, index, _ in classified] == expected["class_ids"]
    assert [label for _, _, label in classified] == expected["label_names"]


def test_preprocessed_fp32_batch_within_the_fp32_parity_bound_of_paddle(served, model_dir, onnx_classifier):
    from ppdeploy.classifier import Classifier
    from ppdeploy.preprocess import preprocess_batch
    from ppdeploy.profiles import PROFILES
    from ppdeploy.samples import sample_images

    client, _, name = served
    batch = preprocess_batch(sample_images(8, role="judge"), onnx_classifier.preprocess)
    input_name = onnx_classifier.runtime.inputs[0].name
    with Classifier(model_dir, "paddle") as paddle:
        reference = paddle.runtime.infer(batch)
    # The binary extension with all 8 images; plain JSON both ways with 2 (8 images of JSON floats pass 20 MiB).
    for binary, count in ((True, 8), (False, 2)):
        tensor = httpclient.InferInput(input_name, [count, *batch.shape[1:]], "FP32")
        tensor.set_data_from_numpy(batch[:count], binary_data=binary)
        output = httpclient.InferRequestedOutput("probabilities", binary_data=binary)
        probs = client.infer(name, [tensor], outputs=[output]).as_numpy("probabilities")
        assert probs.shape == reference[:count].shape
        assert np.abs(probs - reference[:count]).max() <= PROFILES["fp32"].max_abs
        assert (probs.argmax(1) == reference[:count].argmax(1)).all()


def test_batch_of_8_jpegs_in_one_request_equals_each_alone(served, onnx_classifier, eight_jpegs, tmp_path):
    client, url, name = served
    alone = []
    for index, data in enumerate(eight_jpegs):
        (tmp_path / f"{index}.jpg").write_bytes(data)
        (record,), = list(onnx_classifier.predict(tmp_path / f"{index}.jpg", batch_size=1))
        alone.append((record["class_ids"], record["scores"]))
    images_before = _metric(url, "ppdeploy_batch_size_sum")
    outputs = [httpclient.InferRequestedOutput("topk_ids"), httpclient.InferRequestedOutput("topk_scores")]
    result = client.infer(name, [_bytes_input(eight_jpegs)], outputs=outputs)
    ids, scores = result.as_numpy("topk_ids"), result.as_numpy("topk_scores").astype(np.float64)
    assert ids.shape == (8, 5)
    assert [(i.tolist(), np.round(s, 5).tolist()) for i, s in zip(ids, scores)] == alone
    assert _metric(url, "ppdeploy_batch_size_sum") - images_before == 8


def _malformed(name: str, input_name: str, photo: bytes) -> dict:
    fp32 = np.zeros((1, 3, 100, 100), np.float32).tobytes()
    json_header = json.dumps({"inputs": [{"name": input_name, "shape": [1, 3, 100, 100], "datatype": "FP32",
                                          "parameters": {"binary_data_size": len(fp32)}}]}).encode()
    short = json.dumps({"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES",
                                    "parameters": {"binary_data_size": 10}}]}).encode()

    def body(inputs, **extra):
        return {"content": json.dumps({"inputs": inputs, **extra})}

    image = {"name": "image", "shape": [1], "datatype": "BYTES", "data": ["not an image"]}
    return {  # case: (path, request, status, text in the error)
        "unknown model": ("/v2/models/ResNet50/infer", body([image]), 404, "not served here"),
        "unknown version": (f"/v2/models/{name}/versions/7/infer", body([image]), 404, "version"),
        "not JSON": (f"/v2/models/{name}/infer", {"content": b"{inputs"}, 400, "malformed"),
        "no inputs": (f"/v2/models/{name}/infer", body([]), 400, "'inputs'"),
        "unknown input": (f"/v2/models/{name}/infer", body([{**image, "name": "pixels"}]), 400, "unknown"),
        "wrong datatype": (f"/v2/models/{name}/infer", body([{**image, "datatype": "INT8", "data": [1]}]), 400,
                           "send BYTES"),
        "shape and data disagree": (f"/v2/models/{name}/infer", body([{**image, "shape": [2]}]), 400,
                                    "holds 2 elements"),
        "wrong FP32 shape": (f"/v2/models/{name}/infer", {"content": json_header + fp32, "headers": {
            "Inference-Header-Content-Length": str(len(json_header))}}, 400, "send FP32"),
        "binary data shorter than declared": (f"/v2/models/{name}/infer", {"content": short + b"\x05\0\0\0ab",
                                              "headers": {"Inference-Header-Content-Length": str(len(short))}},
                                              400, "binary_data_size"),
        "not an image": (f"/v2/models/{name}/infer", body([image]), 400, "not an image"),
        "unknown output": (f"/v2/models/{name}/infer", body([image], outputs=[{"name": "logits"}]), 400,
                           "output 'logits'"),
        "topk out of range": (f"/v2/models/{name}/infer", body([image], parameters={"topk": 0}), 400, "topk=0"),
        "too many images": (f"/v2/models/{name}/infer", {"content": json.dumps({"inputs": [{
            "name": "image", "shape": [9], "datatype": "BYTES", "data": ["x"] * 9}]})}, 413, "limit is 8"),
    }


def test_malformed_requests_get_a_4xx_with_a_message_and_the_next_is_served(served, onnx_classifier, judge_files):
    client, url, name = served
    photo = judge_files[1].read_bytes()
    cases = _malformed(name, onnx_classifier.runtime.inputs[0].name, photo)
    failures = []
    with httpx.Client(base_url=url, timeout=60) as http:
        for case, (path, request, status, text) in cases.items():
            answer = http.post(path, **request)
            error = answer.json().get("error", "") if answer.headers["content-type"] == "application/json" else ""
            if answer.status_code != status or text not in error:
                failures.append(f"{case}: {answer.status_code} {answer.text[:200]}")
    assert not failures, failures
    with pytest.raises(InferenceServerException) as refused:  # as tritonclient users see a refusal
        client.infer(name, [_bytes_input([b"GIF89a but no image"])])
    assert refused.value.status() == "400" and "image[0]" in refused.value.message()
    result = client.infer(name, [_bytes_input([photo])])
    assert result.as_numpy("probabilities").shape == (1, onnx_classifier.runtime.outputs[0].shape[-1])


def test_load_test_v2_mode_checks_every_answer(served, eight_jpegs):
    from ppdeploy.serving.loadtest import load_test

    _, url, _ = served
    ready, results = asyncio.run(load_test(url, eight_jpegs[:4], [1, 4], 16, warmup=2, protocol="v2"))
    assert ready["status"] == "ready"
    for level in results:
        assert (level.requests, level.failed, level.mismatched) == (16, 0, 0)
        assert level.mean_batch >= 1.0
