"""The Open Inference Protocol over gRPC in ``deploy serve --grpc-port``, driven by the real ``tritonclient.grpc``.

A real uvicorn server on loopback serves the tiny model (``tests/tiny.py``) on ONNX Runtime, with its gRPC server in
the same event loop. References are independent of the gRPC path: the REST v2 endpoint (``tritonclient.http``),
``Classifier.predict`` with batch size 1, and the runtime's own ``infer`` on the same preprocessed batch. Typed
``contents`` (which ``tritonclient.grpc`` never sends) go through the generated stub directly.
"""

from __future__ import annotations

import numpy as np
import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
grpc = pytest.importorskip("grpc")
grpcclient = pytest.importorskip("tritonclient.grpc")
httpclient = pytest.importorskip("tritonclient.http")

from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from ppdeploy.serving import ServeSettings, create_app, serve_in_thread

SETTINGS = {"max_batch": 8, "max_delay_ms": 20, "max_images": 8, "max_pixels": 4_000_000}


def _bytes_input(images: list[bytes], client=grpcclient, name: str = "image"):
    tensor = client.InferInput(name, [len(images)], "BYTES")
    tensor.set_data_from_numpy(np.array(images, dtype=object))
    return tensor


def _metric(url: str, name: str, labels: dict | None = None) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(httpx.get(f"{url}/metrics").text):
        for sample in family.samples:
            if sample.name == name and (labels is None or sample.labels == labels):
                return sample.value
    return 0.0


@pytest.fixture(scope="module")
def served(onnx_classifier):
    settings = ServeSettings(port=0, grpc_port=0, **SETTINGS)
    app = create_app(onnx_classifier, settings)
    with serve_in_thread(app, settings) as (url, _):
        port = app.state.serving.grpc_port
        assert port, "the gRPC server did not report its port"
        client = grpcclient.InferenceServerClient(f"127.0.0.1:{port}")
        try:
            yield client, url, onnx_classifier.model.name, port
        finally:
            client.close()


@pytest.fixture(scope="module")
def judge_jpegs():
    from ppdeploy.samples import sample_photo_paths

    return [path.read_bytes() for path in sample_photo_paths("judge")]


def test_live_ready_and_metadata_equal_the_rest_endpoints(served):
    client, url, name, _ = served
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready(name) and client.is_model_ready(name, "1")
    assert not client.is_model_ready("ResNet50") and not client.is_model_ready(name, "2")
    server = client.get_server_metadata(as_json=True)
    assert server["name"] == "ppdeploy" and "classification" in server["extensions"]
    meta = client.get_model_metadata(name, as_json=True)
    rest = httpx.get(f"{url}/v2/models/{name}").json()
    assert meta["name"] == rest["name"] and meta["versions"] == rest["versions"] == ["1"]
    for key in ("inputs", "outputs"):  # protobuf's JSON writes int64 dims as strings
        assert [{**t, "shape": [int(d) for d in t["shape"]]} for t in meta[key]] == rest[key]


def test_unknown_model_is_not_found_and_other_methods_unimplemented(served, judge_jpegs):
    client, _, name, _ = served
    with pytest.raises(InferenceServerException) as refused:
        client.get_model_metadata("ResNet50")
    assert refused.value.status() == "StatusCode.NOT_FOUND" and "not served here" in refused.value.message()
    with pytest.raises(InferenceServerException) as refused:
        client.infer("ResNet50", [_bytes_input(judge_jpegs[:1])])
    assert refused.value.status() == "StatusCode.NOT_FOUND" and "'ResNet50'" in refused.value.message()
    with pytest.raises(InferenceServerException) as refused:
        client.get_model_config(name)
    assert refused.value.status() == "StatusCode.UNIMPLEMENTED"


def test_one_jpeg_as_bytes_gives_the_top5_of_rest_v2_and_the_classifier(served, onnx_classifier, judge_jpegs,
                                                                         tmp_path):
    client, url, name, _ = served
    photo = judge_jpegs[0]
    (tmp_path / "photo.jpg").write_bytes(photo)
    (record,), = list(onnx_classifier.predict(tmp_path / "photo.jpg", batch_size=1))
    names = ("topk_ids", "topk_scores", "topk_labels")
    result = client.infer(name, [_bytes_input([photo])], outputs=[grpcclient.InferRequestedOutput(n) for n in names])
    rest_client = httpclient.InferenceServerClient(url.removeprefix("http://"))
    try:
        rest = rest_client.infer(name, [_bytes_input([photo], httpclient)],
                                 outputs=[httpclient.InferRequestedOutput(n) for n in names])
    finally:
        rest_client.close()
    ids = result.as_numpy("topk_ids")[0].tolist()
    assert ids == rest.as_numpy("topk_ids")[0].tolist() == record["class_ids"]
    assert np.array_equal(result.as_numpy("topk_scores"), rest.as_numpy("topk_scores"))
    assert np.round(result.as_numpy("topk_scores")[0].astype(np.float64), 5).tolist() == record["scores"]
    assert [label.decode() for label in result.as_numpy("topk_labels")[0]] == record["label_names"]
    assert result.get_response().model_name == name and result.get_response().model_version == "1"


def test_preprocessed_fp32_batch_of_8_equals_the_runtime_output(served, onnx_classifier):
    from ppdeploy.preprocess import preprocess_batch
    from ppdeploy.samples import sample_images

    client, url, name, _ = served
    batch = preprocess_batch(sample_images(8, role="judge"), onnx_classifier.preprocess)
    reference = onnx_classifier.runtime.infer(batch)
    tensor = grpcclient.InferInput(onnx_classifier.runtime.inputs[0].name, list(batch.shape), "FP32")
    tensor.set_data_from_numpy(batch)
    images_before = _metric(url, "ppdeploy_images_total")
    probs = client.infer(name, [tensor]).as_numpy("probabilities")  # no outputs asked: probabilities
    assert probs.dtype == np.float32 and probs.shape == reference.shape
    assert np.abs(probs - reference).max() <= 1e-5
    assert _metric(url, "ppdeploy_images_total") - images_before == 8


def test_topk_parameter_and_classification_output(served, onnx_classifier, judge_jpegs, tmp_path):
    client, _, name, _ = served
    (tmp_path / "photo.jpg").write_bytes(judge_jpegs[1])
    (record,), = list(onnx_classifier.predict(tmp_path / "photo.jpg", batch_size=1))
    outputs = [grpcclient.InferRequestedOutput("topk_ids"), grpcclient.InferRequestedOutput("probabilities",
                                                                                           class_count=2)]
    result = client.infer(name, [_bytes_input([judge_jpegs[1]] * 2)], outputs=outputs, parameters={"topk": 3})
    assert result.as_numpy("topk_ids").tolist() == [record["class_ids"][:3]] * 2
    classified = [item.decode().split(":", 2) for item in result.as_numpy("probabilities")[0]]
    assert [int(index) for _, index, _ in classified] == record["class_ids"][:2]
    assert [out.name for out in result.get_response().outputs] == ["topk_ids", "probabilities"]
    with pytest.raises(InferenceServerException, match="topk=0"):
        client.infer(name, [_bytes_input(judge_jpegs[:1])], parameters={"topk": 0})


def test_typed_contents_give_the_answers_of_raw_contents(served, onnx_classifier, judge_jpegs):
    from ppdeploy.preprocess import preprocess_batch
    from ppdeploy.samples import sample_images

    client, _, name, port = served
    batch = preprocess_batch(sample_images(2, role="judge"), onnx_classifier.preprocess)
    tensor = grpcclient.InferInput(onnx_classifier.runtime.inputs[0].name, list(batch.shape), "FP32")
    tensor.set_data_from_numpy(batch)
    raw_probs = client.infer(name, [tensor]).as_numpy("probabilities")
    raw_ids = client.infer(name, [_bytes_input(judge_jpegs[:2])], outputs=[
        grpcclient.InferRequestedOutput("topk_ids")]).as_numpy("topk_ids")
    fp32 = service_pb2.ModelInferRequest.InferInputTensor(name=tensor.name(), datatype="FP32", shape=batch.shape)
    fp32.contents.fp32_contents.extend(batch.reshape(-1).tolist())
    image = service_pb2.ModelInferRequest.InferInputTensor(name="image", datatype="BYTES", shape=[2])
    image.contents.bytes_contents.extend(judge_jpegs[:2])
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        answer = stub.ModelInfer(service_pb2.ModelInferRequest(model_name=name, inputs=[fp32]))
        probs = np.frombuffer(answer.raw_output_contents[0], "<f4").reshape(raw_probs.shape)
        assert np.array_equal(probs, raw_probs)
        topk = service_pb2.ModelInferRequest.InferRequestedOutputTensor(name="topk_ids")
        answer = stub.ModelInfer(service_pb2.ModelInferRequest(model_name=name, inputs=[image], outputs=[topk]))
        assert list(answer.outputs[0].shape) == [2, 5]
        assert np.frombuffer(answer.raw_output_contents[0], "<i8").reshape(2, 5).tolist() == raw_ids.tolist()
        short = service_pb2.ModelInferRequest.InferInputTensor(name="image", datatype="BYTES", shape=[3])
        short.contents.bytes_contents.extend(judge_jpegs[:2])
        with pytest.raises(grpc.RpcError) as refused:
            stub.ModelInfer(service_pb2.ModelInferRequest(model_name=name, inputs=[short]))
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "holds 3 elements" in \
            refused.value.details()


def test_malformed_requests_get_invalid_argument_naming_the_input_and_are_counted(served, onnx_classifier,
                                                                                  judge_jpegs):
    client, url, name, _ = served
    input_name = onnx_classifier.runtime.inputs[0].name
    wrong_shape = grpcclient.InferInput(input_name, [1, 3, 100, 100], "FP32")
    wrong_shape.set_data_from_numpy(np.zeros((1, 3, 100, 100), np.float32))
    wrong_type = grpcclient.InferInput("image", [1], "INT8")
    wrong_type.set_data_from_numpy(np.zeros(1, np.int8))
    cases = {  # case: (inputs, text in the message)
        "wrong datatype": ([wrong_type], "input 'image' | got INT8"),
        "wrong shape": ([wrong_shape], f"input '{input_name}' | got FP32 [1, 3, 100, 100]"),
        "unknown input": ([_bytes_input(judge_jpegs[:1], name="pixels")], "input 'pixels' | unknown"),
        "not an image": ([_bytes_input([b"GIF89a but no image"])], "image[0]"),
    }
    before = _metric(url, "ppdeploy_requests_total", {"status": "400"})
    failures = []
    for case, (inputs, text) in cases.items():
        try:
            client.infer(name, inputs)
            failures.append(f"{case}: answered")
        except InferenceServerException as exc:
            if exc.status() != "StatusCode.INVALID_ARGUMENT" or text not in exc.message():
                failures.append(f"{case}: {exc.status()} {exc.message()}")
    assert not failures, failures
    assert _metric(url, "ppdeploy_requests_total", {"status": "400"}) - before == len(cases)
    with pytest.raises(InferenceServerException) as refused:
        client.infer(name, [_bytes_input(judge_jpegs[:1] * 9)])
    assert refused.value.status() == "StatusCode.RESOURCE_EXHAUSTED" and "limit is 8" in refused.value.message()
    limit = ServeSettings().max_request_bytes  # gRPC's own cap (4 MiB by default) is raised to it, not beyond
    for size, status in ((5 * 2**20, "StatusCode.INVALID_ARGUMENT"), (limit + 1, "StatusCode.RESOURCE_EXHAUSTED")):
        with pytest.raises(InferenceServerException) as refused:
            client.infer(name, [_bytes_input([b"\xff" * size])])
        assert refused.value.status() == status, refused.value.message()
    assert client.infer(name, [_bytes_input(judge_jpegs[:1])]).as_numpy("probabilities").shape[0] == 1


def test_load_test_grpc_mode_checks_every_answer(served, judge_jpegs):
    import asyncio

    from ppdeploy.serving.loadtest import load_test

    _, url, _, port = served
    ready, results = asyncio.run(load_test(url, judge_jpegs, [1, 4], 12, warmup=2, protocol="grpc",
                                           grpc_address=f"127.0.0.1:{port}"))
    assert ready["status"] == "ready" and ready["protocol"] == "grpc"
    for level in results:
        assert (level.requests, level.failed, level.mismatched) == (12, 0, 0)
        assert level.mean_batch >= 1.0


def test_grpc_port_with_the_ray_engine_is_refused_in_one_line(capsys):
    from ppdeploy.cli import main

    with pytest.raises(SystemExit) as exited:
        main(["serve", "ResNet50", "--synthetic", "--engine", "ray", "--grpc-port", "0"])
    assert exited.value.code == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == ["error: --grpc-port | is served by --engine local only | drop --grpc-port, or use --engine local"]


def test_busy_grpc_port_fails_in_one_line_before_the_model_loads(capsys, tmp_path):
    """The gRPC port is probed with the HTTP one, before any export or load (the model here does not even exist)."""
    import socket

    from ppdeploy.cli import main

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        with pytest.raises(SystemExit) as exited:
            main(["serve", str(tmp_path / "no-such-model"), "--port", "0", "--grpc-port", str(taken)])
    assert exited.value.code == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and f"127.0.0.1:{taken}" in lines[0] and "--grpc-port" in lines[0], lines
