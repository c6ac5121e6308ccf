"""Download an official PaddleClas inference archive into the cache, safely.

The archive (``{name}_infer.tar``, a folder ``{name}_infer/`` holding ``inference.pdmodel``,
``inference.pdiparams`` and ``inference.pdiparams.info``) is streamed to a temp file under
``cache_home()/downloads``, hashed on the way, checked against its ``Content-Length``, unpacked member by
member into a staging folder after every member has been vetted, verified, and only then renamed to
``cache_home()/models/<name>``. The tar itself is deleted once unpacked: the extracted folder plus the
sha256 recorded in its ``fetch.json`` is all later runs need, and keeping both would double the cache.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import tarfile
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import IO

from ppdeploy.errors import DeployError, DownloadError, ModelNotFoundError, one_line
from ppdeploy.fsutil import atomic_write_text, cache_home, ensure_dir, file_lock, pid_tag, staging_dir, sweep_stale
from ppdeploy.models.identify import architecture_mismatch, max_archive_bytes
from ppdeploy.models.paddle_files import find_paddle_model
from ppdeploy.models.zoo import ModelSpec, archive_sha256

RECORD = "fetch.json"
CHUNK = 1 << 16
# Bound for an archive whose model is unknown (extract_archive called directly); fetch_model scales it to the
# declared model's size (identify.max_archive_bytes: 153 MiB for ResNet18, 636 MiB for ResNet200_vd).
MAX_EXTRACTED_BYTES = 4 << 30
ALLOW_HTTP_ENV = "PPDEPLOY_ALLOW_HTTP"
_WINDOWS_DRIVE = re.compile(r"^[A-Za-z]:")
# Temp downloads are named .<archive>.<pid>.<random>.part; a later run deletes those of dead processes.
_PART_WITH_PID = re.compile(r"^\..+\.(\d+)\.[a-z0-9_]{8}\.part$")
_PART_LEGACY = re.compile(r"^\..+\.[a-z0-9_]{8}\.part$")


LIMIT_ENVS = {"timeout": "PPDEPLOY_DOWNLOAD_TIMEOUT", "stall_seconds": "PPDEPLOY_DOWNLOAD_STALL_SECONDS",
              "min_rate": "PPDEPLOY_DOWNLOAD_MIN_RATE", "deadline": "PPDEPLOY_DOWNLOAD_DEADLINE"}


@dataclass(frozen=True)
class DownloadLimits:
    """Deadlines of a download, each settable by an environment variable.

    Attributes:
        timeout: seconds to wait for the server on connect and for each read (``PPDEPLOY_DOWNLOAD_TIMEOUT``).
        stall_seconds: the window over which the transfer rate is measured (``PPDEPLOY_DOWNLOAD_STALL_SECONDS``).
        min_rate: bytes/s below which a window counts as stalled and the download stops
            (``PPDEPLOY_DOWNLOAD_MIN_RATE``).
        deadline: seconds the whole download may take (``PPDEPLOY_DOWNLOAD_DEADLINE``).
    """

    timeout: float = 30.0
    stall_seconds: float = 60.0
    min_rate: float = 1024.0
    deadline: float = 3600.0

    @classmethod
    def from_env(cls, timeout: float | None = None) -> DownloadLimits:
        values = {"timeout": timeout}
        for name, env in LIMIT_ENVS.items():
            raw = os.environ.get(env, "").strip()
            if raw and values.get(name) is None:
                try:
                    values[name] = float(raw)
                except ValueError:
                    raise DeployError(one_line(f"{env}={raw!r}", "not a number", "set it to a number of "
                                               + ("bytes/s" if name == "min_rate" else "seconds"))) from None
        return cls(**{key: value for key, value in values.items() if value is not None})


@dataclass(frozen=True)
class Download:
    """A finished download: the temp file, its sha256 and its size in bytes."""

    path: Path
    sha256: str
    size: int


def model_cache_dir(spec: ModelSpec) -> Path:
    """Where ``fetch_model`` puts (or found) the extracted model of ``spec``."""
    return cache_home() / "models" / spec.name


def offline_hint(spec: ModelSpec) -> str:
    """What to do when the official archive cannot be downloaded."""
    return ("offline? give a local Paddle model folder in place of the zoo name, use --synthetic, "
            f"or set PPDEPLOY_MODEL_BASE_URL to a mirror serving {spec.archive_name}")


def fetch_model(spec: ModelSpec, *, progress: bool = True, timeout: float | None = None,
                expected_sha256: str | None = None) -> Path:
    """Return the folder of the official inference model of ``spec``, downloading it on first use.

    What is downloaded is trusted only once it is checked: against its pinned sha256 when one is known (the
    caller's, else ``data/model_checksums.txt``), else by its content: the extracted ``inference.pdiparams`` must
    hold exactly the tensor shapes of ``spec``'s architecture. A mirror must be https unless
    ``PPDEPLOY_ALLOW_HTTP=1``.

    Args:
        spec: the zoo entry; its ``archive_url`` honours ``PPDEPLOY_MODEL_BASE_URL``.
        progress: show a progress bar on stderr while downloading.
        timeout: seconds to wait for the server on connect and on each read (default: ``DownloadLimits``).
        expected_sha256: the archive's sha256, checked when given.

    Returns:
        ``cache_home()/models/<spec.name>``, holding ``inference.pdmodel`` and ``inference.pdiparams``.

    Raises:
        DownloadError: the mirror is plain http, the server is unreachable or stalls, the transfer is truncated,
            the checksum or the architecture differs, or the archive is unsafe or holds no model. Nothing is left
            behind in the cache in any of these cases.
    """
    target = model_cache_dir(spec)
    if is_fetched(target):
        return target
    check_scheme(spec.archive_url)
    limits = DownloadLimits.from_env(timeout)
    ensure_dir(target.parent)
    downloads = ensure_dir(cache_home() / "downloads")
    with file_lock(cache_home() / "locks" / f"{spec.name}.lock"):
        if is_fetched(target):  # another process finished while we waited for the lock
            return target
        sweep_downloads(downloads, spec.archive_name)
        expected = expected_sha256 or archive_sha256(spec)
        with download(spec.archive_url, downloads, hint=offline_hint(spec), progress=progress,
                      limits=limits) as archive:
            check_sha256(archive, expected, spec.archive_url)
            install_archive(archive, target, spec, verified_by="sha256" if expected else "architecture")
    return target


def check_scheme(url: str) -> None:
    """Refuse a download URL that is not https, unless ``$PPDEPLOY_ALLOW_HTTP`` is 1 and it is plain http."""
    scheme = urllib.parse.urlsplit(url).scheme.lower()
    if scheme == "https" or (scheme == "http" and os.environ.get(ALLOW_HTTP_ENV) == "1"):
        return
    problem = ("plain http: anyone on the path can swap the model" if scheme == "http"
               else f"scheme '{scheme}' is not supported")
    raise DownloadError(one_line(url, problem, "use an https mirror in PPDEPLOY_MODEL_BASE_URL, or set "
                                 f"{ALLOW_HTTP_ENV}=1 to allow plain http for it (the archive is still checked "
                                 "against the zoo's architecture)"))


def sweep_downloads(folder: Path, archive_name: str) -> None:
    """Delete temp downloads that are nobody's: this archive's (we hold its lock) and those of dead processes."""
    for leftover in folder.glob(f".{archive_name}.*.part"):
        leftover.unlink(missing_ok=True)
    sweep_stale(folder, _PART_WITH_PID, _PART_LEGACY)


def is_fetched(directory: Path) -> bool:
    """True when ``directory`` holds a complete fetched model (files present and a fetch record)."""
    if not (directory / RECORD).is_file():
        return False
    try:
        find_paddle_model(directory)
    except ModelNotFoundError:
        return False
    return True


def check_sha256(archive: Download, expected: str | None, url: str) -> None:
    """Refuse the download when a known checksum does not match."""
    if expected and archive.sha256 != expected.strip().lower():
        raise DownloadError(one_line(url, f"sha256 {archive.sha256} differs from the expected {expected}",
                                     "the download is corrupt or the mirror serves another file; retry, or "
                                     "check PPDEPLOY_MODEL_BASE_URL"))


def install_archive(archive: Download, target: Path, spec: ModelSpec, *, verified_by: str = "architecture") -> None:
    """Unpack ``archive`` into a staging folder, verify it, record it, and move it to ``target``.

    Raises:
        DownloadError: the archive would extract to more than ``spec``'s model can need, holds no model, or
            (unless its sha256 was pinned) its parameters are not ``spec``'s architecture.
    """
    with staging_dir(target) as stage:
        extract_archive(archive.path, stage, max_bytes=max_archive_bytes(spec))
        try:
            paddle = find_paddle_model(stage)
        except ModelNotFoundError as exc:
            raise DownloadError(one_line(spec.archive_url, "archive holds no Paddle inference model "
                                         "(inference.pdmodel or inference.json plus inference.pdiparams)",
                                         "check the mirror in PPDEPLOY_MODEL_BASE_URL")) from exc
        problem = None if verified_by == "sha256" else architecture_mismatch(paddle.params_file, spec)
        if problem:
            raise DownloadError(one_line(spec.archive_url, f"not {spec.name}: its inference.pdiparams {problem}",
                                         "the mirror serves another model; check PPDEPLOY_MODEL_BASE_URL"))
        record = {"url": spec.archive_url, "sha256": archive.sha256, "bytes": archive.size,
                  "fetched_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                  "archive": spec.archive_name, "model": spec.name, "verified_by": verified_by}
        atomic_write_text(stage / RECORD, json.dumps(record, indent=2) + "\n")


# --- download ------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def download(url: str, folder: Path, *, hint: str, progress: bool = True,
             limits: DownloadLimits | None = None) -> Iterator[Download]:
    """Stream ``url`` into a temp file in ``folder``; yield it, then delete it whatever happens.

    Raises:
        DownloadError: HTTP error, unreachable host, a redirect to plain http, a stalled, overdue, interrupted or
            truncated transfer (message ends with ``hint``).
    """
    limits = limits or DownloadLimits.from_env()
    ensure_dir(folder)
    fd, name = tempfile.mkstemp(prefix=f".{PurePosixPath(url).name}.{pid_tag()}.", suffix=".part", dir=folder)
    path = Path(name)
    try:
        with os.fdopen(fd, "wb") as sink:
            digest, size = _stream(url, sink, hint=hint, progress=progress, limits=limits)
        yield Download(path, digest, size)
    finally:
        path.unlink(missing_ok=True)


def _open(url: str, *, hint: str, timeout: float):
    request = urllib.request.Request(url, headers={"User-Agent": "ppdeploy"})
    try:
        response = urllib.request.urlopen(request, timeout=timeout)  # noqa: S310 - URL comes from the zoo or its mirror
    except urllib.error.HTTPError as exc:
        raise DownloadError(one_line(url, f"HTTP {exc.code} {exc.reason}", hint)) from exc
    except urllib.error.URLError as exc:
        raise DownloadError(one_line(url, f"cannot reach the server ({exc.reason})", hint)) from exc
    except (OSError, ValueError) as exc:
        raise DownloadError(one_line(url, f"cannot download ({exc})", hint)) from exc
    final = response.geturl()
    if urllib.parse.urlsplit(final).scheme != "https" and os.environ.get(ALLOW_HTTP_ENV) != "1":
        response.close()  # an https URL redirected to plain http: the answer could come from anyone
        raise DownloadError(one_line(url, f"redirected to {final}", f"use a mirror that stays on https, or set "
                                     f"{ALLOW_HTTP_ENV}=1"))
    return response


def _content_length(response) -> int | None:
    value = response.headers.get("Content-Length")
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _stream(url: str, sink: IO[bytes], *, hint: str, progress: bool, limits: DownloadLimits) -> tuple[str, int]:
    """Copy the response body of ``url`` to ``sink``, within ``limits``; return its sha256 and size."""
    digest = hashlib.sha256()
    received = 0
    started = time.monotonic()
    # Each read waits at most this long, so the stall and deadline checks below run even on a silent server.
    read_timeout = min(limits.timeout, limits.stall_seconds, limits.deadline)
    with _open(url, hint=hint, timeout=read_timeout) as response, _progress_bar(progress) as advance:
        total = _content_length(response)
        advance(0, total)
        window_start, window_bytes = started, 0
        try:
            while block := response.read1(CHUNK):  # what has arrived, not a full chunk: a trickle is seen
                sink.write(block)
                digest.update(block)
                received += len(block)
                window_bytes += len(block)
                advance(len(block), total)
                now = time.monotonic()
                _check_deadline(url, now - started, received, limits, hint)
                if now - window_start >= limits.stall_seconds:
                    _check_rate(url, window_bytes, now - window_start, received, limits, hint)
                    window_start, window_bytes = now, 0
        except TimeoutError as exc:
            raise DownloadError(one_line(url, f"stalled: no data for {read_timeout:g} s after {received} bytes",
                                         _retry(hint))) from exc
        except (OSError, ValueError) as exc:  # includes http.client.IncompleteRead
            raise DownloadError(one_line(url, f"transfer interrupted after {received} bytes ({exc})",
                                         _retry(hint))) from exc
    if total is not None and received != total:
        raise DownloadError(one_line(url, f"truncated transfer: got {received} of {total} bytes", _retry(hint)))
    return digest.hexdigest(), received


def _retry(hint: str) -> str:
    return "retry; " + hint


def _check_deadline(url: str, elapsed: float, received: int, limits: DownloadLimits, hint: str) -> None:
    if elapsed > limits.deadline:
        raise DownloadError(one_line(url, f"not finished after {limits.deadline:g} s ({received} bytes so far)",
                                     "retry on a faster link, or raise PPDEPLOY_DOWNLOAD_DEADLINE; " + hint))


def _check_rate(url: str, window_bytes: int, seconds: float, received: int, limits: DownloadLimits,
                hint: str) -> None:
    rate = window_bytes / seconds
    if rate < limits.min_rate:
        raise DownloadError(one_line(url, f"stalled: {window_bytes} bytes in the last {seconds:.0f} s ({rate:.1f} "
                                     f"bytes/s, below the floor of {limits.min_rate:g}) after {received} bytes",
                                     "retry, or lower PPDEPLOY_DOWNLOAD_MIN_RATE; " + hint))


@contextlib.contextmanager
def _progress_bar(enabled: bool) -> Iterator:
    """Yield ``advance(n_bytes, total)``; draws a rich progress bar on stderr when ``enabled``."""
    if not enabled:
        yield lambda n_bytes, total: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

    columns = (TextColumn("downloading"), BarColumn(), DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=Console(stderr=True)) as bar:
        task = bar.add_task("download", total=None)

        def advance(n_bytes: int, total: int | None) -> None:
            bar.update(task, advance=n_bytes, total=total)

        yield advance


# --- safe extraction -----------------------------------------------------------------------------------------


def extract_archive(archive: Path, dest: Path, *, max_bytes: int = MAX_EXTRACTED_BYTES) -> list[Path]:
    """Unpack the regular files and folders of a tar into ``dest``, flattening one top-level folder.

    Every member is vetted before anything is written, and files are written by this function (never by
    ``tarfile.extract``), so links, devices and paths escaping ``dest`` cannot be created.

    Returns:
        The files and folders written.

    Raises:
        DownloadError: the tar is unreadable, empty, too large, or has an unsafe member (named).
    """
    dest = Path(dest)
    try:
        with tarfile.open(archive, "r:*") as tar:
            plan = plan_extraction(tar.getmembers(), dest, max_bytes=max_bytes)
            return [_write_member(tar, member, path) for member, path in plan]
    except (tarfile.TarError, EOFError, OSError) as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0].rstrip(":")  # tarfile lists every method
        raise DownloadError(one_line(str(archive), f"cannot extract ({reason})",
                                     "retry the download, or check PPDEPLOY_MODEL_BASE_URL")) from exc


def plan_extraction(members: list[tarfile.TarInfo], dest: Path, *,
                    max_bytes: int = MAX_EXTRACTED_BYTES) -> list[tuple[tarfile.TarInfo, Path]]:
    """Vet every member and map each to its destination path (folders map too, files last-wins).

    Raises:
        DownloadError: naming the first unsafe member.
    """
    parts = [(member, member_parts(member)) for member in members]
    if not any(member.isfile() for member, _ in parts):
        raise DownloadError(one_line("archive", "holds no files", "check PPDEPLOY_MODEL_BASE_URL"))
    strip = 1 if _single_top_folder(parts) else 0
    total = sum(member.size for member, _ in parts if member.isfile())
    if total > max_bytes:
        raise DownloadError(one_line("archive", f"would extract {total:,} bytes, more than the model can need "
                                     f"({max_bytes:,})", "check PPDEPLOY_MODEL_BASE_URL"))
    root = os.path.realpath(dest)
    plan = []
    for member, member_path in parts:
        relative = member_path[strip:]
        if not relative:
            continue  # the top folder's own entry
        path = Path(root, *relative)
        if os.path.commonpath([root, os.path.realpath(path)]) != root:
            raise _unsafe(member, "would land outside the target folder")
        plan.append((member, path))
    return plan


def member_parts(member: tarfile.TarInfo) -> tuple[str, ...]:
    """The member's path components, after refusing anything but plain files and folders on safe paths."""
    name = member.name
    if member.issym() or member.islnk():
        raise _unsafe(member, f"is a link (to '{member.linkname}')")
    if member.ischr() or member.isblk() or member.isfifo():
        raise _unsafe(member, "is a device or fifo")
    if not (member.isfile() or member.isdir()):
        raise _unsafe(member, f"has unsupported type {member.type!r}")
    if name.startswith(("/", "\\")) or _WINDOWS_DRIVE.match(name):
        raise _unsafe(member, "has an absolute path")
    if "\\" in name or "\0" in name:
        raise _unsafe(member, "has a backslash or NUL in its path")
    parts = tuple(part for part in PurePosixPath(name).parts if part != ".")
    if ".." in parts:
        raise _unsafe(member, "has a '..' path component")
    if not parts and member.isfile():
        raise _unsafe(member, "has an empty path")
    return parts


def _single_top_folder(parts: list[tuple[tarfile.TarInfo, tuple[str, ...]]]) -> bool:
    """True when every member sits under one folder (the official ``{name}_infer/`` layout)."""
    tops = {member_path[0] for _, member_path in parts if member_path}
    if len(tops) != 1:
        return False
    return all(len(member_path) >= 2 for member, member_path in parts if member.isfile())


def _unsafe(member: tarfile.TarInfo, problem: str) -> DownloadError:
    return DownloadError(one_line(f"archive member '{member.name}'", f"rejected: {problem}",
                                  "the archive is unsafe; check PPDEPLOY_MODEL_BASE_URL or use a local model folder"))


def _write_member(tar: tarfile.TarFile, member: tarfile.TarInfo, path: Path) -> Path:
    if member.isdir():
        path.mkdir(parents=True, exist_ok=True)
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    source = tar.extractfile(member)
    if source is None:
        raise _unsafe(member, "has no readable data")
    with source, open(path, "wb") as sink:
        shutil.copyfileobj(source, sink, CHUNK)
    path.chmod(0o644)  # never carry setuid bits or odd modes from the archive
    return path
