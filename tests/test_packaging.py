"""Installs follow the ecosystem's convention: one extra per backend, CPU and GPU stacks never mixed by one command,
a missing backend names its extra, and ``deploy doctor`` finds a mixed install and says the command that fixes it."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from ppdeploy.registry import backends, targets

PYPROJECT = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]
EXTRAS = PYPROJECT["optional-dependencies"]
# Imports a slim install lacks: every backend library, the server and Ray.
BLOCKED = ("paddle", "paddle2onnx", "onnx", "onnxruntime", "onnxconverter_common", "openvino", "nncf", "tensorrt",
           "fastapi", "uvicorn", "ray", "MNN", "ncnn")


def _name(requirement: str) -> str:
    return re.split(r"[\[<>=!~; ]", requirement.strip(), maxsplit=1)[0].lower()


def _closure(extra: str) -> set[str]:
    """Distribution names ``pip install 'ppdeploy[extra]'`` brings in (self-references expanded)."""
    names: set[str] = {_name(r) for r in PYPROJECT["dependencies"]}
    for requirement in EXTRAS[extra]:
        if _name(requirement) == "ppdeploy":
            for inner in re.search(r"\[(.*)\]", requirement).group(1).split(","):
                names |= _closure(inner.strip())
        else:
            names.add(_name(requirement))
    return names


def test_every_backend_and_target_names_an_existing_extra():
    for record in backends().values():
        assert record.extra in EXTRAS, record.name
        assert set(record.distributions) & {_name(r) for extra in EXTRAS for r in EXTRAS[extra]}, record.name
    for target in targets().values():
        assert target.extra in EXTRAS, target.name


def test_core_dependencies_hold_no_backend():
    core = {_name(r) for r in PYPROJECT["dependencies"]}
    for record in backends().values():
        assert not core & set(record.distributions), record.name


@pytest.mark.parametrize("extra", sorted(EXTRAS))
def test_no_extra_mixes_cpu_and_gpu_builds(extra):
    closure = _closure(extra)
    for record in backends().values():
        if record.exclusive:
            assert len(closure & set(record.distributions)) <= 1, (extra, record.name)


def test_stacks():
    assert {"paddlepaddle", "onnxruntime", "openvino", "nncf"} <= _closure("cpu")
    assert {"onnxruntime-gpu", "tensorrt-cu13"} <= _closure("gpu") and "onnxruntime" not in _closure("gpu")
    assert _closure("cpu") | _closure("ray") == _closure("all")


def _slim(args: list[str], tmp_path: Path, extra_path: Path | None = None) -> subprocess.CompletedProcess:
    """Run the CLI as if none of ``BLOCKED`` were installed (each is None in ``sys.modules``: not importable)."""
    code = (f"import sys; [sys.modules.__setitem__(m, None) for m in {BLOCKED!r}]; "
            "from ppdeploy.cli import main; sys.argv = ['deploy', *sys.argv[1:]]; main()")
    env = {**os.environ, "PPDEPLOY_HOME": str(tmp_path / "home")}
    if extra_path is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(extra_path), env.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120, env=env)


def test_slim_install_still_helps_and_diagnoses(tmp_path):
    assert _slim(["--help"], tmp_path).returncode == 0
    assert _slim(["models", "--json"], tmp_path).returncode == 0
    doctor = _slim(["doctor"], tmp_path)
    assert doctor.returncode == 0, doctor.stderr
    for record in backends().values():
        assert f"install it: pip install 'ppdeploy[{record.extra}]'" in doctor.stdout, record.name


@pytest.mark.parametrize(("args", "extra"), [
    (["run", "--backend", "onnx", "--images", "PHOTOS"], "onnx"),
    (["run", "--backend", "openvino-int8", "--images", "PHOTOS"], "openvino"),
    (["convert", "ResNet18", "--synthetic", "--to", "onnx"], "paddle"),
    (["serve", "ResNet18", "--synthetic"], "serve"),
    (["run", "--engine", "ray", "--images", "PHOTOS"], "ray"),
], ids=["onnx", "openvino-int8", "convert", "serve", "ray"])
def test_missing_backend_names_its_extra_in_one_line(tmp_path, args, extra):
    from ppdeploy.samples import write_sample_folder

    photos = tmp_path / "photos"
    photos.mkdir()
    write_sample_folder(photos, 1)
    done = _slim([str(photos) if arg == "PHOTOS" else arg for arg in args], tmp_path)
    assert done.returncode == 1, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and f"pip install 'ppdeploy[{extra}]'" in lines[0], done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "home" / "models").exists(), "nothing may be exported before the cheap check"


def test_doctor_finds_a_mixed_install(tmp_path):
    """A second build of ONNX Runtime beside the first (its metadata is all importlib.metadata reads)."""
    site = tmp_path / "site"
    info = site / "onnxruntime_gpu-1.32.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: onnxruntime-gpu\nVersion: 1.32.0\n")
    (site / "paddlepaddle_gpu-3.3.0.dist-info").mkdir()
    (site / "paddlepaddle_gpu-3.3.0.dist-info" / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: paddlepaddle-gpu\nVersion: 3.3.0\n")
    env = {**os.environ, "PPDEPLOY_HOME": str(tmp_path / "home"), "PYTHONPATH": str(site)}
    done = subprocess.run([sys.executable, "-m", "ppdeploy.cli", "doctor"], capture_output=True, text=True,
                          timeout=120, env=env)
    assert done.returncode == 0, done.stderr
    problems = [line for line in done.stdout.splitlines() if line.startswith("PROBLEM:")]
    installed = {record.name: [d for d, _ in record.installed()] for record in backends().values()}
    expect = [name for name in backends() if name in ("onnx", "paddle") and installed[name]]  # the CPU build is there to clash with
    assert len(problems) == len(expect), done.stdout
    for name, line in zip(expect, problems):
        assert f"backend '{name}'" in line and "pip uninstall -y" in line
