"""Paddle legacy ``.pdmodel`` or ONNX → OpenVINO IR with a dynamic batch: ``openvino`` (fp32) and
``openvino-fp16`` (fp16 weights).

OpenVINO's Paddle frontend reads only the legacy ProgramDesc ``.pdmodel``; Paddle 3 PIR ``.json`` models reach
this module as the ``onnx`` target's ``model.onnx`` (the pipeline routes them). ``ov.save_model`` compresses
weights to fp16 unless told not to, so the fp32 IR is saved with ``compress_to_fp16=False`` and checked to hold
no f16 constant.

An fp16 IR stores fp16 weights; what it computes in is a separate choice. Its manifest asks for f16 compute; the
runtime grants it on a device whose ``OPTIMIZATION_CAPABILITIES`` lists FP16 and uses f32 elsewhere (the weights
are decompressed), never bf16: that keeps 8 significant bits against fp16's 11, and OpenVINO's CPU plugin
silently substitutes it for an f16 request on CPUs without native fp16.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from xml.etree import ElementTree

from ppdeploy.converters.base import ConvertOptions, ConvertResult
from ppdeploy.converters.openvino_ir import MODEL_FILE
from ppdeploy.errors import OPENVINO_LOCATION_LINES, ConversionError, first_line, one_line
from ppdeploy.models.paddle_files import check_params_file
from ppdeploy.registry import Target, register_target

SOURCE_FORMATS = {".pdmodel": "pdmodel", ".onnx": "onnx"}
PRECISIONS = {"openvino": "fp32", "openvino-fp16": "fp16"}


def convert(src: Path, dst: Path, options: ConvertOptions) -> ConvertResult:
    """Convert ``src`` to ``dst/model.xml`` + ``model.bin`` (batch dynamic, 3×H×W fixed) and test-run it.

    Args:
        src: ``inference.pdmodel`` (``inference.pdiparams`` beside it) or an ONNX ``model.onnx``.
        dst: an empty folder.
        options: ``target`` picks fp32 (``openvino``) or fp16 weights (``openvino-fp16``); ``input_size`` is
            used when the source's H/W are dynamic.

    Raises:
        ConversionError: unsupported source, OpenVINO conversion failure, or an IR that does not hold the
            promised weight precision or fails its test run.
    """
    import openvino as ov

    precision = target_precision(options.target)
    src = Path(src)
    source_format = source_format_of(src)
    model = read_source(ov, src)
    input_name, height, width = set_dynamic_batch(model, options.input_size)
    xml = Path(dst) / MODEL_FILE
    ov.save_model(model, str(xml), compress_to_fp16=precision == "fp16")
    const_types = ir_constant_types(xml)
    check_weight_precision(xml, precision, const_types)
    # What the artifact asks to compute in; the runtime resolves it on the device it runs on (never lower).
    hint = "f16" if precision == "fp16" else "f32"
    return ConvertResult(MODEL_FILE, precision, info={
        "source_format": source_format,
        "openvino_frontend": "paddle" if source_format == "pdmodel" else "onnx",
        "input_name": input_name,
        "input_size": height,
        "inference_precision": hint,
        "weights_precision": precision,
        "ir_constant_types": dict(const_types),
        "ir_bytes": xml.with_suffix(".bin").stat().st_size,
    })


def target_precision(target: str) -> str:
    """``openvino`` → ``fp32``, ``openvino-fp16`` → ``fp16``; anything else is a programming error."""
    if target not in PRECISIONS:
        raise ConversionError(one_line(f"target '{target}'", "not served by to_openvino",
                                       "choose one of: " + ", ".join(PRECISIONS)))
    return PRECISIONS[target]


def source_format_of(src: Path) -> str:
    """``pdmodel`` or ``onnx`` from the file name; a PIR ``.json`` gets a message saying to go through ONNX."""
    if src.suffix == ".json":
        raise ConversionError(one_line(str(src), "OpenVINO cannot read Paddle 3 PIR .json models",
                                       "convert through ONNX (the pipeline does this: deploy convert ... "
                                       "--to openvino), or export a legacy .pdmodel with FLAGS_enable_pir_api=0"))
    if src.suffix not in SOURCE_FORMATS or not src.is_file():
        raise ConversionError(one_line(str(src), "not a .pdmodel or .onnx file",
                                       "give inference.pdmodel (with inference.pdiparams) or model.onnx"))
    if src.suffix == ".pdmodel" and not src.with_suffix(".pdiparams").is_file():
        raise ConversionError(one_line(str(src.with_suffix(".pdiparams")), "missing (the model's weights)",
                                       f"copy it next to {src.name}"))
    if src.suffix == ".pdmodel":
        check_params_file(src.with_suffix(".pdiparams"))
    return SOURCE_FORMATS[src.suffix]


def read_source(ov, src: Path):
    """``ov.convert_model`` with a one-line ``ConversionError``."""
    try:
        return ov.convert_model(str(src))
    except Exception as exc:  # OpenVINO frontends raise RuntimeError/OpConversionFailure with C++ text
        reason = first_line(exc, skip=OPENVINO_LOCATION_LINES)
        raise ConversionError(one_line(str(src), f"OpenVINO cannot convert it ({reason})",
                                       "check that the model loads in Paddle/ONNX Runtime; report it otherwise")
                              ) from exc


def set_dynamic_batch(model, input_size: int) -> tuple[str, int, int]:
    """Reshape the single image input to ``[-1, 3, H, W]``: the model's own static H/W win over ``input_size``.

    Returns:
        The input's name, H and W.
    """
    import openvino as ov

    if len(model.inputs) != 1:
        raise ConversionError(one_line("model", f"has {len(model.inputs)} inputs", "expected one image input"))
    port = model.input(0)
    dims = list(port.get_partial_shape())
    if len(dims) != 4 or (dims[1].is_static and dims[1].get_length() != 3):
        raise ConversionError(one_line(f"input '{port.get_any_name()}'", f"shape {port.get_partial_shape()}",
                                       "expected [N, 3, H, W]"))
    height = dims[2].get_length() if dims[2].is_static else input_size
    width = dims[3].get_length() if dims[3].is_static else input_size
    model.reshape({port: ov.PartialShape([-1, 3, height, width])})
    return port.get_any_name(), height, width


def ir_constant_types(xml: Path) -> Counter:
    """How many ``Const`` layers of each element type the IR holds (``{"f32": 120, "i64": 4}``)."""
    try:
        root = ElementTree.parse(xml).getroot()
    except (OSError, ElementTree.ParseError) as exc:
        raise ConversionError(one_line(str(xml), f"OpenVINO wrote an unreadable IR ({exc})", "report it")) from exc
    types: Counter = Counter()
    for layer in root.iter("layer"):
        if layer.get("type") == "Const":
            data = layer.find("data")
            types[data.get("element_type", "?") if data is not None else "?"] += 1
    return types


def check_weight_precision(xml: Path, precision: str, const_types: Counter) -> None:
    """fp32 IR: no f16 constant at all; fp16 IR: its float weights are f16."""
    if precision == "fp32" and const_types["f16"]:
        raise ConversionError(one_line(str(xml), f"the fp32 IR holds {const_types['f16']} f16 constants",
                                       "report it: ov.save_model must be called with compress_to_fp16=False"))
    if precision == "fp16" and not const_types["f16"]:
        raise ConversionError(one_line(str(xml), "the fp16 IR holds no f16 constant", "report it"))


# OpenVINO's Paddle frontend reads legacy .pdmodel only; PIR .json models go through ONNX.
TARGETS = tuple(register_target(Target(
    name, "openvino", precision, __name__, requires=("openvino",), extra="openvino", tools=("openvino",),
    paddle_formats=("pdmodel",), fallback="onnx")) for name, precision in (("openvino", "fp32"),
                                                                           ("openvino-fp16", "fp16")))
