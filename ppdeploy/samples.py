"""Real photos available offline, kept in disjoint sets by role, for synthetic weights, calibration and judging.

Evidence is only evidence on data that did not shape what it judges. So the photos that ship inside installed
packages are split, by *source photo*, into four roles that never share one (a crop of a picture counts as the
picture):

- ``shape``: what synthetic weights are built from (BatchNorm statistics, the classifier's feature basis);
- ``calibration``: what int8 quantizers measure activation ranges on;
- ``validation``: what int8 accuracy control measures the drop on (apart from calibration, as NNCF asks);
- ``judge``: what the parity checker judges every backend on; nothing else ever touches these photos.

When more images are asked for than a role has photos, deterministic variations of its photos are appended:
a random crop of 40-100 % of the area (aspect 3:4 to 4:3), a horizontal flip half the time, a rescale by
0.5-1.5x, a small per-channel gain and brightness shift, and half the time a JPEG round trip at quality 60-95.
Image ``i`` of a role depends only on ``(role, seed, i)``, so the first ``n`` images are the same whatever ``n`` is.

Every set (built-in or the user's folder) is an :class:`ImageSet` that knows its provenance, a content hash, the
source photo of each image and a perceptual fingerprint of each image, so that reports can say whether two sets
overlap (:func:`overlap`).
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import importlib.util
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from ppdeploy.errors import DeployError, InputSpecError, one_line
from ppdeploy.fsutil import atomic_write_bytes, sha256_file, sha256_files
from ppdeploy.images import decode_image, list_images
from ppdeploy.preprocess import PreprocessConfig, preprocess_batch


@dataclass(frozen=True)
class Photo:
    """One photo shipped inside an installed package.

    Attributes:
        distribution: the package's distribution name (its version goes into set hashes).
        module: its import name.
        folder: the photo's folder inside the package.
        name: the file name.
        scene: what counts as "the same picture" (a stereo pair is one scene); default ``distribution:name``.
    """

    distribution: str
    module: str
    folder: str
    name: str
    scene: str = ""

    @property
    def source(self) -> str:
        return self.scene or f"{self.distribution}:{self.name}"


def _skimage(name: str, scene: str = "") -> Photo:
    return Photo("scikit-image", "skimage", "data", name, scene)


_MOTORCYCLE = "scikit-image:motorcycle (stereo pair)"
# The split is by source photo; docs/parity.md says why each photo sits where it does.
ROLE_PHOTOS: dict[str, tuple[Photo, ...]] = {
    # Broad statistics: people, sky, and grey natural textures (camera, moon, coins, brick, grass, ...).
    "shape": (_skimage("astronaut.png"), _skimage("hubble_deep_field.jpg"), _skimage("camera.png"),
              _skimage("moon.png"), _skimage("coins.png"), _skimage("brick.png"), _skimage("grass.png"),
              _skimage("gravel.png"), _skimage("page.png"), _skimage("text.png"), _skimage("cell.png")),
    "calibration": (_skimage("rocket.jpg"), _skimage("motorcycle_left.png", _MOTORCYCLE),
                    _skimage("motorcycle_right.png", _MOTORCYCLE), _skimage("coffee.png"), _skimage("retina.jpg")),
    "validation": (_skimage("chelsea.png"), _skimage("ihc.png")),
    "judge": (Photo("matplotlib", "matplotlib", "mpl-data/sample_data", "grace_hopper.jpg"),
              Photo("scikit-learn", "sklearn", "datasets/images", "china.jpg"),
              Photo("scikit-learn", "sklearn", "datasets/images", "flower.jpg")),
}
ROLES = tuple(ROLE_PHOTOS)
DEFAULT_COUNTS = {"shape": 64, "calibration": 64, "validation": 64, "judge": 120}
VARIATIONS_VERSION = 2  # bump when _variation or ROLE_PHOTOS change, so set hashes change with them
_MIN_SIDE = 32
_FINGERPRINT_BITS = 64
NEAR_DUPLICATE_BITS = 6  # fingerprints this close (Hamming) are the same picture re-encoded or resized


def photo_path(photo: Photo) -> Path:
    """Where ``photo`` is on disk (found without importing its package).

    Raises:
        DeployError: the package is not installed or does not ship the photo.
    """
    spec = importlib.util.find_spec(photo.module)
    if spec is None or not spec.submodule_search_locations:
        raise DeployError(one_line(f"sample photo {photo.name}", f"{photo.distribution} is not installed",
                                   f"pip install {photo.distribution}, or use your own images folder"))
    path = Path(next(iter(spec.submodule_search_locations))) / photo.folder / photo.name
    if not path.is_file():
        raise DeployError(one_line(f"sample photo '{path}'", "missing from the installed package",
                                   f"reinstall {photo.distribution}, or use your own images folder"))
    return path


def role_photos(role: str) -> tuple[Photo, ...]:
    """The photos of one role (see the module doc)."""
    if role not in ROLE_PHOTOS:
        raise InputSpecError(one_line(f"image role '{role}'", "unknown", "choose one of: " + ", ".join(ROLES)))
    return ROLE_PHOTOS[role]


def sample_photo_paths(role: str = "judge") -> list[Path]:
    """The files of one role's photos, in order."""
    return [photo_path(photo) for photo in role_photos(role)]


def samples_version() -> str:
    """Identifies the sample sets: the versions of the packages that ship the photos and of the variations."""
    versions = []
    for distribution in sorted({p.distribution for photos in ROLE_PHOTOS.values() for p in photos}):
        try:
            versions.append(f"{distribution}-{importlib.metadata.version(distribution)}")
        except importlib.metadata.PackageNotFoundError:
            versions.append(f"{distribution}-unknown")
    return "/".join(versions) + f"/variations-{VARIATIONS_VERSION}"


@functools.lru_cache(maxsize=len(ROLE_PHOTOS))
def _photos(role: str) -> tuple[np.ndarray, ...]:
    photos = []
    for path in sample_photo_paths(role):
        photo = decode_image(path)
        photo.flags.writeable = False  # cached and shared: callers get copies
        photos.append(photo)
    return tuple(photos)


def sample_images(n: int | None = None, seed: int = 0, role: str = "judge") -> list[np.ndarray]:
    """RGB ``uint8`` real-photo images of one role: its photos first, then deterministic variations of them.

    Args:
        n: how many; ``None`` gives just the photos.
        seed: seeds the variations (the photos themselves do not change).
        role: ``judge`` (default: the photos nothing else touches), ``shape``, ``calibration`` or ``validation``.
    """
    photos = _photos(role)
    n = len(photos) if n is None else n
    if n < 0 or seed < 0:
        raise InputSpecError(one_line(f"sample_images(n={n}, seed={seed})", "negative", "pass n >= 0, seed >= 0"))
    images = [photo.copy() for photo in photos[:n]]
    for index in range(len(images), n):
        rng = np.random.default_rng([seed, index, ROLES.index(role)])
        images.append(_variation(photos[index % len(photos)], rng))
    return images


def _variation(photo: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Crop, maybe flip, rescale, colour-jitter and maybe JPEG-recompress one photo."""
    img = _random_crop(photo, rng)
    if rng.random() < 0.5:
        img = img[:, ::-1]
    factor = rng.uniform(0.5, 1.5)
    height, width = img.shape[:2]
    size = (max(_MIN_SIDE, round(width * factor)), max(_MIN_SIDE, round(height * factor)))
    img = cv2.resize(np.ascontiguousarray(img), size, interpolation=cv2.INTER_AREA if factor < 1 else cv2.INTER_LINEAR)
    gain = rng.uniform(0.92, 1.08, size=3).astype(np.float32)
    shift = np.float32(rng.uniform(-12.0, 12.0))
    img = np.clip(np.rint(img.astype(np.float32) * gain + shift), 0, 255).astype(np.uint8)
    if rng.random() < 0.5:
        quality = int(rng.integers(60, 96))
        ok, encoded = cv2.imencode(".jpg", cv2.cvtColor(img, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
        if ok:
            img = cv2.cvtColor(cv2.imdecode(encoded, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    return img


def _random_crop(photo: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    height, width = photo.shape[:2]
    area = rng.uniform(0.4, 1.0) * height * width
    aspect = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
    crop_w = min(width, max(_MIN_SIDE, round(math.sqrt(area * aspect))))
    crop_h = min(height, max(_MIN_SIDE, round(math.sqrt(area / aspect))))
    left = int(rng.integers(0, width - crop_w + 1))
    top = int(rng.integers(0, height - crop_h + 1))
    return photo[top:top + crop_h, left:left + crop_w]


# --- image sets and their overlap -------------------------------------------------------------------------------


@dataclass
class ImageSet:
    """Images with what a report needs to say about them.

    Attributes:
        role: what the set is for (``shape``, ``calibration``, ``validation``, ``judge``).
        provenance: where the images come from, in words.
        images: RGB ``uint8`` arrays.
        names: display names, one per image.
        sources: the source picture of each image (built-in: the photo's scene; a user's file: its sha256).
        sha256: identifies the set's content.
    """

    role: str
    provenance: str
    images: list[np.ndarray]
    names: list[str]
    sources: list[str]
    sha256: str
    _fingerprints: list[int] | None = field(default=None, repr=False)

    @property
    def fingerprints(self) -> list[int]:
        """A 64-bit difference hash of each whole image (equal for re-encoded or resized copies)."""
        if self._fingerprints is None:
            self._fingerprints = [fingerprint(image) for image in self.images]
        return self._fingerprints

    def record(self) -> dict[str, Any]:
        """What manifests and reports keep: provenance, count, hash, source pictures and fingerprints."""
        return {"role": self.role, "provenance": self.provenance, "count": len(self.images), "sha256": self.sha256,
                "sources": sorted(set(self.sources)), "fingerprints": [f"{f:016x}" for f in self.fingerprints]}


def builtin_set(role: str, n: int | None = None, seed: int = 0) -> ImageSet:
    """``n`` built-in images of ``role`` (default count: :data:`DEFAULT_COUNTS`)."""
    photos = role_photos(role)
    n = DEFAULT_COUNTS[role] if n is None else n
    images = sample_images(n, seed, role)
    sources = [photos[i % len(photos)].source for i in range(n)]
    names = [f"{role}_{i:03d}" for i in range(n)]
    listing = ", ".join(f"{p.distribution} {p.name}" for p in photos)
    provenance = f"built-in {role} photos ({listing}): {n} images, variations seed {seed}"
    return ImageSet(role, provenance, images, names, sources, builtin_hash(role, n, seed))


def builtin_hash(role: str, n: int, seed: int = 0) -> str:
    """The sha256 identifying a built-in set without decoding it (its recipe and the packages' versions)."""
    return hashlib.sha256(f"{role}:{n}:{seed}:{samples_version()}".encode()).hexdigest()


def folder_set(path: str | os.PathLike, role: str, n: int | None = None) -> ImageSet:
    """The user's images (folder, file or glob) as a set; with ``n``, at most ``n`` spread over the listing.

    Raises:
        ImageError: a file cannot be decoded (the message names it).
        InputSpecError: no image found.
    """
    files = spread_files(path, n) if n else list_images(path)
    if not files:
        raise InputSpecError(one_line(f"{role} images '{path}'", "no image found",
                                      "give a folder of .jpg/.png photos"))
    images = [decode_image(file) for file in files]
    sources = [f"sha256:{sha256_file(file)}" for file in files]
    return ImageSet(role, f"user {role} images '{path}': {len(files)} files", images, [str(f) for f in files],
                    sources, sha256_files(files))


def array_set(images: list[np.ndarray], role: str, provenance: str) -> ImageSet:
    """Images handed over in memory; each is its own source, identified by its pixels' hash."""
    hashes = [hashlib.sha256(np.ascontiguousarray(i).tobytes() + str(i.shape).encode()).hexdigest() for i in images]
    return ImageSet(role, provenance, list(images), [f"{role}_{i:03d}" for i in range(len(images))],
                    [f"pixels:{h}" for h in hashes], hashlib.sha256("".join(hashes).encode()).hexdigest())


def image_set(role: str, images: str | os.PathLike | None = None, n: int | None = None, seed: int = 0) -> ImageSet:
    """The user's folder when given, else the built-in set of ``role``."""
    if images is not None:
        return folder_set(images, role, n)
    return builtin_set(role, n, seed)


def set_hash(role: str, images: str | os.PathLike | None = None, n: int | None = None, seed: int = 0) -> str:
    """The sha256 :func:`image_set` would carry, computed without decoding (cache keys)."""
    if images is not None:
        return sha256_files(spread_files(images, n) if n else list_images(images))
    return builtin_hash(role, DEFAULT_COUNTS[role] if n is None else n, seed)


def fingerprint(image: np.ndarray) -> int:
    """A 64-bit difference hash: the sign of horizontal gradients of a 9x8 grey thumbnail."""
    grey = cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2GRAY)
    small = cv2.resize(grey, (9, 8), interpolation=cv2.INTER_AREA).astype(np.int16)
    bits = (small[:, 1:] > small[:, :-1]).flatten()
    return int(sum(1 << i for i, bit in enumerate(bits) if bit))


def overlap(first: dict[str, Any], second: dict[str, Any]) -> dict[str, Any]:
    """Whether two set records (:meth:`ImageSet.record`) share a source picture or a near-identical image.

    Returns:
        ``{"overlap": bool, "shared_sources": [...], "near_duplicates": count}``. Crops of one of the user's own
        pictures are beyond a whole-image fingerprint: keep such sets apart by source yourself.
    """
    shared = sorted(set(first.get("sources", ())) & set(second.get("sources", ())))
    mine = [int(f, 16) for f in first.get("fingerprints", ())]
    theirs = np.array([int(f, 16) for f in second.get("fingerprints", ())], dtype=np.uint64)
    near = 0
    for value in mine:
        if len(theirs) and _min_hamming(np.uint64(value), theirs) <= NEAR_DUPLICATE_BITS:
            near += 1
    return {"overlap": bool(shared or near), "shared_sources": shared, "near_duplicates": near}


def _min_hamming(value: np.uint64, others: np.ndarray) -> int:
    differing = np.bitwise_xor(others, value)
    return int(min(bin(int(d)).count("1") for d in differing))


# --- folders and calibration batches ----------------------------------------------------------------------------


def write_sample_folder(dst: str | os.PathLike, n: int = 16, seed: int = 0, role: str = "judge") -> list[Path]:
    """Write ``n`` sample images of ``role`` to ``dst`` as ``sample_0000.jpg``, ``sample_0001.png``, ... (JPEG and
    PNG alternate), each file written atomically.

    Returns:
        The written paths, in order.
    """
    folder = Path(dst)
    paths = []
    for index, image in enumerate(sample_images(n, seed, role)):
        ext = ".jpg" if index % 2 == 0 else ".png"
        params = [cv2.IMWRITE_JPEG_QUALITY, 95] if ext == ".jpg" else []
        ok, encoded = cv2.imencode(ext, cv2.cvtColor(image, cv2.COLOR_RGB2BGR), params)
        if not ok:
            raise DeployError(one_line(f"sample image {index}", f"OpenCV could not encode it as {ext}"))
        paths.append(atomic_write_bytes(folder / f"sample_{index:04d}{ext}", encoded.tobytes()))
    return paths


def spread_files(images_dir: str | os.PathLike, n: int) -> list[Path]:
    """Up to ``n`` image files from a folder (or glob), spread evenly over its sorted listing.

    Spreading, rather than taking the first ``n``, keeps class folders sorted by name from dominating.
    """
    if n < 1:
        raise InputSpecError(one_line(f"image count {n}", "must be at least 1", "pass n >= 1"))
    files = list_images(images_dir)
    if len(files) <= n:
        return files
    picks = np.linspace(0, len(files) - 1, n).round().astype(int)
    return [files[i] for i in picks]


def calibration_batch(cfg: PreprocessConfig | None = None, n: int = 64, images_dir: str | os.PathLike | None = None,
                      *, seed: int = 0, role: str = "calibration") -> tuple[np.ndarray, ImageSet]:
    """A preprocessed float32 (N, 3, H, W) batch of the user's folder or the built-in ``role`` photos, and its set.

    Raises:
        ImageError: a file in the folder cannot be decoded (the message names it).
    """
    images = image_set(role, images_dir, n, seed)
    return preprocess_batch(images.images, cfg), images
