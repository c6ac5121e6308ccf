"""``deploy serve``: a real uvicorn server on loopback, real HTTP through httpx, the tiny model (``tests/tiny.py``).

Every answer is compared with what the library gives the same image alone (``Classifier.predict`` with batch size
1, the path of ``deploy run``): class ids, label names and the 5-decimal scores must be equal, not close.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import threading
import time
from contextlib import contextmanager

import numpy as np
import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from ppdeploy.serving import ServeSettings, create_app, serve_in_thread

IMAGES = 8
MAIN = {"max_batch": 8, "max_delay_ms": 50, "max_request_bytes": 4_000_000, "max_images": 8, "max_pixels": 4_000_000}


def _jpeg(rgb: np.ndarray) -> bytes:
    import cv2

    ok, data = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    assert ok
    return data.tobytes()


def _png(rgb: np.ndarray) -> bytes:
    import cv2

    return cv2.imencode(".png", rgb)[1].tobytes()


def _alone(clf, uploads: list[bytes], folder) -> list[dict]:
    """Each image classified on its own, as ``deploy run`` does with one file."""
    expected = []
    for index, data in enumerate(uploads):
        path = folder / f"img_{index}.jpg"
        path.write_bytes(data)
        (record,), = list(clf.predict(path, batch_size=1))
        expected.append(_result(record))
    return expected


def _result(record: dict) -> dict:
    return {key: record[key] for key in ("class_ids", "scores", "label_names")}


@contextmanager
def _server(clf, **overrides):
    settings = ServeSettings(port=0, **overrides)
    app = create_app(clf, settings)
    with serve_in_thread(app, settings) as (url, server):
        yield url, app, server


def _metric(client, name: str, **labels) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    text = client.get("/metrics").text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return 0.0


async def _post_all(url: str, bodies: list[bytes], timeout_s: float = 60.0) -> list:
    limits = httpx.Limits(max_connections=len(bodies))
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=timeout_s) as client:
        return await asyncio.gather(*(client.post("/v1/classify", content=body) for body in bodies))


@pytest.fixture(scope="module")
def photos_jpeg():
    from ppdeploy.samples import sample_images

    return [_jpeg(image) for image in sample_images(IMAGES)]


@pytest.fixture(scope="module")
def expected(onnx_classifier, photos_jpeg, tmp_path_factory):
    return _alone(onnx_classifier, photos_jpeg, tmp_path_factory.mktemp("alone"))


@pytest.fixture(scope="module")
def served(onnx_classifier, expected):
    with _server(onnx_classifier, **MAIN) as (url, app, _), httpx.Client(base_url=url, timeout=60) as client:
        yield client, url, app


def _assert_serves(client, photos_jpeg, expected, index: int = 0) -> None:
    answer = client.post("/v1/classify", content=photos_jpeg[index])
    assert answer.status_code == 200, answer.text
    assert [_result(r) for r in answer.json()] == [expected[index]]


def test_health_ready_docs(served, model_dir):
    client, _, _ = served
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    info = ready.json()
    assert (info["model"], info["backend"], info["precision"]) == (model_dir.name, "onnx", "fp32")
    assert info["details"][0]["provider"] == "CPUExecutionProvider" and info["max_batch"] == 8
    assert "/v1/classify" in client.get("/openapi.json").json()["paths"]
    assert client.get("/docs").status_code == 200


def test_concurrent_clients_get_their_single_image_result(served, photos_jpeg, expected):
    client, url, _ = served
    images_before = _metric(client, "ppdeploy_batch_size_sum")
    batches_before = _metric(client, "ppdeploy_batch_size_count")
    singles_before = _metric(client, "ppdeploy_batch_size_bucket", le="1.0")
    order = [i % IMAGES for i in range(32)]
    started = time.monotonic()
    answers = asyncio.run(_post_all(url, [photos_jpeg[i] for i in order]))
    assert time.monotonic() - started < 30
    for index, answer in zip(order, answers):
        assert answer.status_code == 200, answer.text
        assert [_result(r) for r in answer.json()] == [expected[index]], f"image {index}"
    images = _metric(client, "ppdeploy_batch_size_sum") - images_before
    batches = _metric(client, "ppdeploy_batch_size_count") - batches_before
    singles = _metric(client, "ppdeploy_batch_size_bucket", le="1.0") - singles_before
    assert images == 32
    assert batches < 32 and singles < batches, "no request was batched with another"
    assert _metric(client, "ppdeploy_queue_seconds_count") >= 32
    assert _metric(client, "ppdeploy_inference_seconds_count") >= batches


def test_several_images_in_one_multipart_request(served, photos_jpeg, expected):
    client, _, _ = served
    files = [("file", (f"photo_{i}.jpg", data, "image/jpeg")) for i, data in enumerate(photos_jpeg)]
    answer = client.post("/v1/classify", files=files, params={"topk": 3})
    assert answer.status_code == 200, answer.text
    records = answer.json()
    assert [r["filename"] for r in records] == [f"photo_{i}.jpg" for i in range(IMAGES)]
    for record, alone in zip(records, expected):
        assert record["class_ids"] == alone["class_ids"][:3] and record["scores"] == alone["scores"][:3]


def test_raw_body_as_curl_sends_it(served, photos_jpeg, expected):
    """``curl --data-binary @photo.jpg`` sends form-urlencoded; image/* and octet-stream work too."""
    client, _, _ = served
    for content_type in ("application/x-www-form-urlencoded", "image/jpeg", "application/octet-stream"):
        answer = client.post("/v1/classify", content=photos_jpeg[1], params={"filename": "photo.jpg"},
                             headers={"content-type": content_type})
        assert answer.status_code == 200, answer.text
        assert answer.json()[0]["filename"] == "photo.jpg" and _result(answer.json()[0]) == expected[1]


def _chunks(total: int):
    for _ in range(total // 65536):
        yield b"\0" * 65536


BAD_REQUESTS = {  # case: (request, status, text in the answer, reason label of the error metric)
    "empty body": ({"content": b""}, 400, "empty body", "empty"),
    "not an image": ({"content": b"hello, this is text"}, 400, "not an image", "bad_image"),
    "truncated jpeg": ("truncated", 400, "truncated", "bad_image"),
    "huge image": ("huge", 400, "pixel", "bad_image"),
    "wrong content type": ({"content": b"{}", "headers": {"content-type": "application/json"}}, 415, "content type",
                           "content_type"),
    "oversized upload": ({"content": b"\0" * 4_200_000}, 413, "larger than", "too_large"),
    "oversized chunked upload": ("chunked", 413, "larger than", "too_large"),
    "too many images": ("many", 413, "limit is 8", "too_many_images"),
    "multipart without a file": ({"files": {"note": (None, "hi")}}, 400, "no file part", "empty"),
    "topk out of range": ({"content": b"x", "params": {"topk": 0}}, 422, "topk", "invalid_parameter"),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_bad_request_is_refused_and_next_one_served(served, photos_jpeg, expected, case):
    client, _, _ = served
    request, status, text, reason = BAD_REQUESTS[case]
    if request == "truncated":
        request = {"content": photos_jpeg[0][: len(photos_jpeg[0]) // 2]}
    elif request == "huge":  # 5,000 x 1,000 = 5M pixels, above the 4M limit, in a small PNG
        request = {"content": _png(np.zeros((1000, 5000, 3), np.uint8)), "headers": {"content-type": "image/png"}}
    elif request == "chunked":  # no Content-Length: the limit must hold while the body streams in
        request = {"content": _chunks(4_200_000)}
    elif request == "many":
        request = {"files": [("file", (f"{i}.jpg", photos_jpeg[0])) for i in range(9)]}
    errors_before = _metric(client, "ppdeploy_request_errors_total", reason=reason)
    answer = client.post("/v1/classify", **request)
    assert answer.status_code == status, answer.text
    assert text in answer.text
    assert _metric(client, "ppdeploy_request_errors_total", reason=reason) == errors_before + 1
    _assert_serves(client, photos_jpeg, expected)


def test_full_queue_answers_503_with_retry_after(onnx_classifier, photos_jpeg, expected):
    with _server(onnx_classifier, max_queue=2) as (url, _, _), httpx.Client(base_url=url, timeout=60) as client:
        files = [("file", (f"{i}.jpg", photos_jpeg[i])) for i in range(3)]
        answer = client.post("/v1/classify", files=files)
        assert answer.status_code == 503 and answer.headers["retry-after"] == "1"
        assert "no room" in answer.json()["detail"]
        _assert_serves(client, photos_jpeg, expected)


def test_timeout_answers_503_and_the_server_recovers(onnx_classifier, photos_jpeg):
    with _server(onnx_classifier, request_timeout_s=0.001) as (url, app, _), \
            httpx.Client(base_url=url, timeout=60) as client:
        answer = client.post("/v1/classify", content=photos_jpeg[0])
        assert answer.status_code == 503 and "retry-after" in answer.headers
        assert "no answer within" in answer.json()["detail"]
        deadline = time.monotonic() + 10  # the abandoned image is skipped, the queue empties
        while app.state.serving.batcher.depth() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert app.state.serving.batcher.depth() == 0
        assert client.get("/healthz").status_code == 200


def test_graceful_shutdown_finishes_in_flight_requests(onnx_classifier, photos_jpeg, expected):
    """Shutdown begins while a request's body is still arriving: the request is finished, then the server stops."""
    resume = threading.Event()
    answers: list = []

    def slow_body():
        data = photos_jpeg[2]
        yield data[:1000]
        resume.wait(10)
        yield data[1000:]

    def post(url: str) -> None:
        answers.append(httpx.post(f"{url}/v1/classify", content=slow_body(), timeout=60))

    with _server(onnx_classifier) as (url, _, server):
        thread = threading.Thread(target=post, args=(url,))
        thread.start()
        with httpx.Client(base_url=url) as client:
            deadline = time.monotonic() + 10
            while not _metric(client, "ppdeploy_requests_in_flight") and time.monotonic() < deadline:
                time.sleep(0.01)
            assert _metric(client, "ppdeploy_requests_in_flight") == 1, "the request never arrived"
        server.should_exit = True  # as SIGTERM does; leaving the block waits for the server to stop
        threading.Timer(0.5, resume.set).start()
    thread.join(30)
    assert len(answers) == 1 and answers[0].status_code == 200, answers
    assert [_result(r) for r in answers[0].json()] == [expected[2]]
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{url}/healthz", timeout=5)


def test_two_workers_and_openvino_are_batch_invariant(model_dir, photos_jpeg, tmp_path):
    from ppdeploy.classifier import Classifier

    with Classifier(model_dir, "openvino") as clf:
        alone = _alone(clf, photos_jpeg, tmp_path)
        with _server(clf, workers=2, max_delay_ms=30) as (url, _, _), httpx.Client(base_url=url) as client:
            info = client.get("/readyz").json()
            assert info["workers"] == 2 and [d["inference_precision"] for d in info["details"]] == ["f32", "f32"]
            order = [i % IMAGES for i in range(24)]
            answers = asyncio.run(_post_all(url, [photos_jpeg[i] for i in order]))
            for index, answer in zip(order, answers):
                assert answer.status_code == 200 and [_result(r) for r in answer.json()] == [alone[index]]
            assert _metric(client, "ppdeploy_batch_size_count") < 24


def test_busy_port_is_one_line_error(model_dir):
    from ppdeploy.serving.server import bind_socket

    taken = bind_socket("127.0.0.1", 0)
    try:
        port = taken.getsockname()[1]
        done = subprocess.run([sys.executable, "-m", "ppdeploy.cli", "serve", str(model_dir), "--port", str(port)],
                              check=False, capture_output=True, text=True, timeout=60)
    finally:
        taken.close()
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert f"127.0.0.1:{port}" in done.stderr and "--port" in done.stderr


def test_deploy_serve_entry_point_answers_like_deploy_run(model_dir, onnx_classifier, photos_jpeg, expected):
    """The installed command: serve, classify one raw upload, stop with SIGINT (graceful)."""
    cmd = [sys.executable, "-m", "ppdeploy.cli", "serve", str(model_dir), "--backend", "onnx", "--port", "0"]
    process = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
                               env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        url = _wait_for_url(process)
        _wait_ready(url)
        answer = httpx.post(f"{url}/v1/classify", content=photos_jpeg[3], timeout=60)
        assert answer.status_code == 200 and _result(answer.json()[0]) == expected[3]
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=30)
        assert "Application shutdown complete" in err
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def _wait_for_url(process: subprocess.Popen, timeout_s: float = 60) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        line = process.stderr.readline()
        if not line and process.poll() is not None:
            pytest.fail(f"deploy serve exited with {process.returncode}")
        found = re.search(r"at (http://127\.0\.0\.1:\d+)", line)
        if found:
            return found.group(1)
    pytest.fail("deploy serve did not announce its address")


def _wait_ready(url: str, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    pytest.fail("deploy serve never became ready")


def test_preprocessing_that_does_not_fit_the_model_is_refused_at_startup(onnx_classifier):
    from ppdeploy.errors import DeployError
    from ppdeploy.preprocess import PreprocessConfig

    with pytest.raises(DeployError, match="does not fit input"):
        create_app(onnx_classifier.runtime, preprocess=PreprocessConfig(resize_short=288, crop_size=256))
    app = create_app(onnx_classifier.runtime)  # a bare runtime: ImageNet preprocessing, 224 crop
    assert app.state.serving.model.backend == "onnx"
