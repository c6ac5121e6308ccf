"""Fetching official archives from a local HTTP server, safe extraction, and model resolution."""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import io
import json
import math
import os
import signal
import socket
import struct
import subprocess
import sys
import tarfile
import threading
import time
import types
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from ppdeploy.errors import DeployError, DownloadError, ModelNotFoundError
from ppdeploy.models import get_model
from ppdeploy.models import resolve as resolve_module
from ppdeploy.models.export import SYNTHETIC_RECIPE
from ppdeploy.models.fetch import extract_archive, fetch_model, model_cache_dir
from ppdeploy.models.resolve import resolve_model, spec_for_directory

LEGACY_FILES = ("inference.pdmodel", "inference.pdiparams", "inference.pdiparams.info")
OFFLINE_HINTS = ("model folder", "--synthetic", "PPDEPLOY_MODEL_BASE_URL")


# --- a local archive server ----------------------------------------------------------------------------------


@dataclass
class Route:
    body: bytes
    declared_length: int | None = None  # a Content-Length larger than the body simulates a dropped transfer
    delay: float = 0.0  # seconds to wait before answering, to widen race windows
    trickle: float = 0.0  # when set: seconds between blocks of trickle_bytes (a stalling mirror)
    trickle_bytes: int = 1


@dataclass
class ArchiveServer:
    """Serves registered bytes at registered paths; records every request path."""

    base: str
    routes: dict[str, Route] = field(default_factory=dict)
    requests: list[str] = field(default_factory=list)

    def add(self, path: str, body: bytes, *, declared_length: int | None = None, delay: float = 0.0,
            trickle: float = 0.0, trickle_bytes: int = 1) -> str:
        self.routes[path] = Route(body, declared_length, delay, trickle, trickle_bytes)
        return self.base + path


def _handler_for(server: ArchiveServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            server.requests.append(self.path)
            route = server.routes.get(self.path)
            if route is None:
                self.send_error(404, "Not Found")
                return
            time.sleep(route.delay)
            self.send_response(200)
            self.send_header("Content-Type", "application/x-tar")
            self.send_header("Content-Length", str(route.declared_length or len(route.body)))
            self.end_headers()
            if route.trickle:
                try:
                    for start in range(0, len(route.body), route.trickle_bytes):
                        self.wfile.write(route.body[start:start + route.trickle_bytes])
                        self.wfile.flush()
                        time.sleep(route.trickle)
                except OSError:  # the client gave up
                    pass
            else:
                self.wfile.write(route.body)
            self.close_connection = True

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - silence request logging
            pass

    return Handler


@pytest.fixture
def archive_server() -> Iterator[ArchiveServer]:
    state = ArchiveServer(base="")
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(state))
    state.base = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield state
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=5)


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "cache"
    monkeypatch.setenv("PPDEPLOY_HOME", str(home))
    monkeypatch.setenv("PPDEPLOY_ALLOW_HTTP", "1")  # the local server speaks plain http
    return home


def serve_model(server: ArchiveServer, monkeypatch: pytest.MonkeyPatch, name: str, body: bytes, *,
                mirror: str = "/mirror", **route) -> str:
    monkeypatch.setenv("PPDEPLOY_MODEL_BASE_URL", server.base + mirror)
    return server.add(f"{mirror}/{get_model(name).archive_name}", body, **route)


# --- tar builders --------------------------------------------------------------------------------------------


def build_tar(members: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buffer.getvalue()


def file_member(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    return tarfile.TarInfo(name), data


@functools.lru_cache(maxsize=4)
def resnet_params(name: str) -> bytes:
    """An ``inference.pdiparams`` with the tensor shapes of zoo entry ``name`` (all zeros), written here from
    Paddle's ``save_combine`` layout (per tensor: uint32 version, uint64 LoD levels, uint32 tensor version, int32
    size of the ``TensorDesc`` protobuf, the protobuf, the float32 data), independently of ppdeploy's reader."""
    from ppdeploy.models.resnet import parameter_shapes

    def varint(value: int) -> bytes:
        out = bytearray()
        while True:
            out.append((value & 0x7F) | (0x80 if value > 0x7F else 0))
            value >>= 7
            if not value:
                return bytes(out)

    chunks = []
    for shape in parameter_shapes(get_model(name)).values():
        desc = b"\x08" + varint(5) + b"".join(b"\x10" + varint(dim) for dim in shape)  # FP32, dims
        chunks += [struct.pack("<IQIi", 0, 0, 0, len(desc)), desc, bytes(4 * math.prod(shape))]
    return b"".join(chunks)


def legacy_tar(name: str = "ResNet18", *, top_folder: bool = True, files: dict[str, bytes] | None = None,
               params_of: str | None = None) -> bytes:
    """An archive in the official layout: ``{name}_infer/inference.*`` (or flat), its ``inference.pdiparams``
    shaped like zoo entry ``params_of`` (default ``name``) and the other files placeholders."""
    if files is None:
        files = {filename: f"placeholder {filename}".encode() for filename in LEGACY_FILES}
        files["inference.pdiparams"] = resnet_params(params_of or name)
    prefix = f"{name}_infer/" if top_folder else ""
    members = []
    if top_folder:
        folder = tarfile.TarInfo(prefix.rstrip("/"))
        folder.type = tarfile.DIRTYPE
        members.append((folder, None))
    members += [file_member(prefix + filename, data) for filename, data in files.items()]
    return build_tar(members)


def with_extra_member(info: tarfile.TarInfo, data: bytes | None = None) -> bytes:
    members = [file_member(f"ResNet18_infer/{filename}", b"x") for filename in LEGACY_FILES]
    return build_tar([*members, (info, data)])


def assert_cache_clean(cache: Path) -> None:
    """No model folder, staging folder or temp download left behind (lock files may stay)."""
    for folder in ("models", "downloads"):
        leftovers = sorted(p.name for p in (cache / folder).glob("*")) if (cache / folder).exists() else []
        assert leftovers == [], f"{folder}: {leftovers}"


# --- fetch ---------------------------------------------------------------------------------------------------


def test_fetch_extracts_official_layout_and_reuses_it(archive_server, cache, monkeypatch):
    body = legacy_tar()
    serve_model(archive_server, monkeypatch, "ResNet18", body)
    spec = get_model("ResNet18")

    directory = fetch_model(spec, progress=False)

    assert directory == cache / "models" / "ResNet18" == model_cache_dir(spec)
    assert sorted(p.name for p in directory.iterdir()) == sorted([*LEGACY_FILES, "fetch.json"])
    assert (directory / "inference.pdmodel").read_bytes() == b"placeholder inference.pdmodel"
    record = json.loads((directory / "fetch.json").read_text())
    assert record["verified_by"] == "architecture"
    assert record["sha256"] == hashlib.sha256(body).hexdigest()
    assert record["bytes"] == len(body)
    assert record["archive"] == "ResNet18_infer.tar"
    assert record["url"].endswith("/mirror/ResNet18_infer.tar")
    assert record["fetched_at"]
    assert not any((cache / "downloads").iterdir()), "the tar is deleted after extraction"

    assert fetch_model(spec, progress=False) == directory
    assert len(archive_server.requests) == 1, "second call must reuse the cache"


def test_fetch_flat_archive_with_progress_bar(archive_server, cache, monkeypatch, capsys):
    serve_model(archive_server, monkeypatch, "ResNet18", legacy_tar(top_folder=False))
    directory = fetch_model(get_model("ResNet18"), progress=True)
    assert (directory / "inference.pdiparams").is_file()
    assert "downloading" in capsys.readouterr().err


def test_fetch_honours_base_url_and_archive_stem(archive_server, cache, monkeypatch):
    spec = get_model("Fix_ResNet50_vd_ssld")
    monkeypatch.setenv("PPDEPLOY_MODEL_BASE_URL", archive_server.base + "/some/mirror/")
    archive_server.add("/some/mirror/Fix_ResNet50_vd_ssld_v2_infer.tar",
                       legacy_tar("Fix_ResNet50_vd_ssld_v2", params_of="Fix_ResNet50_vd_ssld"))

    directory = fetch_model(spec, progress=False)

    assert archive_server.requests == ["/some/mirror/Fix_ResNet50_vd_ssld_v2_infer.tar"]
    assert directory == cache / "models" / "Fix_ResNet50_vd_ssld"


def test_concurrent_fetches_download_once(archive_server, cache, monkeypatch):
    serve_model(archive_server, monkeypatch, "ResNet18", legacy_tar(), delay=0.3)
    results: list[Path] = []
    threads = [threading.Thread(target=lambda: results.append(fetch_model(get_model("ResNet18"), progress=False)))
               for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert results == [cache / "models" / "ResNet18"] * 2
    assert len(archive_server.requests) == 1, "the lock makes the second caller wait and reuse"


def test_refetches_when_a_file_went_missing(archive_server, cache, monkeypatch):
    serve_model(archive_server, monkeypatch, "ResNet18", legacy_tar())
    directory = fetch_model(get_model("ResNet18"), progress=False)
    (directory / "inference.pdiparams").unlink()
    assert fetch_model(get_model("ResNet18"), progress=False) == directory
    assert (directory / "inference.pdiparams").is_file()
    assert len(archive_server.requests) == 2


def test_truncated_transfer_leaves_nothing(archive_server, cache, monkeypatch):
    body = legacy_tar()
    serve_model(archive_server, monkeypatch, "ResNet18", body[:4096], declared_length=len(body))
    with pytest.raises(DownloadError, match="truncated"):
        fetch_model(get_model("ResNet18"), progress=False)
    assert_cache_clean(cache)


def test_http_404_says_what_to_do_offline(archive_server, cache, monkeypatch):
    monkeypatch.setenv("PPDEPLOY_MODEL_BASE_URL", archive_server.base + "/empty")
    with pytest.raises(DownloadError) as caught:
        fetch_model(get_model("ResNet18"), progress=False)
    message = str(caught.value)
    assert "404" in message and "\n" not in message
    assert all(hint in message for hint in OFFLINE_HINTS)
    assert_cache_clean(cache)


def test_unreachable_server_says_what_to_do_offline(cache, monkeypatch):
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("PPDEPLOY_MODEL_BASE_URL", f"http://127.0.0.1:{port}")
    with pytest.raises(DownloadError, match="cannot reach") as caught:
        fetch_model(get_model("ResNet18"), progress=False, timeout=5)
    assert all(hint in str(caught.value) for hint in OFFLINE_HINTS)
    assert_cache_clean(cache)


def test_checksum_mismatch_is_rejected_and_match_accepted(archive_server, cache, monkeypatch):
    body = legacy_tar()
    serve_model(archive_server, monkeypatch, "ResNet18", body)
    with pytest.raises(DownloadError, match="sha256"):
        fetch_model(get_model("ResNet18"), progress=False, expected_sha256="0" * 64)
    assert_cache_clean(cache)

    directory = fetch_model(get_model("ResNet18"), progress=False, expected_sha256=hashlib.sha256(body).hexdigest())
    assert (directory / "inference.pdmodel").is_file()


def test_archive_without_model_is_rejected(archive_server, cache, monkeypatch):
    serve_model(archive_server, monkeypatch, "ResNet18", build_tar([file_member("ResNet18_infer/README", b"hi")]))
    with pytest.raises(DownloadError, match="no Paddle inference model"):
        fetch_model(get_model("ResNet18"), progress=False)
    assert_cache_clean(cache)


def test_not_a_tar_is_rejected(archive_server, cache, monkeypatch):
    serve_model(archive_server, monkeypatch, "ResNet18", b"<html>captive portal</html>")
    with pytest.raises(DownloadError, match="cannot extract"):
        fetch_model(get_model("ResNet18"), progress=False)
    assert_cache_clean(cache)


# --- unsafe archives -----------------------------------------------------------------------------------------


def _symlink(name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info


def _device(name: str, kind: bytes) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.devmajor, info.devminor = 1, 3
    return info


UNSAFE_MEMBERS = {
    "dotdot": (tarfile.TarInfo("../evil"), b"pwned"),
    "nested-dotdot": (tarfile.TarInfo("ResNet18_infer/../../evil"), b"pwned"),
    "absolute": (tarfile.TarInfo("/tmp/ppdeploy-evil-absolute"), b"pwned"),
    "symlink": (_symlink("ResNet18_infer/evil_link", "/etc/passwd"), None),
    "hardlink": (_symlink("ResNet18_infer/evil_hard", "/etc/passwd", tarfile.LNKTYPE), None),
    "chardev": (_device("ResNet18_infer/evil_dev", tarfile.CHRTYPE), None),
    "blockdev": (_device("ResNet18_infer/evil_blk", tarfile.BLKTYPE), None),
    "fifo": (_device("ResNet18_infer/evil_fifo", tarfile.FIFOTYPE), None),
}


@pytest.mark.parametrize("case", sorted(UNSAFE_MEMBERS))
def test_unsafe_member_is_rejected_and_nothing_written(case, archive_server, cache, monkeypatch, tmp_path):
    info, data = UNSAFE_MEMBERS[case]
    serve_model(archive_server, monkeypatch, "ResNet18", with_extra_member(info, data))
    before = {p for p in tmp_path.rglob("*") if "cache" not in p.relative_to(tmp_path).parts}

    with pytest.raises(DownloadError) as caught:
        fetch_model(get_model("ResNet18"), progress=False)

    assert f"'{info.name}'" in str(caught.value), "the message names the member"
    assert_cache_clean(cache)
    after = {p for p in tmp_path.rglob("*") if "cache" not in p.relative_to(tmp_path).parts}
    assert after == before, "nothing written outside the cache"
    assert not any("evil" in p.name for p in tmp_path.rglob("*"))
    assert not Path("/tmp/ppdeploy-evil-absolute").exists()


def test_extract_archive_rejects_before_writing_anything(tmp_path):
    archive = tmp_path / "bad.tar"
    archive.write_bytes(with_extra_member(tarfile.TarInfo("../evil"), b"pwned"))
    dest = tmp_path / "dest"
    dest.mkdir()
    with pytest.raises(DownloadError, match=r"'\.\./evil'"):
        extract_archive(archive, dest)
    assert list(dest.iterdir()) == [], "members vetted before the first write"


# --- a real exported model through the whole path ------------------------------------------------------------


def test_real_exported_model_fetches_and_loads_in_paddle_inference(archive_server, cache, monkeypatch, tmp_path):
    if importlib.util.find_spec("ppdeploy.models.export") is None:
        pytest.skip("ppdeploy.models.export not written yet")
    import numpy as np
    from paddle import inference

    from ppdeploy.models.export import export_model
    from ppdeploy.models.resolve import default_shape_set

    exported = export_model(get_model("ResNet18"), tmp_path / "exported", synthetic=True, fmt="pdmodel",
                            shape_images=default_shape_set())
    files = {p.name: p.read_bytes() for p in Path(exported).iterdir() if p.name.startswith("inference.")}
    assert "inference.pdmodel" in files, f"export wrote {sorted(files)}"
    serve_model(archive_server, monkeypatch, "ResNet18", legacy_tar(files=files))

    directory = fetch_model(get_model("ResNet18"), progress=False)

    config = inference.Config(str(directory / "inference.pdmodel"), str(directory / "inference.pdiparams"))
    config.disable_gpu()
    config.disable_glog_info()
    predictor = inference.create_predictor(config)
    handle = predictor.get_input_handle(predictor.get_input_names()[0])
    handle.copy_from_cpu(np.zeros((1, 3, 224, 224), dtype=np.float32))
    predictor.run()
    probs = predictor.get_output_handle(predictor.get_output_names()[0]).copy_to_cpu()
    assert probs.shape == (1, 1000)
    assert np.isclose(probs.sum(), 1.0, atol=1e-4)

    # The same real export served as ResNet34 is refused: its parameters are ResNet18's.
    serve_model(archive_server, monkeypatch, "ResNet34", legacy_tar("ResNet34", files=files))
    with pytest.raises(DownloadError) as caught:
        fetch_model(get_model("ResNet34"), progress=False)
    assert "not ResNet34" in str(caught.value) and "fit ResNet18" in str(caught.value)
    assert not (cache / "models" / "ResNet34").exists()


# --- hostile mirrors (issue 18) --------------------------------------------------------------------------------


def test_plain_http_mirror_is_refused_unless_allowed(archive_server, cache, monkeypatch):
    serve_model(archive_server, monkeypatch, "ResNet18", legacy_tar())
    monkeypatch.delenv("PPDEPLOY_ALLOW_HTTP")
    with pytest.raises(DownloadError) as caught:
        fetch_model(get_model("ResNet18"), progress=False)
    message = str(caught.value)
    assert message.startswith(f"{archive_server.base}/mirror/ResNet18_infer.tar | plain http")
    assert "PPDEPLOY_ALLOW_HTTP=1" in message and "\n" not in message
    assert archive_server.requests == [], "refused before connecting"
    monkeypatch.setenv("PPDEPLOY_ALLOW_HTTP", "1")
    assert (fetch_model(get_model("ResNet18"), progress=False) / "inference.pdiparams").is_file()


def test_resnet34_served_as_resnet18_is_refused(archive_server, cache, monkeypatch):
    serve_model(archive_server, monkeypatch, "ResNet18", legacy_tar("ResNet18", params_of="ResNet34"))
    with pytest.raises(DownloadError) as caught:
        fetch_model(get_model("ResNet18"), progress=False)
    message = str(caught.value)
    assert "\n" not in message and "not ResNet18" in message
    assert "holds 187 tensors (21.82 M values) that fit ResNet34" in message, message
    assert "ResNet18 has 107 (11.70 M)" in message
    assert_cache_clean(cache)


def test_pinned_checksum_skips_nothing_but_is_recorded(archive_server, cache, monkeypatch):
    body = legacy_tar()
    serve_model(archive_server, monkeypatch, "ResNet18", body)
    directory = fetch_model(get_model("ResNet18"), progress=False, expected_sha256=hashlib.sha256(body).hexdigest())
    assert json.loads((directory / "fetch.json").read_text())["verified_by"] == "sha256"


def test_checksum_table_format_parses():
    from ppdeploy.models.zoo import archive_checksums, parse_checksums

    digest = "ab" * 32
    text = f"# comment\n{digest}  ResNet50_infer.tar\n{digest.upper()} *ResNet18_infer.tar  # binary mode mark\nbad\n"
    assert parse_checksums(text) == {"ResNet50_infer.tar": digest, "ResNet18_infer.tar": digest}
    assert isinstance(archive_checksums(), dict), "the shipped table parses"


def _gzip_tar_of_zeros(name: str, size: int) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz", compresslevel=1) as tar:
        info = tarfile.TarInfo(name)
        info.size = size
        tar.addfile(info, io.BytesIO(bytes(size)))
        for filename in ("inference.pdmodel", "inference.pdiparams.info"):
            tar.addfile(*file_member(f"ResNet18_infer/{filename}", b"x")[:1], io.BytesIO(b"x"))
    return buffer.getvalue()


def test_tar_bomb_bound_follows_the_declared_model(archive_server, cache, monkeypatch):
    from ppdeploy.models.identify import max_archive_bytes

    bound = max_archive_bytes(get_model("ResNet18"))
    assert 100 << 20 < bound < 200 << 20  # ResNet18's 11.7 M float32 values, twice, plus the program
    body = _gzip_tar_of_zeros("ResNet18_infer/inference.pdiparams", bound + (1 << 20))
    assert len(body) < 2 << 20, "a small download"
    serve_model(archive_server, monkeypatch, "ResNet18", body)
    with pytest.raises(DownloadError, match=rf"would extract [\d,]+ bytes, more than the model can need \({bound:,}\)"):
        fetch_model(get_model("ResNet18"), progress=False)
    assert_cache_clean(cache)


def _fetch_in_thread(spec_name: str, seconds: float) -> tuple[list, threading.Thread]:
    outcome: list = []

    def target() -> None:
        try:
            outcome.append(fetch_model(get_model(spec_name), progress=False))
        except Exception as exc:  # noqa: BLE001 - the test inspects it
            outcome.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout=seconds)
    return outcome, thread


def test_trickling_mirror_is_given_up_with_a_clear_error(archive_server, cache, monkeypatch):
    serve_model(archive_server, monkeypatch, "ResNet18", legacy_tar(), trickle=0.25)  # 4 bytes/s
    monkeypatch.setenv("PPDEPLOY_DOWNLOAD_STALL_SECONDS", "1")
    monkeypatch.setenv("PPDEPLOY_DOWNLOAD_MIN_RATE", "1000")
    started = time.monotonic()
    outcome, thread = _fetch_in_thread("ResNet18", 20)
    assert not thread.is_alive(), "the download must not wait for a trickling mirror"
    assert isinstance(outcome[0], DownloadError), outcome
    message = str(outcome[0])
    assert "stalled:" in message and "below the floor of 1000" in message and "\n" not in message
    assert time.monotonic() - started < 5
    assert_cache_clean(cache)


def test_overall_download_deadline(archive_server, cache, monkeypatch):
    serve_model(archive_server, monkeypatch, "ResNet18", legacy_tar(), trickle=0.05, trickle_bytes=4096)
    monkeypatch.setenv("PPDEPLOY_DOWNLOAD_DEADLINE", "1")
    outcome, thread = _fetch_in_thread("ResNet18", 20)
    assert not thread.is_alive()
    assert isinstance(outcome[0], DownloadError) and "not finished after 1 s" in str(outcome[0]), outcome
    assert_cache_clean(cache)


LOCK_HOLDER = """
import sys, time
from ppdeploy.fsutil import file_lock
with file_lock(sys.argv[1]):
    print("locked", flush=True)
    time.sleep(60)
"""


def test_waiting_on_a_cache_lock_says_who_holds_it_and_gives_up(cache, monkeypatch, capfd):
    lock = cache / "locks" / "ResNet18.lock"
    holder = subprocess.Popen([sys.executable, "-c", LOCK_HOLDER, str(lock)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        monkeypatch.setenv("PPDEPLOY_LOCK_TIMEOUT", "1")
        monkeypatch.setenv("PPDEPLOY_MODEL_BASE_URL", "http://127.0.0.1:9/never-asked")
        outcome, thread = _fetch_in_thread("ResNet18", 20)
    finally:
        holder.kill()
        holder.wait()
    assert not thread.is_alive(), "the wait must end"
    message = str(outcome[0])
    assert isinstance(outcome[0], DeployError) and f"still held by pid {holder.pid} after 1 s" in message, outcome
    assert message.startswith(str(lock)) and "PPDEPLOY_LOCK_TIMEOUT" in message
    assert f"waiting for {lock} (held by pid {holder.pid}" in capfd.readouterr().err


KILLED_FETCH = """
from ppdeploy.models import get_model
from ppdeploy.models.fetch import fetch_model
fetch_model(get_model("ResNet18"), progress=False)
"""


def test_part_file_of_a_killed_download_is_swept_by_the_next_run(archive_server, cache, monkeypatch):
    serve_model(archive_server, monkeypatch, "ResNet18", legacy_tar(), trickle=0.05, trickle_bytes=1024)
    child = subprocess.Popen([sys.executable, "-c", KILLED_FETCH], env=dict(os.environ))
    downloads = cache / "downloads"
    deadline = time.monotonic() + 30
    while not any(p.stat().st_size for p in downloads.glob("*.part")) and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    parts = list(downloads.glob("*.part"))
    assert len(parts) == 1 and parts[0].stat().st_size > 0, parts
    other = downloads / f".ResNet50_infer.tar.{child.pid}.abcd1234.part"  # another archive, same dead process
    other.write_bytes(b"partial")

    serve_model(archive_server, monkeypatch, "ResNet18", legacy_tar())
    assert (fetch_model(get_model("ResNet18"), progress=False) / "fetch.json").is_file()
    assert list(downloads.iterdir()) == []


# --- resolve -------------------------------------------------------------------------------------------------


def make_model_dir(folder: Path, fmt: str = "json", *, params: bool = True) -> Path:
    folder.mkdir(parents=True)
    (folder / f"inference.{fmt}").write_bytes(b"model")
    if params:
        (folder / "inference.pdiparams").write_bytes(b"params")
    return folder


@pytest.mark.parametrize("fmt", ["json", "pdmodel"])
def test_resolve_directory(fmt, tmp_path, cache):
    folder = make_model_dir(tmp_path / "ResNet50_vd_infer", fmt)
    resolved = resolve_model(folder)
    assert resolved.paddle.fmt == fmt
    assert resolved.paddle.model_file == folder / f"inference.{fmt}"
    assert resolved.spec == get_model("ResNet50_vd")
    assert resolved.name == "ResNet50_vd"
    assert resolved.key.startswith("dir-") and "/" not in resolved.key
    assert resolved.synthetic is False
    assert resolve_model(str(folder / f"inference.{fmt}")).paddle.directory == folder


def test_resolve_foreign_directory_and_export_record(tmp_path, cache):
    foreign = make_model_dir(tmp_path / "ResNet50-flowers")
    assert resolve_model(foreign).spec is None
    assert resolve_model(foreign).name == "ResNet50-flowers"

    recorded = make_model_dir(tmp_path / "mine")
    (recorded / "export.json").write_text(json.dumps({"model": "ResNet34_vd", "synthetic": True}))
    resolved = resolve_model(recorded)
    assert resolved.spec == get_model("ResNet34_vd") and resolved.synthetic
    assert spec_for_directory(make_model_dir(tmp_path / "Fix_ResNet50_vd_ssld_v2_infer")).name == "Fix_ResNet50_vd_ssld"


def test_resolve_key_follows_content(tmp_path, cache):
    first = resolve_model(make_model_dir(tmp_path / "a")).key
    second = make_model_dir(tmp_path / "b")
    assert resolve_model(second).key == first
    (second / "inference.pdiparams").write_bytes(b"other params")
    assert resolve_model(second).key != first


def test_resolve_unknown_name_lists_valid_names(cache):
    with pytest.raises(ModelNotFoundError) as caught:
        resolve_model("ResNet51")
    message = str(caught.value)
    assert "ResNet51" in message and "ResNet50_vd" in message and "Fix_ResNet50_vd_ssld" in message
    assert "folder" in message


def test_resolve_missing_path(tmp_path, cache):
    with pytest.raises(ModelNotFoundError, match="not a model folder"):
        resolve_model(tmp_path / "nowhere")


def test_resolve_missing_params_names_the_file(tmp_path, cache):
    folder = make_model_dir(tmp_path / "ResNet18_infer", "pdmodel", params=False)
    with pytest.raises(ModelNotFoundError, match="inference.pdiparams"):
        resolve_model(folder)


def test_resolve_zoo_name_fetches(archive_server, cache, monkeypatch):
    serve_model(archive_server, monkeypatch, "ResNet18", legacy_tar())
    resolved = resolve_model("resnet18", progress=False)
    assert resolved.spec == get_model("ResNet18")
    assert resolved.paddle.directory == cache / "models" / "ResNet18"
    assert resolved.key == "ResNet18-official" and not resolved.synthetic


def test_resolve_zoo_name_offline_error(cache, monkeypatch, archive_server):
    monkeypatch.setenv("PPDEPLOY_MODEL_BASE_URL", archive_server.base + "/empty")
    with pytest.raises(DownloadError, match="--synthetic"):
        resolve_model("ResNet18", progress=False)


@pytest.fixture
def fake_export(monkeypatch: pytest.MonkeyPatch) -> list[dict]:
    """Stand in for ppdeploy.models.export (written separately) and record its calls."""
    calls: list[dict] = []

    def export_model(spec, out_dir, *, weights=None, synthetic=False, fmt="json", seed=0, shape_images=None):
        calls.append({"spec": spec.name, "weights": weights, "synthetic": synthetic, "fmt": fmt})
        make_model_dir(Path(out_dir), fmt)
        return Path(out_dir)

    module = types.ModuleType("ppdeploy.models.export")
    module.export_model = export_model
    module.SYNTHETIC_RECIPE = SYNTHETIC_RECIPE
    monkeypatch.setitem(sys.modules, "ppdeploy.models.export", module)
    monkeypatch.setattr(resolve_module, "_warned_synthetic", False)
    return calls


def test_resolve_synthetic_exports_once_and_warns_once(fake_export, cache, capsys):
    first = resolve_model("ResNet50", synthetic=True, fmt="pdmodel")
    second = resolve_model("ResNet50", synthetic=True, fmt="pdmodel")

    assert first == second
    assert first.synthetic and first.key == f"ResNet50-synthetic-{SYNTHETIC_RECIPE}-pdmodel"
    assert first.paddle.directory == cache / "models" / f"ResNet50-synthetic-{SYNTHETIC_RECIPE}-pdmodel"
    assert fake_export == [{"spec": "ResNet50", "weights": None, "synthetic": True, "fmt": "pdmodel"}]
    assert capsys.readouterr().err.count("meaningless") == 1
    assert resolve_model(first.paddle.directory).spec == get_model("ResNet50"), "cache folders are recognised"


def test_resolve_weights_keys_on_content(fake_export, cache, tmp_path):
    weights = tmp_path / "w.pdparams"
    weights.write_bytes(b"weights")
    resolved = resolve_model("ResNet18_vd", weights=weights)
    digest = hashlib.sha256(b"weights").hexdigest()[:12]
    assert resolved.key == f"ResNet18_vd-weights-{digest}-json" and not resolved.synthetic
    assert fake_export[0]["weights"] == weights


def test_resolve_rejects_contradictions(fake_export, cache, tmp_path):
    with pytest.raises(DeployError, match="only one"):
        resolve_model("ResNet18", synthetic=True, weights=tmp_path / "w.pdparams")
    with pytest.raises(DeployError, match="zoo names"):
        resolve_model(make_model_dir(tmp_path / "m"), synthetic=True)
    with pytest.raises(DeployError, match="format"):
        resolve_model("ResNet18", fmt="onnx")
    with pytest.raises(ModelNotFoundError, match="weights file not found"):
        resolve_model("ResNet18", weights=tmp_path / "missing.pdparams")
