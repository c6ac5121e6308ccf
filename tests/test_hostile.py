"""Issue 18: hostile and broken conditions around the cache, artifacts, image folders and file names, end to end.

Hostile mirrors (http, swapped model, stalls, tar bombs, locks, killed downloads) are in ``test_fetch.py``; here
the CLI meets tampered artifacts, huge and special files, read-only and broken caches, a full disk, weights of
another architecture and file names that are not UTF-8. Each case states what it produced before (docs/reliability.md,
"Hostile conditions").
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from corpus import write_photos
from test_reliability import assert_one_line_error, run_args, run_main


@pytest.fixture(scope="module")
def model_dir(tiny_model) -> Path:
    return tiny_model("json").directory


def _mount(*args: str) -> bool:
    return subprocess.run(["mount", *args], capture_output=True).returncode == 0


@pytest.fixture
def private_home(tmp_path, monkeypatch) -> Path:
    """A cache of this test's own (the tests damage it)."""
    monkeypatch.setenv("PPDEPLOY_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.fixture
def photo(tmp_path) -> Path:
    (tmp_path / "one photo").mkdir()
    return write_photos(tmp_path / "one photo", 1)[0]


# ------------------------------------------------------------------------------------------ tampered artifacts


def test_tampered_openvino_weights_are_refused_until_rebuilt(model_dir, photo, private_home, capsys, monkeypatch):
    from ppdeploy.converters.pipeline import default_artifact_dir
    from ppdeploy.models.resolve import resolve_model

    code, before, _ = run_main(run_args(model_dir, photo, backend="openvino"), capsys, monkeypatch)
    assert code == 0
    artifact = default_artifact_dir(resolve_model(model_dir), "openvino")
    weights = artifact / "model.bin"
    assert json.loads((artifact / ".verified.json").read_text())["model.bin"][2] == weights.stat().st_size
    with open(weights, "r+b") as fh:  # flip 4 KiB in the middle: the IR still loads, the answer changes
        fh.seek(weights.stat().st_size // 2 - 2048)
        block = fh.read(4096)
        fh.seek(-len(block), os.SEEK_CUR)
        fh.write(bytes(b ^ 0x55 for b in block))

    code, out, err = run_main(run_args(model_dir, photo, backend="openvino"), capsys, monkeypatch)
    assert code == 1 and out == ""
    assert_one_line_error(err, f"{weights} | content changed since it was written (sha256 ",
                          f"--to openvino --force, or delete {artifact}")

    code, _, err = run_main(["convert", str(model_dir), "--to", "openvino", "--force"], capsys, monkeypatch)
    assert code == 0, err
    code, after, _ = run_main(run_args(model_dir, photo, backend="openvino"), capsys, monkeypatch)
    assert code == 0 and after == before


# ------------------------------------------------------------------------------------ huge and special files


RSS_REPORT = """
import atexit, resource, sys
atexit.register(lambda: sys.stderr.write(f"MAXRSS_KB {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}\\n"
                                         + open("/proc/self/io").read().replace("\\n", " ") + "\\n"))
from ppdeploy.cli import main
sys.argv = ["deploy", *sys.argv[1:]]
main()
"""


def test_huge_file_in_an_images_folder_is_refused_unread(model_dir, tmp_path, private_home):
    folder = tmp_path / "images"
    folder.mkdir()
    picture = write_photos(folder, 1)[0]
    huge = folder / "huge.jpg"
    with open(huge, "wb") as fh:  # 3 GB, sparse: no disk used
        fh.truncate(3 << 30)
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", RSS_REPORT, *run_args(model_dir, folder, "--json")],
                          capture_output=True, text=True, timeout=180)
    seconds = time.perf_counter() - started
    assert done.returncode == 3, done.stderr
    records = {r["filename"]: r for r in map(json.loads, done.stdout.splitlines())}
    assert "class_ids" in records[str(picture)]
    assert records[str(huge)]["error"] == (f"image '{huge}' | 3,221,225,472 bytes, above the image file limit of "
                                           "67,108,864 | pass a smaller file, or raise the limit "
                                           "(PPDEPLOY_MAX_IMAGE_BYTES or max_bytes=; 0 disables)")
    max_rss_mb = int(done.stderr.split("MAXRSS_KB ")[1].split()[0]) / 1024
    read_mb = int(done.stderr.split("rchar: ")[1].split()[0]) / 2**20  # bytes read() returned, page cache or not
    assert read_mb < 1024, f"{read_mb:.0f} MB read: the file was read"
    print(f"huge.jpg run: {seconds:.1f} s, {read_mb:.0f} MB read, peak RSS {max_rss_mb:.0f} MB")


@pytest.mark.parametrize("kind", ["fifo", "char device"])
def test_fifo_or_device_as_images_is_not_a_regular_file(kind, model_dir, tmp_path, private_home, capsys, monkeypatch):
    if kind == "fifo":
        path = tmp_path / "pipe.jpg"
        os.mkfifo(path)
        expected = "is not a regular file (a FIFO (named pipe))"
    else:
        path, expected = Path("/dev/zero"), "is not a regular file (a character device)"
    code, out, err = run_main(run_args(model_dir, path), capsys, monkeypatch)
    assert code == 1 and out == ""
    assert_one_line_error(err, f"image path '{path}' | {expected} | pass an image file, a folder or a glob")


def test_decoding_a_fifo_does_not_block(tmp_path):
    from ppdeploy.errors import ImageError
    from ppdeploy.images import decode_image

    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    with pytest.raises(ImageError, match=r"is not a regular file \(a FIFO"):
        decode_image(fifo)  # without a writer, a blocking open would never return


# -------------------------------------------------------------------------------------- broken and read-only caches


@pytest.mark.parametrize("case", ["home is a file", "home is a dangling symlink", "artifacts is a file",
                                  "models is a file"])
def test_cache_path_problem_is_one_line(case, model_dir, photo, tmp_path, capsys, monkeypatch):
    home = tmp_path / "home"
    if case == "home is a file":
        home.write_text("not a folder")
        culprit, problem = home, "is a file, not a folder"
    elif case == "home is a dangling symlink":
        home.symlink_to(tmp_path / "gone")
        culprit, problem = home, f"is a dangling symlink (to '{tmp_path / 'gone'}')"
    else:
        home.mkdir()
        culprit = home / case.split()[0]
        culprit.write_text("not a folder")
        problem = "is a file, not a folder"
    monkeypatch.setenv("PPDEPLOY_HOME", str(home))
    argv = (["run", "--model", "ResNet18", "--synthetic", "--backend", "onnx", "--images", str(photo)]
            if case == "models is a file" else run_args(model_dir, photo))
    code, out, err = run_main(argv, capsys, monkeypatch)
    assert code == 1 and out == ""
    assert_one_line_error(err, f"{culprit} | {problem} | ")


def test_read_only_cache_serves_what_it_holds(model_dir, photo, tmp_path, capsys, monkeypatch):
    built = tmp_path / "built"
    monkeypatch.setenv("PPDEPLOY_HOME", str(built))
    code, before, _ = run_main(run_args(model_dir, photo), capsys, monkeypatch)
    assert code == 0
    mounted = tmp_path / "read-only"
    mounted.mkdir()
    if not (_mount("--bind", str(built), str(mounted)) and _mount("-o", "remount,bind,ro", str(mounted))):
        _mount_cleanup(mounted)
        pytest.skip("cannot mount read-only here (needs root or CAP_SYS_ADMIN)")
    try:
        monkeypatch.setenv("PPDEPLOY_HOME", str(mounted))
        code, out, err = run_main(run_args(model_dir, photo), capsys, monkeypatch)
        assert code == 0 and out == before, err
        assert "Reusing onnx artifact" in err and "Traceback" not in err
        code, out, err = run_main(run_args(model_dir, photo, backend="openvino"), capsys, monkeypatch)  # not built
        assert code == 1 and out == ""
        assert_one_line_error(err, "cannot be written (Read-only file system) | a read-only cache serves what it "
                                   "already holds")
    finally:
        _mount_cleanup(mounted)


def _mount_cleanup(mounted: Path) -> None:
    subprocess.run(["umount", str(mounted)], capture_output=True)


def test_full_disk_during_openvino_save_says_no_space(model_dir, tmp_path, capsys, monkeypatch, private_home):
    code, _, err = run_main(["convert", str(model_dir), "--to", "onnx", "-o", str(tmp_path / "built" / "onnx")],
                            capsys, monkeypatch)
    assert code == 0, err
    disk = tmp_path / "small disk"
    disk.mkdir()
    if not _mount("-t", "tmpfs", "-o", "size=512k", "tmpfs", str(disk)):
        pytest.skip("cannot mount a tmpfs here (needs root or CAP_SYS_ADMIN)")
    try:
        shutil.copytree(tmp_path / "built" / "onnx", disk / "onnx")
        filler = disk / "filler"
        with open(filler, "wb") as fh:  # leave 16 KiB: the IR's weights do not fit
            fh.write(bytes(shutil.disk_usage(disk).free - (16 << 10)))
        code, out, err = run_main(["convert", str(model_dir), "--to", "openvino", "-o", str(disk / "openvino")],
                                  capsys, monkeypatch)
        assert code == 1 and out == ""
        assert "Reusing onnx artifact" in err
        assert_one_line_error(err, f"{disk} | no space left on the device (", "free some space there")
        assert not (disk / "openvino").exists() and not list(disk.glob(".openvino.*"))
    finally:
        _mount_cleanup(disk)


# ------------------------------------------------------------------------------ weights of another architecture


def test_resnet34_weights_in_a_resnet18_folder_blame_the_mismatch(model_dir, photo, tmp_path, private_home, capsys,
                                                                   monkeypatch):
    from test_fetch import resnet_params

    folder = tmp_path / "ResNet18"  # the folder's name makes it the zoo's ResNet18
    shutil.copytree(model_dir, folder)
    (folder / "inference.pdiparams").write_bytes(resnet_params("ResNet34"))
    code, out, err = run_main(run_args(folder, photo), capsys, monkeypatch)
    assert code == 1 and out == ""
    assert_one_line_error(err, f"{folder / 'inference.pdiparams'} | holds the parameters of ResNet34, but this model "
                               "is ResNet18", "copy ResNet18's inference.pdiparams here")


def test_huge_sparse_params_file_is_hashed_once(model_dir, tmp_path, private_home):
    from ppdeploy.converters.pipeline import convert_model
    from ppdeploy.errors import DeployError
    from ppdeploy.models.resolve import resolve_model

    folder = tmp_path / "big"
    folder.mkdir()
    shutil.copy(model_dir / "inference.json", folder)
    size = 384 << 20
    with open(folder / "inference.pdiparams", "wb") as fh:
        fh.truncate(size)  # sparse
    read_before = _bytes_read()
    with pytest.raises(DeployError):
        convert_model(resolve_model(folder), "onnx")
    read = _bytes_read() - read_before
    assert size <= read < 1.5 * size, f"read {read / size:.2f} times the params file"


def _bytes_read() -> int:
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise AssertionError("no rchar in /proc/self/io")


# ------------------------------------------------------------------------------------------- stale temp folders


SCRATCH_THEN_HANG = """
import sys, time
from ppdeploy.fsutil import scratch_dir
with scratch_dir("p2o") as path:
    print(path, flush=True)
    time.sleep(60)
"""


def test_scratch_folders_of_dead_processes_are_swept_by_the_next_conversion(model_dir, tmp_path, private_home, capsys,
                                                                            monkeypatch):
    from ppdeploy.fsutil import scratch_dir

    temp = tmp_path / "tmp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    child = subprocess.Popen([sys.executable, "-c", SCRATCH_THEN_HANG], stdout=subprocess.PIPE, text=True,
                             env={**os.environ, "TMPDIR": str(temp)})
    dead = Path(child.stdout.readline().strip())
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    assert dead.parent == temp and dead.is_dir()
    old_legacy, new_legacy = temp / "ppdeploy-p2o-abcd1234", temp / "ppdeploy-export-efgh5678"
    for folder in (old_legacy, new_legacy):
        folder.mkdir()
    os.utime(old_legacy, (time.time() - 2 * 86400,) * 2)
    with scratch_dir("nncf") as alive:  # ours: this process is alive
        code, _, err = run_main(["convert", str(model_dir), "--to", "onnx"], capsys, monkeypatch)
        assert code == 0, err
        assert alive.is_dir()
    assert sorted(p.name for p in temp.iterdir()) == [new_legacy.name]


# -------------------------------------------------------------------------------------- names that are not UTF-8


@pytest.fixture
def odd_names(tmp_path) -> tuple[Path, list[bytes]]:
    folder = tmp_path / "odd names"
    folder.mkdir()
    picture = write_photos(folder, 1)[0]
    names = [b"caf\xe9 latin-1.jpg", b"two\nlines.jpg", b"tab\there.jpg"]
    for name in names:
        shutil.copy(picture, os.path.join(os.fsencode(folder), name))
    picture.unlink()
    return folder, [os.path.join(os.fsencode(folder), name) for name in names]


def test_output_jsonl_keeps_every_record_of_non_utf8_names(odd_names, model_dir, tmp_path, private_home, capsys,
                                                           monkeypatch):
    folder, paths = odd_names
    out_file = tmp_path / "out.jsonl"
    code, _, err = run_main(run_args(model_dir, folder, "--output", str(out_file)), capsys, monkeypatch)
    assert code == 0, err
    raw = out_file.read_bytes()
    lines = raw.decode("utf-8").splitlines()  # valid UTF-8
    assert len(lines) == 3
    assert sorted(os.fsencode(json.loads(line)["filename"]) for line in lines) == sorted(paths)
    assert b"\\udce9" in raw, "the undecodable byte is written as the documented JSON escape"


def test_json_and_text_under_strict_utf8_stdout(odd_names, model_dir, private_home):
    folder, paths = odd_names
    env = {**os.environ, "PYTHONIOENCODING": "utf-8:strict", "LC_ALL": "C.UTF-8"}
    command = [sys.executable, "-m", "ppdeploy.cli", *run_args(model_dir, folder)]
    as_json = subprocess.run([*command, "--json"], capture_output=True, env=env, timeout=120)
    assert as_json.returncode == 0, as_json.stderr.decode(errors="replace")
    lines = as_json.stdout.decode("utf-8").splitlines()
    assert sorted(os.fsencode(json.loads(line)["filename"]) for line in lines) == sorted(paths)

    from ppdeploy.results import untext_name

    as_text = subprocess.run(command, capture_output=True, env=env, timeout=120)
    assert as_text.returncode == 0, as_text.stderr.decode(errors="replace")
    lines = as_text.stdout.decode("utf-8").splitlines()
    assert len(lines) == 3, lines  # one line per record, newline in a name or not
    names = sorted(os.fsencode(untext_name(line.split(":\t", 1)[0])) for line in lines)
    assert names == sorted(paths)
    assert any(line.startswith(f"{folder}/two\\nlines.jpg:\tclass id(s):") for line in lines)
