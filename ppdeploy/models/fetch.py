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
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import IO

from ppdeploy.errors import DownloadError, ModelNotFoundError, one_line
from ppdeploy.fsutil import atomic_write_text, cache_home, file_lock, staging_dir
from ppdeploy.models.paddle_files import find_paddle_model
from ppdeploy.models.zoo import ModelSpec

RECORD = "fetch.json"
CHUNK = 1 << 16
# The largest ResNet archive is a few hundred MB; anything this big is not one of ours.
MAX_EXTRACTED_BYTES = 4 << 30
# Known archive checksums (archive name -> sha256). Empty on purpose: the official sums are not published,
# so downloads are recorded in fetch.json rather than verified unless a sum is given here or by the caller.
SHA256: dict[str, str] = {}
_WINDOWS_DRIVE = re.compile(r"^[A-Za-z]:")


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


def fetch_model(spec: ModelSpec, *, progress: bool = True, timeout: float = 60,
                expected_sha256: str | None = None) -> Path:
    """Return the folder of the official inference model of ``spec``, downloading it on first use.

    Args:
        spec: the zoo entry; its ``archive_url`` honours ``PPDEPLOY_MODEL_BASE_URL``.
        progress: show a progress bar on stderr while downloading.
        timeout: seconds to wait for the server on connect and on each read.
        expected_sha256: the archive's sha256, checked when given (else ``SHA256`` is consulted, else the
            sum is only recorded in ``fetch.json``).

    Returns:
        ``cache_home()/models/<spec.name>``, holding ``inference.pdmodel`` and ``inference.pdiparams``.

    Raises:
        DownloadError: the server is unreachable, the transfer is truncated, the checksum differs, or the
            archive is unsafe or holds no model. Nothing is left behind in the cache in any of these cases.
    """
    target = model_cache_dir(spec)
    if is_fetched(target):
        return target
    with file_lock(cache_home() / "locks" / f"{spec.name}.lock"):
        if is_fetched(target):  # another process finished while we waited for the lock
            return target
        expected = expected_sha256 or SHA256.get(spec.archive_name)
        with download(spec.archive_url, cache_home() / "downloads", hint=offline_hint(spec),
                      progress=progress, timeout=timeout) as archive:
            check_sha256(archive, expected, spec.archive_url)
            install_archive(archive, target, spec)
    return target


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


def install_archive(archive: Download, target: Path, spec: ModelSpec) -> None:
    """Unpack ``archive`` into a staging folder, verify it, record it, and move it to ``target``."""
    with staging_dir(target) as stage:
        extract_archive(archive.path, stage)
        try:
            find_paddle_model(stage)
        except ModelNotFoundError as exc:
            raise DownloadError(one_line(spec.archive_url, "archive holds no Paddle inference model "
                                         "(inference.pdmodel or inference.json plus inference.pdiparams)",
                                         "check the mirror in PPDEPLOY_MODEL_BASE_URL")) from exc
        record = {"url": spec.archive_url, "sha256": archive.sha256, "bytes": archive.size,
                  "fetched_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                  "archive": spec.archive_name, "model": spec.name}
        atomic_write_text(stage / RECORD, json.dumps(record, indent=2) + "\n")


# --- download ------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def download(url: str, folder: Path, *, hint: str, progress: bool = True, timeout: float = 60) -> Iterator[Download]:
    """Stream ``url`` into a temp file in ``folder``; yield it, then delete it whatever happens.

    Raises:
        DownloadError: HTTP error, unreachable host, interrupted or truncated transfer (message ends with
            ``hint``).
    """
    folder.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{PurePosixPath(url).name}.", suffix=".part", dir=folder)
    path = Path(name)
    try:
        with os.fdopen(fd, "wb") as sink:
            digest, size = _stream(url, sink, hint=hint, progress=progress, timeout=timeout)
        yield Download(path, digest, size)
    finally:
        path.unlink(missing_ok=True)


def _open(url: str, *, hint: str, timeout: float):
    request = urllib.request.Request(url, headers={"User-Agent": "ppdeploy"})
    try:
        return urllib.request.urlopen(request, timeout=timeout)  # noqa: S310 - URL comes from the zoo or its mirror
    except urllib.error.HTTPError as exc:
        raise DownloadError(one_line(url, f"HTTP {exc.code} {exc.reason}", hint)) from exc
    except urllib.error.URLError as exc:
        raise DownloadError(one_line(url, f"cannot reach the server ({exc.reason})", hint)) from exc
    except (OSError, ValueError) as exc:
        raise DownloadError(one_line(url, f"cannot download ({exc})", hint)) from exc


def _content_length(response) -> int | None:
    value = response.headers.get("Content-Length")
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _stream(url: str, sink: IO[bytes], *, hint: str, progress: bool, timeout: float) -> tuple[str, int]:
    """Copy the response body of ``url`` to ``sink``; return its sha256 and size."""
    digest = hashlib.sha256()
    received = 0
    with _open(url, hint=hint, timeout=timeout) as response, _progress_bar(progress) as advance:
        total = _content_length(response)
        advance(0, total)
        try:
            while block := response.read(CHUNK):
                sink.write(block)
                digest.update(block)
                received += len(block)
                advance(len(block), total)
        except (OSError, ValueError) as exc:  # includes http.client.IncompleteRead and socket timeouts
            raise DownloadError(one_line(url, f"transfer interrupted after {received} bytes ({exc})",
                                         "retry; " + hint)) from exc
    if total is not None and received != total:
        raise DownloadError(one_line(url, f"truncated transfer: got {received} of {total} bytes",
                                     "retry; " + hint))
    return digest.hexdigest(), received


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


def extract_archive(archive: Path, dest: Path) -> list[Path]:
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
            plan = plan_extraction(tar.getmembers(), dest)
            return [_write_member(tar, member, path) for member, path in plan]
    except (tarfile.TarError, EOFError, OSError) as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0].rstrip(":")  # tarfile lists every method
        raise DownloadError(one_line(str(archive), f"cannot extract ({reason})",
                                     "retry the download, or check PPDEPLOY_MODEL_BASE_URL")) from exc


def plan_extraction(members: list[tarfile.TarInfo], dest: Path) -> list[tuple[tarfile.TarInfo, Path]]:
    """Vet every member and map each to its destination path (folders map too, files last-wins).

    Raises:
        DownloadError: naming the first unsafe member.
    """
    parts = [(member, member_parts(member)) for member in members]
    if not any(member.isfile() for member, _ in parts):
        raise DownloadError(one_line("archive", "holds no files", "check PPDEPLOY_MODEL_BASE_URL"))
    strip = 1 if _single_top_folder(parts) else 0
    total = sum(member.size for member, _ in parts if member.isfile())
    if total > MAX_EXTRACTED_BYTES:
        raise DownloadError(one_line("archive", f"would extract {total} bytes, more than any model needs",
                                     "check PPDEPLOY_MODEL_BASE_URL"))
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
