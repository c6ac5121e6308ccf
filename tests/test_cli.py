"""The command line, through Typer's runner and as the installed entry point."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from ppdeploy.cli import app

runner = CliRunner()


def test_models_table_and_json():
    table = runner.invoke(app, ["models"])
    assert table.exit_code == 0
    assert "Fix_ResNet50_vd_ssld" in table.output and "ResNet200_vd" in table.output
    data = json.loads(runner.invoke(app, ["models", "--json"]).output)
    assert len(data) == 16
    by_name = {row["name"]: row for row in data}
    assert by_name["Fix_ResNet50_vd_ssld"]["input_size"] == 320
    assert by_name["Fix_ResNet50_vd_ssld"]["archive_name"] == "Fix_ResNet50_vd_ssld_v2_infer.tar"
    assert by_name["ResNet50"]["params_m"] == 25.56


def test_import_and_help_stay_light():
    code = ("import sys, ppdeploy, ppdeploy.cli; heavy = {'paddle', 'onnxruntime', 'openvino', 'onnx', 'cv2', 'nncf',"
            " 'ray', 'pyarrow'} & set(sys.modules); print(sorted(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_installed_entry_point_runs():
    exe = shutil.which("deploy")
    if exe is None:
        pytest.skip("the 'deploy' console script is not on PATH (package not installed)")
    done = subprocess.run([exe, "models", "--json"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and len(json.loads(done.stdout)) == 16


def test_errors_are_one_line_without_traceback():
    exe = [sys.executable, "-m", "ppdeploy.cli"]
    done = subprocess.run(exe + ["convert", "ResNet50", "--to", "tflite"], capture_output=True, text=True)
    assert done.returncode == 1
    assert done.stderr.strip().count("\n") == 0 and "Traceback" not in done.stderr
    assert "target 'tflite'" in done.stderr and "onnx-int8" in done.stderr
    done = subprocess.run(exe + ["run", "--model", "ResNet51", "--images", "."], capture_output=True, text=True)
    assert done.returncode == 1 and "ResNet50_vd" in done.stderr and "Traceback" not in done.stderr
    verbose = subprocess.run(exe + ["--verbose", "convert", "ResNet50", "--to", "tflite"], capture_output=True,
                             text=True)
    assert "Traceback" in verbose.stderr


def test_run_mixed_folder_keeps_every_input(tiny_model, tmp_path):
    import cv2

    from ppdeploy.samples import sample_images

    folder = tmp_path / "imgs"
    folder.mkdir()
    for i, image in enumerate(sample_images(3)):
        cv2.imwrite(str(folder / f"good {i}.jpg"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "notes.png").write_text("not an image")
    model_dir = tiny_model("json").directory
    result = runner.invoke(app, ["run", "--model", str(model_dir), "--backend", "onnx", "--images", str(folder),
                                 "--json", "--batch-size", "2"])
    assert result.exit_code == 3, result.output
    records = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert len(records) == 5
    assert sorted(r["filename"].rsplit("/", 1)[-1] for r in records) == sorted(p.name for p in folder.iterdir())
    errors = {r["filename"].rsplit("/", 1)[-1]: r["error"] for r in records if "error" in r}
    assert set(errors) == {"empty.jpg", "notes.png"}
    good = [r for r in records if "error" not in r]
    assert all(len(r["class_ids"]) == 5 and len(r["label_names"]) == 5 for r in good)
