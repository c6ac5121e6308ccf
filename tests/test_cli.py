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


@pytest.fixture(scope="module")
def one_photo(tmp_path_factory):
    from ppdeploy.samples import write_sample_folder

    folder = tmp_path_factory.mktemp("one-photo")
    write_sample_folder(folder, 1)
    return folder


def test_errors_are_one_line_without_traceback(one_photo):
    exe = [sys.executable, "-m", "ppdeploy.cli"]
    done = subprocess.run(exe + ["convert", "ResNet50", "--to", "tflite"], capture_output=True, text=True)
    assert done.returncode == 1
    assert done.stderr.strip().count("\n") == 0 and "Traceback" not in done.stderr
    assert "target 'tflite'" in done.stderr and "onnx-int8" in done.stderr
    done = subprocess.run(exe + ["run", "--model", "ResNet51", "--images", str(one_photo)], capture_output=True,
                          text=True)
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


def _deploy(*args: str, home) -> subprocess.CompletedProcess:
    import os

    env = {**os.environ, "PPDEPLOY_HOME": str(home)}
    return subprocess.run([sys.executable, "-m", "ppdeploy.cli", *args], capture_output=True, text=True, timeout=300,
                          env=env)


def test_version_and_root_flags_anywhere(tmp_path):
    from ppdeploy import __version__

    done = _deploy("--version", home=tmp_path)
    assert done.returncode == 0 and done.stdout.strip() == f"ppdeploy {__version__}"
    verbose = _deploy("convert", "ResNet50", "--to", "tflite", "-v", home=tmp_path)  # after the sub-command
    assert verbose.returncode == 1 and "Traceback" in verbose.stderr and "No such option" not in verbose.stderr
    quiet = _deploy("run", "--images", str(tmp_path / "nothere"), "--quiet", home=tmp_path)
    assert quiet.returncode == 1 and "does not exist" in quiet.stderr


@pytest.mark.parametrize("args", [["run", "--images", ".", "--batch-size", "0"], ["nosuch"],
                                  ["bench", "--batch-sizes", "1", "--iters", "0"]], ids=["range", "command", "iters"])
def test_usage_errors_are_one_line_exit_2(tmp_path, args):
    done = _deploy(*args, home=tmp_path)
    assert done.returncode == 2, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: deploy") and "--help" in lines[0], done.stderr


def test_cheap_checks_come_before_any_download_or_export(tmp_path, one_photo):
    """A bad images path, pixel limit, backend or missing GPU stack fails at once: nothing is downloaded, exported
    or converted (the default model, ResNet50, is not in this empty home and the machine is offline)."""
    import os

    for args, needle in ((["run", "--images", str(tmp_path / "nothere")], "does not exist"),
                         (["run", "--images", str(one_photo), "--backend", "tensorflow"], "backend 'tensorflow'"),
                         (["convert", "ResNet50", "--to", "trt-fp16"], "tensorrt")):
        done = _deploy(*args, home=tmp_path / "home")
        assert done.returncode == 1 and needle in done.stderr, done.stderr
        assert "cannot reach" not in done.stderr and not (tmp_path / "home" / "models").exists()
    env_bad = subprocess.run([sys.executable, "-m", "ppdeploy.cli", "run", "--images", str(one_photo)],
                             capture_output=True, text=True, timeout=300,
                             env={**os.environ, "PPDEPLOY_HOME": str(tmp_path / "home"), "PPDEPLOY_MAX_PIXELS": "lots"})
    assert env_bad.returncode == 1 and "PPDEPLOY_MAX_PIXELS" in env_bad.stderr


def test_topk_above_the_class_count_is_refused(tiny_model, one_photo):
    result = runner.invoke(app, ["run", "--model", str(tiny_model("json").directory), "--backend", "onnx",
                                 "--images", str(one_photo), "--topk", "2000"])
    assert result.exit_code != 0
    assert "--topk 2000 | more than the model's 1000 classes" in str(result.exception or result.output)


def test_samples_writes_real_photos_to_try(tmp_path):
    from ppdeploy.images import decode_image, list_images

    done = _deploy("samples", "-o", str(tmp_path / "photos"), "--count", "3", home=tmp_path / "home")
    assert done.returncode == 0 and done.stdout.strip() == str(tmp_path / "photos")
    assert "grace_hopper.jpg" in done.stderr
    files = list_images(tmp_path / "photos")
    assert [p.suffix for p in files] == [".jpg", ".png", ".jpg"]
    assert all(decode_image(p).shape[2] == 3 for p in files)
    bad = _deploy("samples", "-o", str(tmp_path / "x"), "--role", "holiday", home=tmp_path / "home")
    assert bad.returncode == 1 and "--role holiday | unknown" in bad.stderr


def test_help_builds_from_the_registry_without_numpy_or_a_backend():
    """``deploy --help`` lists the registry's targets and backends, yet imports no numpy and no backend library
    (docs/benchmarks.md: help under 0.5 s)."""
    code = ("import sys\nfrom ppdeploy.cli import main\nsys.argv = ['deploy', 'convert', '--help']\ntry:\n    main()\n"
            "except SystemExit:\n    pass\nheavy = {'numpy', 'paddle', 'onnxruntime', 'openvino', 'onnx', 'nncf'}\n"
            "print(sorted(heavy & set(sys.modules)))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          env={**__import__("os").environ, "COLUMNS": "200"})
    assert "openvino-int8" in done.stdout and "trt-fp16" in done.stdout
    assert done.stdout.strip().splitlines()[-1] == "[]", done.stdout[-300:]
