"""ONNX files made by any tool: precision from Q/DQ and integer ops, else from the weights of Conv/Gemm/MatMul.

The ``ppdeploy.foreign`` interface for the ``onnx`` backend: ``inspect`` and ``manifest_fields``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ppdeploy.errors import ArtifactError, first_line, one_line
from ppdeploy.foreign import (
    ForeignArtifact,
    least_precise,
    note_input_type,
    one_input,
    refuse_inference_precision,
    unreadable,
)

# Ops that mean integer arithmetic (QLinear* are matched by prefix) and ops whose input 1 is a weight.
_INT8_OPS = frozenset({"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "ConvInteger",
                      "MatMulInteger", "DynamicQuantizeMatMul"})
_WEIGHTED_OPS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})
_PASS_THROUGH = frozenset({"Identity", "Reshape", "Transpose", "Unsqueeze", "Squeeze", "Flatten"})
_FLOATS = {"float": "fp32", "double": "fp32", "float16": "fp16", "bfloat16": "bf16"}


def inspect(model_file: Path) -> ForeignArtifact:
    """Precision from Q/DQ and integer ops, else from the weights of Conv/Gemm/MatMul (and the IO types)."""
    import onnx

    try:
        model = onnx.load(str(model_file), load_external_data=False)  # dtypes are in the protobuf either way
    except Exception as exc:  # protobuf DecodeError and onnx's own errors
        raise unreadable(model_file, "ONNX model", first_line(exc)) from exc
    graph = model.graph
    if not graph.node:
        raise unreadable(model_file, "ONNX model", "no graph nodes")
    initializers = {init.name for init in graph.initializer}
    inputs = [value for value in graph.input if value.name not in initializers]
    input_name = one_input(model_file, [value.name for value in inputs])
    nodes = list(_nodes(graph))
    op_types = Counter(node.op_type for node in nodes)
    quantize_ops = {op: n for op, n in op_types.items() if op in _INT8_OPS or op.startswith("QLinear")}
    weight_types = _weight_types(onnx, graph, nodes)
    io_types = {value.name: _type_name(onnx, value.type.tensor_type.elem_type) for value in [*inputs, *graph.output]}
    init_types = Counter(_type_name(onnx, init.data_type) for init in graph.initializer)
    # keep_io_types models have fp32 IO around fp16 weights: the weights decide, the IO can only lower it.
    weights = [name for name in weight_types if name in _FLOATS] or [n for n in init_types if n in _FLOATS]
    found = [_FLOATS[name] for name in [*weights, *io_types.values()] if name in _FLOATS]
    precision = "int8" if quantize_ops else least_precise(found) or "fp32"
    evidence = {"op_types": dict(op_types), "quantize_ops": quantize_ops, "weight_dtypes": dict(weight_types),
                "initializer_dtypes": dict(init_types), "io_dtypes": io_types, "opset": _opset(model),
                "producer": f"{model.producer_name} {model.producer_version}".strip(),
                "decided_by": _reason(precision, quantize_ops, weight_types, io_types)}
    note_input_type(evidence, input_name, io_types[input_name], "float")
    return ForeignArtifact(model_file, "onnx", precision, evidence, input_name, _shape(inputs[0]), model_file,
                           _external_files(graph, model_file))


def manifest_fields(info: ForeignArtifact, inference_precision: str | None) -> dict[str, Any]:
    """None: ONNX Runtime computes in the file's own types."""
    refuse_inference_precision(info, inference_precision)
    return {}


def _nodes(graph) -> Iterator:
    """Every node, including those in If/Loop/Scan bodies."""
    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.HasField("g"):
                yield from _nodes(attr.g)
            for subgraph in attr.graphs:
                yield from _nodes(subgraph)


def _type_name(onnx, elem_type: int) -> str:
    return onnx.TensorProto.DataType.Name(elem_type).lower() if elem_type else "unknown"


def _weight_types(onnx, graph, nodes: list) -> Counter:
    """The dtype of input 1 (the weight) of every Conv/Gemm/MatMul, traced through Cast/reshapes/dequantization."""
    known = {value.name: value.type.tensor_type.elem_type for value in [*graph.value_info, *graph.input]}
    known.update({init.name: init.data_type for init in graph.initializer})
    producers = {output: node for node in nodes for output in node.output}

    def dtype(name: str, depth: int = 0) -> int:
        if name in known or depth > 16:
            return known.get(name, 0)
        node = producers.get(name)
        if node is None:
            return 0
        if node.op_type == "Constant":
            value = next((a.t for a in node.attribute if a.name == "value" and a.HasField("t")), None)
            return value.data_type if value is not None else 0
        if node.op_type == "Cast":
            return next((a.i for a in node.attribute if a.name == "to"), 0)
        if node.op_type == "DequantizeLinear":  # its output has its scale's type
            return dtype(node.input[1], depth + 1)
        return dtype(node.input[0], depth + 1) if node.op_type in _PASS_THROUGH else 0

    return Counter(_type_name(onnx, dtype(node.input[1])) for node in nodes
                   if node.op_type in _WEIGHTED_OPS and len(node.input) > 1)


def _reason(precision: str, quantize_ops: dict, weight_types: Counter, io_types: dict) -> str:
    if quantize_ops:
        return f"integer arithmetic: {', '.join(f'{n} {op}' for op, n in sorted(quantize_ops.items()))}"
    if weight_types:
        text = f"{precision}: weights of Conv/Gemm/MatMul are " + ", ".join(f"{n} {t}" for t, n in
                                                                              weight_types.most_common())
    else:
        text = f"{precision}: no Conv/Gemm/MatMul; by the initializers' float types"
    io = sorted(set(io_types.values()))
    return text + f"; inputs/outputs are {', '.join(io)}"


def _shape(value) -> list[int | None]:
    dims = value.type.tensor_type.shape.dim
    return [dim.dim_value if dim.HasField("dim_value") and dim.dim_value > 0 else None for dim in dims]


def _opset(model) -> int | None:
    return next((int(op.version) for op in model.opset_import if op.domain in ("", "ai.onnx")), None)


def _external_files(graph, model_file: Path) -> tuple[Path, ...]:
    """External data files the initializers name, checked to exist inside the model's folder."""
    from onnx import TensorProto

    locations = {entry.value for init in graph.initializer if init.data_location == TensorProto.EXTERNAL
                 for entry in init.external_data if entry.key == "location"}
    folder = model_file.parent
    files = []
    for location in sorted(locations):
        data_file = (folder / location).resolve()
        if not data_file.is_relative_to(folder.resolve()):
            raise ArtifactError(one_line(str(model_file), f"external data '{location}' lies outside its folder",
                                         "keep the external data files beside the model"))
        if not data_file.is_file():
            raise ArtifactError(one_line(str(model_file), f"external data file '{location}' missing",
                                         f"put {location} beside {model_file.name}"))
        files.append(folder / location)
    return tuple(files)
