"""``deploy serve`` under hostile clients (issue 18): decode amplification, stalled bodies, slow headers, too many
connections, HEAD probes, and metrics that add up. A real uvicorn server on loopback, raw sockets where a client
must misbehave, the tiny model (``tests/tiny.py``) on ONNX Runtime.
"""

from __future__ import annotations

import io
import socket
import threading
import time
from contextlib import contextmanager

import numpy as np
import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")

from ppdeploy.serving import ServeSettings, create_app, serve_in_thread


@pytest.fixture(scope="module")
def onnx_classifier(tiny_model):
    from ppdeploy.classifier import Classifier

    with Classifier(tiny_model("json").directory, "onnx") as clf:
        yield clf


@pytest.fixture(scope="module")
def photo() -> bytes:
    from ppdeploy.samples import sample_photo_paths

    return sample_photo_paths("judge")[0].read_bytes()


@contextmanager
def _server(clf, **overrides):
    settings = ServeSettings(port=0, **overrides)
    with serve_in_thread(create_app(clf, settings), settings) as (url, _):
        yield url


def _png(width: int, height: int, mode: str = "RGB") -> bytes:
    from PIL import Image

    data = io.BytesIO()
    Image.new(mode, (width, height)).save(data, format="PNG")
    return data.getvalue()


def _metric(url: str, name: str, **labels) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    total = 0.0
    for family in text_string_to_metric_families(httpx.get(f"{url}/metrics").text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


def _connect(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=10)


def _read_answer(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (or 10 s pass)."""
    chunks = []
    while True:
        try:
            chunk = sock.recv(65536)
        except (TimeoutError, ConnectionResetError):
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


def test_a_request_of_huge_images_is_refused_from_their_headers_before_any_decode(onnx_classifier, photo):
    """32 x 9000x9000 PNGs (each under the pixel limit, 10 KB on the wire) are refused 413 at once (default
    budget), instead of holding the decode threads for a minute."""
    bomb = _png(9000, 9000, mode="1")
    files = [("file", (f"huge_{i}.png", bomb, "image/png")) for i in range(32)]
    with _server(onnx_classifier) as url:
        started = time.monotonic()
        answer = httpx.post(f"{url}/v1/classify", files=files, timeout=120)
        elapsed = time.monotonic() - started
        assert answer.status_code == 413, answer.text[:300]
        assert "pixels" in answer.json()["detail"] and "256,000,000" in answer.json()["detail"]
        assert elapsed < 2.0, f"took {elapsed:.1f} s: the images were decoded"
        assert _metric(url, "ppdeploy_request_errors_total", reason="too_many_pixels") == 1
        assert httpx.post(f"{url}/v1/classify", content=photo, timeout=60).status_code == 200


def test_decode_threads_take_turns_between_requests(onnx_classifier, photo):
    """With no pixel budget, a request of 10 large PNGs cannot make a one-photo request behind it wait for all 10."""
    heavy = _png(6000, 6000)
    files = [("file", (f"large_{i}.png", heavy, "image/png")) for i in range(10)]
    times: dict[str, float] = {}

    def post(name: str, **request) -> None:
        started = time.monotonic()
        answer = httpx.post(f"{url}/v1/classify", timeout=120, **request)
        times[name] = time.monotonic() - started
        assert answer.status_code == 200, answer.text[:300]

    with _server(onnx_classifier, max_request_pixels=0, max_images=10, max_request_bytes=50_000_000) as url:
        httpx.post(f"{url}/v1/classify", content=photo, timeout=60)  # warm up
        heavy_thread = threading.Thread(target=post, args=("heavy",), kwargs={"files": files})
        heavy_thread.start()
        time.sleep(0.3)  # the heavy request is being decoded
        post("normal", content=photo)
        heavy_thread.join(120)
    assert set(times) == {"heavy", "normal"}
    assert times["normal"] < 0.5 * times["heavy"], times


def test_a_stalled_body_gets_408_before_the_answer_deadline(onnx_classifier):
    """Body and answer deadlines equal, as by default: a stalled body is the client's fault (408, no Retry-After),
    not an overloaded server's (503 + Retry-After invites the retry)."""
    defaults = ServeSettings()
    assert defaults.read_timeout_s <= defaults.request_timeout_s
    with _server(onnx_classifier, read_timeout_s=1.0, request_timeout_s=1.0) as url:
        with _connect(url) as sock:
            sock.sendall(b"POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n"
                         b"Content-Length: 1000\r\n\r\n" + b"\xff\xd8\xff" + b"\0" * 97)
            answer = _read_answer(sock)
        assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
        assert b"retry-after" not in answer.lower() and b"not received within 1 s" in answer
        assert _metric(url, "ppdeploy_request_errors_total", reason="read_timeout") == 1


def test_slow_headers_are_answered_408_and_closed(onnx_classifier, photo):
    with _server(onnx_classifier, header_timeout_s=0.5) as url:
        with _connect(url) as sock:  # slowloris: a header line every 0.2 s, never the blank line
            sock.sendall(b"POST /v1/classify HTTP/1.1\r\nHost: x\r\n")
            started = time.monotonic()
            answer = b""
            for index in range(20):
                try:
                    sock.sendall(b"X-Slow-%d: 1\r\n" % index)
                except OSError:
                    break
                time.sleep(0.2)
                sock.setblocking(False)
                try:
                    answer += sock.recv(65536)
                except BlockingIOError:
                    pass
                finally:
                    sock.setblocking(True)
                if answer:
                    break
            elapsed = time.monotonic() - started
        assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
        assert elapsed < 2.0
        with _connect(url) as idle:  # a connection that sends nothing is closed too
            idle.settimeout(5)
            assert _read_answer(idle).startswith(b"HTTP/1.1 408")
        assert _metric(url, "ppdeploy_request_errors_total", reason="header_timeout") == 2
        assert httpx.post(f"{url}/v1/classify", content=photo, timeout=60).status_code == 200


def test_connections_beyond_the_cap_are_refused_503_and_served_again_after(onnx_classifier, photo):
    with _server(onnx_classifier, max_connections=4, header_timeout_s=30) as url:
        idle = [_connect(url) for _ in range(4)]
        try:
            time.sleep(0.2)
            with _connect(url) as extra:
                answer = _read_answer(extra)
            assert answer.startswith(b"HTTP/1.1 503") and b"retry-after: 1" in answer.lower(), answer[:200]
        finally:
            for sock in idle:
                sock.close()
        time.sleep(0.2)
        assert httpx.post(f"{url}/v1/classify", content=photo, timeout=60).status_code == 200
        assert _metric(url, "ppdeploy_request_errors_total", reason="connection_limit") == 1


def test_head_probes_and_metrics_that_add_up(onnx_classifier, photo):
    with _server(onnx_classifier) as url, httpx.Client(base_url=url, timeout=60) as client:
        for path in ("/healthz", "/readyz", "/v2/health/live", "/v2/health/ready"):
            assert client.head(path).status_code == 200, path
        assert client.post("/v1/classify", content=photo).status_code == 200
        assert client.post("/v1/classify", content=photo, params={"topk": 0}).status_code == 422
        assert client.post("/v1/classify", content=b"not an image").status_code == 400
        requests = _metric(url, "ppdeploy_requests_total")
        assert requests == 3 and _metric(url, "ppdeploy_requests_total", status="422") == 1
        assert _metric(url, "ppdeploy_request_seconds_count") == requests


def test_fp32_input_rows_are_checked(onnx_classifier):
    """NaN in a preprocessed v2 input is the client's error (400), not a 500 from ranking NaN scores."""
    import json

    batch = np.zeros((1, 3, 224, 224), np.float32)
    batch[0, 0, 0, 0] = np.nan
    header = json.dumps({"inputs": [{"name": onnx_classifier.runtime.inputs[0].name, "shape": list(batch.shape),
                                     "datatype": "FP32", "parameters": {"binary_data_size": batch.nbytes}}]})
    with _server(onnx_classifier) as url:
        answer = httpx.post(f"{url}/v2/models/{onnx_classifier.model.name}/infer",
                            content=header.encode() + batch.tobytes(),
                            headers={"Inference-Header-Content-Length": str(len(header))}, timeout=60)
    assert answer.status_code == 400 and "NaN" in answer.json()["error"]
