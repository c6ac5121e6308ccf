"""OpenVINO IRs made by any tool: precision from FakeQuantize ops and integer-compressed weights, else from the
weight Constants' types.

OpenVINO decompresses f16-compressed weights and computes at the inference precision hint, so such an IR computes
in f32 unless asked otherwise. It is still reported as ``fp16`` (its weights carry fp16 rounding, and that is what
parity has to tolerate), and ``manifest_fields`` asks the runtime for f32 compute unless told otherwise.

The ``ppdeploy.foreign`` interface for the ``openvino`` backend: ``inspect`` and ``manifest_fields``.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from ppdeploy.errors import OPENVINO_LOCATION_LINES, ArtifactError, first_line, one_line
from ppdeploy.foreign import ForeignArtifact, least_precise, note_input_type, one_input, unreadable

# Ops whose input 1 is a weight, ops between a weight Constant and its consumer (decompression and dequantization
# subgraphs), and element types of integer-compressed weights.
_WEIGHTED_OPS = frozenset({"Convolution", "GroupConvolution", "ConvolutionBackpropData",
                          "GroupConvolutionBackpropData", "MatMul"})
_WEIGHT_PATH = frozenset({"Convert", "Multiply", "Subtract", "Reshape", "Transpose", "Unsqueeze", "Squeeze",
                         "FakeQuantize"})
_INT_WEIGHTS = frozenset({"i8", "u8", "i4", "u4", "nf4"})
_PRECISIONS = {"f32": "fp32", "f64": "fp32", "f16": "fp16", "bf16": "bf16", "i8": "int8", "u8": "int8",
              "i4": "int8", "u4": "int8", "nf4": "int8"}


def inspect(xml: Path) -> ForeignArtifact:
    """Precision from FakeQuantize ops and integer-compressed weights, else from the weight Constants' types."""
    weights = xml.with_suffix(".bin")
    if not weights.is_file():  # checked before OpenVINO reads it: its own message names neither file
        raise ArtifactError(one_line(str(xml), f"OpenVINO IR without its weights ({weights.name} missing)",
                                     f"put {weights.name} beside {xml.name}"))
    import openvino as ov

    try:
        model = ov.Core().read_model(str(xml), str(weights))
    except Exception as exc:  # OpenVINO raises RuntimeError subclasses with multi-line C++ text
        raise unreadable(xml, "OpenVINO IR", first_line(exc, skip=OPENVINO_LOCATION_LINES)) from exc
    ports = list(model.inputs)
    input_name = one_input(xml, [port.get_any_name() for port in ports])
    ops = list(model.get_ordered_ops())
    op_types = Counter(op.get_type_name() for op in ops)
    weighted = [op for op in ops if op.get_type_name() in _WEIGHTED_OPS]
    weight_types = Counter(_weight_type(op) for op in weighted)
    compute_types = Counter(_type(op) for op in weighted)
    int_weights = sum(op.get_type_name() == "Convert" and _type(_source(op)) in _INT_WEIGHTS for op in ops)
    found = [_PRECISIONS.get(name) for name in [*weight_types, *compute_types] if name in _PRECISIONS]
    precision = "int8" if op_types["FakeQuantize"] or int_weights else least_precise(found) or "fp32"
    evidence = {"op_types": dict(op_types), "fake_quantize": op_types["FakeQuantize"],
                "int_weight_converts": int_weights, "weight_types": dict(weight_types),
                "compute_output_types": dict(compute_types),
                "decided_by": _reason(precision, op_types["FakeQuantize"], int_weights, weight_types)}
    note_input_type(evidence, input_name, ports[0].get_element_type().get_type_name(), "f32")
    if precision == "fp16" and set(compute_types) <= {"f32"}:
        evidence["note"] = ("weights are stored as f16 (compressed); OpenVINO decompresses them and computes at the "
                            "inference precision hint, f32 unless asked otherwise: outputs carry fp16 weight "
                            "rounding, not fp16 arithmetic")
    shape = [dim.get_length() if dim.is_static else None for dim in ports[0].get_partial_shape()]
    return ForeignArtifact(xml, "openvino", precision, evidence, input_name, shape, xml, (weights,))


def manifest_fields(info: ForeignArtifact, inference_precision: str | None) -> dict[str, Any]:
    """The compute precision (default ``f32``, also what int8 IRs use for unquantized layers) and the weights'."""
    from ppdeploy.runtimes.ov import normalize_precision

    return {"inference_precision": normalize_precision(inference_precision or "f32"),
            "weights_precision": info.precision}


def _type(node) -> str:
    return node.get_output_element_type(0).get_type_name()


def _source(node, index: int = 0):
    return node.input_value(index).get_node()


def _weight_type(op) -> str:
    """Element type of the Constant behind input 1, through decompression/dequantization; else ``activation``."""
    node = _source(op, 1)
    for _ in range(16):
        if node.get_type_name() == "Constant":
            return _type(node)
        if node.get_type_name() not in _WEIGHT_PATH:
            break
        node = _source(node)
    return "activation"


def _reason(precision: str, fake_quantize: int, int_weights: int, weight_types: Counter) -> str:
    if fake_quantize or int_weights:
        return f"int8: {fake_quantize} FakeQuantize ops, {int_weights} integer-compressed weights"
    types = ", ".join(f"{n} {t}" for t, n in weight_types.most_common()) or "none"
    return f"{precision}: weight Constants of Convolution/MatMul are {types}"
