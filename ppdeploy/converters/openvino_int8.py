"""OpenVINO fp32 IR → INT8 IR by NNCF post-training quantization on real calibration photos.

NNCF inserts FakeQuantize nodes (preset PERFORMANCE: symmetric activations and weights). The layers left
unquantized (softmax, pooling, ...) compute in whatever the inference precision hint says. The artifact asks
for f32 there: on an AVX512_BF16 CPU, bf16 made int8 measurably worse, never better (seeded ResNet50, 50 photo
variations, worst cosine to Paddle fp32: 0.9908 with f32, 0.9891 with bf16; ResNet18: 0.99901 vs 0.99896).

Bias correction runs in full (``fast_bias_correction=False``): it doubles the quantization time but was the one
NNCF setting that mattered (seeded ResNet50_vd, 100 photos, 64 calibration images: fast correction min cosine
0.9907 / top-1 agreement 94%, full 0.9964 / 98%; 300 calibration images changed neither; preset MIXED was worse,
0.918 / 93%).
"""

from __future__ import annotations

import contextlib
import sys

import logging
from pathlib import Path

import numpy as np

from ppdeploy.converters.base import ConvertOptions, ConvertResult
from ppdeploy.errors import ConversionError, one_line

MODEL_FILE = "model.xml"
PRESET = "performance"
FAST_BIAS_CORRECTION = False  # see the module docstring
INFERENCE_PRECISION = "f32"  # for the layers NNCF leaves unquantized; see the module docstring


def convert(src: Path, dst: Path, options: ConvertOptions) -> ConvertResult:
    """Quantize the fp32 IR ``src`` to ``dst/model.xml`` + ``model.bin`` (weights int8, no fp16 compression).

    Args:
        src: ``model.xml`` of the ``openvino`` (fp32) artifact.
        dst: an empty folder.
        options: ``calib_images``/``calib_count`` choose the calibration photos, ``preprocess`` their
            preprocessing (the model's own).

    Raises:
        ConversionError: calibration images that do not fit the model, an NNCF failure, or an IR that
            holds no quantized layer or fails its test run.
    """
    import openvino as ov

    from ppdeploy.converters.to_openvino import verify_ir
    from ppdeploy.runtimes.ov import read_ir

    core = ov.Core()
    model = read_ir(core, Path(src))
    batch, calib_hash = calibration_data(options)
    _check_fits(model, batch, options)
    quantized = quantize(model, batch)
    xml = Path(dst) / MODEL_FILE
    ov.save_model(quantized, str(xml), compress_to_fp16=False)
    fake_quantize = count_fake_quantize(quantized)
    if not fake_quantize:
        raise ConversionError(one_line(str(src), "NNCF inserted no FakeQuantize node",
                                       "check that the source is an fp32 convolutional IR"))
    output_shape = verify_ir(core, xml, INFERENCE_PRECISION, batch.shape[2], batch.shape[3])
    return ConvertResult(MODEL_FILE, "int8", info={
        "input_name": model.input(0).get_any_name(),
        "input_size": int(batch.shape[2]),
        "output_shape": list(output_shape),
        "inference_precision": INFERENCE_PRECISION,
        "calibration_hash": calib_hash,
        "calibration_count": int(batch.shape[0]),
        "calibration_images": str(options.calib_images) if options.calib_images else "sample photos",
        "quantization": {"tool": "nncf", "preset": PRESET, "subset_size": int(batch.shape[0]),
                         "fast_bias_correction": FAST_BIAS_CORRECTION, "fake_quantize_nodes": fake_quantize},
    })


def preprocess_config(options: ConvertOptions):
    """The model's preprocessing; without one, PaddleClas's defaults scaled to ``input_size``."""
    from ppdeploy.preprocess import PreprocessConfig

    if options.preprocess:
        return PreprocessConfig(**options.preprocess)
    return PreprocessConfig(resize_short=round(options.input_size * 256 / 224), crop_size=options.input_size)


def calibration_data(options: ConvertOptions) -> tuple[np.ndarray, str]:
    """The preprocessed calibration batch (N, 3, H, W) and the hash identifying its images."""
    from ppdeploy.samples import calibration_batch, calibration_hash

    if options.calib_count < 1:
        raise ConversionError(one_line(f"--calib-count {options.calib_count}", "must be at least 1",
                                       "use 64 to 300 images"))
    batch = calibration_batch(preprocess_config(options), n=options.calib_count, images_dir=options.calib_images)
    if len(batch) == 0:
        raise ConversionError(one_line(f"calibration images '{options.calib_images}'", "no image found",
                                       "give a folder of .jpg/.png photos, or omit it to use the sample photos"))
    return batch, calibration_hash(n=options.calib_count, images_dir=options.calib_images)


def _check_fits(model, batch: np.ndarray, options: ConvertOptions) -> None:
    dims = list(model.input(0).get_partial_shape())
    want = [d.get_length() if d.is_static else None for d in dims[1:]]
    got = list(batch.shape[1:])
    if any(w is not None and w != g for w, g in zip(want, got)):
        raise ConversionError(one_line("calibration images", f"preprocessed to {tuple(got)}, the model takes "
                                       f"{tuple(want)}", f"fix the preprocessing crop size ({options.preprocess})"))


def quantize(model, batch: np.ndarray):
    """``nncf.quantize`` over every calibration image, one image per item (NNCF feeds items as input 0)."""
    import nncf

    from ppdeploy.runtimes.ov import first_line

    items = [batch[i:i + 1] for i in range(len(batch))]
    previous = _quiet_nncf()
    try:
        # NNCF draws progress bars on stdout; stdout belongs to the command's result (e.g. the artifact path).
        with contextlib.redirect_stdout(sys.stderr):
            return nncf.quantize(model, nncf.Dataset(items), preset=nncf.QuantizationPreset.PERFORMANCE,
                                 subset_size=len(items), fast_bias_correction=FAST_BIAS_CORRECTION)
    except Exception as exc:  # NNCF's own errors and OpenVINO's RuntimeErrors
        raise ConversionError(one_line("NNCF quantization", f"failed ({first_line(exc)})",
                                       "run with --verbose for the traceback")) from exc
    finally:
        logging.getLogger("nncf").setLevel(previous)


def _quiet_nncf() -> int:
    """Silence NNCF's INFO chatter (statistics collection banners); return the level to restore."""
    logger = logging.getLogger("nncf")
    previous = logger.level
    logger.setLevel(logging.WARNING)
    return previous


def count_fake_quantize(model) -> int:
    return sum(1 for op in model.get_ops() if op.get_type_name() == "FakeQuantize")
