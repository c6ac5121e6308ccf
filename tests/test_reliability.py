"""Issue #6 end to end: a folder of good, odd and broken images, and broken models, through the real CLI.

Decode-level behaviour is in ``test_images.py``, damaged artifacts at the runtime level in ``runtimes/`` and
``converters/``; here the same inputs go through ``deploy run`` and must come out as one record each, with
the exit code and one-line errors the CLI promises (docs/reliability.md).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from corpus import (
    MIXED_PIXEL_LIMIT,
    MixedFolder,
    write_elongated_png,
    write_good_corpus,
    write_mixed_folder,
    write_palette_gif,
    write_photos,
    write_unreadable,
)
from typer.testing import CliRunner

from ppdeploy.cli import app, main

runner = CliRunner()
LIMIT_ENV = {"PPDEPLOY_MAX_PIXELS": str(MIXED_PIXEL_LIMIT)}
SUMMARY = "input(s) could not be classified; see their error records"


@pytest.fixture(scope="module")
def model_dir(tiny_model) -> Path:
    return tiny_model("json").directory


@pytest.fixture(scope="module")
def mixed(tmp_path_factory) -> MixedFolder:
    return write_mixed_folder(tmp_path_factory.mktemp("mixed") / "photos and odd files")


def run_args(model_dir: Path, images: Path | str, *extra: str, backend: str = "onnx") -> list[str]:
    return ["run", "--model", str(model_dir), "--backend", backend, "--images", str(images), *extra]


def run_main(argv: list[str], capsys, monkeypatch) -> tuple[int, str, str]:
    """``deploy ARGV`` in this process through ``main()``: the code path that turns DeployError into one line."""
    monkeypatch.setattr(sys, "argv", ["deploy", *argv])
    with pytest.raises(SystemExit) as exited:
        main()
    captured = capsys.readouterr()
    return exited.value.code, captured.out, captured.err


def assert_one_line_error(stderr: str, *phrases: str) -> None:
    lines = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    for phrase in phrases:
        assert phrase in lines[0], (phrase, lines[0])


def assert_every_input_once(records: list[dict], folder: MixedFolder) -> None:
    names = [record["filename"] for record in records]
    assert len(names) == len(set(names)) == len(folder.inputs)
    assert set(names) == folder.inputs
    for record in records:
        name = record["filename"]
        if name in folder.errors:
            assert set(record) == {"filename", "error"}, record
            assert f"'{name}'" in record["error"] and folder.errors[name] in record["error"], record
            assert "\n" not in record["error"]
        else:
            assert len(record["class_ids"]) == len(record["scores"]) == len(record["label_names"]) == 5, record
            assert all(np.isfinite(record["scores"])) and record["scores"] == sorted(record["scores"], reverse=True)


# ------------------------------------------------------------------------------------------- the mixed folder


def test_run_prints_one_line_per_input_as_a_real_process(model_dir, mixed):
    """The installed module in a child process, text output; the timeout also bounds the symlink loop."""
    cmd = [sys.executable, "-m", "ppdeploy.cli", *run_args(model_dir, mixed.root)]
    done = subprocess.run(cmd, capture_output=True, text=True, encoding="utf-8", timeout=180,
                          env={**os.environ, **LIMIT_ENV})
    assert done.returncode == 3, done.stderr
    lines = done.stdout.splitlines()
    by_name = dict(line.split(":\t", 1) for line in lines)
    assert len(lines) == len(by_name) == len(mixed.inputs) and set(by_name) == mixed.inputs
    for name, reason in mixed.errors.items():
        assert by_name[name].startswith(f"error: image '{name}' | ") and reason in by_name[name]
    assert all(by_name[name].startswith("class id(s): [") for name in mixed.classified)
    assert done.stderr.strip().splitlines()[-1] == f"{len(mixed.errors)} {SUMMARY}"
    assert "Traceback" not in done.stderr


def test_run_json_gives_one_record_per_input(model_dir, mixed):
    result = runner.invoke(app, run_args(model_dir, mixed.root, "--json", "--batch-size", "4"), env=LIMIT_ENV)
    assert result.exit_code == 3, result.output
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert_every_input_once(records, mixed)
    assert f"{len(mixed.errors)} {SUMMARY}" in result.stderr
    listed = {record["filename"] for record in records}
    assert not any(str(path) in listed for path in mixed.not_inputs)
    assert not any("/loop/" in name for name in listed), "the folder link back up is walked once"


def test_classifier_predict_keeps_every_input_in_order(model_dir, mixed, monkeypatch):
    from ppdeploy.classifier import Classifier
    from ppdeploy.images import list_images

    monkeypatch.setenv("PPDEPLOY_MAX_PIXELS", str(MIXED_PIXEL_LIMIT))
    gif = mixed.root / "palette.gif"  # not listed from the folder, but classified when named
    arrays = [np.full((30, 20), 40000, np.uint16), np.zeros((0, 4, 3), np.uint8)]
    with Classifier(model_dir, "onnx", batch_size=5) as clf:
        batches = list(clf.predict([mixed.root, gif, *arrays]))
    assert all(len(batch) <= 5 for batch in batches)
    records = [record for batch in batches for record in batch]
    expected = [str(path) for path in list_images(mixed.root)] + [str(gif), "array_2", "array_3"]
    assert [record["filename"] for record in records] == expected
    by_name = {record["filename"]: record for record in records}
    assert_every_input_once([by_name[name] for name in expected[:-3]], mixed)
    assert "class_ids" in by_name[str(gif)] and "class_ids" in by_name["array_2"]
    assert by_name["array_3"] == {"filename": "array_3",
                                  "error": "image array of shape (0, 4, 3) | is empty | pass a non-empty image"}


def test_all_good_folder_exits_0(model_dir, tmp_path):
    folder = tmp_path / "good"
    folder.mkdir()
    paths = write_photos(folder, 2) + list(write_good_corpus(folder).values())
    result = runner.invoke(app, run_args(model_dir, folder, "--topk", "1"))
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert sorted(line.split(":\t", 1)[0] for line in lines) == sorted(str(path) for path in paths)
    assert SUMMARY not in result.stderr


def test_pixel_limit_also_bounds_the_resize_of_an_elongated_image(model_dir, tmp_path):
    path = write_elongated_png(tmp_path / "wide_10000x10.png")  # 100,000 pixels; 256000x256 after resize_short
    result = runner.invoke(app, run_args(model_dir, path, "--json"), env={"PPDEPLOY_MAX_PIXELS": "1000000"})
    assert result.exit_code == 3, result.output
    record = json.loads(result.stdout)
    assert record["filename"] == str(path)
    assert record["error"].startswith(f"{path} | cannot preprocess: image 10000x10 | resizing the short side to 256 "
                                      "gives 256000x256, above the pixel limit of 1,000,000")


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_unreadable_file_gets_an_error_record(model_dir, tmp_path):
    folder = tmp_path / "locked"
    folder.mkdir()
    photo = write_photos(folder, 1)[0]
    locked = write_unreadable(folder / "locked.jpg", photo)
    assert locked is not None
    try:
        result = runner.invoke(app, run_args(model_dir, folder, "--json"))
    finally:
        locked.path.chmod(0o644)
    assert result.exit_code == 3, result.output
    records = {r["filename"]: r for r in map(json.loads, result.stdout.splitlines())}
    assert set(records) == {str(photo), str(locked.path)} and "class_ids" in records[str(photo)]
    error = records[str(locked.path)]["error"]
    assert f"'{locked.path}'" in error and "cannot be read" in error


def test_named_gif_is_classified_and_named_text_file_refused(model_dir, tmp_path):
    gif = write_palette_gif(tmp_path / "palette.gif")
    assert runner.invoke(app, run_args(model_dir, gif)).exit_code == 0
    note = tmp_path / "notes.txt"
    note.write_text("hello")
    result = runner.invoke(app, run_args(model_dir, note, "--json"))
    assert result.exit_code == 3
    assert "not an image (unknown file format)" in json.loads(result.stdout)["error"]


# ------------------------------------------------------------------------------------------ could not run: 1


COULD_NOT_RUN = {
    "no model": ("/nonexistent/model | not a model folder", "or a zoo name such as ResNet50"),
    "unknown backend": ("backend 'tflite' | unknown | choose one of: auto, paddle, ", "onnx-fp16", "mnn"),
    "tensorrt missing": ("backend 'trt-fp32' | package tensorrt is not installed | install it: pip install 'ppdeploy[gpu]'",),
    "no images path": ("does not exist | check the path",),
    "empty folder": ("holds no image files (jpg, jpeg, png, bmp, webp, tif, tiff)",),
    "bad pixel limit": ("PPDEPLOY_MAX_PIXELS='lots' | not an integer | set it to a pixel count",),
}


@pytest.mark.parametrize("case", sorted(COULD_NOT_RUN))
def test_could_not_run_exits_1_with_one_line(case, model_dir, mixed, tmp_path, capsys, monkeypatch):
    if case == "tensorrt missing" and importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("TensorRT is installed")
    if case == "bad pixel limit":
        monkeypatch.setenv("PPDEPLOY_MAX_PIXELS", "lots")  # must stop the run, not fail each image
    argv = {
        "no model": run_args(Path("/nonexistent/model"), mixed.root),
        "unknown backend": run_args(model_dir, mixed.root, backend="tflite"),
        "tensorrt missing": run_args(model_dir, mixed.root, backend="tensorrt"),
        "no images path": run_args(model_dir, tmp_path / "nothing here"),
        "empty folder": run_args(model_dir, tmp_path),
        "bad pixel limit": run_args(model_dir, mixed.root),
    }[case]
    code, out, err = run_main(argv, capsys, monkeypatch)
    assert code == 1 and out == ""
    assert_one_line_error(err, *COULD_NOT_RUN[case])


def test_verbose_shows_the_traceback(tmp_path):
    from ppdeploy.samples import write_sample_folder

    write_sample_folder(tmp_path, 1)
    cmd = [sys.executable, "-m", "ppdeploy.cli", "--verbose", *run_args(Path("/nonexistent/model"), tmp_path)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert "Traceback (most recent call last)" in done.stderr and "ModelNotFoundError" in done.stderr


# ------------------------------------------------------------------------------------ models and artifacts: 1


@pytest.fixture
def private_home(tmp_path, monkeypatch) -> Path:
    """A cache of our own: these tests damage artifacts, which the session cache shares with other tests."""
    home = tmp_path / "home"
    monkeypatch.setenv("PPDEPLOY_HOME", str(home))
    return home


@pytest.fixture
def model_copy(model_dir, tmp_path) -> Path:
    copy = tmp_path / "model"
    shutil.copytree(model_dir, copy)
    return copy


@pytest.fixture
def photo(tmp_path) -> Path:
    folder = tmp_path / "one photo"
    folder.mkdir()
    return write_photos(folder, 1)[0]


def test_missing_params_file(model_copy, photo, capsys, monkeypatch):
    (model_copy / "inference.pdiparams").unlink()
    code, _, err = run_main(run_args(model_copy, photo), capsys, monkeypatch)
    assert code == 1
    assert_one_line_error(err, f"{model_copy / 'inference.pdiparams'} | missing (the model's weights) | "
                               "copy inference.pdiparams next to inference.json")


def test_folder_without_model_file(model_copy, photo, capsys, monkeypatch):
    (model_copy / "inference.json").unlink()
    code, _, err = run_main(run_args(model_copy, photo), capsys, monkeypatch)
    assert code == 1
    assert_one_line_error(err, f"{model_copy} | holds no inference.json or inference.pdmodel | point at an exported "
                               "Paddle inference model (deploy export)")


def test_truncated_params_file(model_copy, photo, private_home, capsys, monkeypatch):
    params = model_copy / "inference.pdiparams"
    params.write_bytes(params.read_bytes()[: params.stat().st_size // 3])
    code, _, err = run_main(run_args(model_copy, photo), capsys, monkeypatch)
    assert code == 1
    assert_one_line_error(err, f"{params} | truncated: tensor ", "runs past the end of the file",
                          "the file is damaged: export or download the model again")
    assert not [p for p in (private_home / "artifacts").rglob("*") if p.is_dir() and p.name.endswith(".partial")]


def test_corrupt_onnx_in_the_cache_is_refused_until_deleted(model_dir, photo, private_home, capsys, monkeypatch):
    from ppdeploy.converters.pipeline import default_artifact_dir
    from ppdeploy.models.resolve import resolve_model

    assert run_main(run_args(model_dir, photo), capsys, monkeypatch)[0] == 0
    artifact = default_artifact_dir(resolve_model(model_dir), "onnx")
    (artifact / "model.onnx").write_bytes(b"this is not an onnx model")
    code, _, err = run_main(run_args(model_dir, photo), capsys, monkeypatch)
    assert code == 1
    assert_one_line_error(err, f"{artifact / 'model.onnx'} | content changed since it was written (sha256 ",
                          f"or delete {artifact}")  # the manifest's hash catches it before ONNX Runtime reads it
    shutil.rmtree(artifact)  # the fix the message gives: the next run rebuilds it
    code, _, err = run_main(run_args(model_dir, photo), capsys, monkeypatch)
    assert code == 0 and f"Converting {model_dir.name} to onnx" in err


def test_ir_without_bin_in_the_cache_is_rebuilt(model_dir, photo, private_home, capsys, monkeypatch):
    from ppdeploy.converters.pipeline import default_artifact_dir
    from ppdeploy.models.resolve import resolve_model

    assert run_main(run_args(model_dir, photo, backend="openvino"), capsys, monkeypatch)[0] == 0
    artifact = default_artifact_dir(resolve_model(model_dir), "openvino")
    (artifact / "model.bin").unlink()
    code, out, err = run_main(run_args(model_dir, photo, backend="openvino"), capsys, monkeypatch)
    assert code == 0 and out.startswith(f"{photo}:\tclass id(s):")
    assert "Reusing onnx artifact" in err and f"Converting {model_dir.name} to openvino" in err
    assert (artifact / "model.bin").is_file()


def test_config_crop_size_differs_from_model_input(model_copy, photo, private_home, capsys, monkeypatch):
    yaml = model_copy / "inference_cls.yaml"
    yaml.write_text(yaml.read_text().replace("size: 224", "size: 256").replace("resize_short: 256",
                                                                                 "resize_short: 292"))
    code, out, err = run_main(run_args(model_copy, photo), capsys, monkeypatch)
    assert code == 1 and out == ""
    assert_one_line_error(err, f"{yaml} | CropImage size 256 does not fit the model's 224x224 input (inference.json)"
                               " | set CropImage size to 224 in it")


def test_download_that_is_not_a_tar_is_one_line(tmp_path):
    """The rest of the hostile-archive corpus is in test_fetch.py; tarfile's message for this one spans lines."""
    from ppdeploy.errors import DownloadError
    from ppdeploy.models.fetch import extract_archive

    archive = tmp_path / "ResNet18_infer.tar"
    archive.write_bytes(b"<html>captive portal</html>")
    with pytest.raises(DownloadError) as err:
        extract_archive(archive, tmp_path / "out")
    assert "\n" not in str(err.value) and str(err.value).startswith(f"{archive} | cannot extract (")
