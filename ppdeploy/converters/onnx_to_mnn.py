"""ONNX fp32 → MNN ``model.mnn`` with MNN's converter: ``mnn`` (fp32) and ``mnn-fp16`` (fp16 weights).

The MNN wheel's converter is a C++ function in its ``_tools`` extension module, called here directly in a child
Python. Its console scripts (``mnnconvert``, ``mnnquant``) are not used: after converting they import
``MNN.tools.utils.log``, which pip-installs ``aliyun-log-python-sdk`` at run time when it is missing and posts the
conversion's details and the machine id to an Alibaba Cloud log service.

fp16. ``mnnconvert --fp16`` *truncates* weights and biases to fp16 (rounds toward zero) instead of rounding them to
the nearest fp16. Measured on seeded ResNet18_vd, 120 judge photos, against ONNX Runtime fp32: MNN fp16 max TV
0.01182; the same ONNX with its Conv/MatMul weights truncated to fp16 in numpy, run by ONNX Runtime, 0.01182 (the
two differ by 4e-5); rounded to nearest instead, 0.0036. So the weights of the ONNX copy handed to the converter
are rounded to the nearest fp16 value first (:func:`round_weights_to_fp16`): truncating a value that fp16
represents exactly changes nothing, and the artifact holds round-to-nearest fp16 weights.

mnn-int8 is not a target (docs/edge.md): ``mnnquant`` (MNN 3.0-3.6, KL calibration) quantizes the classifier and
the Softmax too, and even with a float head its per-tensor int8 activations agree with fp32 on top-1 for about 63 %
of unseen photos; MNN has no accuracy-controlled mode to keep sensitive layers in float.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from ppdeploy.converters.base import ConvertOptions, ConvertResult
from ppdeploy.converters.edge_tools import onnx_image_model, python_tool
from ppdeploy.errors import ConversionError, one_line
from ppdeploy.registry import Target, register_target

if TYPE_CHECKING:
    import onnx

MODEL_FILE = "model.mnn"
PRECISIONS = {"mnn": "fp32", "mnn-fp16": "fp16"}
CONVERT_CODE = "import sys, _tools; _tools.mnnconvert(['mnnconvert', *sys.argv[1:]])"
WEIGHT_OPS = ("Conv", "ConvTranspose", "MatMul", "Gemm")  # the ops whose weights --fp16 stores in half


def convert(src: Path, dst: Path, options: ConvertOptions) -> ConvertResult:
    """Write ``dst/model.mnn`` from the fp32 ONNX ``src`` (fp16 weights for ``mnn-fp16``).

    Raises:
        ConversionError: the source is not an image classifier, or MNN's converter fails or writes nothing.
    """
    import onnx

    precision = PRECISIONS[options.target]
    io = onnx_image_model(Path(src), options.input_size)
    target = Path(dst) / MODEL_FILE
    info = {"input_name": io.input_name, "output_name": io.output_name, "input_size": io.input_size,
            "output_classes": io.classes, "weights_precision": precision, "inference_precision": "f32",
            "converter": "MNN _tools.mnnconvert"}
    with tempfile.TemporaryDirectory(prefix=".mnn-", dir=dst) as work:
        source, flags = Path(src), []
        if precision == "fp16":
            model = onnx.load(str(src))
            info["fp16_rounded_tensors"] = round_weights_to_fp16(model)
            source, flags = Path(work) / "model.onnx", ["--fp16"]
            onnx.save(model, str(source))
        options.say(f"{options.target}: MNN converter ({precision} weights) ...")
        python_tool(CONVERT_CODE, "-f", "ONNX", "--modelFile", str(source), "--MNNModel", str(target),
                    "--bizCode", "ppdeploy", *flags, what=f"{options.target} from {src}", cwd=Path(work))
    if not target.is_file() or target.stat().st_size == 0:
        raise ConversionError(one_line(f"{options.target} from {src}", "MNN wrote no model",
                                       "run with --verbose and report it with the model"))
    return ConvertResult(MODEL_FILE, precision, info=info)


def round_weights_to_fp16(model: onnx.ModelProto) -> int:
    """Round the float32 weights and biases of every Conv/MatMul/Gemm to the nearest fp16 value, in place (they
    stay float32 tensors). Returns how many tensors were rounded."""
    import numpy as np
    from onnx import TensorProto, numpy_helper

    names = {name for node in model.graph.node if node.op_type in WEIGHT_OPS for name in node.input[1:]}
    rounded = 0
    for init in model.graph.initializer:
        if init.name in names and init.data_type == TensorProto.FLOAT:
            values = numpy_helper.to_array(init)
            with np.errstate(over="ignore"):  # beyond fp16's range: clipped by the converter either way
                nearest = values.astype(np.float16).astype(np.float32)
            nearest = np.where(np.isfinite(nearest), nearest, values)
            init.CopyFrom(numpy_helper.from_array(nearest, init.name))
            rounded += 1
    return rounded


TARGETS = tuple(register_target(Target(
    name, "mnn", precision, __name__, source="onnx", requires=("onnx", "MNN"), extra="edge", tools=("onnx", "mnn")))
    for name, precision in PRECISIONS.items())
