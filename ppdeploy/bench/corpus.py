"""Bench corpora that look like users' photos, made on the fly from the held-out judge photos (never stored).

- ``imagenet``: JPEGs at ImageNet's typical size, 500x375 (landscape) or 375x500 (portrait), quality 90.
- ``phone``: 12-megapixel JPEGs, 4032x3024, quality 92, like a phone camera's. The sources are ~640x480 photos
  upscaled (bicubic) with seeded sensor-like noise (sigma 3 grey levels) added, so that the file size and the
  entropy-decoding work (about 2 MB a photo) come nearer a real phone photo's (2-5 MB) than a smooth upscale's.
- a folder: the user's own photos.

Photos come from the judge role (``ppdeploy.samples``): a corpus also serves the parity checker (fast decoding is
judged on it), so it never holds a photo that shaped or calibrated a model.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np

from ppdeploy.errors import DeployError, one_line

CORPORA = {"imagenet": ((500, 375), 90, 0.0), "phone": ((4032, 3024), 92, 3.0)}  # size, JPEG quality, noise sigma
# Enough batches that filling and draining the pipeline do not dominate a pass (16 phone photos at batch 8 measured
# 4.87x the serial loop, 64 of them 5.79x: docs/benchmarks.md).
DEFAULT_COUNT = {"imagenet": 256, "phone": 48}


def corpus_names() -> tuple[str, ...]:
    return tuple(CORPORA)


def write_corpus(name: str, folder: str | Path, count: int | None = None, seed: int = 0) -> list[Path]:
    """Write corpus ``name``'s JPEGs into ``folder`` (``photo_0000.jpg``, ...); return their paths."""
    from ppdeploy.fsutil import atomic_write_bytes
    from ppdeploy.samples import sample_images

    if name not in CORPORA:
        raise DeployError(one_line(f"--corpus {name}", "unknown", "choose one of: " + ", ".join(CORPORA)
                                   + ", or a folder of photos"))
    (width, height), quality, sigma = CORPORA[name]
    rng = np.random.default_rng(seed)
    paths = []
    for index, image in enumerate(sample_images(count or DEFAULT_COUNT[name], seed, "judge")):
        portrait = image.shape[0] > image.shape[1]
        size = (height, width) if portrait else (width, height)
        picture = _cover(image, size)
        if sigma:
            picture = np.clip(picture + rng.normal(0.0, sigma, picture.shape), 0, 255).astype(np.uint8)
        ok, encoded = cv2.imencode(".jpg", cv2.cvtColor(picture, cv2.COLOR_RGB2BGR),
                                   [cv2.IMWRITE_JPEG_QUALITY, quality])
        if not ok:
            raise DeployError(one_line(f"corpus photo {index}", "OpenCV could not encode it as JPEG"))
        paths.append(atomic_write_bytes(Path(folder) / f"photo_{index:04d}.jpg", encoded.tobytes()))
    return paths


def _cover(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Scale ``image`` to cover ``size`` (width, height), then centre-crop to it."""
    width, height = size
    scale = max(width / image.shape[1], height / image.shape[0])
    interpolation = cv2.INTER_CUBIC if scale > 1 else cv2.INTER_AREA
    scaled = cv2.resize(image, (max(width, round(image.shape[1] * scale)), max(height, round(image.shape[0] * scale))),
                        interpolation=interpolation)
    top, left = (scaled.shape[0] - height) // 2, (scaled.shape[1] - width) // 2
    return scaled[top:top + height, left:left + width]


@contextlib.contextmanager
def corpus_folder(corpus: str | Path | None, count: int | None = None) -> Iterator[tuple[Path, str]]:
    """A folder of photos for an e2e run and a description: the user's folder as it is, or a named corpus written
    to a temporary folder removed afterwards (default: the ``imagenet`` corpus)."""
    name = str(corpus) if corpus is not None else "imagenet"
    if name not in CORPORA:
        yield Path(name), f"{name}"
        return
    with tempfile.TemporaryDirectory(prefix="ppdeploy-corpus-") as tmp:
        paths = write_corpus(name, tmp, count)
        (width, height), quality, _ = CORPORA[name]
        megabytes = sum(p.stat().st_size for p in paths) / len(paths) / 2**20
        yield Path(tmp), (f"corpus '{name}': {len(paths)} JPEGs {width}x{height} q{quality} "
                          f"(mean {megabytes:.2f} MB) made from the judge photos")
