"""ONNX fp32 → ncnn ``model.ncnn.param`` + ``model.ncnn.bin`` with pnnx: ``ncnn`` (fp32 weights) and ``ncnn-fp16``
(fp16 weights, pnnx's own default).

pnnx ships on the package index as a standalone binary inside the ``pnnx`` wheel, whose metadata requires torch;
the binary needs no torch, so ppdeploy finds it without importing the package (``pip install --no-deps pnnx``, see
docs/edge.md). pnnx writes every output beside its input, so the ONNX is copied into a work folder inside the
staging folder first; only the two ncnn files are kept.

The AveragePool trap. paddle2onnx writes the ``_vd`` shortcut's pool as ``AveragePool(kernel 2, stride 2,
auto_pad=SAME_UPPER, ceil_mode=1, count_include_pad=0)``. On even feature maps SAME padding is zero, but pnnx
turns ``SAME_UPPER`` into an extra ``Padding`` layer (bottom 1, right 1) before the ncnn ``Pooling``, so the
shortcut averages over a padded map: seeded ResNet18_vd agreed with ONNX Runtime on 7 of 120 judge photos.
:func:`explicit_zero_pads` rewrites such nodes in the copy to explicit ``pads=[0, 0, 0, 0]`` (auto_pad removed),
which is the same operator wherever the SAME padding is zero; pools that really pad are left alone.

ncnn-int8 is not a target: ncnn's int8 tools (``ncnn2table`` for calibration, ``ncnn2int8``) are not in the ncnn
or pnnx wheels nor in any other package of the index or of Debian (docs/edge.md).
"""

from __future__ import annotations

import importlib.util
import math
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from ppdeploy.converters.base import ConvertOptions, ConvertResult
from ppdeploy.converters.edge_tools import onnx_image_model, run_tool
from ppdeploy.errors import ConversionError, one_line
from ppdeploy.registry import Target, register_target

if TYPE_CHECKING:
    import onnx

PARAM_FILE, WEIGHTS_FILE = "model.ncnn.param", "model.ncnn.bin"
PRECISIONS = {"ncnn": "fp32", "ncnn-fp16": "fp16"}
NO_INT8 = ("ncnn-int8 is not a target: ncnn's int8 tools (ncnn2table, ncnn2int8) ship in no package of the package "
           "index (the ncnn wheel is the runtime only, the pnnx wheel the converter only) nor of Debian")


def convert(src: Path, dst: Path, options: ConvertOptions) -> ConvertResult:
    """Write ``dst/model.ncnn.param`` and ``dst/model.ncnn.bin`` from the fp32 ONNX ``src``.

    Raises:
        ConversionError: the source is not an image classifier, pnnx fails, or its output lacks the input/output
            blobs.
    """
    import onnx

    precision = PRECISIONS[options.target]
    io = onnx_image_model(Path(src), options.input_size)
    model = onnx.load(str(src))
    set_static_batch(model)
    rewritten = explicit_zero_pads(model)
    with tempfile.TemporaryDirectory(prefix=".pnnx-", dir=dst) as work:
        staged = Path(work) / "model.onnx"
        onnx.save(model, str(staged))
        options.say(f"{options.target}: pnnx ({len(rewritten)} AveragePool node(s) given explicit zero pads) ...")
        shape = f"[1,3,{io.input_size},{io.input_size}]"
        run_tool([pnnx_binary(), staged.name, f"inputshape={shape}", f"fp16={int(precision == 'fp16')}"],
                 what=f"{options.target} from {src}", cwd=Path(work))
        for name in (PARAM_FILE, WEIGHTS_FILE):
            if not (Path(work) / name).is_file():
                raise ConversionError(one_line(f"{options.target} from {src}", f"pnnx wrote no {name}",
                                               "run with --verbose and report it with the model"))
            shutil.move(str(Path(work) / name), str(Path(dst) / name))
    blob_in, blob_out = param_blobs(Path(dst) / PARAM_FILE)
    return ConvertResult(PARAM_FILE, precision, info={
        "input_name": io.input_name, "output_name": io.output_name, "input_size": io.input_size,
        "output_classes": io.classes, "ncnn_input": blob_in, "ncnn_output": blob_out, "ncnn_weights": WEIGHTS_FILE,
        "weights_precision": precision, "inference_precision": "f32", "converter": "pnnx",
        "avgpool_explicit_pads": rewritten})


def pnnx_binary() -> str:
    """The pnnx executable inside the installed ``pnnx`` package, found without importing it (its package
    imports torch helpers)."""
    spec = importlib.util.find_spec("pnnx")
    binary = Path(spec.origin).parent / "pnnx" if spec is not None and spec.origin else None
    if binary is None or not binary.is_file():
        raise ConversionError(one_line("pnnx", "not installed", "pip install --no-deps pnnx (docs/edge.md)"))
    return str(binary)


def pnnx_check() -> tuple[bool, str]:
    """Whether the pnnx binary is there (the package alone, without torch, is enough)."""
    try:
        pnnx_binary()
    except ConversionError as exc:
        return False, str(exc)
    return True, ""


def set_static_batch(model: onnx.ModelProto, batch: int = 1) -> None:
    """Give the image input a static batch (pnnx traces one ``inputshape``; ncnn has no batch dimension)."""
    dim = model.graph.input[0].type.tensor_type.shape.dim[0]
    dim.ClearField("dim_param")
    dim.dim_value = batch


def explicit_zero_pads(model: onnx.ModelProto) -> list[str]:
    """Rewrite every ``AveragePool`` whose ``auto_pad`` SAME padding is zero to ``pads=[0, 0, 0, 0]``, in place.

    The input shapes come from ONNX shape inference, so the input must have static H/W (:func:`set_static_batch`
    makes the whole shape static). Returns the names of the rewritten nodes.
    """
    from onnx import helper, shape_inference

    inferred = shape_inference.infer_shapes(model).graph
    shapes = {value.name: [d.dim_value for d in value.type.tensor_type.shape.dim]
              for value in [*inferred.input, *inferred.value_info]}
    rewritten = []
    for node in model.graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type != "AveragePool" or attrs.get("auto_pad", b"NOTSET") not in (b"SAME_UPPER", b"SAME_LOWER"):
            continue
        spatial = shapes.get(node.input[0], [])[2:]
        kernel, strides = attrs["kernel_shape"], attrs.get("strides", [1] * len(attrs["kernel_shape"]))
        if not spatial or not all(spatial) or any(same_padding(size, k, s) for size, k, s in
                                                   zip(spatial, kernel, strides)):
            continue
        kept = [a for a in node.attribute if a.name not in ("auto_pad", "pads")]
        del node.attribute[:]
        node.attribute.extend([*kept, helper.make_attribute("pads", [0] * (2 * len(kernel)))])
        rewritten.append(node.name)
    return rewritten


def same_padding(size: int, kernel: int, stride: int) -> int:
    """The total padding ONNX ``auto_pad=SAME_*`` adds along one axis."""
    return max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)


def param_blobs(param: Path) -> tuple[str, str]:
    """The input blob (the ``Input`` layer's) and the output blob (the last layer's top) of an ncnn ``.param``."""
    lines = [line.split() for line in param.read_text().splitlines()[2:] if line.strip()]
    inputs = [fields[4] for fields in lines if fields[0] == "Input"]
    if len(inputs) != 1 or not lines:
        raise ConversionError(one_line(str(param), f"{len(inputs)} Input layers", "expected one image input"))
    last = lines[-1]
    bottoms = int(last[2])
    return inputs[0], last[4 + bottoms]


TARGETS = tuple(register_target(Target(
    name, "ncnn", precision, __name__, source="onnx", requires=("onnx", "ncnn"), extra="edge",
    tools=("onnx", "pnnx"), check=pnnx_check)) for name, precision in PRECISIONS.items())
