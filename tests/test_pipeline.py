"""The conversion pipeline: cache reuse, staleness, atomicity, locking, manifests (real converters, the tiny model;
what every target's manifest records is in tests/test_contract.py)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ppdeploy.artifacts import load_manifest
from ppdeploy.converters.pipeline import convert_model, default_options
from ppdeploy.errors import ArtifactError, ConversionError
from ppdeploy.models.paddle_files import find_paddle_model


@pytest.fixture(scope="module")
def model(tiny_model):
    return tiny_model("json")


def test_manifest_records_what_matters(model, tmp_path):
    out = convert_model(model, "onnx", out_dir=tmp_path / "onnx")
    manifest = load_manifest(out)
    assert manifest["opset"] == 17
    assert manifest["preprocess"]["resize_short"] == 256 and manifest["preprocess"]["crop_size"] == 224
    for tool in ("paddlepaddle", "paddle2onnx", "onnx", "onnxruntime", "openvino", "nncf", "tensorrt"):
        assert tool in manifest["tools"]  # every tool that can shape an artifact, installed or not
    assert manifest["tools"]["paddle2onnx"] == "2.1.0"
    assert manifest["conversion_seconds"] > 0


def test_valid_artifact_is_reused_and_stale_one_rebuilt(model, tmp_path):
    lines: list[str] = []
    first = load_manifest(convert_model(model, "onnx", out_dir=tmp_path / "a", log=lines.append))["artifact_id"]
    again = load_manifest(convert_model(model, "onnx", out_dir=tmp_path / "a", log=lines.append))["artifact_id"]
    assert first == again
    assert any(line.startswith("Reusing") for line in lines)
    other = default_options(model, "onnx", opset=13)
    rebuilt = load_manifest(convert_model(model, "onnx", options=other, out_dir=tmp_path / "a"))
    assert rebuilt["artifact_id"] != first and rebuilt["opset"] == 13


def test_changed_source_model_invalidates_chain(tmp_path, model):
    import shutil

    src = model.directory
    copy = tmp_path / "model"
    shutil.copytree(src, copy)
    paddle = find_paddle_model(copy)
    onnx_dir = convert_model(paddle, "onnx", out_dir=tmp_path / "art" / "onnx")
    fp16_id = load_manifest(convert_model(paddle, "onnx-fp16", out_dir=tmp_path / "art" / "onnx-fp16"))["artifact_id"]
    data = bytearray(paddle.params_file.read_bytes())
    data[-100] ^= 0xFF  # one changed weight byte: the source hash changes
    paddle.params_file.write_bytes(bytes(data))
    before = load_manifest(onnx_dir)["artifact_id"]
    new_fp16 = load_manifest(convert_model(paddle, "onnx-fp16", out_dir=tmp_path / "art" / "onnx-fp16"))
    assert load_manifest(onnx_dir)["artifact_id"] != before
    assert new_fp16["artifact_id"] != fp16_id and new_fp16["source_hash"] == paddle.content_hash()


def test_failed_conversion_leaves_nothing(model, tmp_path):
    with pytest.raises(ConversionError, match="opset"):
        convert_model(model, "onnx", options=default_options(model, "onnx", opset=23), out_dir=tmp_path / "bad")
    assert not (tmp_path / "bad").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".bad")]


def test_missing_model_file_is_refused(model, tmp_path):
    from ppdeploy.artifacts import artifact_model_file

    out = convert_model(model, "onnx", out_dir=tmp_path / "x")
    (out / "model.onnx").unlink()
    with pytest.raises(ArtifactError, match="model.onnx"):
        artifact_model_file(out)
    assert load_manifest(convert_model(model, "onnx", out_dir=tmp_path / "x"))  # rebuilt, not trusted


def _convert_cmd(model_dir: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "ppdeploy.cli", "convert", str(model_dir), "--to", "onnx", "-o", str(out)]


def test_sigkill_mid_conversion_leaves_nothing_trusted(model, tmp_path):
    """Killed while paddle2onnx runs: nothing trusted, nothing left in /tmp, the next run cleans up and rebuilds."""
    import tempfile

    scratch = Path(tempfile.gettempdir())
    before = set(scratch.glob("ppdeploy-p2o-*"))
    out = tmp_path / "killed"
    proc = subprocess.Popen(_convert_cmd(model.directory, out), stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while time.time() < deadline and not any(tmp_path.glob(".killed.*.partial/ppdeploy-p2o-*")):
        time.sleep(0.05)  # wait until paddle2onnx's scratch folder exists: the conversion is under way
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "manifest.json").exists()
    assert set(scratch.glob("ppdeploy-p2o-*")) <= before, "a killed conversion must not leave scratch in /tmp"
    done = subprocess.run(_convert_cmd(model.directory, out), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert json.loads((out / "manifest.json").read_text())["target"] == "onnx"
    assert not list(tmp_path.glob(".killed.*.partial")), "the next run removes the killed run's staging folder"


def test_artifacts_and_manifests_follow_the_umask(model, tmp_path):
    import stat

    old = os.umask(0o022)
    try:
        out = convert_model(model, "onnx", out_dir=tmp_path / "modes")
    finally:
        os.umask(old)
    assert stat.S_IMODE(out.stat().st_mode) == 0o755
    for name in ("manifest.json", "model.onnx"):
        assert stat.S_IMODE((out / name).stat().st_mode) == 0o644, name


def test_concurrent_conversions_share_one_artifact(model, tmp_path):
    out = tmp_path / "shared"
    procs = [subprocess.Popen(_convert_cmd(model.directory, out), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [p.communicate(timeout=300) + (p.returncode,) for p in procs]
    assert all(code == 0 for _, _, code in results), results
    stderr = "".join(err for _, err, _ in results)
    assert stderr.count("Converting") == 1 and stderr.count("Reusing") == 1
    assert load_manifest(out)["target"] == "onnx"
