"""ONNX → TensorRT engine (``trt-fp32`` from ``onnx``, ``trt-fp16`` from ``onnx-fp16``, ``trt-int8`` from
``onnx-int8-qdq``, the symmetric Q/DQ form), for the TensorRT 10.x and 11.x Python API.

Precision comes from the ONNX graph, not from builder flags: the network is strongly typed (TensorRT 11
always is; on 10 we ask for it), so an fp16 ONNX builds fp16 layers and a Q/DQ ONNX builds int8 ones. That is
TensorRT 11's only route and 10's recommended one (BACKEND_FACTS §1). TF32 is on by default in TensorRT; it is
cleared for fp32 so the engine keeps fp32 parity with Paddle.

Written without a GPU to run it on; tests/converters/test_tensorrt.py runs it where one exists.
"""

from __future__ import annotations

import re
from pathlib import Path

from ppdeploy.converters.base import ConvertOptions, ConvertResult
from ppdeploy.errors import BackendUnavailableError, ConversionError, one_line
from ppdeploy.fsutil import atomic_write_bytes
from ppdeploy.gpu import NO_GPU, NO_GPU_FIX, current_gpu, gpu_check, import_tensorrt, trt_logger
from ppdeploy.registry import Target, register_target

ENGINE_FILE = "model.engine"
TIMING_CACHE = "timing.cache"
PRECISIONS = {"trt-fp32": "fp32", "trt-fp16": "fp16", "trt-int8": "int8"}
# Reported compute precision, in the vocabulary the OpenVINO backend uses (f32 means TF32 off).
INFERENCE_PRECISION = {"fp32": "f32", "fp16": "f16", "int8": "int8"}
# The pipeline builds in a staging folder ``.<name>.<random>.partial`` beside the final ``<name>``.
_STAGING = re.compile(r"^\.(?P<name>.+)\.[^.]+\.partial$")


def convert(src: Path, dst: Path, options: ConvertOptions) -> ConvertResult:
    """Build ``dst/model.engine`` (batch 1..max_batch, opt = max_batch) and ``dst/timing.cache`` from ``src``.

    Args:
        src: ``model.onnx`` of the ``onnx``, ``onnx-fp16`` or ``onnx-int8-qdq`` artifact.
        dst: an empty folder.
        options: ``target``, ``max_batch``, ``workspace_mb`` and ``input_size`` are used.

    Raises:
        BackendUnavailableError: tensorrt missing or unsupported, or no CUDA GPU.
        ConversionError: the ONNX parser or the engine build failed (the pipeline test-runs the engine after).
    """
    precision = _target_precision(options.target)
    trt = import_tensorrt()
    logger = trt_logger(trt)
    builder = make_builder(trt, logger)
    gpu = current_gpu()
    network, strongly_typed = create_network(trt, builder)
    _parser = parse_onnx(trt, network, logger, Path(src))  # keep the parser alive until the build is done
    input_name, chw = _network_input(network, options.input_size)
    config = builder_config(trt, builder, options, precision, input_name, chw)
    cache = load_timing_cache(config, Path(dst))
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise ConversionError(one_line(str(src), "TensorRT engine build failed",
                                       "rerun with PPDEPLOY_TRT_VERBOSE=1 for TensorRT's log"))
    atomic_write_bytes(Path(dst) / ENGINE_FILE, memoryview(plan))
    atomic_write_bytes(Path(dst) / TIMING_CACHE, memoryview(config.get_timing_cache().serialize()))
    return ConvertResult(ENGINE_FILE, precision, info={
        "gpu": gpu,
        "tensorrt_version": trt.__version__,
        "input_name": input_name,
        "input_size": chw[1],
        "max_batch": options.max_batch,
        "opt_batch": options.max_batch,
        "workspace_mb": options.workspace_mb,
        "strongly_typed": strongly_typed,
        "tf32": precision != "fp32",
        "inference_precision": INFERENCE_PRECISION[precision],
        "timing_cache": TIMING_CACHE,
        "timing_cache_seeded": cache,
    })


def _target_precision(target: str) -> str:
    if target not in PRECISIONS:
        raise ConversionError(one_line(f"target '{target}'", "not served by onnx_to_trt",
                                       "choose one of: " + ", ".join(PRECISIONS)))
    return PRECISIONS[target]


def make_builder(trt, logger):
    """``trt.Builder``; without a usable GPU TensorRT raises TypeError (factory returned nullptr)."""
    try:
        return trt.Builder(logger)
    except TypeError as exc:
        raise BackendUnavailableError(one_line(NO_GPU, "TensorRT could not initialise CUDA", NO_GPU_FIX)) from exc


def create_network(trt, builder) -> tuple[object, bool]:
    """An explicit-batch, strongly typed network (11: always both; 10: ask for strong typing)."""
    flags = 0
    major = int(trt.__version__.split(".")[0])
    if major == 10 and hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"):
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    return builder.create_network(flags), major >= 11 or flags != 0


def parse_onnx(trt, network, logger, src: Path):
    """Parse ``src`` into ``network`` (``parse_from_file`` also finds external weight files beside it)."""
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(src)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise ConversionError(one_line(str(src), "TensorRT's ONNX parser failed: " + "; ".join(errors)[:400],
                                       "check the opset and the ONNX model (deploy convert ... --to onnx)"))
    return parser


def _network_input(network, input_size: int) -> tuple[str, tuple[int, int, int]]:
    """The image input's name and C×H×W (the model's static H/W win over ``input_size``)."""
    if network.num_inputs != 1:
        raise ConversionError(one_line("ONNX model", f"has {network.num_inputs} inputs", "expected one image input"))
    tensor = network.get_input(0)
    dims = list(tensor.shape)
    if len(dims) != 4:
        raise ConversionError(one_line(f"input '{tensor.name}'", f"shape {dims}", "expected [N, 3, H, W]"))
    channels = dims[1] if dims[1] > 0 else 3
    height = dims[2] if dims[2] > 0 else input_size
    width = dims[3] if dims[3] > 0 else input_size
    return tensor.name, (int(channels), int(height), int(width))


def builder_config(trt, builder, options: ConvertOptions, precision: str, input_name: str,
                   chw: tuple[int, int, int]):
    """Workspace limit, the batch profile 1..max_batch (opt = max), and TF32 off for fp32."""
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(options.workspace_mb) << 20)
    profile = builder.create_optimization_profile()
    profile.set_shape(input_name, min=(1, *chw), opt=(options.max_batch, *chw), max=(options.max_batch, *chw))
    config.add_optimization_profile(profile)
    if precision == "fp32":
        config.clear_flag(trt.BuilderFlag.TF32)  # on by default; fp32 parity needs it off
    return config


def load_timing_cache(config, dst: Path) -> bool:
    """Attach a timing cache, seeded from the artifact this build replaces when it has one.

    Returns:
        Whether a previous cache was found and used.
    """
    seed = b""
    for candidate in _timing_cache_candidates(dst):
        if candidate.is_file():
            seed = candidate.read_bytes()
            break
    cache = config.create_timing_cache(seed)
    if not config.set_timing_cache(cache, ignore_mismatch=False):
        cache = config.create_timing_cache(b"")  # a cache from another TensorRT/GPU: start afresh
        config.set_timing_cache(cache, ignore_mismatch=False)
        return False
    return bool(seed)


def _timing_cache_candidates(dst: Path) -> list[Path]:
    candidates = [dst / TIMING_CACHE]
    staging = _STAGING.match(dst.name)
    if staging:
        candidates.append(dst.parent / staging.group("name") / TIMING_CACHE)
    return candidates


# Each engine is built from the ONNX artifact of its precision (int8: the calibrated symmetric QDQ model; onnx-int8's
# uint8 activations have non-zero zero points, which TensorRT rejects).
TARGETS = tuple(register_target(Target(
    name, "tensorrt", precision, __name__, source=source, requires=("tensorrt",), extra="gpu", tools=("tensorrt",),
    needs_gpu=True, check=gpu_check)) for name, precision, source in (
        ("trt-fp32", "fp32", "onnx"), ("trt-fp16", "fp16", "onnx-fp16"), ("trt-int8", "int8", "onnx-int8-qdq")))
