"""ONNX Runtime backend: runs ``onnx``, ``onnx-fp16``, ``onnx-int8`` and ``onnx-int8-qdq`` artifacts on CPU or GPU."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ppdeploy.artifacts import artifact_model_file, load_manifest
from ppdeploy.errors import ArtifactError, BackendUnavailableError, one_line
from ppdeploy.fsutil import cache_home
from ppdeploy.registry import Backend, register_backend
from ppdeploy.runtimes.base import Runtime, TensorSpec

if TYPE_CHECKING:
    import numpy as np

CPU_EP = "CPUExecutionProvider"
CUDA_EP = "CUDAExecutionProvider"
TRT_EP = "TensorrtExecutionProvider"
GPU_FIX = ("pip uninstall -y onnxruntime onnxruntime-gpu && pip install onnxruntime-gpu "
           "(keep only the GPU wheel: with both installed, the last one wins and CUDA silently disappears)")
_ORT_DTYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(double)": "float64",
               "tensor(int64)": "int64", "tensor(int32)": "int32", "tensor(int8)": "int8", "tensor(uint8)": "uint8"}


class OrtRuntime(Runtime):
    """ONNX Runtime session over an artifact's ``model.onnx``.

    CPU uses the CPU provider with ``threads`` intra-op threads. GPU asks for TensorRT, then CUDA, then CPU,
    and refuses to run if neither GPU provider really became active; ``details["provider"]`` names the one
    that runs.
    """

    name = "onnx"

    def _load(self) -> None:
        import onnxruntime as ort

        manifest = load_manifest(self.artifact_dir)
        model_file = artifact_model_file(self.artifact_dir, manifest)
        providers = self._providers(ort, manifest) if self.device == "gpu" else [CPU_EP]
        lanes, threads = self.lane_plan() if self.device == "cpu" else (1, self.threads)
        sessions = [_open_session(ort, model_file, providers, threads, manifest) for _ in range(lanes)]
        self._session, self.requests = sessions[0], lanes
        active = self._session.get_providers()[0]
        if self.device == "gpu" and active not in (TRT_EP, CUDA_EP):
            raise BackendUnavailableError(one_line("backend 'onnx' on gpu",
                                                   f"the CUDA provider did not start (running on {active}; "
                                                   "CUDA 13 / cuDNN 9 libraries missing?)", GPU_FIX))
        self.inputs = tuple(_spec(arg) for arg in self._session.get_inputs())
        self.outputs = tuple(_spec(arg) for arg in self._session.get_outputs())
        self._output_name = self.outputs[0].name
        self._lanes = [self._lane(session) for session in sessions] if lanes > 1 else []
        self.details = {"provider": active, "precision": str(manifest.get("precision", "unknown")),
                        "graph_optimization": "all", "threads": str(threads or "auto"),
                        "onnxruntime": ort.__version__}

    def _providers(self, ort, manifest: dict[str, Any]) -> list:
        available = ort.get_available_providers()
        if CUDA_EP not in available:
            raise BackendUnavailableError(one_line("backend 'onnx' on gpu",
                                                   f"onnxruntime {ort.__version__} has no {CUDA_EP} "
                                                   f"(available: {', '.join(available)})", GPU_FIX))
        providers: list = []
        if TRT_EP in available:
            providers.append((TRT_EP, _trt_options(manifest)))
        return providers + [(CUDA_EP, {"device_id": 0}), CPU_EP]

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        return self._lane(self._session)(batch)

    def _lane(self, session) -> Callable[[np.ndarray], np.ndarray]:
        """A call of ``session`` on one batch (throughput mode: one session per request in flight)."""
        import numpy as np

        names, input_name = [self._output_name], self.inputs[0].name
        return lambda batch: session.run(names, {input_name: batch})[0].astype(np.float32, copy=False)

    def close(self) -> None:
        self._session = None
        super().close()


def _open_session(ort, model_file: Path, providers: list, threads: int | None, manifest: dict[str, Any]):
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads or 0  # 0: ORT picks the physical core count
    options.log_severity_level = 3  # ORT's own warnings (e.g. provider fallback) are reported via details
    try:
        return ort.InferenceSession(str(model_file), sess_options=options, providers=providers)
    except Exception as exc:  # ORT raises its own Fail/InvalidProtobuf/InvalidGraph types
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        fix = (f"delete {model_file.parent} and reconvert: deploy convert {manifest.get('model_name', 'MODEL')} "
               f"--to {manifest.get('target', 'onnx')}")
        raise ArtifactError(one_line(str(model_file), f"ONNX Runtime cannot load it ({reason})", fix)) from exc


def _trt_options(manifest: dict[str, Any]) -> dict[str, Any]:
    """TensorRT provider options: engine cache outside the artifact, precision and shape range from the manifest."""
    options: dict[str, Any] = {
        "device_id": 0,
        "trt_engine_cache_enable": True,
        "trt_engine_cache_path": str(cache_home() / "ort-trt-cache"),
        "trt_timing_cache_enable": True,
        "trt_fp16_enable": manifest.get("precision") == "fp16",
        "trt_int8_enable": manifest.get("precision") == "int8",  # explicit Q/DQ: no calibration table needed
    }
    shape_range = manifest.get("input_shape_range") or {}
    low, high, input_name = shape_range.get("min"), shape_range.get("max"), manifest.get("input_name")
    if input_name and low and high:
        # One engine for the whole batch range instead of one rebuild per new batch size.
        options["trt_profile_min_shapes"] = f"{input_name}:" + "x".join(map(str, low))
        options["trt_profile_opt_shapes"] = f"{input_name}:" + "x".join(map(str, high))
        options["trt_profile_max_shapes"] = f"{input_name}:" + "x".join(map(str, high))
    return options


def _spec(arg) -> TensorSpec:
    shape = tuple(dim if isinstance(dim, int) and dim > 0 else None for dim in arg.shape)
    return TensorSpec(arg.name, shape, _ORT_DTYPES.get(arg.type, arg.type))


def precision_probe() -> str:
    """``deploy doctor``: the execution providers this onnxruntime build has."""
    import onnxruntime as ort

    return "providers: " + ", ".join(ort.get_available_providers()) + " (fp32 unless the ONNX is fp16/int8)"


def raw_call(runtime: OrtRuntime, artifact_dir: str, threads: int):
    """A second InferenceSession with the wrapper's options, called through ``session.run`` (bench overhead)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(artifact_model_file(artifact_dir)), sess_options=options,
                                   providers=[CPU_EP])
    input_name, output_name = session.get_inputs()[0].name, session.get_outputs()[0].name
    return "onnxruntime InferenceSession.run", lambda batch: session.run([output_name], {input_name: batch})[0]


BACKEND = register_backend(Backend(
    name="onnx", runtime=OrtRuntime, imports=("onnxruntime",), extra="onnx",
    distributions=("onnxruntime", "onnxruntime-gpu"), exclusive=True, devices=("cpu", "gpu"), default_target="onnx",
    aliases=("onnxruntime", "ort"), auto={"cpu": (20, "onnx"), "gpu": (20, "onnx")},
    precision_probe=precision_probe, raw_call=raw_call, file_suffixes=(".onnx",),
    inspector="ppdeploy.foreign.onnx_files:inspect",
    fix_mixed={"gpu": "pip uninstall -y onnxruntime onnxruntime-gpu && pip install onnxruntime-gpu",
               "cpu": "pip uninstall -y onnxruntime onnxruntime-gpu && pip install onnxruntime"}))
