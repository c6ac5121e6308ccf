"""Passes and checks on ONNX models, shared by the ONNX converters (``paddle_to_onnx``, ``onnx_fp16``, ``onnx_int8``).

The raw paddle2onnx graph keeps every weight in a ``Constant`` node and every BatchNorm as its own node.
:func:`simplify` turns the constants into initializers, drops no-op ``Identity`` nodes and folds each BatchNorm
into the convolution before it, because ORT's quantizer and TensorRT's Q/DQ placement want ``Conv`` directly
followed by its consumer. Polygraphy/graphsurgeon constant folding is not used: on these graphs there is nothing
else to fold (the only non-constant subgraph is the dynamic-batch flatten, ``Shape → Slice → Concat``).
:func:`verify_onnx` is the structural check every ONNX converter runs before it reports success.

``onnx`` and ``onnxruntime`` are imported inside the functions that need them: importing this module stays cheap.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ppdeploy.errors import ConversionError, first_line, one_line

if TYPE_CHECKING:
    import onnx

MODEL_FILE = "model.onnx"  # the file every ONNX artifact holds
BATCH_DIM = "N"


@dataclass(frozen=True)
class OnnxCheck:
    """What ``verify_onnx`` saw: the I/O names and the input's height (= width)."""

    input_name: str
    output_name: str
    input_size: int


# --------------------------------------------------------------------------- graph clean-up


def simplify(model: onnx.ModelProto) -> tuple[onnx.ModelProto, dict[str, int]]:
    """Constants → initializers, drop Identity, fold BatchNorm into Conv. Returns (model, counts)."""
    model = constants_to_initializers(model)
    model = remove_identities(model)
    before = _count_ops(model, "BatchNormalization")
    model = fold_batchnorm(model)
    _drop_unused_initializers(model)  # paddle2onnx leaves the flatten's shape constants behind
    left = _count_ops(model, "BatchNormalization")
    return model, {"batchnorm_folded": before - left, "batchnorm_left": left}


def _count_ops(model: onnx.ModelProto, op_type: str) -> int:
    return Counter(node.op_type for node in model.graph.node)[op_type]


def constants_to_initializers(model: onnx.ModelProto) -> onnx.ModelProto:
    """Move every tensor-valued ``Constant`` node into the graph's initializers (in place; returns ``model``)."""
    keep = []
    for node in model.graph.node:
        attrs = {attr.name: attr for attr in node.attribute}
        if node.op_type == "Constant" and set(attrs) == {"value"} and node.domain in ("", "ai.onnx"):
            tensor = attrs["value"].t
            tensor.name = node.output[0]
            model.graph.initializer.append(tensor)
        else:
            keep.append(node)
    _replace_nodes(model, keep)
    return model


def remove_identities(model: onnx.ModelProto) -> onnx.ModelProto:
    """Drop ``Identity`` nodes whose output is not a graph output, rewiring their consumers (in place)."""
    graph_outputs = {out.name for out in model.graph.output}
    renames: dict[str, str] = {}
    keep = []
    for node in model.graph.node:
        if node.op_type == "Identity" and node.output[0] not in graph_outputs:
            renames[node.output[0]] = renames.get(node.input[0], node.input[0])
        else:
            keep.append(node)
    for node in keep:
        for i, name in enumerate(node.input):
            if name in renames:
                node.input[i] = renames[name]
    _replace_nodes(model, keep)
    return model


def fold_batchnorm(model: onnx.ModelProto) -> onnx.ModelProto:
    """Fold every inference-mode ``BatchNormalization`` that directly follows a ``Conv`` into that Conv.

    ``y = scale * (conv(x) - mean) / sqrt(var + eps) + bias`` becomes one Conv with rescaled weights and a new
    bias, computed in float64. Weights held in ``Constant`` nodes are moved to initializers first. A BatchNorm
    is left alone when its Conv output has other consumers or its parameters are computed. Works on a copy;
    returns the new model.
    """
    import onnx

    model = constants_to_initializers(onnx.ModelProto.FromString(model.SerializeToString()))
    graph = model.graph
    inits = {init.name: init for init in graph.initializer}
    producer = {out: node for node in graph.node for out in node.output}
    consumers = Counter(name for node in graph.node for name in node.input)
    graph_outputs = {out.name for out in graph.output}
    dropped: set[int] = set()
    for index, bn in enumerate(graph.node):
        conv = producer.get(bn.input[0]) if bn.op_type == "BatchNormalization" else None
        if conv is None or not _foldable(bn, conv, inits, consumers, graph_outputs):
            continue
        _fold_into_conv(graph, inits, bn, conv)
        dropped.add(index)
    if dropped:
        _replace_nodes(model, [node for index, node in enumerate(graph.node) if index not in dropped])
        _drop_unused_initializers(model)
    return model


def _foldable(bn: onnx.NodeProto, conv: onnx.NodeProto, inits: dict, consumers: Counter,
              graph_outputs: set[str]) -> bool:
    training = any(attr.name == "training_mode" and attr.i for attr in bn.attribute)
    params = list(bn.input[1:5]) + [name for name in conv.input[1:] if name]
    return (conv.op_type == "Conv" and len(bn.output) == 1 and not training
            and consumers[conv.output[0]] == 1 and conv.output[0] not in graph_outputs
            and all(name in inits for name in params))


def _fold_into_conv(graph: onnx.GraphProto, inits: dict, bn: onnx.NodeProto, conv: onnx.NodeProto) -> None:
    import numpy as np
    from onnx import numpy_helper

    scale, offset, mean, var = (numpy_helper.to_array(inits[name]).astype(np.float64) for name in bn.input[1:5])
    eps = next((attr.f for attr in bn.attribute if attr.name == "epsilon"), 1e-5)
    weight = numpy_helper.to_array(inits[conv.input[1]])
    has_bias = len(conv.input) > 2 and bool(conv.input[2])
    bias = (numpy_helper.to_array(inits[conv.input[2]]).astype(np.float64) if has_bias
            else np.zeros(weight.shape[0], np.float64))
    factor = scale / np.sqrt(var + eps)
    new_weight = weight.astype(np.float64) * factor.reshape(-1, *([1] * (weight.ndim - 1)))
    new_bias = (bias - mean) * factor + offset
    # New names: a weight shared by two Convs must not be rescaled for both.
    conv.input[1] = _add_initializer(graph, inits, numpy_helper.from_array(new_weight.astype(weight.dtype),
                                                                           conv.input[1] + "_bnfold"))
    bias_name = _add_initializer(graph, inits, numpy_helper.from_array(new_bias.astype(weight.dtype),
                                                                       bn.output[0] + "_bias"))
    if len(conv.input) > 2:
        conv.input[2] = bias_name
    else:
        conv.input.append(bias_name)
    conv.output[0] = bn.output[0]


def _add_initializer(graph: onnx.GraphProto, inits: dict, tensor: onnx.TensorProto) -> str:
    base, name, i = tensor.name, tensor.name, 0
    while name in inits:
        i += 1
        name = f"{base}_{i}"
    tensor.name = name
    graph.initializer.append(tensor)
    inits[name] = tensor
    return name


def _drop_unused_initializers(model: onnx.ModelProto) -> None:
    used = {name for node in model.graph.node for name in node.input} | {out.name for out in model.graph.output}
    kept = [init for init in model.graph.initializer if init.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)


def _replace_nodes(model: onnx.ModelProto, nodes: list) -> None:
    kept = list(nodes)
    del model.graph.node[:]
    model.graph.node.extend(kept)


def set_batch_dim(model: onnx.ModelProto, name: str = BATCH_DIM) -> None:
    """Make dim 0 of every graph input and output the symbolic ``name`` (in place)."""
    for value in list(model.graph.input) + list(model.graph.output):
        dims = value.type.tensor_type.shape.dim
        if len(dims):
            dims[0].dim_param = name  # also clears a fixed dim_value (oneof)


# --------------------------------------------------------------------------- verification


def verify_onnx(path: Path, *, input_size: int = 224) -> OnnxCheck:
    """Check an ONNX file with ``onnx.checker`` and read its single input and first output.

    Used by every ONNX converter before it reports success; running it is the pipeline's neutral test run
    (``ppdeploy.artifacts.test_run``), through the runtime, before the artifact is trusted. The input's own static
    H/W win over ``input_size``.

    Raises:
        ConversionError: the checker rejects the model, or it does not have one 4-D input.
    """
    import onnx

    path = Path(path)
    try:
        onnx.checker.check_model(str(path))
        graph = onnx.load(str(path), load_external_data=False).graph
    except Exception as exc:
        raise ConversionError(one_line(str(path), f"invalid ONNX model ({first_line(exc)})",
                                       "report it with the source model attached")) from exc
    initializers = {t.name for t in graph.initializer}
    inputs = [value for value in graph.input if value.name not in initializers]
    dims = [d.dim_value or None for d in inputs[0].type.tensor_type.shape.dim] if len(inputs) == 1 else []
    if len(dims) != 4 or not graph.output:
        raise ConversionError(one_line(str(path), f"expected one [N, 3, H, W] input, found {len(inputs)} input(s) "
                                       f"of rank {len(dims)}", "export the model with one image input"))
    return OnnxCheck(inputs[0].name, graph.output[0].name, dims[2] or input_size)
