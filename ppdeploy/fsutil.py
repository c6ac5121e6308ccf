"""Atomic file and directory writes, hashing, cache folders, a cross-process lock with a deadline, and the sweep of
temp files that killed processes left behind."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import re
import shutil
import stat
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from ppdeploy.errors import DeployError, one_line

LOCK_TIMEOUT_ENV = "PPDEPLOY_LOCK_TIMEOUT"
DEFAULT_LOCK_TIMEOUT_S = 900.0  # longer than the slowest conversion (an int8 ResNet200 with accuracy control)
LEGACY_TEMP_AGE_S = 24 * 3600  # temp folders without a pid in their name count as stale after a day
# Scratch folders ppdeploy (and its child processes) create in the system temp folder; ``scratch_dir`` names them
# ``ppdeploy-<kind>-<pid>-<random>``; older code named them ``ppdeploy-<kind>-<random>`` (swept by age only).
_SCRATCH_WITH_PID = re.compile(r"^ppdeploy-[a-z0-9]+-(\d+)-[^/]+$")
_SCRATCH_LEGACY = re.compile(r"^ppdeploy-(?:p2o|export|nncf)-[a-z0-9_]{8}$")
_HASHES: dict[tuple, str] = {}  # file stamp -> sha256, so one process never hashes the same bytes twice


def file_stamp(path: str | os.PathLike) -> tuple[int, int, int, int, int]:
    """(device, inode, size, mtime ns, ctime ns): changes whenever the file's bytes may have (ctime cannot be set
    back by hand, so a file edited and then ``touch``-ed to its old mtime still gets a new stamp)."""
    st = os.stat(path)
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Return the hex sha256 of a file's bytes (memoised per :func:`file_stamp` within the process)."""
    stamp = file_stamp(path)
    if stamp not in _HASHES:
        digest = hashlib.sha256()
        with open(path, "rb") as fh:
            while block := fh.read(chunk):
                digest.update(block)
        if file_stamp(path) == stamp:  # the file did not change while it was read
            _HASHES[stamp] = digest.hexdigest()
        else:
            return digest.hexdigest()
    return _HASHES[stamp]


def sha256_files(paths: list[Path]) -> str:
    """Hash several files (names and bytes, in the given order) into one digest."""
    digest = hashlib.sha256()
    for path in paths:
        digest.update(Path(path).name.encode())
        digest.update(sha256_file(path).encode())
    return digest.hexdigest()


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def _as_created(path: Path, directory: bool) -> None:
    """Give a temp file or folder (created 0600/0700 by ``tempfile``) the mode a plain create would under the umask."""
    with contextlib.suppress(OSError):
        os.chmod(path, (0o777 if directory else 0o666) & ~_umask())


# --- folders ---------------------------------------------------------------------------------------------------


def ensure_dir(path: str | os.PathLike) -> Path:
    """Create ``path`` (and its parents) unless it is a folder already.

    Raises:
        DeployError: one line naming the path component in the way (a file, a dangling symlink) or saying the
            folder is read-only, instead of a traceback.
    """
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DeployError(path_problem(path, exc)) from None
    return path


def path_problem(path: Path, exc: OSError) -> str:
    """The one-line message for ``exc`` raised while creating or writing under ``path``."""
    for part in [*reversed(path.parents), path]:
        if os.path.islink(part) and not os.path.exists(part):
            return one_line(str(part), f"is a dangling symlink (to '{os.readlink(part)}')",
                            "remove it, point it at a folder, or set PPDEPLOY_HOME to another folder")
        if os.path.lexists(part) and not os.path.isdir(part):
            return one_line(str(part), "is a file, not a folder",
                            "move the file away, or set PPDEPLOY_HOME to another folder")
    if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return one_line(str(path), f"cannot be written ({os.strerror(exc.errno)})",
                        "a read-only cache serves what it already holds; to build anything new, set PPDEPLOY_HOME "
                        "to a writable folder")
    if exc.errno == errno.ENOSPC:
        return no_space_message(path)
    return one_line(str(path), f"cannot be created ({exc.strerror or exc})", "check the path and its permissions")


def no_space_message(path: Path, detail: str = "") -> str:
    """``<dir> | no space left on the device (...) | free space or ...``."""
    free = _free_bytes(path)
    where = f"{free / 2**20:,.1f} MiB free" if free is not None else "full"
    return one_line(str(path), f"no space left on the device ({where}){detail}",
                    "free some space there, or set PPDEPLOY_HOME (or -o) to a folder on a larger disk")


def _free_bytes(path: Path) -> int | None:
    for candidate in [path, *path.parents]:
        with contextlib.suppress(OSError):
            return shutil.disk_usage(candidate).free
    return None


# --- atomic writes ----------------------------------------------------------------------------------------------


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temp file in the same folder and a rename."""
    with staging_file(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


@contextlib.contextmanager
def staging_file(final: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp file path beside ``final`` to write (streamed, by any library); on success it replaces ``final``.

    On any error the temp file is removed and ``final`` is left as it was.
    """
    final = Path(final)
    ensure_dir(final.parent)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    except OSError as exc:
        raise DeployError(path_problem(final.parent, exc)) from None
    os.close(fd)
    _as_created(Path(tmp), directory=False)
    try:
        with _out_of_space_is_one_line(final.parent):
            yield Path(tmp)
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
        os.replace(tmp, final)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


@contextlib.contextmanager
def staging_dir(final: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty temp folder beside ``final``; on success it replaces ``final`` in one rename.

    On any error (or interruption) the temp folder is removed and ``final`` is left as it was, so
    nothing half-written is ever found at ``final``.
    """
    final = Path(final)
    ensure_dir(final.parent)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".partial", dir=final.parent))
    except OSError as exc:
        raise DeployError(path_problem(final.parent, exc)) from None
    _as_created(tmp, directory=True)
    try:
        with _out_of_space_is_one_line(final.parent):
            yield tmp
        if final.exists():
            trash = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".old", dir=final.parent))
            os.replace(final, trash / "old")
            os.replace(tmp, final)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def _out_of_space_is_one_line(folder: Path) -> Iterator[None]:
    try:
        yield
    except OSError as exc:
        if exc.errno != errno.ENOSPC:
            raise
        raise DeployError(no_space_message(folder)) from exc


# --- locks ------------------------------------------------------------------------------------------------------


def lock_timeout() -> float:
    """Seconds to wait for a cache lock: ``$PPDEPLOY_LOCK_TIMEOUT`` or 900.

    Raises:
        DeployError: the variable is not a number.
    """
    raw = os.environ.get(LOCK_TIMEOUT_ENV, "").strip()
    try:
        return float(raw) if raw else DEFAULT_LOCK_TIMEOUT_S
    except ValueError:
        raise DeployError(one_line(f"{LOCK_TIMEOUT_ENV}={raw!r}", "not a number",
                                   "set it to the seconds to wait for a busy cache entry")) from None


@contextlib.contextmanager
def file_lock(path: str | os.PathLike, *, timeout: float | None = None) -> Iterator[None]:
    """Hold an exclusive advisory lock on ``path`` (created if missing) for the block's duration.

    The holder writes its pid into the file. A caller that has to wait says so on stderr, once, naming the
    holder, and gives up after ``timeout`` seconds (default :func:`lock_timeout`). On a read-only cache no lock
    can be taken and none is needed (nobody can write there): the block runs unlocked.

    Raises:
        DeployError: the lock was not free within ``timeout`` (names the holder's pid), or the lock's folder
            cannot be created (names what is in the way).
    """
    fd = _open_lock(Path(path))
    if fd is None:
        yield
        return
    try:
        _acquire(fd, path, lock_timeout() if timeout is None else timeout)
        try:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _open_lock(path: Path) -> int | None:
    """The lock file's descriptor, or ``None`` on a read-only cache."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return os.open(path, os.O_RDWR | os.O_CREAT, 0o666 & ~_umask())
    except OSError as exc:
        if exc.errno == errno.EROFS or (exc.errno in (errno.EACCES, errno.EPERM) and _read_only(path.parent)):
            return None
        raise DeployError(path_problem(path, exc)) from None


def _read_only(folder: Path) -> bool:
    existing = next((p for p in [folder, *folder.parents] if p.exists()), None)
    return existing is not None and not os.access(existing, os.W_OK)


def _acquire(fd: int, path: Path, timeout: float) -> None:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return
    except BlockingIOError:
        pass
    holder = lock_holder(path)
    sys.stderr.write(f"waiting for {path} (held by {holder}; giving up after {timeout:g} s, "
                     f"{LOCK_TIMEOUT_ENV} sets it)\n")
    sys.stderr.flush()
    deadline = time.monotonic() + timeout
    while True:
        time.sleep(min(0.2, max(0.0, deadline - time.monotonic())))
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise DeployError(one_line(str(path), f"still held by {lock_holder(path)} after {timeout:g} s",
                                           "wait for that process to finish (or stop it), or raise "
                                           f"{LOCK_TIMEOUT_ENV}")) from None


def lock_holder(path: Path) -> str:
    """``pid N`` of the process that wrote ``path`` (a lock file), or ``another process``."""
    with contextlib.suppress(OSError, ValueError, IndexError):  # empty while its holder is writing it
        return f"pid {int(Path(path).read_text().split()[0])}"
    return "another process"


# --- stale temp files -------------------------------------------------------------------------------------------


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists (a reused pid counts as alive: the sweep errs on keeping)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def pid_tag() -> str:
    """What goes into the names of temp files and folders so that a later run can tell whose they are."""
    return str(os.getpid())


def sweep_stale(folder: Path, pattern: re.Pattern[str], legacy: re.Pattern[str] | None = None,
                max_age_s: float = LEGACY_TEMP_AGE_S) -> list[Path]:
    """Delete entries of ``folder`` left by processes that are gone; return what was deleted.

    An entry matching ``pattern`` names its creator's pid in group 1 and goes when that pid is dead; one matching
    ``legacy`` (no pid) goes when it is older than ``max_age_s``. Nothing else is touched.
    """
    removed: list[Path] = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    now = time.time()
    for entry in entries:
        match = pattern.match(entry.name)
        try:
            stale = (not pid_alive(int(match.group(1)))) if match else bool(
                legacy and legacy.match(entry.name) and now - entry.stat(follow_symlinks=False).st_mtime > max_age_s)
        except OSError:
            continue
        if stale and _remove(Path(entry.path)):
            removed.append(Path(entry.path))
    return removed


def _remove(path: Path) -> bool:
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    except OSError:
        return False
    return True


@contextlib.contextmanager
def scratch_dir(kind: str) -> Iterator[Path]:
    """A temp folder ``<tmp>/ppdeploy-<kind>-<pid>-<random>``, removed afterwards; if the process is killed, the
    next :func:`sweep_scratch` (every conversion and download runs one) removes it."""
    path = Path(tempfile.mkdtemp(prefix=f"ppdeploy-{kind}-{pid_tag()}-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def sweep_scratch() -> list[Path]:
    """Remove the scratch folders of dead processes from the system temp folder (see :func:`scratch_dir`)."""
    return sweep_stale(Path(tempfile.gettempdir()), _SCRATCH_WITH_PID, _SCRATCH_LEGACY)


def is_regular_file(path: str | os.PathLike) -> bool:
    """True for a regular file (following symlinks); False for folders, FIFOs, devices, sockets, missing paths."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return False


def file_kind(mode: int) -> str:
    """What a non-regular file is, for messages: ``a FIFO``, ``a character device``, ..."""
    kinds = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
             (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))
    return next((name for test, name in kinds if test(mode)), "not a regular file")


def cache_home() -> Path:
    """The ppdeploy cache root: ``$PPDEPLOY_HOME`` or ``~/.cache/ppdeploy``."""
    env = os.environ.get("PPDEPLOY_HOME")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "ppdeploy"
