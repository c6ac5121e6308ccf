"""The NVIDIA stack, shared by the TensorRT converter and runtime, ``doctor`` and the artifact cache keys: whether a
CUDA GPU is present, its name and compute capability, and the checked ``tensorrt`` import.

Every ``tensorrt``/``cuda``/``torch`` import is inside a function, so this module imports on any machine.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

from ppdeploy.errors import BackendUnavailableError, one_line

INSTALL_HINT = "pip install 'ppdeploy[gpu]' on a machine with an NVIDIA GPU"
NO_GPU = "no CUDA GPU"
NO_GPU_FIX = "install the NVIDIA driver on a machine with a GPU, or use the onnx or openvino backend here"
SUPPORTED_MAJORS = (10, 11)


def cuda_runtime():
    """cuda-python's runtime module (``cuda.bindings.runtime``, or ``cuda.cudart`` before 12.6), else ``None``."""
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        try:
            from cuda import cudart
        except ImportError:
            return None
    return cudart


def gpu_present() -> bool:
    """Whether a CUDA device is visible: cuda-python's device count when installed, else the driver's files."""
    cudart = cuda_runtime()
    if cudart is not None:
        err, count = cudart.cudaGetDeviceCount()
        return err == cudart.cudaError_t.cudaSuccess and count > 0
    return Path("/dev/nvidia0").exists() or Path("/dev/dxg").exists() or shutil.which("nvidia-smi") is not None


def current_gpu(device: int = 0) -> dict[str, str]:
    """``{"name": ..., "compute_capability": "8.6"}`` of CUDA device ``device``.

    Raises:
        BackendUnavailableError: no CUDA device, or neither cuda-python nor torch to ask.
    """
    cudart = cuda_runtime()
    if cudart is not None:
        err, props = cudart.cudaGetDeviceProperties(device)
        if err != cudart.cudaError_t.cudaSuccess:
            raise BackendUnavailableError(one_line(NO_GPU, f"cudaGetDeviceProperties: {err}", NO_GPU_FIX))
        name = props.name.decode(errors="replace") if isinstance(props.name, bytes) else str(props.name)
        return {"name": name.split("\x00")[0].strip(), "compute_capability": f"{props.major}.{props.minor}"}
    if importlib.util.find_spec("torch") is not None:
        import torch

        if not torch.cuda.is_available():
            raise BackendUnavailableError(one_line(NO_GPU, "torch sees no CUDA device", NO_GPU_FIX))
        major, minor = torch.cuda.get_device_capability(device)
        return {"name": torch.cuda.get_device_name(device), "compute_capability": f"{major}.{minor}"}
    raise BackendUnavailableError(one_line("TensorRT backend", "neither cuda-python nor torch is installed",
                                           INSTALL_HINT))


def import_tensorrt():
    """``import tensorrt``, checked to be a supported major version."""
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise BackendUnavailableError(one_line("backend 'tensorrt'", f"cannot import tensorrt ({exc})",
                                               INSTALL_HINT)) from exc
    major = int(trt.__version__.split(".")[0])
    if major not in SUPPORTED_MAJORS:
        raise BackendUnavailableError(one_line("backend 'tensorrt'", f"TensorRT {trt.__version__} is not supported",
                                               "install TensorRT 10.x or 11.x: " + INSTALL_HINT))
    return trt


def tensorrt_version() -> str:
    return import_tensorrt().__version__


def trt_logger(trt):
    """One process-wide logger (TensorRT keeps a pointer to it for the lifetime of its objects)."""
    global _LOGGER
    if _LOGGER is None:
        verbose = os.environ.get("PPDEPLOY_TRT_VERBOSE") == "1"
        _LOGGER = trt.Logger(trt.Logger.VERBOSE if verbose else trt.Logger.WARNING)
    return _LOGGER


_LOGGER = None


def gpu_check() -> tuple[bool, str]:
    """A cheap device check (no CUDA context is created), for the availability of GPU-only backends and targets."""
    return (True, "") if gpu_present() else (False, one_line(NO_GPU, NO_GPU_FIX))
