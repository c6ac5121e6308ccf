"""Image listing and decoding on a corpus of good and bad files built in a temp folder."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pytest
from corpus import RGB, jpeg_bytes, write_exif_rotated_jpeg, write_good_corpus
from PIL import Image

from ppdeploy import images
from ppdeploy.errors import DeployError, ImageError
from ppdeploy.images import IMAGE_EXTENSIONS, decode_image, list_images, pixel_limit


def paddleclas_read(path: Path) -> np.ndarray:
    """What PaddleClas's predict_cls.py does with a file."""
    return cv2.imread(str(path))[:, :, ::-1]


def assert_one_line_naming(exc: pytest.ExceptionInfo, path: Path, reason: str) -> None:
    message = str(exc.value)
    assert "\n" not in message and " | " in message
    assert str(path) in message
    assert reason in message


# ------------------------------------------------------------------------------------------------ good files


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> dict[str, Path]:
    return write_good_corpus(tmp_path_factory.mktemp("good"))


def test_good_files_decode_like_paddleclas(good):
    for name, path in good.items():
        img = decode_image(path)
        assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3, name
        assert img.flags["C_CONTIGUOUS"], name
        assert np.array_equal(img, paddleclas_read(path)), name


def test_lossless_files_are_rgb(good):
    for name in ("rgb.png", "rgb.bmp", "rgb.webp", "rgb.tif"):
        assert np.array_equal(decode_image(good[name]), RGB), name
    assert decode_image(good["one.png"]).tolist() == [[[10, 20, 30]]]


def test_conversion_rules(good):
    gray = decode_image(good["gray.png"])
    assert np.array_equal(gray, np.stack([RGB[:, :, 0]] * 3, axis=2))  # gray copied to R, G, B
    rgba = np.asarray(Image.open(good["rgba.png"]))
    assert np.array_equal(decode_image(good["rgba.png"]), rgba[:, :, :3])  # alpha dropped, not composited
    la = np.asarray(Image.open(good["la.png"]))
    assert np.array_equal(decode_image(good["la.png"]), np.stack([la[:, :, 0]] * 3, axis=2))
    palette = np.asarray(Image.open(good["palette.png"]).convert("RGB"))
    assert np.array_equal(decode_image(good["palette.png"]), palette)
    wide = cv2.imread(str(good["wide16.png"]), cv2.IMREAD_UNCHANGED)
    assert np.array_equal(decode_image(good["wide16.png"]), np.stack([wide >> 8] * 3, axis=2).astype(np.uint8))
    cmyk = decode_image(good["cmyk.jpg"]).astype(int)
    assert np.abs(cmyk - np.asarray(Image.open(good["cmyk.jpg"]).convert("RGB"))).max() <= 2
    assert np.abs(cmyk - RGB).mean() < 3


def test_exif_orientation_is_applied_like_imread(tmp_path):
    path = write_exif_rotated_jpeg(tmp_path / "rotated.jpg")  # a white top-left corner, EXIF "rotate 90° CW"
    out = decode_image(path)
    assert out.shape == (60, 40, 3)
    assert out[:10, -10:].mean() > 200 and out[:10, :10].mean() < 50  # the corner moved to the top right
    assert np.array_equal(out, paddleclas_read(path))


def test_jpeg_with_trailing_bytes_still_decodes(tmp_path, good):
    path = tmp_path / "trailer.jpg"
    path.write_bytes(good["rgb.jpg"].read_bytes() + b"camera trailer" * 20)
    assert np.array_equal(decode_image(path), decode_image(good["rgb.jpg"]))


# ------------------------------------------------------------------------------------------------- bad files


@pytest.fixture
def encoded_jpeg() -> bytes:
    return jpeg_bytes()


@pytest.mark.parametrize(("name", "content", "reason"), [
    ("empty.jpg", lambda jpg: b"", "empty (0 bytes)"),
    ("half.jpg", lambda jpg: jpg[: len(jpg) // 2], "truncated"),
    ("no_end.jpg", lambda jpg: jpg[:-2], "truncated"),
    ("text.jpg", lambda jpg: b"this is a text file, not a picture\n" * 3, "not an image"),
    ("noise.png", lambda jpg: bytes(range(256)) * 4, "not an image"),
    ("half.png", lambda jpg: cv2.imencode(".png", RGB)[1].tobytes()[:300], "PNG data is corrupt"),
])
def test_bad_files_raise_image_error(tmp_path, encoded_jpeg, name, content, reason):
    path = tmp_path / name
    path.write_bytes(content(encoded_jpeg))
    with pytest.raises(ImageError) as info:
        decode_image(path)
    assert_one_line_naming(info, path, reason)


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(ImageError) as info:
        decode_image(tmp_path / "nope.jpg")
    assert_one_line_naming(info, tmp_path / "nope.jpg", "not found")
    with pytest.raises(ImageError) as info:
        decode_image(tmp_path)
    assert_one_line_naming(info, tmp_path, "folder")


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_unreadable_file(tmp_path, good):
    path = tmp_path / "locked.png"
    path.write_bytes(good["rgb.png"].read_bytes())
    path.chmod(0)
    try:
        with pytest.raises(ImageError) as info:
            decode_image(path)
        assert_one_line_naming(info, path, "cannot be read")
    finally:
        path.chmod(0o644)


# ------------------------------------------------------------------------------------------------ pixel limit


def test_pixel_limit_resolution(monkeypatch):
    monkeypatch.delenv("PPDEPLOY_MAX_PIXELS", raising=False)
    assert pixel_limit() == 89_478_485
    assert pixel_limit(100) == 100 and pixel_limit(0) is None
    monkeypatch.setenv("PPDEPLOY_MAX_PIXELS", "1_000")
    assert pixel_limit() == 1000
    monkeypatch.setenv("PPDEPLOY_MAX_PIXELS", "0")
    assert pixel_limit() is None
    monkeypatch.setenv("PPDEPLOY_MAX_PIXELS", "lots")
    with pytest.raises(DeployError, match="PPDEPLOY_MAX_PIXELS"):
        pixel_limit()
    with pytest.raises(DeployError):
        pixel_limit(-1)


def test_pixel_limit_is_checked_from_the_header_before_decoding(monkeypatch, good):
    def no_decode(data):
        raise AssertionError("decoded despite the limit")

    monkeypatch.setattr(images, "_imdecode", no_decode)
    monkeypatch.setenv("PPDEPLOY_MAX_PIXELS", "2399")  # the images are 60x40 = 2400 pixels
    for name in ("rgb.png", "rgb.jpg", "rgb.webp", "rgb.bmp", "rgb.tif"):
        with pytest.raises(ImageError) as info:
            decode_image(good[name])
        assert_one_line_naming(info, good[name], "60x40 = 2,400 pixels is above the limit of 2,399")


def test_pixel_limit_argument_and_decoded_size_fallback(monkeypatch, good):
    assert decode_image(good["rgb.png"], max_pixels=2400).shape == (40, 60, 3)
    with pytest.raises(ImageError, match="above the limit of 100"):
        decode_image(good["rgb.png"], max_pixels=100)
    monkeypatch.setattr(images, "_check_header_size", lambda path, data, limit: None)  # as without Pillow
    with pytest.raises(ImageError, match="above the limit of 100"):
        decode_image(good["rgb.png"], max_pixels=100)
    monkeypatch.setenv("PPDEPLOY_MAX_PIXELS", "100")
    assert decode_image(good["rgb.png"], max_pixels=0).shape == (40, 60, 3)


# ---------------------------------------------------------------------------------------------------- listing


def plain_listing(folder: Path) -> list[Path]:
    """PaddleClas's get_image_list, with any-case extensions."""
    found = []
    for root, _, files in os.walk(folder):
        found += [os.path.join(root, f) for f in files if f.split(".")[-1].lower() in ("jpg", "jpeg", "png", "bmp",
                                                                                       "webp", "tif", "tiff")]
    return [Path(p) for p in sorted(found)]


@pytest.fixture
def tree(tmp_path) -> Path:
    root = tmp_path / "photos"
    for rel in ("b.JPG", "a.png", "sub/c.Jpeg", "sub/deeper/d.bmp", "sub/e.webp", "z/f.TIFF", "g pic é.png"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"x")
    for rel in ("notes.txt", "anim.gif", "sub/README", "sub/.jpg.bak"):
        (root / rel).write_bytes(b"x")
    return root


def test_extensions():
    assert {".jpg", ".jpeg", ".png", ".bmp"} <= set(IMAGE_EXTENSIONS)
    assert all(ext == ext.lower() and ext.startswith(".") for ext in IMAGE_EXTENSIONS)


def test_list_folder_recursive_sorted(tree):
    listed = list_images(tree)
    assert listed == plain_listing(tree)
    assert len(listed) == 7 and all(isinstance(p, Path) for p in listed)


def test_list_follows_symlinks_without_looping(tree, tmp_path):
    (tree / "sub" / "loop").symlink_to(tree, target_is_directory=True)
    (tree / "self_loop.jpg").symlink_to(tree / "self_loop.jpg")
    (tree / "dangling.png").symlink_to(tmp_path / "missing.png")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "h.jpg").write_bytes(b"x")
    (tree / "linked").symlink_to(outside, target_is_directory=True)
    (tree / "alias.png").symlink_to(tree / "a.png")
    listed = list_images(tree)
    assert tree / "linked" / "h.jpg" in listed and tree / "alias.png" in listed
    assert not any(part == "loop" for p in listed for part in p.parts)
    assert tree / "dangling.png" not in listed and tree / "self_loop.jpg" not in listed
    assert len(listed) == len(set(listed)) == 9


def test_list_single_file_and_glob(tree):
    assert list_images(tree / "b.JPG") == [tree / "b.JPG"]
    assert list_images(str(tree / "*.png")) == [tree / "a.png", tree / "g pic é.png"]
    assert list_images(str(tree / "**" / "*.bmp")) == [tree / "sub" / "deeper" / "d.bmp"]
    assert list_images(str(tree / "s*")) == plain_listing(tree / "sub")


@pytest.mark.parametrize(("target", "reason"), [
    ("missing", "does not exist"),
    ("notes.txt", "not an image extension"),
    ("empty", "holds no image files"),
    ("*.gif", "holds no image files"),
    ("nothing*", "holds no image files"),
])
def test_list_errors_name_the_path(tree, target, reason):
    (tree / "empty").mkdir()
    path = tree / target
    with pytest.raises(ImageError) as info:
        list_images(path)
    assert_one_line_naming(info, path, reason)


def test_png_color_profile_is_dropped_without_changing_pixels_or_printing(capfd):
    """scikit-image's page.png carries a malformed iCCP chunk: libpng warns on stderr for it on every decode (every
    synthetic export used to show the line). Decoding without the profile gives the same pixels, silently."""
    import os

    import skimage

    from ppdeploy.images import decode_image, without_color_profile

    path = os.path.join(os.path.dirname(skimage.__file__), "data", "page.png")
    data = open(path, "rb").read()
    assert b"iCCP" in data and b"iCCP" not in without_color_profile(data)
    capfd.readouterr()
    ours = decode_image(path)
    assert "libpng" not in capfd.readouterr().err
    theirs = cv2.cvtColor(cv2.imread(path), cv2.COLOR_BGR2RGB)
    capfd.readouterr()
    assert np.array_equal(ours, theirs)
    assert without_color_profile(data[:40]) == data[:40]  # a cut stream is left alone
