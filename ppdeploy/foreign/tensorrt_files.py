"""TensorRT engines made by any tool (trtexec, ...): precision from the engine inspector's per-layer formats.

An engine can only be read where TensorRT runs (an NVIDIA GPU and the gpu extra), and only by the TensorRT version
and GPU it was built for.

The ``ppdeploy.foreign`` interface for the ``tensorrt`` backend: ``inspect`` and ``manifest_fields``.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from ppdeploy.errors import ArtifactError, BackendUnavailableError, first_line, one_line
from ppdeploy.foreign import ForeignArtifact, least_precise, note_input_type, one_input, refuse_inference_precision

# Reported compute precision, in the vocabulary the OpenVINO backend uses (f32 means TF32 off).
_INFERENCE_PRECISION = {"fp32": "f32", "fp16": "f16", "bf16": "bf16", "int8": "int8"}


def inspect(engine_file: Path) -> ForeignArtifact:
    """Precision from the engine inspector's per-layer formats (``--profilingVerbosity=detailed``), else IO types."""
    from ppdeploy.gpu import import_tensorrt
    from ppdeploy.registry import runtime_class

    ok, reason = runtime_class("tensorrt").availability()
    if not ok:
        raise BackendUnavailableError(one_line(str(engine_file), "a TensorRT engine can only be inspected where "
                                               "TensorRT runs: it needs an NVIDIA GPU and the gpu extra", reason))
    trt = import_tensorrt()
    _runtime, engine = _deserialize(trt, engine_file)  # held: the engine must not outlive its runtime
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    inputs = [name for name in names if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT]
    input_name = one_input(engine_file, inputs)
    io_types = {name: str(engine.get_tensor_dtype(name)).split(".")[-1].lower() for name in names}
    layers, inspector_error = _layers(trt, engine, input_name)
    precision, evidence = engine_precision(layers, io_types)
    evidence.update({"io_types": io_types, "tensorrt": trt.__version__})
    note_input_type(evidence, input_name, io_types[input_name], "float")
    if inspector_error:
        evidence["inspector_error"] = inspector_error
    shape = [None if dim < 0 else int(dim) for dim in engine.get_tensor_shape(input_name)]
    return ForeignArtifact(engine_file, "tensorrt", precision, evidence, input_name, shape, engine_file)


def manifest_fields(info: ForeignArtifact, inference_precision: str | None) -> dict[str, Any]:
    """The GPU it runs on, TF32 and the compute precision found (TensorRT computes in the engine's own types)."""
    from ppdeploy.gpu import current_gpu

    refuse_inference_precision(info, inference_precision)
    return {"gpu": current_gpu(), "tf32": info.evidence.get("tf32", "unknown"),
            "inference_precision": info.evidence.get("inference_precision", _INFERENCE_PRECISION[info.precision])}


def engine_precision(layers: list, io_types: dict[str, str]) -> tuple[str, dict[str, Any]]:
    """The least precise layer format of the inspector's ``layers``, else of ``io_types``, and the evidence.

    TF32 tactics count as fp16 (the same 10-bit mantissa).
    """
    formats: Counter = Counter()
    tf32 = 0
    for layer in (layer for layer in layers if isinstance(layer, dict)):
        for tensor in [*layer.get("Inputs", []), *layer.get("Outputs", [])]:
            formats[_format_precision(str(tensor.get("Format/Datatype", ""))) or "other"] += 1
        tf32 += "tf32" in str(layer.get("TacticName", "")).lower()
    names = [layer if isinstance(layer, str) else str(layer.get("Name", "")) for layer in layers]
    qdq_names = sum("quantize" in name.lower() for name in names)
    io_found = [_format_precision(dtype) for dtype in io_types.values()]
    evidence: dict[str, Any] = {"layers": len(layers), "layer_formats": dict(formats), "tf32_tactics": tf32,
                                "quantize_layer_names": qdq_names}
    detailed = any(key != "other" for key in formats)
    if detailed:
        precision = least_precise([*formats, *io_found]) or "fp32"
        evidence["decided_by"] = "per-layer tensor formats from the engine inspector"
        evidence["inference_precision"] = _INFERENCE_PRECISION[precision]
        if precision == "fp32" and tf32:
            precision = "fp16"
            evidence["inference_precision"] = "tf32"
            evidence["note"] = f"{tf32} layers run TF32 tactics: fp16's 10-bit mantissa, so judged as fp16"
    else:
        precision = "int8" if qdq_names else least_precise(io_found) or "fp32"
        evidence["inference_precision"] = _INFERENCE_PRECISION[precision]
        evidence["decided_by"] = "IO tensor types and layer names only"
        evidence["note"] = ("the engine records no layer formats (built without --profilingVerbosity=detailed): an "
                            "engine built with --fp16 or TF32 looks fp32 here and will be judged strictly")
    evidence["tf32"] = bool(tf32) if detailed else "unknown"
    return precision, evidence


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


def _layers(trt, engine, input_name: str) -> tuple[list, str]:
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


def _format_precision(text: str) -> str | None:
    """``Row major linear FP32``, ``Half``, ``... row major Int8 format`` → ``fp32``, ``fp16``, ``int8``."""
    lowered = text.lower()
    if "uint8" in lowered:  # an image input, not quantized arithmetic
        return None
    for precision, marks in (("int8", ("int8", "fp8", "int4", "fp4")), ("bf16", ("bf16", "bfloat")),
                             ("fp16", ("fp16", "half")), ("fp32", ("fp32", "float"))):
        if any(mark in lowered for mark in marks):
            return precision
    return None
