"""Find image files and decode them to RGB ``uint8`` arrays exactly as PaddleClas's Python deploy path does.

PaddleClas (``deploy/python/predict_cls.py``) reads every file with ``cv2.imread(path)`` (``IMREAD_COLOR``) and
flips BGR to RGB. :func:`decode_image` gives the same pixels, but reads the bytes with numpy and calls
``cv2.imdecode(..., cv2.IMREAD_COLOR)`` so that any path (non-ASCII, spaces) works. What ``IMREAD_COLOR`` does to
odd files is therefore the rule here, verified on OpenCV 5.0:

- grayscale (and grayscale + alpha): the gray value is copied to R, G and B;
- RGBA / LA: the alpha channel is dropped, colours are kept as stored (no compositing on any background);
- palette images: expanded through the palette;
- 16-bit PNG: the high byte is kept (``v >> 8``); 16-bit TIFF: OpenCV scales (``round(v / 257)``);
- CMYK JPEG: converted to RGB by OpenCV;
- EXIF orientation is applied (JPEG and PNG), as ``cv2.imread`` does by default;
- animated GIF / multi-page TIFF: the first frame; floating-point TIFF: not decodable (``ImageError``).

Files that are empty, truncated, not images, unreadable, not regular files (a FIFO, a device), larger than the
byte limit or than the pixel limit raise :class:`ImageError` with one line naming the file, the reason and the fix.
The byte limit (default 64 MiB, env ``PPDEPLOY_MAX_IMAGE_BYTES``, ``0`` disables it) is checked on the file's size
before a byte is read, and no more than that is ever read. The pixel limit (default 89,478,485 like Pillow's, env
``PPDEPLOY_MAX_PIXELS``, ``0`` disables it) is checked from the file header (read with Pillow when installed)
before the full decode, and again on the decoded size.
"""

from __future__ import annotations

import glob
import io
import os
import stat
import warnings
from pathlib import Path

import cv2
import numpy as np

from ppdeploy.errors import DeployError, ImageError, one_line
from ppdeploy.fsutil import file_kind

# PaddleClas lists jpg, jpeg, png and bmp; webp and tif/tiff are added because OpenCV decodes them too.
IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
DEFAULT_MAX_PIXELS = 89_478_485
MAX_PIXELS_ENV = "PPDEPLOY_MAX_PIXELS"
# The largest photo file worth decoding: a 50 MP JPEG is ~25 MB, a 16-bit 24 MP TIFF ~150 MB (raise it for those).
DEFAULT_MAX_IMAGE_BYTES = 64 << 20
MAX_IMAGE_BYTES_ENV = "PPDEPLOY_MAX_IMAGE_BYTES"

_MAGIC = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
)
_PIL_FORMATS = ("JPEG", "PNG", "BMP", "GIF", "WEBP", "TIFF")
_REEXPORT = "re-copy or re-export the image"


def _extensions_text() -> str:
    return ", ".join(ext.lstrip(".") for ext in IMAGE_EXTENSIONS)


def is_image_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` names an existing file with one of :data:`IMAGE_EXTENSIONS` (any case)."""
    path = Path(path)
    return path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file()


def pixel_limit(value: int | None = None) -> int | None:
    """Resolve the pixel limit.

    Args:
        value: an explicit limit; ``None`` reads ``$PPDEPLOY_MAX_PIXELS``, falling back to 89,478,485.

    Returns:
        The limit in pixels, or ``None`` when it is disabled (a value of 0).

    Raises:
        DeployError: the variable (or, read at the same time so that a run stops on either before its first
            image, ``$PPDEPLOY_MAX_IMAGE_BYTES``) is not a count.
    """
    if value is None:
        image_byte_limit()
        value = _env_count(MAX_PIXELS_ENV, DEFAULT_MAX_PIXELS, "a pixel count")
    if value < 0:
        raise DeployError(one_line(f"max_pixels={value}", "is negative", "use a pixel count, or 0 to disable"))
    return value or None


def image_byte_limit(value: int | None = None) -> int | None:
    """Resolve the byte limit of an image file: ``value``, else ``$PPDEPLOY_MAX_IMAGE_BYTES``, else 64 MiB;
    ``None`` when disabled (0)."""
    if value is None:
        value = _env_count(MAX_IMAGE_BYTES_ENV, DEFAULT_MAX_IMAGE_BYTES, "a byte count")
    if value < 0:
        raise DeployError(one_line(f"max_bytes={value}", "is negative", "use a byte count, or 0 to disable"))
    return value or None


def _env_count(env: str, default: int, what: str) -> int:
    raw = os.environ.get(env, "").strip()
    if not raw:
        return default
    try:
        return int(raw.replace("_", ""))
    except ValueError:
        raise DeployError(one_line(f"{env}={raw!r}", "not an integer",
                                   f"set it to {what}, or 0 to disable the limit")) from None


# ---------------------------------------------------------------------------------------------------- listing


def list_images(path: str | os.PathLike) -> list[Path]:
    """List the image files named by ``path``, as PaddleClas's ``get_image_list`` does.

    Args:
        path: an image file, a folder (walked recursively; symlinked folders are followed once, so links that
            loop are harmless), or a glob pattern (``**`` allowed).

    Returns:
        The files with an image extension (any case), sorted by path.

    Raises:
        ImageError: nothing matched, the path does not exist, or a named file has no image extension.
    """
    text = os.fspath(path)
    target = Path(text).expanduser()
    if target.is_dir():
        found = _walk_folder(target)
    elif target.is_file():
        found = [_checked_file(target)]
    elif any(char in text for char in "*?["):
        found = _expand_glob(str(target))
    elif target.exists():
        raise ImageError(one_line(f"image path '{text}'", f"is not a regular file ({file_kind(target.stat().st_mode)})",
                                  "pass an image file, a folder or a glob"))
    else:
        raise ImageError(one_line(f"image path '{text}'", "does not exist", "check the path"))
    if not found:
        raise ImageError(one_line(f"image path '{text}'", f"holds no image files ({_extensions_text()})",
                                  "point at a folder or glob with images in it"))
    return sorted(set(found), key=str)


def _checked_file(path: Path) -> Path:
    if path.suffix.lower() not in IMAGE_EXTENSIONS:
        raise ImageError(one_line(f"image '{path}'", f"extension '{path.suffix}' is not an image extension",
                                  f"use one of: {_extensions_text()}"))
    return path


def _walk_folder(folder: Path) -> list[Path]:
    found: list[Path] = []
    seen: set[tuple[int, int]] = set()
    for root, dirs, files in os.walk(folder, followlinks=True):
        try:
            stat = os.stat(root)
        except OSError:
            dirs[:] = []
            continue
        key = (stat.st_dev, stat.st_ino)
        if key in seen:  # a symlink back to a folder already walked: stop here instead of looping
            dirs[:] = []
            continue
        seen.add(key)
        dirs.sort()
        found.extend(Path(root) / name for name in files if is_image_file(Path(root) / name))
    return found


def _expand_glob(pattern: str) -> list[Path]:
    found: list[Path] = []
    for match in glob.glob(pattern, recursive=True):
        candidate = Path(match)
        if candidate.is_dir():
            found.extend(_walk_folder(candidate))
        elif is_image_file(candidate):
            found.append(candidate)
    return found


# --------------------------------------------------------------------------------------------------- decoding


def decode_image(path: str | os.PathLike, *, max_pixels: int | None = None,
                 max_bytes: int | None = None, reduce_to: int | None = None) -> np.ndarray:
    """Decode one image file to an RGB ``uint8`` array of shape (H, W, 3), as ``cv2.imread`` + BGR→RGB would.

    Args:
        path: the image file.
        max_pixels: largest accepted width x height; ``None`` uses ``$PPDEPLOY_MAX_PIXELS`` or the default,
            0 disables the check.
        max_bytes: largest accepted file size; ``None`` uses ``$PPDEPLOY_MAX_IMAGE_BYTES`` or 64 MiB, 0 disables.
        reduce_to: fast decoding (``--fast-decode``, not PaddleClas's exact pipeline): a JPEG whose short side is
            at least twice this many pixels is decoded at 1/2, 1/4 or 1/8 size by libjpeg's DCT scaling (the
            largest reduction that keeps the short side at or above ``reduce_to``); other files as usual.

    Raises:
        ImageError: the file is missing, unreadable, not a regular file, empty, above the byte limit, truncated,
            not an image, or above the pixel limit.
    """
    path = Path(path)
    limit = pixel_limit(max_pixels)
    return _decode(_read_bytes(path, image_byte_limit(max_bytes)), path, limit, reduce_to)


def decode_image_bytes(data: bytes, name: str = "<bytes>", *, max_pixels: int | None = None,
                       reduce_to: int | None = None) -> np.ndarray:
    """Decode an image held in memory (an upload) by the same rules as :func:`decode_image`.

    Args:
        data: the encoded image file's bytes.
        name: what error messages call the image (an upload's filename).
        max_pixels, reduce_to: as for :func:`decode_image`.

    Raises:
        ImageError: the data is empty, truncated, not an image, or above the pixel limit.
    """
    limit = pixel_limit(max_pixels)
    if not data:
        raise ImageError(one_line(f"image '{name}'", "is empty (0 bytes)", "send the image file's bytes"))
    return _decode(bytes(data), name, limit, reduce_to)


def _decode(data: bytes, name: str | Path, limit: int | None, reduce_to: int | None = None) -> np.ndarray:
    if limit is not None:
        _check_header_size(name, data, limit)
    kind = _sniff_format(data)
    if kind == "JPEG" and _jpeg_is_truncated(data):
        raise ImageError(one_line(f"image '{name}'", "JPEG data is truncated", _REEXPORT))
    factor = reduction(header_size(data), reduce_to) if kind == "JPEG" and reduce_to else 1
    bgr = _imdecode(without_color_profile(data) if kind == "PNG" else data, _REDUCED[factor])
    if bgr is None:
        raise ImageError(_undecodable_message(name, kind))
    if limit is not None and factor == 1:  # a reduced decode was checked at full size from the header
        _check_pixels(name, bgr.shape[1], bgr.shape[0], limit)
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


_REDUCED = {1: cv2.IMREAD_COLOR, 2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4,
            8: cv2.IMREAD_REDUCED_COLOR_8}


def reduction(size: tuple[int, int] | None, reduce_to: int) -> int:
    """The DCT-scaling factor (1, 2, 4 or 8) for a ``size`` (width, height) JPEG: the largest that keeps the short
    side at or above ``reduce_to``, and only when the short side is at least twice ``reduce_to``."""
    if size is None or min(size) < 2 * reduce_to:
        return 1
    return max(f for f in (2, 4, 8, 1) if min(size) // f >= reduce_to)


def header_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from the image header without decoding the pixels (Pillow), or None."""
    try:
        from PIL import Image
    except ImportError:
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data), formats=_PIL_FORMATS) as img:
                return img.size
    except Exception:  # noqa: BLE001 - an odd header: decode at full size
        return None


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def without_color_profile(data: bytes) -> bytes:
    """A PNG without its ``iCCP`` chunk: OpenCV ignores colour profiles when decoding (the pixels are the same), but
    libpng prints a warning straight to stderr for a malformed one (scikit-image's page.png has one), and that noise
    would reach every run. Anything that is not a well-formed chunk stream is returned unchanged."""
    if not data.startswith(_PNG_SIGNATURE) or b"iCCP" not in data:
        return data
    chunks, offset = [data[:8]], 8
    while offset + 12 <= len(data):
        length = int.from_bytes(data[offset:offset + 4], "big")
        end = offset + 12 + length
        if end > len(data):
            return data
        if data[offset + 4:offset + 8] != b"iCCP":
            chunks.append(data[offset:end])
        offset = end
    return b"".join(chunks) if offset == len(data) else data


def _read_bytes(path: Path, limit: int | None) -> bytes:
    """The file's bytes, after checking (on the open file, before reading) that it is a regular file within
    ``limit`` bytes; never more than ``limit`` bytes are read, whatever the file does meanwhile."""
    subject = f"image '{path}'"
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # a FIFO must not block the run waiting for a writer
        with os.fdopen(fd, "rb") as fh:
            mode, size = (st := os.fstat(fd)).st_mode, st.st_size
            if stat.S_ISDIR(mode):
                raise ImageError(one_line(subject, "is a folder, not a file", "use list_images() for folders"))
            if not stat.S_ISREG(mode):
                raise ImageError(one_line(subject, f"is not a regular file ({file_kind(mode)})",
                                          "pass an image file"))
            if limit is not None and size > limit:
                raise _too_big(subject, f"{size:,}", limit)
            data = fh.read(limit + 1 if limit is not None else -1)
    except FileNotFoundError:
        raise ImageError(one_line(subject, "file not found", "check the path")) from None
    except OSError as exc:
        raise ImageError(one_line(subject, f"cannot be read: {exc.strerror or exc}",
                                  "check that the file exists and is readable")) from None
    if limit is not None and len(data) > limit:  # it grew after the size check
        raise _too_big(subject, f"more than {limit:,}", limit)
    if not data:
        raise ImageError(one_line(subject, "file is empty (0 bytes)", _REEXPORT))
    return data


def _too_big(subject: str, size: str, limit: int) -> ImageError:
    return ImageError(one_line(subject, f"{size} bytes, above the image file limit of {limit:,}",
                               f"pass a smaller file, or raise the limit ({MAX_IMAGE_BYTES_ENV} or max_bytes=; "
                               "0 disables)"))


def _sniff_format(data: bytes) -> str | None:
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    for magic, name in _MAGIC:
        if data.startswith(magic):
            return name
    return None


def _check_pixels(path: str | Path, width: int, height: int, limit: int) -> None:
    if width * height > limit:
        raise ImageError(one_line(f"image '{path}'", f"{width}x{height} = {width * height:,} pixels is above the "
                                  f"limit of {limit:,}",
                                  f"downscale it, or raise the limit ({MAX_PIXELS_ENV} or max_pixels=; 0 disables)"))


def _check_header_size(path: str | Path, data: bytes, limit: int) -> None:
    """Refuse an oversized image from its header, before the pixels are decoded (needs Pillow)."""
    try:
        from PIL import Image
    except ImportError:  # the decoded size is still checked afterwards
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            with Image.open(io.BytesIO(data), formats=_PIL_FORMATS) as img:
                width, height = img.size
        except Image.DecompressionBombError:
            pil_limit = Image.MAX_IMAGE_PIXELS
            if pil_limit is not None and limit <= 2 * pil_limit:  # Pillow refuses above twice its own limit
                raise ImageError(one_line(f"image '{path}'", f"more than {2 * pil_limit:,} pixels, above the "
                                          f"limit of {limit:,}", "downscale it")) from None
            return
        except Exception:  # noqa: BLE001 - Pillow raises many kinds on odd headers; OpenCV decides then
            return
    _check_pixels(path, width, height, limit)


def _jpeg_is_truncated(data: bytes) -> bool:
    """A JPEG ends with the EOI marker; when it does not, let Pillow tell truncation from trailing bytes."""
    if data.rstrip(b"\x00\r\n\t ").endswith(b"\xff\xd9"):
        return False
    try:
        from PIL import Image
    except ImportError:
        return b"\xff\xd9" not in data[-65536:]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data), formats=("JPEG",)) as img:
                img.load()
    except OSError as exc:
        return "truncated" in str(exc)
    except Exception:  # noqa: BLE001 - anything but truncation is for OpenCV to judge
        return False
    return False


def _imdecode(data: bytes, flag: int = cv2.IMREAD_COLOR) -> np.ndarray | None:
    try:
        return cv2.imdecode(np.frombuffer(data, dtype=np.uint8), flag)
    except cv2.error:
        return None


def _undecodable_message(path: str | Path, kind: str | None) -> str:
    subject = f"image '{path}'"
    if kind is None:
        return one_line(subject, "not an image (unknown file format)",
                        f"pass an image file ({_extensions_text()})")
    return one_line(subject, f"{kind} data is corrupt, truncated or of an unsupported kind", _REEXPORT)
