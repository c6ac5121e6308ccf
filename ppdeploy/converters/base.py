"""What a conversion edge is: a target record, its options, and the registry of targets."""

from __future__ import annotations

import importlib
import importlib.util
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


@dataclass(frozen=True)
class Target:
    """One conversion target (``deploy convert --to NAME``).

    ``source`` is the target whose artifact this one is made from (``None``: the Paddle model itself);
    ``module`` exposes ``convert(src: Path, dst: Path, options: ConvertOptions) -> ConvertResult`` where
    ``src`` is the source artifact *file* (e.g. ``.../onnx/model.onnx`` or ``.../inference.json``) and ``dst``
    an empty folder to write into.
    """

    name: str
    backend: str
    precision: str
    module: str
    source: str | None = None
    requires: tuple[str, ...] = ()
    needs_gpu: bool = False
    install_hint: str = ""
    # When ``source`` is None: the Paddle formats read directly, and the target to go through otherwise.
    paddle_formats: tuple[str, ...] = ("json", "pdmodel")
    fallback: str | None = None

    def availability(self) -> tuple[bool, str]:
        missing = [mod for mod in self.requires if importlib.util.find_spec(mod) is None]
        if missing:
            return False, f"package {', '.join(missing)} is not installed | install it: {self.install_hint}"
        return True, ""

    def converter(self):
        return importlib.import_module(self.module)


TARGETS: dict[str, Target] = {}


def register_target(target: Target) -> Target:
    TARGETS[target.name] = target
    return target


_TRT_HINT = "pip install 'ppdeploy[gpu]' on a machine with an NVIDIA GPU"
for _target in (
    Target("onnx", "onnx", "fp32", "ppdeploy.converters.paddle_to_onnx", requires=("paddle2onnx", "onnx")),
    Target("onnx-fp16", "onnx", "fp16", "ppdeploy.converters.onnx_fp16", source="onnx",
           requires=("onnxconverter_common",)),
    Target("onnx-int8", "onnx", "int8", "ppdeploy.converters.onnx_int8", source="onnx",
           requires=("onnxruntime",)),
    # OpenVINO's Paddle frontend reads legacy .pdmodel only; PIR .json models go through ONNX.
    Target("openvino", "openvino", "fp32", "ppdeploy.converters.to_openvino", requires=("openvino",),
           paddle_formats=("pdmodel",), fallback="onnx"),
    Target("openvino-fp16", "openvino", "fp16", "ppdeploy.converters.to_openvino", requires=("openvino",),
           paddle_formats=("pdmodel",), fallback="onnx"),
    Target("openvino-int8", "openvino", "int8", "ppdeploy.converters.openvino_int8", source="openvino",
           requires=("openvino", "nncf")),
    Target("trt-fp32", "tensorrt", "fp32", "ppdeploy.converters.onnx_to_trt", source="onnx",
           requires=("tensorrt",), needs_gpu=True, install_hint=_TRT_HINT),
    Target("trt-fp16", "tensorrt", "fp16", "ppdeploy.converters.onnx_to_trt", source="onnx-fp16",
           requires=("tensorrt",), needs_gpu=True, install_hint=_TRT_HINT),
    Target("trt-int8", "tensorrt", "int8", "ppdeploy.converters.onnx_to_trt", source="onnx-int8",
           requires=("tensorrt",), needs_gpu=True, install_hint=_TRT_HINT),
):
    register_target(_target)
