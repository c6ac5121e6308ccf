"""Real photos available offline, for demos, parity checks and INT8 calibration.

The photos are the colour natural images shipped inside scikit-image's ``skimage/data`` folder (found without
importing scikit-image). When more images are asked for than there are photos, deterministic variations of
them are appended: a random crop of 40-100 % of the area (aspect 3:4 to 4:3), a horizontal flip half the time,
a rescale by 0.5-1.5x, and a small per-channel gain and brightness shift. Image ``i`` depends only on
``(seed, i)``, so the first ``n`` images are the same whatever ``n`` is.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import importlib.util
import math
import os
from pathlib import Path

import cv2
import numpy as np

from ppdeploy.errors import DeployError, InputSpecError, one_line
from ppdeploy.fsutil import atomic_write_bytes, sha256_files
from ppdeploy.images import decode_image, list_images
from ppdeploy.preprocess import PreprocessConfig, preprocess_batch

# Colour natural photos in skimage/data (the rest are grayscale, synthetic or tiny test files).
PHOTO_NAMES = ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png",
               "motorcycle_right.png", "hubble_deep_field.jpg", "retina.jpg", "ihc.png")
VARIATIONS_VERSION = 1  # bump when _variation changes, so calibration hashes change with it
_MIN_SIDE = 32


def skimage_data_dir() -> Path:
    """scikit-image's bundled data folder.

    Raises:
        DeployError: scikit-image is not installed.
    """
    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        raise DeployError(one_line("sample photos", "scikit-image is not installed",
                                   "pip install scikit-image, or use your own images folder"))
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def sample_photo_paths() -> list[Path]:
    """The colour photos of :data:`PHOTO_NAMES` present in scikit-image's data folder, in that order.

    Raises:
        DeployError: scikit-image is missing or ships none of the photos.
    """
    folder = skimage_data_dir()
    paths = [folder / name for name in PHOTO_NAMES if (folder / name).is_file()]
    if not paths:
        raise DeployError(one_line(f"sample photos in '{folder}'", "none of the expected photos is there",
                                   "reinstall scikit-image, or use your own images folder"))
    return paths


def samples_version() -> str:
    """Identifies the sample set: scikit-image's version and the variation recipe's."""
    try:
        skimage_version = importlib.metadata.version("scikit-image")
    except importlib.metadata.PackageNotFoundError:
        skimage_version = "unknown"
    return f"scikit-image-{skimage_version}/variations-{VARIATIONS_VERSION}"


@functools.lru_cache(maxsize=1)
def _photos() -> tuple[np.ndarray, ...]:
    photos = []
    for path in sample_photo_paths():
        photo = decode_image(path)
        photo.flags.writeable = False  # cached and shared: callers get copies
        photos.append(photo)
    return tuple(photos)


def sample_images(n: int | None = None, seed: int = 0) -> list[np.ndarray]:
    """RGB ``uint8`` real-photo images: the photos first, then deterministic variations of them.

    Args:
        n: how many; ``None`` gives just the photos.
        seed: seeds the variations (the photos themselves do not change).
    """
    photos = _photos()
    n = len(photos) if n is None else n
    if n < 0 or seed < 0:
        raise InputSpecError(one_line(f"sample_images(n={n}, seed={seed})", "negative", "pass n >= 0, seed >= 0"))
    images = [photo.copy() for photo in photos[:n]]
    for index in range(len(images), n):
        rng = np.random.default_rng([seed, index])
        images.append(_variation(photos[index % len(photos)], rng))
    return images


def _variation(photo: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Crop, maybe flip, rescale and colour-jitter one photo."""
    img = _random_crop(photo, rng)
    if rng.random() < 0.5:
        img = img[:, ::-1]
    factor = rng.uniform(0.5, 1.5)
    height, width = img.shape[:2]
    size = (max(_MIN_SIDE, round(width * factor)), max(_MIN_SIDE, round(height * factor)))
    img = cv2.resize(np.ascontiguousarray(img), size, interpolation=cv2.INTER_AREA if factor < 1 else cv2.INTER_LINEAR)
    gain = rng.uniform(0.92, 1.08, size=3).astype(np.float32)
    shift = np.float32(rng.uniform(-12.0, 12.0))
    return np.clip(np.rint(img.astype(np.float32) * gain + shift), 0, 255).astype(np.uint8)


def _random_crop(photo: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    height, width = photo.shape[:2]
    area = rng.uniform(0.4, 1.0) * height * width
    aspect = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
    crop_w = min(width, max(_MIN_SIDE, round(math.sqrt(area * aspect))))
    crop_h = min(height, max(_MIN_SIDE, round(math.sqrt(area / aspect))))
    left = int(rng.integers(0, width - crop_w + 1))
    top = int(rng.integers(0, height - crop_h + 1))
    return photo[top:top + crop_h, left:left + crop_w]


def write_sample_folder(dst: str | os.PathLike, n: int = 16, seed: int = 0) -> list[Path]:
    """Write ``n`` sample images to ``dst`` as ``sample_0000.jpg``, ``sample_0001.png``, ... (JPEG and PNG
    alternate), each file written atomically.

    Returns:
        The written paths, in order.
    """
    folder = Path(dst)
    paths = []
    for index, image in enumerate(sample_images(n, seed)):
        ext = ".jpg" if index % 2 == 0 else ".png"
        params = [cv2.IMWRITE_JPEG_QUALITY, 95] if ext == ".jpg" else []
        ok, encoded = cv2.imencode(ext, cv2.cvtColor(image, cv2.COLOR_RGB2BGR), params)
        if not ok:
            raise DeployError(one_line(f"sample image {index}", f"OpenCV could not encode it as {ext}"))
        paths.append(atomic_write_bytes(folder / f"sample_{index:04d}{ext}", encoded.tobytes()))
    return paths


def calibration_files(images_dir: str | os.PathLike, n: int = 64) -> list[Path]:
    """Up to ``n`` image files from a folder (or glob), spread evenly over its sorted listing.

    Spreading, rather than taking the first ``n``, keeps class folders sorted by name from dominating.
    """
    if n < 1:
        raise InputSpecError(one_line(f"calibration n={n}", "must be at least 1", "pass n >= 1"))
    files = list_images(images_dir)
    if len(files) <= n:
        return files
    picks = np.linspace(0, len(files) - 1, n).round().astype(int)
    return [files[i] for i in picks]


def calibration_batch(cfg: PreprocessConfig | None = None, n: int = 64, images_dir: str | os.PathLike | None = None,
                      *, seed: int = 0) -> np.ndarray:
    """A preprocessed float32 (N, 3, H, W) calibration batch.

    Args:
        cfg: preprocessing; the PaddleClas defaults when ``None``.
        n: number of images (a folder with fewer images gives all of them).
        images_dir: the user's images (folder, file or glob); ``None`` uses :func:`sample_images`.
        seed: seeds the sample variations (ignored for a folder).

    Raises:
        ImageError: a file in the folder cannot be decoded (the message names it).
    """
    if images_dir is not None:
        images = [decode_image(path) for path in calibration_files(images_dir, n)]
    else:
        images = sample_images(n, seed)
    return preprocess_batch(images, cfg)


def calibration_hash(images_dir: str | os.PathLike | None = None, n: int = 64, *, seed: int = 0) -> str:
    """A sha256 identifying the images :func:`calibration_batch` uses with the same arguments.

    For a folder: the chosen files' names and bytes. For the samples: the digest of
    ``"skimage-samples:<n>:<seed>:<version>"``.
    """
    if images_dir is not None:
        return sha256_files(calibration_files(images_dir, n))
    return hashlib.sha256(f"skimage-samples:{n}:{seed}:{samples_version()}".encode()).hexdigest()
