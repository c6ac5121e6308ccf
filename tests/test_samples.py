"""Offline real-photo samples, sample folders and calibration batches."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from ppdeploy import samples
from ppdeploy.errors import DeployError
from ppdeploy.images import decode_image, list_images
from ppdeploy.preprocess import PreprocessConfig, preprocess_batch
from ppdeploy.samples import (
    calibration_batch,
    calibration_files,
    calibration_hash,
    sample_images,
    sample_photo_paths,
    write_sample_folder,
)


def digest(image: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(image).tobytes() + str(image.shape).encode()).hexdigest()


def test_photo_paths_are_colour_photos():
    paths = sample_photo_paths()
    assert len(paths) >= 8
    assert {"astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg"} <= {p.name for p in paths}
    for path, image in zip(paths, sample_images(), strict=True):
        assert image.dtype == np.uint8 and image.shape[2] == 3 and min(image.shape[:2]) >= 256
        assert not np.array_equal(image[:, :, 0], image[:, :, 1]), path.name  # really colour
        assert np.array_equal(image, decode_image(path))


def test_many_distinct_deterministic_images():
    photos = sample_images()
    many = sample_images(120)
    assert len(many) == 120 and len({digest(img) for img in many}) == 120
    assert all(np.array_equal(a, b) for a, b in zip(many, photos, strict=False))
    assert all(img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3 and min(img.shape[:2]) >= 32
               for img in many)
    assert [digest(img) for img in sample_images(30)] == [digest(img) for img in many[:30]]
    other_seed = sample_images(30, seed=1)
    assert [digest(img) for img in other_seed[: len(photos)]] == [digest(img) for img in photos]
    assert digest(other_seed[-1]) != digest(many[29])
    many[0][:] = 0
    assert sample_images(1)[0].any()  # the cache hands out copies


def test_missing_scikit_image(monkeypatch):
    monkeypatch.setattr(samples.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(DeployError, match="scikit-image is not installed"):
        sample_photo_paths()


def test_write_sample_folder(tmp_path):
    paths = write_sample_folder(tmp_path / "demo", 6)
    assert [p.name for p in paths] == [f"sample_{i:04d}{'.jpg' if i % 2 == 0 else '.png'}" for i in range(6)]
    assert list_images(tmp_path / "demo") == paths
    assert sorted(p.name for p in (tmp_path / "demo").iterdir()) == [p.name for p in paths]  # no temp files left
    originals = sample_images(6)
    for index, path in enumerate(paths):
        decoded = decode_image(path)
        assert decoded.shape == originals[index].shape
        if path.suffix == ".png":
            assert np.array_equal(decoded, originals[index])


def test_calibration_batch_from_samples():
    batch = calibration_batch(n=12)
    assert batch.shape == (12, 3, 224, 224) and batch.dtype == np.float32 and batch.flags["C_CONTIGUOUS"]
    assert np.array_equal(batch, preprocess_batch(sample_images(12)))
    fix = calibration_batch(PreprocessConfig(resize_short=320, crop_size=320), n=2)
    assert fix.shape == (2, 3, 320, 320)


def test_calibration_from_a_folder(tmp_path):
    paths = write_sample_folder(tmp_path / "cal", 10)
    assert calibration_files(tmp_path / "cal", 4) == [paths[i] for i in (0, 3, 6, 9)]
    assert calibration_files(tmp_path / "cal", 50) == paths
    batch = calibration_batch(n=4, images_dir=tmp_path / "cal")
    assert np.array_equal(batch, preprocess_batch([decode_image(paths[i]) for i in (0, 3, 6, 9)]))


def test_calibration_hash(tmp_path):
    assert calibration_hash() == calibration_hash(None, 64, seed=0) == calibration_hash(n=64, images_dir=None)
    assert len({calibration_hash(), calibration_hash(n=32), calibration_hash(seed=1)}) == 3
    expected = hashlib.sha256(f"skimage-samples:64:0:{samples.samples_version()}".encode()).hexdigest()
    assert calibration_hash() == expected
    paths = write_sample_folder(tmp_path / "cal", 4)
    before = calibration_hash(images_dir=tmp_path / "cal")
    assert before == calibration_hash(images_dir=tmp_path / "cal") != calibration_hash()
    assert calibration_hash(tmp_path / "cal", 2) != before
    paths[1].write_bytes(paths[1].read_bytes() + b"\0")
    assert calibration_hash(images_dir=tmp_path / "cal") != before
