"""PaddleClas's Python deploy preprocessing, reproduced to the bit.

The pipeline is PaddleClas ``deploy/python/preprocess.py``: ``ResizeImage(resize_short)`` → ``CropImage(size)``
→ ``NormalizeImage(scale, mean, std)`` → ``ToCHWImage``, applied to an RGB ``uint8`` (H, W, 3) image:

- resize: ``percent = resize_short / min(w, h)``; new size ``int(round(w * percent))`` x
  ``int(round(h * percent))`` with Python's ``round`` (half to even: 513x512 → 256x256, where PaddleClas's
  C++ path gives 257x256), then ``cv2.resize`` with ``INTER_LINEAR``;
- crop: the centre ``crop_size`` square starting at ``((W - size) // 2, (H - size) // 2)``; an image smaller
  than the crop is an error, as in PaddleClas (it only happens when ``resize_short < crop_size``);
- normalize, in float32: ``(img.astype(float32) * float32(scale) - mean) / std``, RGB channel order;
- HWC → CHW, and batches stacked into one contiguous float32 (N, 3, H, W) array.

Arrays handed in through the Python API go through :func:`to_rgb_uint8` first, which follows the same rules
as :func:`ppdeploy.images.decode_image` (OpenCV's ``IMREAD_COLOR``) wherever they overlap:

- 2-D (grayscale) or (H, W, 1): the gray value is copied to R, G and B;
- (H, W, 4): the alpha channel is dropped, no compositing; (H, W, 3) is taken as RGB (as ``paddleclas.predict``);
- ``uint16``: the high byte (``v >> 8``), like OpenCV's 16-bit PNG reading; ``bool``: ``True`` → 255;
- floating point: taken to be in [0, 1] and mapped with ``rint(x * 255)``; values outside [0, 1] (beyond a
  1e-6 tolerance) or non-finite values are refused rather than guessed at;
- other integer types: accepted when every value lies in [0, 255], refused otherwise.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from ppdeploy.errors import ArtifactError, ImageError, InputSpecError, one_line
from ppdeploy.images import pixel_limit

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
YAML_NAMES = ("inference_cls.yaml", "inference.yml")

# Our names → OpenCV flags; PaddleClas's yaml names ("bilinear", "bicubic", ...) are accepted as aliases.
_INTERPOLATIONS = {"nearest": cv2.INTER_NEAREST, "linear": cv2.INTER_LINEAR, "area": cv2.INTER_AREA,
                   "cubic": cv2.INTER_CUBIC, "lanczos": cv2.INTER_LANCZOS4}
_ALIASES = {"bilinear": "linear", "bicubic": "cubic", "lanczos4": "lanczos"}
_TO_PADDLECLAS = {"linear": "bilinear", "cubic": "bicubic"}
_FLOAT_TOLERANCE = 1e-6


@dataclass(frozen=True)
class PreprocessConfig:
    """The numbers of PaddleClas's ResizeImage / CropImage / NormalizeImage steps."""

    resize_short: int = 256
    crop_size: int = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    scale: float = 0.00392157
    interpolation: str = "linear"

    def __post_init__(self) -> None:
        set_field = object.__setattr__  # frozen: normalise the fields once, here
        set_field(self, "mean", _triple("mean", self.mean))
        set_field(self, "std", _triple("std", self.std))
        set_field(self, "scale", float(self.scale))
        set_field(self, "interpolation", _interpolation_name(self.interpolation))
        for name in ("resize_short", "crop_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or int(value) != value or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
            set_field(self, name, int(value))
        if any(s == 0 for s in self.std):
            raise ValueError(f"std must not contain 0, got {self.std}")
        if not (np.isfinite(self.scale) and self.scale > 0):
            raise ValueError(f"scale must be a positive number, got {self.scale!r}")

    @classmethod
    def from_yaml(cls, path: str | os.PathLike) -> PreprocessConfig:
        """Read ``PreProcess.transform_ops`` from a PaddleClas ``inference_cls.yaml`` (or ``inference.yml``).

        Raises:
            ArtifactError: the file is unreadable, or its ops are not the resize/crop/normalize pipeline.
        """
        import yaml

        path = Path(path)
        try:
            document = yaml.safe_load(path.read_text(encoding="utf-8"))
            ops = document["PreProcess"]["transform_ops"]
            return cls(**_fields_from_ops(ops))
        except (OSError, yaml.YAMLError, KeyError, TypeError, ValueError) as exc:
            raise ArtifactError(one_line(f"preprocessing config '{path}'", f"cannot be used: {_describe(exc)}",
                                         "fix PreProcess.transform_ops or delete the file to use the defaults")
                                ) from exc

    @classmethod
    def for_model_dir(cls, directory: str | os.PathLike, default: PreprocessConfig | None = None
                      ) -> PreprocessConfig:
        """The config from a model folder's ``inference_cls.yaml`` (or ``inference.yml``), else ``default``."""
        for name in YAML_NAMES:
            candidate = Path(directory) / name
            if candidate.is_file():
                return cls.from_yaml(candidate)
        return default if default is not None else cls()

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-friendly values (lists for mean and std)."""
        data = asdict(self)
        data.update(mean=list(self.mean), std=list(self.std))
        return data

    def to_yaml_ops(self) -> list[dict[str, Any]]:
        """The ``PreProcess.transform_ops`` list in PaddleClas's ``inference_cls.yaml`` layout."""
        resize: dict[str, Any] = {"resize_short": self.resize_short}
        if self.interpolation != "linear":  # PaddleClas's default is INTER_LINEAR; write only departures
            resize["interpolation"] = _TO_PADDLECLAS.get(self.interpolation, self.interpolation)
        return [
            {"ResizeImage": resize},
            {"CropImage": {"size": self.crop_size}},
            {"NormalizeImage": {"scale": self.scale, "mean": list(self.mean), "std": list(self.std), "order": ""}},
            {"ToCHWImage": None},
        ]


def _triple(name: str, values: Sequence[float]) -> tuple[float, float, float]:
    result = tuple(float(v) for v in values)
    if len(result) != 3:
        raise ValueError(f"{name} must have 3 values (R, G, B), got {len(result)}")
    return result  # type: ignore[return-value]


def _interpolation_name(name: str) -> str:
    key = _ALIASES.get(str(name).lower(), str(name).lower())
    if key not in _INTERPOLATIONS:
        raise ValueError(f"interpolation {name!r} is not one of {', '.join(_INTERPOLATIONS)}")
    return key


def _describe(exc: Exception) -> str:
    if isinstance(exc, KeyError):
        return f"missing key {exc}"
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def parse_scale(value: Any) -> float:
    """Read NormalizeImage's ``scale``: a number, or a string such as ``'1.0/255.0'`` or ``'0.00392157'``.

    PaddleClas ``eval``s the string; only a number or ``a/b`` is accepted here, without ``eval``.
    """
    if isinstance(value, bool):
        raise ValueError(f"scale {value!r} is not a number")
    if isinstance(value, int | float):
        return float(value)
    text = str(value).strip()
    parts = text.split("/")
    if len(parts) > 2:
        raise ValueError(f"scale {text!r} is not a number or a/b")
    try:
        numbers = [float(part) for part in parts]
    except ValueError:
        raise ValueError(f"scale {text!r} is not a number or a/b") from None
    return numbers[0] / numbers[1] if len(numbers) == 2 else numbers[0]


def _fields_from_ops(ops: list[dict[str, Any]]) -> dict[str, Any]:
    """Map PaddleClas transform ops to PreprocessConfig fields, refusing ops that change the pipeline."""
    if not isinstance(ops, list):
        raise TypeError("transform_ops is not a list")
    fields: dict[str, Any] = {}
    for op in ops:
        if not isinstance(op, dict) or len(op) != 1:
            raise TypeError(f"op {op!r} is not a one-key mapping")
        (name, params), = op.items()
        params = params or {}
        if name == "ResizeImage":
            fields.update(_resize_fields(params))
        elif name == "CropImage":
            fields["crop_size"] = _crop_size(params.get("size"))
        elif name == "NormalizeImage":
            fields.update(_normalize_fields(params))
        elif name == "DecodeImage":
            if params.get("to_rgb", True) is not True or params.get("channel_first", False):
                raise ValueError("DecodeImage must keep to_rgb: True and channel_first: False")
        elif name != "ToCHWImage":
            raise ValueError(f"op {name} is not supported (only ResizeImage, CropImage, NormalizeImage, ToCHWImage)")
    return fields


def _resize_fields(params: dict[str, Any]) -> dict[str, Any]:
    if not params.get("resize_short"):
        raise ValueError("ResizeImage without resize_short (a fixed size) is not supported")
    if str(params.get("backend", "cv2")).lower() != "cv2":
        raise ValueError("ResizeImage backend must be cv2")
    fields: dict[str, Any] = {"resize_short": params["resize_short"]}
    if params.get("interpolation") is not None:
        fields["interpolation"] = params["interpolation"]
    return fields


def _crop_size(size: Any) -> int:
    if isinstance(size, list | tuple):
        if len(size) != 2 or size[0] != size[1]:
            raise ValueError(f"CropImage size {size} is not square")
        size = size[0]
    if size is None:
        raise ValueError("CropImage has no size")
    return size


def _normalize_fields(params: dict[str, Any]) -> dict[str, Any]:
    if params.get("channel_num", 3) != 3 or params.get("output_fp16", False):
        raise ValueError("NormalizeImage must have channel_num 3 and float32 output")
    fields: dict[str, Any] = {"scale": parse_scale(params.get("scale", "1.0/255.0"))}
    if params.get("mean") is not None:
        fields["mean"] = params["mean"]
    if params.get("std") is not None:
        fields["std"] = params["std"]
    return fields


# ------------------------------------------------------------------------------------------------ conversion


def to_rgb_uint8(array: Any) -> np.ndarray:
    """Bring an array from the Python API to RGB ``uint8`` (H, W, 3), following the module's rules.

    Raises:
        ImageError: the shape is not an image, or the values do not fit the dtype's rule.
    """
    img = np.asarray(array)
    img = _to_three_channels(img)
    img = _to_uint8(img)
    return np.ascontiguousarray(img)


def _to_three_channels(img: np.ndarray) -> np.ndarray:
    if img.ndim == 2:
        img = img[:, :, None]
    if img.ndim != 3 or img.shape[2] not in (1, 3, 4):
        raise ImageError(one_line(f"image array of shape {img.shape}", "is not (H, W), (H, W, 1), (H, W, 3) or "
                                  "(H, W, 4)", "pass an HWC image (transpose CHW arrays first)"))
    if img.shape[0] == 0 or img.shape[1] == 0:
        raise ImageError(one_line(f"image array of shape {img.shape}", "is empty", "pass a non-empty image"))
    if img.shape[2] == 1:
        return np.repeat(img, 3, axis=2)
    return img[:, :, :3]


def _to_uint8(img: np.ndarray) -> np.ndarray:
    subject = f"image array of dtype {img.dtype}"
    if img.dtype == np.uint8:
        return img
    if img.dtype == np.bool_:
        return img.astype(np.uint8) * np.uint8(255)
    if img.dtype == np.uint16:
        return (img >> 8).astype(np.uint8)
    if np.issubdtype(img.dtype, np.floating):
        if not np.isfinite(img).all():
            raise ImageError(one_line(subject, "contains NaN or infinity", "pass finite values in [0, 1]"))
        low, high = float(img.min()), float(img.max())
        if low < -_FLOAT_TOLERANCE or high > 1 + _FLOAT_TOLERANCE:
            raise ImageError(one_line(subject, f"has values in [{low:g}, {high:g}], floats must be in [0, 1]",
                                      "divide 0-255 data by 255, or pass uint8"))
        return np.rint(np.clip(img.astype(np.float64), 0.0, 1.0) * 255.0).astype(np.uint8)
    if np.issubdtype(img.dtype, np.integer):
        low, high = int(img.min()), int(img.max())
        if low < 0 or high > 255:
            raise ImageError(one_line(subject, f"has values in [{low}, {high}], outside 0-255",
                                      "scale to 0-255 and pass uint8 (uint16 is scaled by v >> 8)"))
        return img.astype(np.uint8)
    raise ImageError(one_line(subject, "is not a numeric image type", "pass uint8, uint16, bool or float in [0, 1]"))


# ----------------------------------------------------------------------------------------------------- steps


def resize_short_size(width: int, height: int, size: int) -> tuple[int, int]:
    """The (width, height) PaddleClas's ``ResizeImage(resize_short=size)`` resizes a width x height image to."""
    percent = float(size) / min(width, height)
    return round(width * percent), round(height * percent)  # round(float) is an int: Python rounding


def resize_short(img: np.ndarray, size: int, interpolation: str = "linear") -> np.ndarray:
    """Resize so the short side is ``size``, keeping the aspect ratio with PaddleClas's Python rounding.

    Raises:
        InputSpecError: the resized image would exceed the pixel limit (a very elongated input).
    """
    height, width = img.shape[:2]
    new_width, new_height = resize_short_size(width, height, size)
    limit = pixel_limit()
    if limit is not None and new_width * new_height > limit:
        raise InputSpecError(one_line(f"image {width}x{height}", f"resizing the short side to {size} gives "
                                      f"{new_width}x{new_height}, above the pixel limit of {limit:,}",
                                      "crop the image to a less extreme aspect ratio"))
    return cv2.resize(img, (new_width, new_height), interpolation=_INTERPOLATIONS[_interpolation_name(interpolation)])


def center_crop(img: np.ndarray, size: int) -> np.ndarray:
    """The centre ``size`` x ``size`` square, starting at ``((W - size) // 2, (H - size) // 2)``.

    Raises:
        InputSpecError: the image is smaller than the crop (PaddleClas raises too).
    """
    height, width = img.shape[:2]
    if height < size or width < size:
        raise InputSpecError(one_line(f"image {width}x{height}", f"smaller than the {size}x{size} crop",
                                      "resize it first (resize_short must be at least crop_size)"))
    left, top = (width - size) // 2, (height - size) // 2
    return img[top:top + size, left:left + size]


def normalize(img: np.ndarray, mean: Sequence[float], std: Sequence[float], scale: float) -> np.ndarray:
    """``(img * scale - mean) / std`` in float32, channels last, with PaddleClas's operation order."""
    mean32 = np.asarray(mean, dtype=np.float64).reshape(1, 1, 3).astype(np.float32)
    std32 = np.asarray(std, dtype=np.float64).reshape(1, 1, 3).astype(np.float32)
    return (img.astype(np.float32) * np.float32(scale) - mean32) / std32


def normalized_chw(img: np.ndarray, mean: Sequence[float], std: Sequence[float], scale: float) -> np.ndarray:
    """``to_chw(normalize(img, ...))`` for a ``uint8`` image in one pass: a uint8 pixel has 256 possible values, so
    each channel's normalisation is a 256-entry table computed with :func:`normalize`'s own float32 operations
    (bit-identical results), and OpenCV's ``LUT`` writes each channel's plane straight into the channels-first
    output. 0.05 ms for a 224x224 crop, against 0.14-0.84 ms with ``np.take`` (erratic) and ~0.35 ms for
    :func:`normalize` + :func:`to_chw`."""
    columns = _normalize_columns(tuple(mean), tuple(std), float(scale))
    out = np.empty((3, *img.shape[:2]), dtype=np.float32)
    for channel, plane in enumerate(cv2.split(img)):
        cv2.LUT(plane, columns[channel], dst=out[channel])
    return out


@functools.lru_cache(maxsize=16)
def _normalize_columns(mean: tuple[float, ...], std: tuple[float, ...], scale: float) -> tuple[np.ndarray, ...]:
    """Each channel's 256-entry table: :func:`normalize` of every uint8 value."""
    table = normalize(np.arange(256, dtype=np.uint8).reshape(256, 1, 1).repeat(3, axis=2), mean, std, scale)
    return tuple(np.ascontiguousarray(table[:, 0, channel]) for channel in range(3))


def to_chw(img: np.ndarray) -> np.ndarray:
    """HWC → contiguous CHW."""
    return np.ascontiguousarray(img.transpose(2, 0, 1))


def preprocess(image: np.ndarray, cfg: PreprocessConfig | None = None) -> np.ndarray:
    """One RGB image (any size; see :func:`to_rgb_uint8` for other dtypes) → float32 (3, crop, crop)."""
    cfg = cfg or PreprocessConfig()
    img = to_rgb_uint8(image)
    img = resize_short(img, cfg.resize_short, cfg.interpolation)
    img = center_crop(img, cfg.crop_size)
    return normalized_chw(img, cfg.mean, cfg.std, cfg.scale)


def preprocess_batch(images: Sequence[np.ndarray], cfg: PreprocessConfig | None = None) -> np.ndarray:
    """Several RGB images → one contiguous float32 (N, 3, crop, crop) array."""
    cfg = cfg or PreprocessConfig()
    batch = np.empty((len(images), 3, cfg.crop_size, cfg.crop_size), dtype=np.float32)
    for index, image in enumerate(images):
        batch[index] = preprocess(image, cfg)
    return batch
