"""Model files made by any tool (paddle2onnx's CLI, PaddleX, trtexec, ...): what they really compute, and a folder
the runtimes can load.

``inspect_artifact`` reads the file itself with its own library (onnx, openvino, tensorrt) and decides the precision
from what the graph computes, never from a file name or a manifest: a model is judged by its least precise part,
so an fp32 graph with fp16 weights inside (onnxconverter-common's ``keep_io_types``) is fp16, and one Q/DQ pair
makes it int8. ``adopt_artifact`` then writes a ``manifest.json`` beside links to the file(s), so that the
existing runtimes, which only load artifact folders, run it unchanged.

OpenVINO decompresses f16-compressed weights and computes at the inference precision hint, so such an IR computes
in f32 unless asked otherwise. It is still reported as ``fp16`` (its weights carry fp16 rounding, and that is what
parity has to tolerate), and ``adopt_artifact`` asks the runtime for f32 compute unless told otherwise.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import uuid
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ppdeploy.artifacts import MANIFEST, artifact_model_file, load_manifest, tool_versions, write_manifest
from ppdeploy.errors import ArtifactError, BackendUnavailableError, InputSpecError, first_line, one_line
from ppdeploy.fsutil import staging_dir

BACKENDS = {".onnx": "onnx", ".xml": "openvino", ".engine": "tensorrt", ".plan": "tensorrt", ".trt": "tensorrt"}
ACCEPTED = ("give a .onnx file, an OpenVINO .xml (with its .bin beside it), a TensorRT .engine/.plan/.trt, "
            "or a folder holding exactly one of them")
PADDLE_SUFFIXES = (".pdmodel", ".pdiparams", ".json", ".pdiparams.info")
# Least precise first: a model is judged by its least precise part.
PRECISION_LADDER = ("int8", "bf16", "fp16", "fp32")
TRT_INFERENCE_PRECISION = {"fp32": "f32", "fp16": "f16", "bf16": "bf16", "int8": "int8"}

# ONNX: ops that mean integer arithmetic (QLinear* are matched by prefix) and ops whose input 1 is a weight.
_ONNX_INT8_OPS = frozenset({"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "ConvInteger",
                            "MatMulInteger", "DynamicQuantizeMatMul"})
_ONNX_WEIGHTED_OPS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})
_ONNX_PASS_THROUGH = frozenset({"Identity", "Reshape", "Transpose", "Unsqueeze", "Squeeze", "Flatten"})
_ONNX_FLOATS = {"float": "fp32", "double": "fp32", "float16": "fp16", "bfloat16": "bf16"}
# OpenVINO: ops whose input 1 is a weight, ops between a weight Constant and its consumer (decompression and
# dequantization subgraphs), and element types of integer-compressed weights.
_OV_WEIGHTED_OPS = frozenset({"Convolution", "GroupConvolution", "ConvolutionBackpropData",
                              "GroupConvolutionBackpropData", "MatMul"})
_OV_WEIGHT_PATH = frozenset({"Convert", "Multiply", "Subtract", "Reshape", "Transpose", "Unsqueeze", "Squeeze",
                             "FakeQuantize"})
_OV_INT_WEIGHTS = frozenset({"i8", "u8", "i4", "u4", "nf4"})
_OV_PRECISIONS = {"f32": "fp32", "f64": "fp32", "f16": "fp16", "bf16": "bf16", "i8": "int8", "u8": "int8",
                  "i4": "int8", "u4": "int8", "nf4": "int8"}


@dataclass(frozen=True)
class ForeignArtifact:
    """A model file as found on disk and what it really computes.

    Attributes:
        path: what the caller gave (file or folder), absolute.
        backend: ``onnx``, ``openvino`` or ``tensorrt``: the runtime that runs it.
        precision: ``fp32``, ``fp16``, ``bf16`` or ``int8``: the least precise arithmetic or weights inside.
        evidence: how the precision was decided (op type and dtype counts, a ``decided_by`` sentence, notes).
        input_name: the single input's name.
        input_shape: the input's dims, ``None`` where dynamic.
        model_file: the model file itself, absolute.
        data_files: files the model file needs beside it (an IR's ``.bin``, ONNX external data).
    """

    path: Path
    backend: str
    precision: str
    evidence: dict[str, Any]
    input_name: str
    input_shape: list[int | None]
    model_file: Path
    data_files: tuple[Path, ...] = field(default=())


def inspect_artifact(path: str | Path) -> ForeignArtifact:
    """Find the model file at ``path`` and decide what it computes, reading it with its own library.

    Args:
        path: a ``.onnx`` file, an OpenVINO ``.xml`` (``.bin`` beside it), a TensorRT ``.engine``/``.plan``/``.trt``,
            a folder holding exactly one of those, or a ppdeploy artifact folder (its manifest's precision is
            recorded as evidence but not trusted).

    Raises:
        ArtifactError: missing, empty, unknown or unreadable file, an IR without its ``.bin``, or a model that
            does not have exactly one input.
        BackendUnavailableError: a TensorRT engine where TensorRT or an NVIDIA GPU is missing.
    """
    given = Path(path).expanduser().absolute()
    model_file, found_by = _locate(given)
    inspect = {"onnx": _inspect_onnx, "openvino": _inspect_ir, "tensorrt": _inspect_engine}
    info = inspect[BACKENDS[model_file.suffix.lower()]](model_file)
    return replace(info, path=given, evidence={**info.evidence, **found_by})


def adopt_artifact(info: ForeignArtifact, workdir: Path, *, inference_precision: str | None = None) -> Path:
    """Make a folder under ``workdir`` that ``runtime_class(info.backend)`` loads: links to the file(s) and a manifest.

    The user's files are linked (copied where links are impossible), never changed. Adopting the same file again
    replaces its folder atomically.

    Args:
        info: what ``inspect_artifact`` found.
        workdir: where the folder goes (``<stem>-<backend>-<digest>``).
        inference_precision: OpenVINO only: the compute precision (``f32``, ``f16``, ``bf16``). Default ``f32``,
            which is what OpenVINO does with f16-compressed weights and what int8 IRs use for unquantized layers.

    Returns:
        The adopted folder.

    Raises:
        InputSpecError: ``inference_precision`` for a backend other than OpenVINO, or an unknown one.
        ArtifactError: the file changed or vanished since it was inspected.
    """
    extra = _backend_manifest(info, inference_precision)
    files = [info.model_file, *info.data_files]
    for source in files:
        if not source.is_file():
            raise ArtifactError(one_line(str(source), "gone since it was inspected", "give the file again"))
    out_dir = Path(workdir) / _adopted_name(info)
    with staging_dir(out_dir) as tmp:
        methods = {_link_or_copy(source, tmp / source.relative_to(info.model_file.parent)) for source in files}
        write_manifest(tmp, {**_manifest(info, tmp, methods), **extra})
    return out_dir


# --------------------------------------------------------------------------- finding the file


def _locate(given: Path) -> tuple[Path, dict[str, Any]]:
    """The model file ``given`` names, checked cheaply (exists, known kind, not empty, IR has its .bin)."""
    if given.name == MANIFEST and given.is_file():
        given = given.parent
    if given.is_dir():
        model_file, found_by = _model_in_folder(given)
    elif given.exists():
        model_file, found_by = given, {}
    else:
        raise ArtifactError(one_line(str(given), "no such file or folder", ACCEPTED))
    _check_file(model_file)
    return model_file, found_by


def _model_in_folder(folder: Path) -> tuple[Path, dict[str, Any]]:
    if (folder / MANIFEST).is_file():
        manifest = load_manifest(folder)
        return artifact_model_file(folder, manifest), {"manifest_precision": manifest.get("precision"),
                                                       "manifest_backend": manifest.get("backend")}
    found = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in BACKENDS)
    if len(found) != 1:
        problem = (f"holds {len(found)} model files ({', '.join(p.name for p in found)})" if found
                   else "holds no .onnx, .xml, .engine, .plan or .trt file")
        raise ArtifactError(one_line(str(folder), problem, "give the model file itself" if found else ACCEPTED))
    return found[0], {}


def _check_file(model_file: Path) -> None:
    suffix = model_file.suffix.lower()
    if suffix not in BACKENDS:
        paddle = model_file.name.endswith(PADDLE_SUFFIXES)
        problem = ("a Paddle model: that is the parity reference, not an artifact" if paddle
                   else f"unknown kind of model file ('{model_file.suffix or model_file.name}')")
        raise ArtifactError(one_line(str(model_file), problem, ACCEPTED))
    if not model_file.is_file():
        raise ArtifactError(one_line(str(model_file), "not a file", ACCEPTED))
    if model_file.stat().st_size == 0:
        raise ArtifactError(one_line(str(model_file), "empty file", "export or build it again"))
    weights = model_file.with_suffix(".bin")
    if suffix == ".xml" and not weights.is_file():
        raise ArtifactError(one_line(str(model_file), f"OpenVINO IR without its weights ({weights.name} missing)",
                                     f"put {weights.name} beside {model_file.name}"))


def least_precise(found: Iterable[str]) -> str | None:
    """The least precise of ``found`` (``int8`` < ``bf16`` < ``fp16`` < ``fp32``); ``None`` when none is known."""
    found = set(found)
    return next((precision for precision in PRECISION_LADDER if precision in found), None)


def _note_input_type(evidence: dict[str, Any], input_name: str, dtype: str, float32: str) -> None:
    """Say so when the input is not float32: the runtimes feed float32 batches and will refuse it."""
    if dtype != float32:
        evidence["input_note"] = (f"input '{input_name}' is {dtype}: ppdeploy's runtimes feed float32 batches, "
                                  "so running it fails with an input spec error")


def _unreadable(model_file: Path, kind: str, reason: str) -> ArtifactError:
    return ArtifactError(one_line(str(model_file), f"not a readable {kind} ({reason})",
                                  "the file is corrupt or truncated: export or build it again"))


def _one_input(model_file: Path, names: list[str]) -> str:
    if len(names) != 1:
        raise ArtifactError(one_line(str(model_file), f"has {len(names)} inputs ({', '.join(names)})",
                                     "expected one image input [N, 3, H, W]"))
    return names[0]


# --------------------------------------------------------------------------- ONNX


def _inspect_onnx(model_file: Path) -> ForeignArtifact:
    """Precision from Q/DQ and integer ops, else from the weights of Conv/Gemm/MatMul (and the IO types)."""
    import onnx

    try:
        model = onnx.load(str(model_file), load_external_data=False)  # dtypes are in the protobuf either way
    except Exception as exc:  # protobuf DecodeError and onnx's own errors
        raise _unreadable(model_file, "ONNX model", first_line(exc)) from exc
    graph = model.graph
    if not graph.node:
        raise _unreadable(model_file, "ONNX model", "no graph nodes")
    initializers = {init.name for init in graph.initializer}
    inputs = [value for value in graph.input if value.name not in initializers]
    input_name = _one_input(model_file, [value.name for value in inputs])
    nodes = list(_onnx_nodes(graph))
    op_types = Counter(node.op_type for node in nodes)
    quantize_ops = {op: n for op, n in op_types.items() if op in _ONNX_INT8_OPS or op.startswith("QLinear")}
    weight_types = _onnx_weight_types(onnx, graph, nodes)
    io_types = {value.name: _onnx_type_name(onnx, value.type.tensor_type.elem_type)
                for value in [*inputs, *graph.output]}
    init_types = Counter(_onnx_type_name(onnx, init.data_type) for init in graph.initializer)
    # keep_io_types models have fp32 IO around fp16 weights: the weights decide, the IO can only lower it.
    weights = [name for name in weight_types if name in _ONNX_FLOATS] or [n for n in init_types if n in _ONNX_FLOATS]
    found = [_ONNX_FLOATS[name] for name in [*weights, *io_types.values()] if name in _ONNX_FLOATS]
    precision = "int8" if quantize_ops else least_precise(found) or "fp32"
    evidence = {"op_types": dict(op_types), "quantize_ops": quantize_ops, "weight_dtypes": dict(weight_types),
                "initializer_dtypes": dict(init_types), "io_dtypes": io_types, "opset": _onnx_opset(model),
                "producer": f"{model.producer_name} {model.producer_version}".strip(),
                "decided_by": _onnx_reason(precision, quantize_ops, weight_types, io_types)}
    _note_input_type(evidence, input_name, io_types[input_name], "float")
    return ForeignArtifact(model_file, "onnx", precision, evidence, input_name, _onnx_shape(inputs[0]), model_file,
                           _onnx_external_files(graph, model_file))


def _onnx_nodes(graph) -> Iterator:
    """Every node, including those in If/Loop/Scan bodies."""
    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.HasField("g"):
                yield from _onnx_nodes(attr.g)
            for subgraph in attr.graphs:
                yield from _onnx_nodes(subgraph)


def _onnx_type_name(onnx, elem_type: int) -> str:
    return onnx.TensorProto.DataType.Name(elem_type).lower() if elem_type else "unknown"


def _onnx_weight_types(onnx, graph, nodes: list) -> Counter:
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
        return dtype(node.input[0], depth + 1) if node.op_type in _ONNX_PASS_THROUGH else 0

    return Counter(_onnx_type_name(onnx, dtype(node.input[1])) for node in nodes
                   if node.op_type in _ONNX_WEIGHTED_OPS and len(node.input) > 1)


def _onnx_reason(precision: str, quantize_ops: dict, weight_types: Counter, io_types: dict) -> str:
    if quantize_ops:
        return f"integer arithmetic: {', '.join(f'{n} {op}' for op, n in sorted(quantize_ops.items()))}"
    if weight_types:
        text = f"{precision}: weights of Conv/Gemm/MatMul are " + ", ".join(f"{n} {t}" for t, n in
                                                                              weight_types.most_common())
    else:
        text = f"{precision}: no Conv/Gemm/MatMul; by the initializers' float types"
    io = sorted(set(io_types.values()))
    return text + f"; inputs/outputs are {', '.join(io)}"


def _onnx_shape(value) -> list[int | None]:
    dims = value.type.tensor_type.shape.dim
    return [dim.dim_value if dim.HasField("dim_value") and dim.dim_value > 0 else None for dim in dims]


def _onnx_opset(model) -> int | None:
    return next((int(op.version) for op in model.opset_import if op.domain in ("", "ai.onnx")), None)


def _onnx_external_files(graph, model_file: Path) -> tuple[Path, ...]:
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


# --------------------------------------------------------------------------- OpenVINO IR


def _inspect_ir(xml: Path) -> ForeignArtifact:
    """Precision from FakeQuantize ops and integer-compressed weights, else from the weight Constants' types."""
    import openvino as ov

    from ppdeploy.errors import OPENVINO_LOCATION_LINES

    try:
        model = ov.Core().read_model(str(xml), str(xml.with_suffix(".bin")))
    except Exception as exc:  # OpenVINO raises RuntimeError subclasses with multi-line C++ text
        raise _unreadable(xml, "OpenVINO IR", first_line(exc, skip=OPENVINO_LOCATION_LINES)) from exc
    ports = list(model.inputs)
    input_name = _one_input(xml, [port.get_any_name() for port in ports])
    ops = list(model.get_ordered_ops())
    op_types = Counter(op.get_type_name() for op in ops)
    weighted = [op for op in ops if op.get_type_name() in _OV_WEIGHTED_OPS]
    weight_types = Counter(_ov_weight_type(op) for op in weighted)
    compute_types = Counter(_ov_type(op) for op in weighted)
    int_weights = sum(op.get_type_name() == "Convert" and _ov_type(_ov_source(op)) in _OV_INT_WEIGHTS for op in ops)
    found = [_OV_PRECISIONS.get(name) for name in [*weight_types, *compute_types] if name in _OV_PRECISIONS]
    precision = "int8" if op_types["FakeQuantize"] or int_weights else least_precise(found) or "fp32"
    evidence = {"op_types": dict(op_types), "fake_quantize": op_types["FakeQuantize"],
                "int_weight_converts": int_weights, "weight_types": dict(weight_types),
                "compute_output_types": dict(compute_types),
                "decided_by": _ir_reason(precision, op_types["FakeQuantize"], int_weights, weight_types)}
    _note_input_type(evidence, input_name, ports[0].get_element_type().get_type_name(), "f32")
    if precision == "fp16" and set(compute_types) <= {"f32"}:
        evidence["note"] = ("weights are stored as f16 (compressed); OpenVINO decompresses them and computes at the "
                            "inference precision hint, f32 unless asked otherwise: outputs carry fp16 weight "
                            "rounding, not fp16 arithmetic")
    shape = [dim.get_length() if dim.is_static else None for dim in ports[0].get_partial_shape()]
    return ForeignArtifact(xml, "openvino", precision, evidence, input_name, shape, xml, (xml.with_suffix(".bin"),))


def _ov_type(node) -> str:
    return node.get_output_element_type(0).get_type_name()


def _ov_source(node, index: int = 0):
    return node.input_value(index).get_node()


def _ov_weight_type(op) -> str:
    """Element type of the Constant behind input 1, through decompression/dequantization; else ``activation``."""
    node = _ov_source(op, 1)
    for _ in range(16):
        if node.get_type_name() == "Constant":
            return _ov_type(node)
        if node.get_type_name() not in _OV_WEIGHT_PATH:
            break
        node = _ov_source(node)
    return "activation"


def _ir_reason(precision: str, fake_quantize: int, int_weights: int, weight_types: Counter) -> str:
    if fake_quantize or int_weights:
        return f"int8: {fake_quantize} FakeQuantize ops, {int_weights} integer-compressed weights"
    types = ", ".join(f"{n} {t}" for t, n in weight_types.most_common()) or "none"
    return f"{precision}: weight Constants of Convolution/MatMul are {types}"


# --------------------------------------------------------------------------- TensorRT engine


def _inspect_engine(engine_file: Path) -> ForeignArtifact:
    """Precision from the engine inspector's per-layer formats (``--profilingVerbosity=detailed``), else IO types."""
    from ppdeploy.gpu import import_tensorrt
    from ppdeploy.registry import runtime_class

    ok, reason = runtime_class("tensorrt").availability()
    if not ok:
        raise BackendUnavailableError(one_line(str(engine_file), "a TensorRT engine can only be inspected where "
                                               "TensorRT runs: it needs an NVIDIA GPU and the gpu extra", reason))
    trt = import_tensorrt()
    runtime, engine = _deserialize(trt, engine_file)  # noqa: F841  (the engine must not outlive its runtime)
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    inputs = [name for name in names if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT]
    input_name = _one_input(engine_file, inputs)
    io_types = {name: str(engine.get_tensor_dtype(name)).split(".")[-1].lower() for name in names}
    layers, inspector_error = _engine_layers(trt, engine, input_name)
    precision, evidence = _engine_precision(layers, io_types)
    evidence.update({"io_types": io_types, "tensorrt": trt.__version__})
    _note_input_type(evidence, input_name, io_types[input_name], "float")
    if inspector_error:
        evidence["inspector_error"] = inspector_error
    shape = [None if dim < 0 else int(dim) for dim in engine.get_tensor_shape(input_name)]
    return ForeignArtifact(engine_file, "tensorrt", precision, evidence, input_name, shape, engine_file)


def _deserialize(trt, engine_file: Path):
    from ppdeploy.gpu import NO_GPU, NO_GPU_FIX, trt_logger

    try:
        runtime = trt.Runtime(trt_logger(trt))
    except TypeError as exc:  # "factory function returned nullptr": CUDA could not be initialised
        raise BackendUnavailableError(one_line(NO_GPU, "TensorRT could not initialise CUDA", NO_GPU_FIX)) from exc
    engine = runtime.deserialize_cuda_engine(engine_file.read_bytes())
    if engine is None:
        raise ArtifactError(one_line(str(engine_file), f"TensorRT {trt.__version__} cannot deserialize it (corrupt, "
                                     "or built by another TensorRT version or for another GPU)",
                                     "rebuild it here with this TensorRT, e.g. trtexec --onnx=... --saveEngine=..."))
    return runtime, engine


def _engine_layers(trt, engine, input_name: str) -> tuple[list, str]:
    """The inspector's layer list; formats resolve only with input shapes set, so a context at the opt shape."""
    import json

    try:
        context = engine.create_execution_context()
        if any(dim < 0 for dim in engine.get_tensor_shape(input_name)):
            _, opt_shape, _ = engine.get_tensor_profile_shape(input_name, 0)
            context.set_input_shape(input_name, tuple(opt_shape))
        inspector = engine.create_engine_inspector()
        inspector.execution_context = context
        layers = json.loads(inspector.get_engine_information(trt.LayerInformationFormat.JSON)).get("Layers", [])
    except Exception as exc:  # the inspector is best effort: IO types still decide
        return [], first_line(exc)
    return layers, ""


def _trt_format_precision(text: str) -> str | None:
    """``Row major linear FP32``, ``Half``, ``... row major Int8 format`` → ``fp32``, ``fp16``, ``int8``."""
    lowered = text.lower()
    if "uint8" in lowered:  # an image input, not quantized arithmetic
        return None
    for precision, marks in (("int8", ("int8", "fp8", "int4", "fp4")), ("bf16", ("bf16", "bfloat")),
                             ("fp16", ("fp16", "half")), ("fp32", ("fp32", "float"))):
        if any(mark in lowered for mark in marks):
            return precision
    return None


def _engine_precision(layers: list, io_types: dict[str, str]) -> tuple[str, dict[str, Any]]:
    """The least precise layer format; TF32 tactics count as fp16 (the same 10-bit mantissa)."""
    formats: Counter = Counter()
    tf32 = 0
    for layer in (layer for layer in layers if isinstance(layer, dict)):
        for tensor in [*layer.get("Inputs", []), *layer.get("Outputs", [])]:
            formats[_trt_format_precision(str(tensor.get("Format/Datatype", ""))) or "other"] += 1
        tf32 += "tf32" in str(layer.get("TacticName", "")).lower()
    names = [layer if isinstance(layer, str) else str(layer.get("Name", "")) for layer in layers]
    qdq_names = sum("quantize" in name.lower() for name in names)
    io_found = [_trt_format_precision(dtype) for dtype in io_types.values()]
    evidence: dict[str, Any] = {"layers": len(layers), "layer_formats": dict(formats), "tf32_tactics": tf32,
                                "quantize_layer_names": qdq_names}
    detailed = any(key != "other" for key in formats)
    if detailed:
        precision = least_precise([*formats, *io_found]) or "fp32"
        evidence["decided_by"] = "per-layer tensor formats from the engine inspector"
        evidence["inference_precision"] = TRT_INFERENCE_PRECISION[precision]
        if precision == "fp32" and tf32:
            precision = "fp16"
            evidence["inference_precision"] = "tf32"
            evidence["note"] = f"{tf32} layers run TF32 tactics: fp16's 10-bit mantissa, so judged as fp16"
    else:
        precision = "int8" if qdq_names else least_precise(io_found) or "fp32"
        evidence["inference_precision"] = TRT_INFERENCE_PRECISION[precision]
        evidence["decided_by"] = "IO tensor types and layer names only"
        evidence["note"] = ("the engine records no layer formats (built without --profilingVerbosity=detailed): an "
                            "engine built with --fp16 or TF32 looks fp32 here and will be judged strictly")
    evidence["tf32"] = bool(tf32) if detailed else "unknown"
    return precision, evidence


# --------------------------------------------------------------------------- adoption


def _adopted_name(info: ForeignArtifact) -> str:
    """``<stem>-<backend>-<digest>``: one folder per source file (path, size and mtime; no slow content hash)."""
    stat = info.model_file.stat()
    key = f"{info.model_file.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"
    return f"{info.model_file.stem}-{info.backend}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"


def _link_or_copy(source: Path, target: Path) -> str:
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.symlink(source.resolve(), target)
        return "symlink"
    except OSError:  # filesystems without symlinks (some Windows and network mounts)
        shutil.copy2(source, target)
        return "copy"


def _manifest(info: ForeignArtifact, folder: Path, methods: set[str]) -> dict[str, Any]:
    """The keys every runtime reads, plus where the file came from and why it got its precision."""
    manifest = {
        "foreign": True,
        "source_path": str(info.path),
        "source_model_file": str(info.model_file),
        "backend": info.backend,
        "precision": info.precision,
        "precision_evidence": info.evidence,
        "model_file": info.model_file.name,
        "input_name": info.input_name,
        "input_shape": info.input_shape,
        "files": {str(p.relative_to(folder)): p.stat().st_size for p in sorted(folder.rglob("*")) if p.is_file()},
        "linked": "+".join(sorted(methods)),
        "tools": tool_versions(),
        "artifact_id": uuid.uuid4().hex,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    height, width = (info.input_shape + [None, None, None, None])[2:4]
    if height and height == width:
        manifest["input_size"] = height
    return manifest


def _backend_manifest(info: ForeignArtifact, inference_precision: str | None) -> dict[str, Any]:
    """Backend-specific keys: OpenVINO's compute precision, TensorRT's GPU and compute precision."""
    if inference_precision is not None and info.backend != "openvino":
        raise InputSpecError(one_line(f"inference precision '{inference_precision}'",
                                      f"only an OpenVINO IR takes one, this is {info.backend}",
                                      "leave it out: ONNX Runtime and TensorRT compute in the file's own types"))
    if info.backend == "openvino":
        from ppdeploy.runtimes.ov import normalize_precision

        return {"inference_precision": normalize_precision(inference_precision or "f32"),
                "weights_precision": info.precision}
    if info.backend == "tensorrt":
        from ppdeploy.gpu import current_gpu

        return {"gpu": current_gpu(), "tf32": info.evidence.get("tf32", "unknown"),
                "inference_precision": info.evidence.get("inference_precision",
                                                         TRT_INFERENCE_PRECISION[info.precision])}
    return {}
