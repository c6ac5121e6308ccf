"""OpenVINO fp32 IR → INT8 IR by NNCF post-training quantization on real calibration photos.

NNCF inserts FakeQuantize nodes (preset PERFORMANCE: symmetric activations and weights). The layers left
unquantized (softmax, pooling, ...) compute in whatever the inference precision hint says. The artifact asks
for f32 there: on an AVX512_BF16 CPU, bf16 made int8 measurably worse, never better (seeded ResNet50, 50 photo
variations, worst cosine to Paddle fp32: 0.9908 with f32, 0.9891 with bf16; ResNet18: 0.99901 vs 0.99896).

Bias correction runs in full (``fast_bias_correction=False``): it doubles the quantization time but was the one
NNCF setting that mattered (seeded ResNet50_vd, 100 photos, 64 calibration images: fast correction min cosine
0.9907 / top-1 agreement 94%, full 0.9964 / 98%; 300 calibration images changed neither; preset MIXED was worse,
0.918 / 93%).

Accuracy control (``options.max_drop``, default 0.01) runs ``nncf.quantize_with_accuracy_control`` with the same
settings: NNCF reverts the groups of quantizers that cost most top-1 agreement with the fp32 IR on the validation
photos until the drop is within ``max_drop``. The metric and its ranking score are explained in
``ppdeploy.converters.accuracy``. The manifest's ``quantization.accuracy_control`` names the layers NNCF put back in
fp32: the operations with an input that was int8 after plain quantization and is not after control. Should NNCF
put every layer back in fp32, the plain quantization is kept instead (``reached: false``, and a ``note`` says so):
an artifact without an int8 layer is not int8.

Measured on seeded synthetic ResNet18 (r3) with 64 validation photos and max_drop 0.01. The drop went from
0.156 to 0, with 8 of 32 int8 layers back in fp32 (Conv.0, Conv.4, Conv.5, Conv.16-18, Add.2, Add.4). The
conversion took 70 s instead of 14 s. On 120 held-out judge photos, agreement with fp32 rose from 0.858 to
0.933, and the largest total-variation distance fell from 0.60 to 0.20.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ppdeploy.converters import accuracy
from ppdeploy.converters.base import ConvertOptions, ConvertResult
from ppdeploy.converters.openvino_ir import MODEL_FILE, read_ir
from ppdeploy.errors import OPENVINO_LOCATION_LINES, ConversionError, DeployError, first_line, one_line
from ppdeploy.fsutil import scratch_dir
from ppdeploy.registry import Target, register_target

if TYPE_CHECKING:
    import numpy as np

PRESET = "performance"
# Bound the search (ResNet200_vd has ~200 quantizer groups; ranking each on the whole validation set took longer
# than a CI run): rank on the images that lost most, revert at most this many groups.
RANKING_SUBSET = 16
MAX_REVERTED_GROUPS = 12
FAST_BIAS_CORRECTION = False  # see the module docstring
INFERENCE_PRECISION = "f32"  # for the layers NNCF leaves unquantized; see the module docstring


def convert(src: Path, dst: Path, options: ConvertOptions) -> ConvertResult:
    """Quantize the fp32 IR ``src`` to ``dst/model.xml`` + ``model.bin`` (weights int8, no fp16 compression).

    Args:
        src: ``model.xml`` of the ``openvino`` (fp32) artifact.
        dst: an empty folder.
        options: ``calib_images``/``calib_count`` choose the calibration photos, ``val_images``/``val_count`` the
            validation photos, ``max_drop`` the accuracy control (``None``: off), ``preprocess`` their
            preprocessing (the model's own).

    Raises:
        ConversionError: calibration and validation images that overlap or do not fit the model, an NNCF
            failure, or an IR that holds no quantized layer (the pipeline test-runs it after).
    """
    import openvino as ov

    from ppdeploy.preprocess import preprocess_batch

    calib, validation = accuracy.image_sets(options)
    config = preprocess_config(options)
    batch = preprocess_batch(calib.images, config)
    core = _core()
    model = read_ir(core, Path(src))
    _check_fits(model, batch, options)
    options.say(f"int8: NNCF calibration on {len(batch)} photos"
                + (f", accuracy control on {len(validation.images)} validation photos" if options.max_drop is not None
                   else "") + " ...")
    quantized, control = quantize(model, batch, preprocess_batch(validation.images, config), options.max_drop)
    xml = Path(dst) / MODEL_FILE
    ov.save_model(quantized, str(xml), compress_to_fp16=False)
    fake_quantize = count_fake_quantize(quantized)
    if not fake_quantize:
        raise ConversionError(one_line(str(src), "NNCF inserted no FakeQuantize node",
                                       "check that the source is an fp32 convolutional IR"))
    return ConvertResult(MODEL_FILE, "int8", info={
        "input_name": model.input(0).get_any_name(),
        "input_size": int(batch.shape[2]),
        "inference_precision": INFERENCE_PRECISION,
        "calibration_hash": calib.sha256,
        "calibration_count": int(batch.shape[0]),
        "calibration_set": calib.record(),
        "quantization": {"tool": "nncf", "preset": PRESET, "subset_size": int(batch.shape[0]),
                         "fast_bias_correction": FAST_BIAS_CORRECTION, "fake_quantize_nodes": fake_quantize,
                         "accuracy_control": accuracy.control_record(validation=validation, **control)},
    })


def preprocess_config(options: ConvertOptions):
    """The model's preprocessing; without one, PaddleClas's defaults scaled to ``input_size``."""
    from ppdeploy.preprocess import PreprocessConfig

    if options.preprocess:
        return PreprocessConfig(**options.preprocess)
    return PreprocessConfig(resize_short=round(options.input_size * 256 / 224), crop_size=options.input_size)


def _check_fits(model, batch: np.ndarray, options: ConvertOptions) -> None:
    dims = list(model.input(0).get_partial_shape())
    want = [d.get_length() if d.is_static else None for d in dims[1:]]
    got = list(batch.shape[1:])
    if any(w is not None and w != g for w, g in zip(want, got)):
        raise ConversionError(one_line("calibration images", f"preprocessed to {tuple(got)}, the model takes "
                                       f"{tuple(want)}", f"fix the preprocessing crop size ({options.preprocess})"))


def quantize(model, batch: np.ndarray, validation: np.ndarray, max_drop: float | None) -> tuple[Any, dict]:
    """Quantize over every calibration image (one per item: NNCF feeds items as input 0), under accuracy control
    on ``validation`` unless ``max_drop`` is None.

    Returns:
        The int8 model and the keyword arguments of :func:`accuracy.control_record` but the validation set.
    """
    import nncf
    from nncf.quantization.advanced_parameters import AdvancedAccuracyRestorerParameters

    started = time.perf_counter()
    calibration = nncf.Dataset([batch[i:i + 1] for i in range(len(batch))])
    settings = {"preset": nncf.QuantizationPreset.PERFORMANCE, "subset_size": len(batch),
                "fast_bias_correction": FAST_BIAS_CORRECTION}
    reference = infer(model, validation)
    previous = _quiet_nncf()
    try:
        # NNCF draws progress bars on stdout; stdout belongs to the command's result (e.g. the artifact path).
        with contextlib.redirect_stdout(sys.stderr), scratch_dir("nncf") as tmp:
            if max_drop is None:
                plain = quantized = nncf.quantize(model, calibration, **settings)
            else:
                items = [(validation[i:i + 1], reference[i]) for i in range(len(validation))]
                quantized = nncf.quantize_with_accuracy_control(
                    model, calibration, nncf.Dataset(items, lambda item: item[0]), _validation_fn,
                    max_drop=max_drop, drop_type=nncf.DropType.ABSOLUTE, **settings,
                    advanced_accuracy_restorer_parameters=AdvancedAccuracyRestorerParameters(
                        intermediate_model_dir=str(tmp), max_num_iterations=MAX_REVERTED_GROUPS,
                        ranking_subset_size=RANKING_SUBSET))
                plain = _core().read_model(str(Path(tmp) / "intermediate_model.xml"))
    except DeployError:
        raise
    except Exception as exc:  # NNCF's own errors and OpenVINO's RuntimeErrors
        reason = first_line(exc, skip=OPENVINO_LOCATION_LINES)
        raise ConversionError(one_line("NNCF quantization", f"failed ({reason})",
                                       "run with --verbose for the traceback")) from exc
    finally:
        logging.getLogger("nncf").setLevel(previous)
    note = None
    if max_drop is not None and not int8_inputs(quantized):
        # Never every layer: a model with no int8 layer left is no int8 artifact; the manifest says "not reached".
        from openvino._offline_transformations import compress_quantize_weights_transformation

        compress_quantize_weights_transformation(plain)  # what NNCF does to the weights of what it returns
        quantized, note = plain, "NNCF put every layer back in fp32; the plain quantization was kept"
    after = accuracy.measure(reference, infer(quantized, validation))
    before = after if max_drop is None else accuracy.measure(reference, infer(plain, validation))
    return quantized, {"max_drop": max_drop, "before": before, "after": after,
                       "fp32_layers": reverted_layers(plain, quantized) if max_drop is not None else [],
                       "seconds": time.perf_counter() - started,
                       "tool": "nncf.quantize" if max_drop is None else "nncf.quantize_with_accuracy_control",
                       "ranking_score": None if max_drop is None else accuracy.RANKING_SCORE,
                       "int8_layers_before": len(int8_inputs(plain)), "int8_layers": len(int8_inputs(quantized)),
                       "note": note}


def _validation_fn(compiled, items) -> tuple[float, list[float]]:
    """NNCF's metric: mean and per-item scores of :func:`accuracy.item_scores` against the stored reference."""
    import numpy as np

    items = list(items)
    outputs = np.concatenate([compiled(x)[0] for x, _ in items])
    _, scores = accuracy.item_scores(np.stack([reference for _, reference in items]), outputs)
    return float(scores.mean()), [float(score) for score in scores]


@functools.lru_cache(maxsize=1)
def _core():
    import openvino as ov

    return ov.Core()


def infer(model, batch: np.ndarray, chunk: int = 8) -> np.ndarray:
    """Outputs of ``model`` (an ``ov.Model``) on ``batch``, compiled for the CPU with f32 compute."""
    import numpy as np

    compiled = _core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    return np.concatenate([compiled(batch[i:i + chunk])[0] for i in range(0, len(batch), chunk)])


def reverted_layers(plain, controlled) -> list[str]:
    """Names of the operations with an input that is int8 in ``plain`` and no longer in ``controlled``."""
    after = int8_inputs(controlled)
    return sorted(name for name, inputs in int8_inputs(plain).items()
                  if any(was and not now for was, now in zip(inputs, after.get(name, [False] * len(inputs)))))


def int8_inputs(model) -> dict[str, list[bool]]:
    """For each operation reading a quantized input, which of its inputs are quantized.

    Quantized means fed by a FakeQuantize (activations, and weights before NNCF compresses them) or by an
    int8 constant through its dequantization (Convert, Subtract, Multiply: compressed weights).
    """
    found = {}
    for op in model.get_ops():
        if op.get_type_name() in _NOT_LAYERS:
            continue
        inputs = [_is_quantized(value.get_node()) for value in op.input_values()]
        if any(inputs):
            found[op.get_friendly_name()] = inputs
    return found


_DEQUANTIZE = frozenset({"Convert", "Subtract", "Multiply", "Reshape", "Transpose", "Unsqueeze"})
_NOT_LAYERS = _DEQUANTIZE | {"FakeQuantize", "Constant"}
_LOW_PRECISION = frozenset({"i8", "u8", "i4", "u4"})


def _is_quantized(node) -> bool:
    while node.get_type_name() in _DEQUANTIZE and node.get_input_size():
        node = node.input_value(0).get_node()
    if node.get_type_name() == "FakeQuantize":
        return True
    return node.get_type_name() == "Constant" and node.get_output_element_type(0).get_type_name() in _LOW_PRECISION


def _quiet_nncf() -> int:
    """Silence NNCF's INFO chatter (statistics collection banners); return the level to restore."""
    logger = logging.getLogger("nncf")
    previous = logger.level
    logger.setLevel(logging.WARNING)
    return previous


def count_fake_quantize(model) -> int:
    return sum(1 for op in model.get_ops() if op.get_type_name() == "FakeQuantize")


TARGET = register_target(Target(
    "openvino-int8", "openvino", "int8", __name__, source="openvino", requires=("openvino", "nncf"),
    extra="openvino", tools=("openvino", "nncf"), calibrated=True))
