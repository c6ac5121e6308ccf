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
    builtin_set,
    calibration_batch,
    fingerprint,
    folder_set,
    overlap,
    sample_images,
    sample_photo_paths,
    set_hash,
    spread_files,
    write_sample_folder,
)


def digest(image: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(image).tobytes() + str(image.shape).encode()).hexdigest()


@pytest.mark.parametrize("role", samples.ROLES)
def test_photo_paths_are_real_photos(role):
    paths = sample_photo_paths(role)
    assert len(paths) >= 2
    for path, image in zip(paths, sample_images(role=role), strict=True):
        assert image.dtype == np.uint8 and image.shape[2] == 3 and min(image.shape[:2]) >= 128
        assert np.array_equal(image, decode_image(path))
    if role in ("judge", "calibration", "validation"):  # colour photos (shape adds grey textures)
        assert all(not np.array_equal(img[:, :, 0], img[:, :, 1]) for img in sample_images(role=role))


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


def test_missing_package(monkeypatch):
    monkeypatch.setattr(samples.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(DeployError, match="matplotlib is not installed"):
        sample_photo_paths("judge")
    with pytest.raises(DeployError, match="scikit-image is not installed"):
        sample_photo_paths("shape")


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
    batch, images = calibration_batch(n=12)
    assert batch.shape == (12, 3, 224, 224) and batch.dtype == np.float32 and batch.flags["C_CONTIGUOUS"]
    assert np.array_equal(batch, preprocess_batch(sample_images(12, role="calibration")))
    assert images.role == "calibration" and len(images.images) == 12
    fix, _ = calibration_batch(PreprocessConfig(resize_short=320, crop_size=320), n=2)
    assert fix.shape == (2, 3, 320, 320)


def test_calibration_from_a_folder(tmp_path):
    paths = write_sample_folder(tmp_path / "cal", 10)
    assert spread_files(tmp_path / "cal", 4) == [paths[i] for i in (0, 3, 6, 9)]
    assert spread_files(tmp_path / "cal", 50) == paths
    batch, images = calibration_batch(n=4, images_dir=tmp_path / "cal")
    assert np.array_equal(batch, preprocess_batch([decode_image(paths[i]) for i in (0, 3, 6, 9)]))
    assert images.names == [str(paths[i]) for i in (0, 3, 6, 9)] and "user calibration" in images.provenance


def test_set_hash(tmp_path):
    assert set_hash("calibration") == set_hash("calibration", None, 64, seed=0) == builtin_set("calibration").sha256
    assert len({set_hash("calibration"), set_hash("calibration", n=32), set_hash("calibration", seed=1),
                set_hash("judge", n=64)}) == 4
    paths = write_sample_folder(tmp_path / "cal", 4)
    before = set_hash("calibration", tmp_path / "cal")
    assert before == folder_set(tmp_path / "cal", "calibration").sha256 != set_hash("calibration")
    assert set_hash("calibration", tmp_path / "cal", 2) != before
    paths[1].write_bytes(paths[1].read_bytes() + b"\0")
    assert set_hash("calibration", tmp_path / "cal") != before


# --- disjoint roles ----------------------------------------------------------------------------------------------


def test_roles_never_share_a_source_photo():
    scenes = {role: {photo.source for photo in photos} for role, photos in samples.ROLE_PHOTOS.items()}
    files = {role: {photo.name for photo in photos} for role, photos in samples.ROLE_PHOTOS.items()}
    for first in samples.ROLES:
        for second in samples.ROLES:
            if first < second:
                assert not scenes[first] & scenes[second], (first, second)
                assert not files[first] & files[second], (first, second)
    assert len(scenes["judge"]) >= 3 and len(scenes["shape"]) >= 8


def test_builtin_sets_do_not_overlap_by_content():
    """Independent of the role table: no image of one role is a near-copy of any image of another."""
    records = {role: builtin_set(role, 24).record() for role in samples.ROLES}
    for first in samples.ROLES:
        for second in samples.ROLES:
            if first < second:
                assert overlap(records[first], records[second]) == {"overlap": False, "shared_sources": [],
                                                                    "near_duplicates": 0}, (first, second)


def test_overlap_is_found_for_shared_files_and_re_encoded_copies(tmp_path):
    judge = builtin_set("judge", 6)
    write_sample_folder(tmp_path / "mine", 4, role="calibration")
    mine = folder_set(tmp_path / "mine", "judge")
    assert not overlap(mine.record(), judge.record())["overlap"]
    # the user judges on a JPEG copy of a built-in calibration photo: same picture, other bytes
    assert overlap(mine.record(), builtin_set("calibration", 4).record())["near_duplicates"] >= 3
    twin = folder_set(tmp_path / "mine", "calibration")
    assert overlap(mine.record(), twin.record())["shared_sources"]  # the same files


def test_fingerprint_survives_resizing_and_jpeg_but_not_another_photo():
    import cv2

    photo = sample_images(1, role="judge")[0]
    small = cv2.resize(photo, (photo.shape[1] // 2, photo.shape[0] // 2), interpolation=cv2.INTER_AREA)
    ok, data = cv2.imencode(".jpg", small, [cv2.IMWRITE_JPEG_QUALITY, 70])
    copy = cv2.imdecode(data, cv2.IMREAD_COLOR)
    assert bin(fingerprint(photo) ^ fingerprint(copy)).count("1") <= samples.NEAR_DUPLICATE_BITS
    other = sample_images(2, role="judge")[1]
    assert bin(fingerprint(photo) ^ fingerprint(other)).count("1") > samples.NEAR_DUPLICATE_BITS


def test_set_record_names_provenance():
    record = builtin_set("judge", 5).record()
    assert record["count"] == 5 and len(record["fingerprints"]) == 5 and len(record["sha256"]) == 64
    assert "grace_hopper.jpg" in record["provenance"] and "matplotlib:grace_hopper.jpg" in record["sources"]
