"""Image corpora built on the fly: files that decode (some of them odd) and files that must be refused.

Shared by ``test_images.py`` (decode level) and ``test_reliability.py`` (end to end through the CLI). Nothing
is downloaded: the odd files are written with Pillow and OpenCV, the photos come from ``ppdeploy.samples``.
To look at the mixed folder by hand::

    python tests/corpus.py /tmp/mixed
    PPDEPLOY_MAX_PIXELS=70000000 deploy run --model ResNet18 --synthetic --backend onnx --images /tmp/mixed
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

RGB = np.random.default_rng(0).integers(0, 256, (40, 60, 3), dtype=np.uint8)
NON_ASCII_NAME = "with spaces and café 写真.jpg"
EXIF_ROTATE_90_CW = 6  # EXIF Orientation value: rotate 90° clockwise to display


def write_good_corpus(folder: Path) -> dict[str, Path]:
    """Files that decode, one per conversion rule of ``ppdeploy.images``; 60x40 unless the name says otherwise."""
    rng = np.random.default_rng(1)
    files = {}

    def save(name: str, array: np.ndarray, **params) -> None:
        files[name] = folder / name
        Image.fromarray(array).save(files[name], **params)

    save("rgb.png", RGB)
    save("rgb.bmp", RGB)
    save("rgb.webp", RGB, lossless=True)
    save("rgb.tif", RGB)
    save("rgb.jpg", RGB, quality=95)
    save("gray.png", RGB[:, :, 0].copy())
    save("gray.jpg", RGB[:, :, 0].copy(), quality=95)
    save("rgba.png", rng.integers(0, 256, (40, 60, 4), dtype=np.uint8))
    save("la.png", rng.integers(0, 256, (40, 60, 2), dtype=np.uint8))
    save("one.png", np.array([[[10, 20, 30]]], np.uint8))
    save(NON_ASCII_NAME, RGB, quality=95)
    files["palette.png"] = folder / "palette.png"
    Image.fromarray(RGB).quantize(16).save(files["palette.png"])
    files["cmyk.jpg"] = folder / "cmyk.jpg"
    Image.fromarray(RGB).convert("CMYK").save(files["cmyk.jpg"], quality=100)
    files["wide16.png"] = folder / "wide16.png"
    cv2.imwrite(str(files["wide16.png"]), rng.integers(0, 65536, (40, 60), dtype=np.uint16))
    return files


def write_exif_rotated_jpeg(path: Path) -> Path:
    """A 60x40 JPEG with a white top-left corner and EXIF orientation 6: it displays (and decodes) as 40x60."""
    img = np.zeros((40, 60, 3), np.uint8)
    img[:10, :10] = 255
    exif = Image.Exif()
    exif[0x0112] = EXIF_ROTATE_90_CW
    Image.fromarray(img).save(path, exif=exif, quality=95)
    return path


def write_palette_gif(path: Path) -> Path:
    Image.fromarray(RGB).quantize(16).save(path)
    return path


def write_elongated_png(path: Path, width: int = 10000, height: int = 10) -> Path:
    """An extreme aspect ratio: resize_short(256) makes it 256000x256 before the centre crop."""
    Image.fromarray(np.tile(RGB[:1, :1], (height, width, 1))).save(path)
    return path


def write_pixel_bomb(path: Path, width: int, height: int) -> Path:
    """A tiny file (a few KB of PNG) that would decode to ``width x height`` pixels."""
    Image.new("1", (width, height)).save(path)  # 1 bit per pixel: cheap to write, compresses to almost nothing
    return path


def jpeg_bytes(height: int = 200, width: int = 300) -> bytes:
    ok, data = cv2.imencode(".jpg", np.random.default_rng(2).integers(0, 256, (height, width, 3), dtype=np.uint8))
    assert ok
    return data.tobytes()


@dataclass(frozen=True)
class BadFile:
    """A file that must be refused, and a phrase the refusal must contain."""

    path: Path
    reason: str


def write_bad_corpus(folder: Path, *, bomb_size: tuple[int, int] | None = None) -> dict[str, BadFile]:
    """Files that cannot be classified: empty, truncated, not an image, corrupt, and (optionally) a pixel bomb.

    Args:
        folder: where to write them.
        bomb_size: (width, height) of a pixel bomb to add; its reason is the limit message, so the caller must
            run with ``PPDEPLOY_MAX_PIXELS`` below ``width * height``.
    """
    jpeg = jpeg_bytes()
    contents = {
        "empty.jpg": (b"", "empty (0 bytes)"),
        "truncated.jpg": (jpeg[: len(jpeg) // 2], "JPEG data is truncated"),
        "text.jpg": (b"this is a text file, not a picture\n" * 3, "not an image (unknown file format)"),
        "half.png": (cv2.imencode(".png", RGB)[1].tobytes()[:300], "PNG data is corrupt"),
    }
    bad = {}
    for name, (data, reason) in contents.items():
        (folder / name).write_bytes(data)
        bad[name] = BadFile(folder / name, reason)
    if bomb_size is not None:
        width, height = bomb_size
        path = write_pixel_bomb(folder / "bomb.png", width, height)
        bad["bomb.png"] = BadFile(path, f"{width}x{height} = {width * height:,} pixels is above the limit")
    return bad


def write_unreadable(path: Path, source: Path) -> BadFile | None:
    """A copy of ``source`` with mode 000, or ``None`` when this process reads it anyway (root)."""
    path.write_bytes(source.read_bytes())
    path.chmod(0)
    if os.access(path, os.R_OK):
        path.chmod(0o644)
        path.unlink()
        return None
    return BadFile(path, "cannot be read")


def write_photos(folder: Path, count: int) -> list[Path]:
    """``count`` real photos (``ppdeploy.samples``) as JPEG files ``photo_0.jpg``, ..."""
    from ppdeploy.samples import sample_images

    paths = []
    for index, image in enumerate(sample_images(count)):
        paths.append(folder / f"photo_{index}.jpg")
        cv2.imwrite(str(paths[-1]), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    return paths


# A pixel limit between the pixel bomb (72 M) and what resize_short(256) makes of the 10000x10 image (65.5 M):
# the bomb is refused, the elongated image is classified like PaddleClas would.
MIXED_PIXEL_LIMIT = 70_000_000
MIXED_BOMB_SIZE = (9000, 8000)


@dataclass
class MixedFolder:
    """A folder mixing real photos, odd-but-decodable images, broken files and things that are not inputs.

    Attributes:
        root: the folder.
        classified: paths (as ``deploy run`` prints them) that must get a result.
        errors: path → a phrase its error record must contain.
        not_inputs: files in the folder that are not listed (no image extension, a link to itself) and
            folder links that must not be walked twice.
    """

    root: Path
    classified: set[str] = field(default_factory=set)
    errors: dict[str, str] = field(default_factory=dict)
    not_inputs: list[Path] = field(default_factory=list)

    @property
    def inputs(self) -> set[str]:
        return self.classified | set(self.errors)


def write_mixed_folder(root: Path) -> MixedFolder:
    """Issue #6's corpus in one folder, plus 3 photos at the top and one in a subfolder that links back up.

    The pixel bomb is refused only below :data:`MIXED_PIXEL_LIMIT`; run with ``PPDEPLOY_MAX_PIXELS`` set to it.
    An unreadable file is not included: root reads it anyway (``write_unreadable`` covers it).
    """
    root.mkdir(parents=True, exist_ok=True)
    (root / "sub").mkdir()
    good = [*write_photos(root, 3), *write_photos(root / "sub", 1), *write_good_corpus(root).values(),
            write_exif_rotated_jpeg(root / "exif_rotated.jpg"), write_elongated_png(root / "wide_10000x10.png")]
    bad = write_bad_corpus(root, bomb_size=MIXED_BOMB_SIZE)
    (root / "sub" / "loop").symlink_to(root, target_is_directory=True)
    (root / "self_loop.jpg").symlink_to(root / "self_loop.jpg")
    (root / "notes.txt").write_text("not an input: no image extension\n")
    gif = write_palette_gif(root / "palette.gif")  # decodable, but .gif is not a listed extension (as PaddleClas)
    return MixedFolder(root, classified={str(path) for path in good},
                       errors={str(item.path): item.reason for item in bad.values()},
                       not_inputs=[root / "sub" / "loop", root / "self_loop.jpg", root / "notes.txt", gif])


if __name__ == "__main__":
    folder = write_mixed_folder(Path(sys.argv[1]))
    print(f"{folder.root}: {len(folder.classified)} images to classify, {len(folder.errors)} to refuse, "
          f"{len(folder.not_inputs)} entries that are not inputs")
