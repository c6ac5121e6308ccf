"""What a conversion edge gets and gives: its options and its result. Targets are declared by the converter modules
(``ppdeploy.registry.Target``)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ppdeploy.errors import ConversionError, one_line

SUPPORTED_OPSETS = range(13, 22)  # paddle2onnx accepts 7-21; NNCF/ORT per-channel int8 needs >= 13


@dataclass(frozen=True)
class ConvertOptions:
    """Everything a converter may need besides its source and destination.

    Attributes:
        target: the target being built (one module may serve several, e.g. ``openvino-fp16``).
        input_size: model input height/width (224, or 320 for Fix_ResNet50_vd_ssld).
        opset: ONNX opset for paddle2onnx.
        max_batch: largest batch an engine/profile must accept (dynamic batch 1..max_batch).
        calib_images: folder of calibration images; ``None`` means the built-in sample photos.
        calib_count: how many calibration images to use.
        val_images: folder of validation images for int8 accuracy control, disjoint from the calibration images;
            ``None`` means the built-in validation photos.
        val_count: how many validation images to use.
        max_drop: largest allowed absolute drop of top-1 agreement with the fp32 model on the validation images;
            layers go back to fp32 until it holds. ``None``: plain quantization (the drop is still measured).
        workspace_mb: TensorRT workspace limit.
        preprocess: preprocessing config dict (resize_short, crop_size, mean, std, scale).
        log: where a converter reports the steps of a long conversion (one line each; the pipeline passes its own).
    """

    target: str = ""
    input_size: int = 224
    opset: int = 17
    max_batch: int = 8
    calib_images: Path | None = None
    calib_count: int = 64
    val_images: Path | None = None
    val_count: int = 64
    max_drop: float | None = 0.01
    workspace_mb: int = 1024
    preprocess: dict[str, Any] = field(default_factory=dict)
    log: Callable[[str], None] | None = field(default=None, compare=False, repr=False)

    def say(self, line: str) -> None:
        """Report one step of a long conversion (nothing when no ``log`` was given)."""
        if self.log is not None:
            self.log(line)

    def __post_init__(self) -> None:
        # The cheap half of the calibration/validation disjointness check, so that the same folder for both fails
        # before any conversion starts; copies and shared pictures are caught when the images are read.
        calib, val = self.calib_images, self.val_images
        if calib is not None and val is not None and Path(calib).resolve() == Path(val).resolve():
            raise ConversionError(one_line(f"--val-images {self.val_images}", "is the calibration images folder",
                                           "give validation photos the calibration never saw"))
        if self.max_drop is not None and not 0 <= self.max_drop < 1:
            raise ConversionError(one_line(f"--max-drop {self.max_drop}", "out of range",
                                           "give an absolute top-1 agreement drop in [0, 1), e.g. 0.01"))


@dataclass(frozen=True)
class ConvertResult:
    """What a converter reports back; the pipeline adds it to the manifest.

    Attributes:
        model_file: the main artifact file, relative to the artifact folder (``model.onnx``, ``model.xml``, ...).
        precision: the precision the artifact really holds (``fp32``, ``fp16``, ``int8``).
        info: extra manifest fields (calibration hash, GPU name, input names, ...).
    """

    model_file: str
    precision: str
    info: dict[str, Any] = field(default_factory=dict)
