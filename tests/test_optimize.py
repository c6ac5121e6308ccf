"""deploy optimize: the decision rule, the package round trip (run, serve, Classifier), --backend auto, and the
throughput mode the decision measures."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ppdeploy.errors import DeployError
from ppdeploy.optimize.decide import Candidate, candidates, choose, parse_strategy


def cand(label, parity="pass", batch=1, mode="latency", ips=10.0, ms=100.0, profile="fp32"):
    return Candidate(label, profile, parity, batch, mode, ips, ms, 2 if mode == "throughput" else 1)


# ------------------------------------------------------------------------------------------------ the rule


def test_a_fast_candidate_that_fails_parity_never_wins():
    found = [cand("paddle", "reference", ips=5), cand("onnx-int8", "fail", ips=500, ms=1),
             cand("openvino", ips=20), cand("openvino-int8", "error", ips=900, ms=0.5)]
    assert choose(found, parse_strategy("throughput")).label == "openvino"
    assert choose(found, parse_strategy("latency")).label == "openvino"
    assert choose(found, parse_strategy("latency-budget=1000")).label == "openvino"


def test_nothing_passes_means_no_choice():
    found = [cand("onnx-int8", "fail", ips=500), cand("onnx", "not checked", ips=50), cand("x", "skipped")]
    assert choose(found, parse_strategy("throughput")) is None


def test_throughput_takes_the_most_images_per_second_over_batch_sizes_and_modes():
    found = [cand("openvino", batch=1, ips=20), cand("openvino", batch=8, mode="throughput", ips=31, ms=500),
             cand("onnx", batch=8, ips=30)]
    best = choose(found, parse_strategy("throughput"))
    assert (best.label, best.batch_size, best.mode) == ("openvino", 8, "throughput")


def test_latency_takes_the_lowest_p99_at_batch_1_one_request_at_a_time():
    found = [cand("openvino", batch=1, ms=40, ips=25), cand("onnx", batch=1, ms=30, ips=20),
             cand("onnx", batch=8, ms=10, ips=100), cand("paddle", "reference", batch=1, mode="throughput", ms=5)]
    assert choose(found, parse_strategy("latency")).label == "onnx"


def test_latency_budget_keeps_only_what_fits_then_takes_the_fastest():
    found = [cand("a", batch=8, ips=100, ms=400), cand("b", batch=4, ips=60, ms=150), cand("c", batch=1, ips=20, ms=50)]
    assert choose(found, parse_strategy("latency-budget=200")).label == "b"
    assert choose(found, parse_strategy("latency-budget=10")) is None


@pytest.mark.parametrize("text", ["fastest", "latency-budget", "latency-budget=0", "latency-budget=x", "throughput=3"])
def test_bad_strategy_is_one_line(text):
    with pytest.raises(DeployError, match="--strategy"):
        parse_strategy(text)


def test_candidates_come_from_every_measured_cell_and_carry_the_verdict():
    from ppdeploy.bench.report import BackendInfo, BenchReport, BenchResult, BenchSettings, ThroughputResult

    report = BenchReport("m", True, BenchSettings(batch_sizes=(1, 8)), {}, [
        BackendInfo("paddle", "fp32"), BackendInfo("onnx-int8", "int8", parity={"status": "fail"}),
        BackendInfo("openvino", "fp32", parity={"status": "pass"}),
        BackendInfo("trt-fp16", "fp16", status="skipped", reason="no GPU")])
    report.results = [BenchResult("paddle", 1, [100.0] * 5), BenchResult("onnx-int8", 1, [10.0] * 5),
                      BenchResult("openvino", 1, [50.0, 50.0, 50.0, 50.0, 90.0]), BenchResult("openvino", 8, [200.0])]
    report.throughput = [ThroughputResult("openvino", 8, calls=10, seconds=1.0, requests=2)]
    found = candidates(report)
    assert {(c.label, c.batch_size, c.mode) for c in found} == {
        ("paddle", 1, "latency"), ("onnx-int8", 1, "latency"), ("openvino", 1, "latency"),
        ("openvino", 8, "latency"), ("openvino", 8, "throughput")}
    streamed = next(c for c in found if c.mode == "throughput")
    assert math.isclose(streamed.images_per_s, 10 * 8 / 1.0) and streamed.requests == 2
    assert next(c for c in found if c.label == "onnx-int8").parity == "fail"
    assert choose(found, parse_strategy("throughput")).mode == "throughput"  # 80 img/s against 40 in latency mode
    assert choose(found, parse_strategy("latency")).label == "openvino"  # onnx-int8 is faster but failed


# ------------------------------------------------------------------------------------------------ throughput mode


@pytest.mark.parametrize("backend", ["paddle", "onnx", "openvino"])
def test_throughput_mode_gives_the_same_outputs_in_order(tiny_model, backend, photos):
    from ppdeploy.converters.pipeline import convert_model
    from ppdeploy.preprocess import PreprocessConfig, preprocess_batch
    from ppdeploy.registry import resolve

    model = tiny_model("json")
    choice = resolve(backend, "cpu")
    artifact = model.directory if choice.target is None else convert_model(model, choice.target)
    images = photos[0][:12]
    batches = [preprocess_batch(images[i:i + 3], PreprocessConfig()) for i in range(0, 12, 3)]
    with choice.runtime(artifact, threads=2) as latency:
        expected = [latency.infer(b) for b in batches]
    with choice.runtime(artifact, threads=2, mode="throughput", requests=2) as streamed:
        assert streamed.requests == 2 and "throughput" in streamed.details["mode"]
        got = list(streamed.infer_stream(iter(batches)))
        again = streamed.infer(batches[1])  # one-off calls still work in throughput mode
    assert len(got) == len(expected)
    for want, have in zip(expected, got):
        np.testing.assert_allclose(have, want, atol=1e-5)
    np.testing.assert_allclose(again, expected[1], atol=1e-5)


def test_paddle_throughput_mode_keeps_one_request_on_every_core(tiny_model):
    """predictor.run holds the GIL: two Paddle lanes take turns (half speed measured), so Paddle's own choice in
    throughput mode is one request with every core; asking for more still gets more."""
    from ppdeploy.registry import resolve

    choice = resolve("paddle", "cpu")
    with choice.runtime(tiny_model("json").directory, threads=2, mode="throughput") as runtime:
        assert runtime.requests == 1 and runtime.details["threads"] == "2"
        assert runtime.details["mode"] == "throughput (1 in flight)"
    with choice.runtime(tiny_model("json").directory, threads=2, mode="throughput", requests=2) as runtime:
        assert runtime.requests == 2 and runtime.details["threads"] == "1"


def test_server_in_throughput_mode_shares_one_runtime_and_answers_right(tiny_model, photos):
    from concurrent.futures import ThreadPoolExecutor

    import cv2
    import httpx

    from ppdeploy.classifier import Classifier
    from ppdeploy.serving import ServeSettings, create_app, serve_in_thread

    bodies = [cv2.imencode(".jpg", image[:, :, ::-1])[1].tobytes() for image in photos[0][:8]]
    with Classifier(tiny_model("json").directory, "onnx") as latency:
        want = [latency.classify_batch([("x", cv2.imdecode(np.frombuffer(b, np.uint8), cv2.IMREAD_COLOR)[:, :, ::-1])])
                [0]["class_ids"] for b in bodies]
    settings = ServeSettings(port=0, max_batch=2)
    with Classifier(tiny_model("json").directory, "onnx", mode="throughput", requests=2) as clf, \
            serve_in_thread(create_app(clf, settings), settings) as (url, _):
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda b: httpx.post(f"{url}/v1/classify", content=b, timeout=60), bodies))
        ready = httpx.get(f"{url}/readyz", timeout=10).json()
    assert [a.json()[0]["class_ids"] for a in answers] == want
    assert ready["workers"] >= 1


# ------------------------------------------------------------------------------------------------ end to end


@pytest.fixture(scope="module")
def package(tiny_model, tmp_path_factory):
    from ppdeploy.optimize import optimize

    out = tmp_path_factory.mktemp("pkg") / "tiny-deploy"
    result = optimize(tiny_model("json").directory, targets="onnx,openvino", batch_sizes="1,4", iters=3,
                      output=out, threads=2)
    return result, out


def test_optimize_writes_a_complete_package(package):
    result, out = package
    assert result.chosen is not None and result.chosen.eligible
    names = {p.name for p in out.iterdir()}
    assert {"decision.json", "model", "README.md", "bench.json", "bench.png", "parity.json",
            "parity.junit.xml"} <= names
    decision = json.loads((out / "decision.json").read_text())
    assert decision["choice"]["label"] == result.chosen.label
    assert {c["label"] for c in decision["candidates"]} >= {"paddle", "onnx", "openvino"}
    assert decision["machine"]["cores"] == os.cpu_count()
    best = max((c for c in decision["candidates"] if c["eligible"]), key=lambda c: c["images_per_s"])
    assert math.isclose(decision["choice"]["images_per_s"], best["images_per_s"])
    assert "deploy optimize" in (out / "README.md").read_text() and "Chosen" in result.render()
    parity = json.loads((out / "parity.json").read_text())
    assert {r["backend"] for r in parity["results"]} >= {"onnx", "openvino"}


def test_package_round_trips_through_classifier_and_run(package, tiny_model, photos, tmp_path):
    import cv2

    from ppdeploy.classifier import Classifier

    result, out = package
    folder = tmp_path / "photos"
    folder.mkdir()
    for index, image in enumerate(photos[0][:5]):
        cv2.imwrite(str(folder / f"p{index}.png"), image[:, :, ::-1])
    with Classifier(out) as clf:
        assert clf.choice.label == result.chosen.label
        from_package = [r for batch in clf.predict(folder) for r in batch]
    with Classifier(tiny_model("json").directory, result.chosen.label) as clf:
        direct = [r for batch in clf.predict(folder) for r in batch]
    assert [r["class_ids"] for r in from_package] == [r["class_ids"] for r in direct]
    done = subprocess.run([sys.executable, "-m", "ppdeploy.cli", "run", "--model", str(out), "--images",
                           str(folder), "--json"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert [json.loads(line)["class_ids"] for line in done.stdout.splitlines()] == [r["class_ids"] for r in direct]
    assert f"package {out}" in done.stderr and "meaningless" not in done.stderr  # real (trained-like) weights


def test_package_from_another_machine_says_so(package, tmp_path):
    import shutil

    from ppdeploy.classifier import Classifier

    _, out = package
    moved = tmp_path / "elsewhere"
    shutil.copytree(out, moved)
    decision = json.loads((moved / "decision.json").read_text())
    decision["machine"]["cpu"] = "Some Other CPU"
    decision["model"]["synthetic"] = True  # as 'deploy optimize ResNet50 --synthetic' records it
    (moved / "decision.json").write_text(json.dumps(decision))
    done = subprocess.run([sys.executable, "-m", "ppdeploy.cli", "run", "--model", str(moved), "--images",
                           str(Path(__file__)), "--json"], capture_output=True, text=True, timeout=300)
    assert "another machine" in done.stderr and "deploy optimize" in done.stderr
    assert "predictions are meaningless" in done.stderr  # a package of synthetic weights says so when used
    with Classifier(moved) as clf:  # it still runs: the user decides whether to re-run the decision
        assert clf.decision.mismatch()


def test_backend_auto_uses_the_measured_decision_and_says_so(package, tiny_model):
    from ppdeploy.classifier import Classifier

    result, _ = package
    lines = []
    with Classifier(tiny_model("json").directory, "auto", log=lines.append) as clf:
        assert clf.choice.label == result.chosen.label
    assert any("measured decision" in line for line in lines), lines


def test_serve_runs_a_package(package, tiny_model, photos):
    import cv2
    import httpx

    from ppdeploy.classifier import Classifier
    from ppdeploy.serving import ServeSettings, create_app, serve_in_thread

    _, out = package
    ok, jpeg = cv2.imencode(".jpg", photos[0][0][:, :, ::-1])
    settings = ServeSettings(port=0)
    with Classifier(out) as clf, serve_in_thread(create_app(clf, settings), settings) as (url, _):
        answer = httpx.post(f"{url}/v1/classify", content=jpeg.tobytes(), timeout=60)
        label = clf.choice.label
    assert answer.status_code == 200, answer.text
    with Classifier(tiny_model("json").directory, label) as direct:
        want = next(direct.predict(cv2.imdecode(jpeg, cv2.IMREAD_COLOR)[:, :, ::-1].copy()))[0]
    assert answer.json()[0]["class_ids"] == want["class_ids"]


def test_optimize_refuses_to_overwrite_a_folder_that_is_not_a_package(tmp_path, tiny_model):
    from ppdeploy.optimize import optimize

    (tmp_path / "mine.txt").write_text("keep")
    with pytest.raises(DeployError, match="not a deployment package"):
        optimize(tiny_model("json").directory, output=tmp_path)
    assert (tmp_path / "mine.txt").read_text() == "keep"


def test_doctor_lists_the_measured_decision(package):
    from ppdeploy.doctor import diagnose

    result, _ = package
    lines = diagnose().decisions
    assert any(result.chosen.label in line and "[this machine]" in line for line in lines), lines
