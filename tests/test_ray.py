"""``--engine ray``: a real local Ray (2 CPUs), Ray Data over actors and Ray Serve over HTTP, the tiny model.

Every answer is compared with what the plain :class:`~ppdeploy.classifier.Classifier` gives the same image.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys

import numpy as np
import pytest

ray = pytest.importorskip("ray")
pytest.importorskip("ray.serve")
pytest.importorskip("ray.data")
httpx = pytest.importorskip("httpx")

from typer.testing import CliRunner  # noqa: E402

from ppdeploy.cli import app  # noqa: E402

BACKEND = "openvino"
BAD_FILES = {"empty.jpg": b"", "notes.jpg": b"not an image, only text\n"}


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray for the module: 2 CPUs, no dashboard; ``$PPDEPLOY_HOME`` reaches the workers through it."""
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield
    from ray import serve

    serve.shutdown()
    ray.shutdown()


@pytest.fixture(scope="module")
def model_dir(tiny_model):
    return str(tiny_model("json").directory)


@pytest.fixture(scope="module")
def classifier(model_dir):
    from ppdeploy.classifier import Classifier

    with Classifier(model_dir, BACKEND) as clf:
        yield clf


@pytest.fixture(scope="module")
def mixed_folder(tmp_path_factory):
    from ppdeploy.samples import write_sample_folder

    folder = tmp_path_factory.mktemp("mixed")
    write_sample_folder(folder, 6)
    for name, data in BAD_FILES.items():
        (folder / name).write_bytes(data)
    return folder


@pytest.fixture(scope="module")
def expected(classifier, mixed_folder):
    """The plain Classifier's record for each input, by filename."""
    return {record["filename"]: record for batch in classifier.predict(mixed_folder) for record in batch}


def _assert_same_result(record: dict, reference: dict) -> None:
    assert record["class_ids"][0] == reference["class_ids"][0]
    assert record["label_names"][0] == reference["label_names"][0]
    np.testing.assert_allclose(record["scores"], reference["scores"], atol=1e-5)


def _read_output(path) -> list[dict]:
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        from ppdeploy.results import table_records

        return table_records(pq.read_table(path))
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_ray_data_run_gives_one_record_per_input(local_ray, model_dir, mixed_folder, expected, tmp_path, suffix):
    output = tmp_path / f"results{suffix}"
    result = CliRunner().invoke(app, ["run", "--engine", "ray", "--model", model_dir, "--backend", BACKEND,
                                      "--images", str(mixed_folder), "--batch-size", "3", "--actors", "2",
                                      "--actor-cpus", "0.5", "--output", str(output)])
    assert result.exit_code == 3, result.output  # some inputs failed, each with its error record
    records = _read_output(output)
    assert sorted(r["filename"] for r in records) == sorted(expected)  # every input exactly once
    assert [r["filename"] for r in records] == list(expected)  # in input order
    errors = {r["filename"].rsplit("/", 1)[-1]: r["error"] for r in records if "error" in r}
    assert set(errors) == set(BAD_FILES)
    assert all(name in error for name, error in errors.items())
    for record in records:
        if "error" not in record:
            _assert_same_result(record, expected[record["filename"]])
    assert not list(tmp_path.glob(".results*"))  # no temp file left beside the output


def test_ray_data_without_output_prints_deploy_run_records(local_ray, model_dir, mixed_folder, expected):
    result = CliRunner().invoke(app, ["run", "--engine", "ray", "--model", model_dir, "--backend", BACKEND,
                                      "--images", str(mixed_folder), "--json", "--actor-cpus", "0.5"])
    assert result.exit_code == 3, result.output
    records = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert records == list(expected.values())  # the same records, to the 5-decimal score, as deploy run


@pytest.fixture(scope="module")
def ray_served(local_ray, model_dir):
    """The deploy serve app on Ray Serve: 2 replicas of half a CPU each, on a free port."""
    from ray import serve

    from ppdeploy.scaleout.cluster import ModelConfig
    from ppdeploy.scaleout.ray_serve import APP_NAME, deploy
    from ppdeploy.serving import ServeSettings

    settings = ServeSettings(port=0, max_batch=8, max_delay_ms=20)
    url, started = deploy(ModelConfig(model_dir, BACKEND), settings, replicas=2, replica_cpus=0.5)
    assert not started  # joined the module's Ray instead of starting one
    with httpx.Client(base_url=url, timeout=60) as client:
        yield client, url
    serve.delete(APP_NAME)


def _photo_bytes(mixed_folder, expected) -> list[tuple[bytes, dict]]:
    return [((mixed_folder / name.rsplit("/", 1)[-1]).read_bytes(), record)
            for name, record in expected.items() if "error" not in record]


def test_ray_serve_answers_like_the_classifier(ray_served, mixed_folder, expected):
    client, _ = ray_served
    assert client.get("/readyz").json()["status"] == "ready"
    data, reference = _photo_bytes(mixed_folder, expected)[0]
    answer = client.post("/v1/classify", content=data, params={"filename": "photo.jpg"})
    assert answer.status_code == 200, answer.text
    (record,) = answer.json()
    assert record["filename"] == "photo.jpg"
    _assert_same_result(record, reference)


def test_ray_serve_concurrent_requests(ray_served, mixed_folder, expected):
    _, url = ray_served
    photos = _photo_bytes(mixed_folder, expected) * 2

    async def post_all() -> list:
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            return await asyncio.gather(*(client.post("/v1/classify", content=data) for data, _ in photos))

    answers = asyncio.run(post_all())
    for answer, (_, reference) in zip(answers, photos):
        assert answer.status_code == 200, answer.text
        _assert_same_result(answer.json()[0], reference)


def test_ray_serve_bad_request_is_400_and_next_is_served(ray_served, mixed_folder, expected):
    client, _ = ray_served
    refused = client.post("/v1/classify", content=BAD_FILES["notes.jpg"], params={"filename": "notes.jpg"})
    assert refused.status_code == 400
    assert "notes.jpg" in refused.json()["detail"]
    data, reference = _photo_bytes(mixed_folder, expected)[1]
    answer = client.post("/v1/classify", content=data)
    assert answer.status_code == 200, answer.text
    _assert_same_result(answer.json()[0], reference)


def test_missing_ray_is_one_line_naming_the_extra(tmp_path):
    code = ("import sys; sys.modules['ray'] = None; from ppdeploy.cli import main; "
            "sys.argv = ['deploy', 'serve', 'ResNet18', '--synthetic', '--engine', 'ray']; main()")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert done.stderr.strip().count("\n") == 0 and "Traceback" not in done.stderr
    assert "pip install 'ppdeploy[ray]'" in done.stderr
