"""TensorRT backend: runs ``trt-fp32``, ``trt-fp16`` and ``trt-int8`` engines on an NVIDIA GPU.

Written for the TensorRT 10.x and 11.x Python API (``execute_async_v3`` with named tensors, dynamic batch via
``set_input_shape``). Device memory and the stream come from cuda-python (``cuda.bindings.runtime``), or from
torch when cuda-python is absent. Every ``tensorrt``/``cuda``/``torch`` import is inside a function, so this
module imports on any machine. Not run in CI: there is no GPU there (tests/converters/test_tensorrt.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from ppdeploy.artifacts import artifact_model_file, check_compatible, load_manifest
from ppdeploy.errors import ArtifactError, BackendUnavailableError, InputSpecError, one_line
from ppdeploy.gpu import (
    NO_GPU,
    NO_GPU_FIX,
    cuda_runtime,
    current_gpu,
    gpu_check,
    import_tensorrt,
    tensorrt_version,
    trt_logger,
)
from ppdeploy.registry import Backend, register_backend
from ppdeploy.runtimes.base import Runtime, TensorSpec

if TYPE_CHECKING:
    import numpy as np


class TensorRtRuntime(Runtime):
    """A deserialized TensorRT engine with one execution context, device buffers and a non-default stream.

    The engine is refused before deserialization when its manifest names another TensorRT version or GPU.
    """

    name = "tensorrt"

    def __init__(self, artifact_dir: str | Path, *, device: str = "gpu", threads: int | None = None) -> None:
        self._runner: EngineRunner | None = None
        super().__init__(artifact_dir, device=device, threads=threads)

    def _load(self) -> None:
        manifest = load_manifest(self.artifact_dir)
        engine_file = artifact_model_file(self.artifact_dir, manifest)
        gpu = current_gpu()
        check_compatible({**manifest, "artifact_dir": str(self.artifact_dir)}, gpu=gpu)
        self._runner = EngineRunner(engine_file.read_bytes(), where=str(engine_file))
        self.inputs = (self._runner.input_spec(),)
        self.outputs = (self._runner.output_spec(),)
        self.details = {"device": gpu["name"], "compute_capability": gpu["compute_capability"],
                        "precision": str(manifest.get("precision", "unknown")),
                        "inference_precision": str(manifest.get("inference_precision", manifest.get("precision"))),
                        "tf32": str(manifest.get("tf32", "unknown")), "max_batch": str(self._runner.max_batch),
                        "tensorrt": tensorrt_version(), "memory": self._runner.memory.kind}

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        return self._runner.run(batch)

    def close(self) -> None:
        if self._runner is not None:
            self._runner.close()
            self._runner = None
        super().close()




# --------------------------------------------------------------------------- device memory


def device_memory() -> CudaPythonMemory | TorchMemory:
    """Device memory through cuda-python when installed, else through torch."""
    cudart = cuda_runtime()
    return CudaPythonMemory(cudart) if cudart is not None else TorchMemory()


class CudaPythonMemory:
    """Raw device allocations, async copies and one non-default stream via ``cuda.bindings.runtime``."""

    kind = "cuda-python"

    def __init__(self, cudart) -> None:
        self._cudart = cudart
        self._pointers: list[int] = []
        self.stream = self._check(cudart.cudaStreamCreate(), "cudaStreamCreate")
        self.stream_handle = int(self.stream)

    def alloc(self, nbytes: int) -> int:
        pointer = int(self._check(self._cudart.cudaMalloc(nbytes), "cudaMalloc"))
        self._pointers.append(pointer)
        return pointer

    def upload(self, pointer: int, array: np.ndarray) -> None:
        kind = self._cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        self._check(self._cudart.cudaMemcpyAsync(pointer, array.ctypes.data, array.nbytes, kind, self.stream),
                    "cudaMemcpyAsync")

    def download(self, array: np.ndarray, pointer: int) -> None:
        kind = self._cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        self._check(self._cudart.cudaMemcpyAsync(array.ctypes.data, pointer, array.nbytes, kind, self.stream),
                    "cudaMemcpyAsync")
        self._check(self._cudart.cudaStreamSynchronize(self.stream), "cudaStreamSynchronize")

    def close(self) -> None:
        for pointer in self._pointers:
            self._cudart.cudaFree(pointer)
        self._pointers = []
        self._cudart.cudaStreamDestroy(self.stream)

    def _check(self, result: tuple, call: str):
        err, *values = result
        if err != self._cudart.cudaError_t.cudaSuccess:
            raise RuntimeError(f"{call} failed: {err}")
        return values[0] if values else None


class TorchMemory:
    """The same interface over torch CUDA tensors and a ``torch.cuda.Stream``."""

    kind = "torch"

    def __init__(self) -> None:
        import torch

        self._torch = torch
        self._buffers: dict[int, Any] = {}
        self.stream = torch.cuda.Stream()
        self.stream_handle = self.stream.cuda_stream

    def alloc(self, nbytes: int) -> int:
        buffer = self._torch.empty(nbytes, dtype=self._torch.uint8, device="cuda")
        self._buffers[buffer.data_ptr()] = buffer
        return buffer.data_ptr()

    def upload(self, pointer: int, array: np.ndarray) -> None:
        import numpy as np

        host = self._torch.from_numpy(array.reshape(-1).view(np.uint8))
        with self._torch.cuda.stream(self.stream):
            self._buffers[pointer][:array.nbytes].copy_(host, non_blocking=True)

    def download(self, array: np.ndarray, pointer: int) -> None:
        import numpy as np

        host = self._torch.from_numpy(array.reshape(-1).view(np.uint8))
        with self._torch.cuda.stream(self.stream):
            host.copy_(self._buffers[pointer][:array.nbytes])  # blocking: waits for the stream's work
        self.stream.synchronize()

    def close(self) -> None:
        self._buffers = {}


# --------------------------------------------------------------------------- engine execution


class EngineRunner:
    """Deserialize an engine and run float32 batches through it (one image input, one output).

    Args:
        plan: the serialized engine.
        where: the file it came from, for messages.
    """

    def __init__(self, plan: bytes, *, where: str) -> None:
        trt = import_tensorrt()
        self._trt = trt
        try:
            runtime = trt.Runtime(trt_logger(trt))
        except TypeError as exc:  # "pybind11::init(): factory function returned nullptr": CUDA init failed
            raise BackendUnavailableError(one_line(NO_GPU, "TensorRT could not initialise CUDA", NO_GPU_FIX)) from exc
        self._runtime = runtime
        self.engine = runtime.deserialize_cuda_engine(plan)
        if self.engine is None:
            raise ArtifactError(one_line(where, "TensorRT cannot deserialize this engine (corrupt, or built by "
                                         "another TensorRT/GPU)", "delete the folder and reconvert"))
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.input_name = next(n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT)
        self.output_name = next(n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT)
        _, _, max_shape = self.engine.get_tensor_profile_shape(self.input_name, 0)
        self.max_batch = int(max_shape[0])
        self.memory = device_memory()
        self._allocate(tuple(int(d) for d in max_shape))

    def _allocate(self, max_input: tuple[int, ...]) -> None:
        import numpy as np

        self.context.set_input_shape(self.input_name, max_input)
        max_output = tuple(int(d) for d in self.context.get_tensor_shape(self.output_name))
        self._in_dtype = np.dtype(self._trt.nptype(self.engine.get_tensor_dtype(self.input_name)))
        self._out_dtype = np.dtype(self._trt.nptype(self.engine.get_tensor_dtype(self.output_name)))
        self._in_ptr = self.memory.alloc(int(np.prod(max_input)) * self._in_dtype.itemsize)
        self._out_ptr = self.memory.alloc(int(np.prod(max_output)) * self._out_dtype.itemsize)
        self.context.set_tensor_address(self.input_name, self._in_ptr)
        self.context.set_tensor_address(self.output_name, self._out_ptr)

    def input_spec(self) -> TensorSpec:
        shape = tuple(None if d < 0 else int(d) for d in self.engine.get_tensor_shape(self.input_name))
        return TensorSpec(self.input_name, shape, self._in_dtype.name)

    def output_spec(self) -> TensorSpec:
        shape = tuple(None if d < 0 else int(d) for d in self.engine.get_tensor_shape(self.output_name))
        return TensorSpec(self.output_name, shape, self._out_dtype.name)

    def run(self, batch: np.ndarray) -> np.ndarray:
        """Copy ``batch`` in, execute on the runner's stream, copy the output out (a new array)."""
        import numpy as np

        if batch.shape[0] > self.max_batch:
            raise InputSpecError(one_line(f"input '{self.input_name}'", f"batch {batch.shape[0]}",
                                          f"this engine takes 1..{self.max_batch}; reconvert with a larger "
                                          "--max-batch or split the batch"))
        batch = np.ascontiguousarray(batch, dtype=self._in_dtype)
        self.context.set_input_shape(self.input_name, tuple(batch.shape))
        output = np.empty(tuple(self.context.get_tensor_shape(self.output_name)), dtype=self._out_dtype)
        self.memory.upload(self._in_ptr, batch)
        if not self.context.execute_async_v3(self.memory.stream_handle):
            raise RuntimeError("TensorRT execute_async_v3 failed")
        self.memory.download(output, self._out_ptr)
        return output.astype(np.float32, copy=False)

    def close(self) -> None:
        self.context = None
        self.engine = None
        self.memory.close()


BACKEND = register_backend(Backend(
    name="tensorrt", runtime=TensorRtRuntime, imports=("tensorrt",), extra="gpu",
    distributions=("tensorrt", "tensorrt-cu13", "tensorrt-cu12"), devices=("gpu",), default_target="trt-fp32",
    aliases=("trt",), auto={"gpu": (10, "trt-fp16")}, check=gpu_check, file_suffixes=(".engine", ".plan", ".trt"),
    inspector="ppdeploy.foreign.tensorrt_files:inspect"))
