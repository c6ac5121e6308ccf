"""MNN backend (Alibaba's on-device runtime): runs ``mnn`` and ``mnn-fp16`` artifacts on the CPU.

What it computes in. The module is loaded with ``PrecisionMode.High``, MNN's "always fp32" setting: with
``Normal``/``Low`` an ARMv8.2 phone computes in fp16 and a CPU with bf16 support in bf16, which would be a silent
change of precision. An fp16 artifact holds fp16 convolution weights (``mnnconvert --fp16``) that MNN widens to
fp32 at load, so it computes in fp32 (``details["inference_precision"] == "f32"``). Measured on this project's
x86 machine (no native fp16): High, Normal, Low and Low_BF16 gave bit-identical outputs for fp32 and fp16
artifacts, which is what MNN's own line ``The device supports: ... fp16:0`` says (``deploy doctor`` shows it).

MNN prints that line to the process's stdout (C ``printf``) the first time it is imported; the import is done with
stdout pointed at stderr so that ``deploy run --json`` keeps a clean stdout.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING

from ppdeploy.artifacts import artifact_model_file, load_manifest
from ppdeploy.errors import ArtifactError, first_line, one_line
from ppdeploy.registry import Backend, register_backend
from ppdeploy.runtimes.base import Runtime, TensorSpec

if TYPE_CHECKING:
    import numpy as np

COMPUTE = {"fp32": "f32", "fp16": "f32", "int8": "f32"}  # int8: the unquantized layers (runs_as says "int8 (f32 ...)")


@contextlib.contextmanager
def stdout_to_stderr() -> Iterator[None]:
    """Send what C code prints to file descriptor 1 to stderr meanwhile (MNN's import banner)."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def import_mnn():
    """``import MNN`` without its banner on stdout."""
    if "MNN" not in sys.modules:
        with stdout_to_stderr():
            import MNN  # noqa: F401
    return sys.modules["MNN"]


class MnnRuntime(Runtime):
    """An MNN ``Module`` over an artifact's ``model.mnn`` (batch dynamic, fp32 compute pinned)."""

    name = "mnn"

    def _load(self) -> None:
        mnn = import_mnn()
        manifest = load_manifest(self.artifact_dir)
        model_file = artifact_model_file(self.artifact_dir, manifest)
        size, classes = int(manifest["input_size"]), int(manifest["output_classes"])
        self._module = load_module(mnn, str(model_file), manifest, self.threads)
        self.inputs = (TensorSpec(manifest["input_name"], (None, 3, size, size), "float32"),)
        self.outputs = (TensorSpec(manifest["output_name"], (None, classes), "float32"),)
        precision = str(manifest.get("precision", "unknown"))
        self.details = {"precision": precision, "inference_precision": COMPUTE.get(precision, "f32"),
                        "precision_mode": "High", "threads": str(self.threads or "auto"),
                        "mnn": mnn.version()}

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        import numpy as np

        expr = sys.modules["MNN"].expr
        result = self._module.forward([expr.const(batch, list(batch.shape), expr.NCHW)])[0]
        # read() views MNN's buffer, which the next forward reuses: hand out a copy.
        return np.array(expr.convert(result, expr.NCHW).read(), dtype=np.float32, copy=True)

    def close(self) -> None:
        self._module = None
        super().close()


def load_module(mnn, model_file: str, manifest: dict, threads: int | None):
    """``MNN.nn.load_module_from_file`` with fp32 compute pinned and a one-line ``ArtifactError``."""
    expr = mnn.expr
    try:
        module = mnn.nn.load_module_from_file(
            model_file, [manifest["input_name"]], [manifest["output_name"]], shape_mutable=True,
            backend=expr.Backend.CPU, precision_mode=expr.PrecisionMode.High,
            thread_num=int(threads or len(os.sched_getaffinity(0))))
    except Exception as exc:  # MNN raises plain RuntimeError/TypeError
        module, reason = None, first_line(exc)
    else:
        reason = "it loaded as nothing"
    if module is None:
        raise ArtifactError(one_line(model_file, f"MNN cannot load it ({reason})",
                                     f"delete {os.path.dirname(model_file)} and reconvert: deploy convert "
                                     f"{manifest.get('model_name', 'MODEL')} --to {manifest.get('target', 'mnn')}"))
    return module


def precision_probe() -> str:
    """``deploy doctor``: what MNN itself reports about this CPU (its import banner, read in a child process)."""
    done = subprocess.run([sys.executable, "-c", "import MNN"], capture_output=True, text=True, timeout=60)
    banner = next((line.strip() for line in done.stdout.splitlines() if "supports" in line), "no banner")
    return f"MNN says: {banner}; ppdeploy pins PrecisionMode.High (fp32 compute; fp16 artifacts are widened to fp32)"


def raw_call(runtime: MnnRuntime, artifact_dir: str, threads: int):
    """The same model loaded again with the same settings, called through ``Module.forward`` (bench overhead)."""
    mnn = import_mnn()
    manifest = load_manifest(artifact_dir)
    module = load_module(mnn, str(artifact_model_file(artifact_dir, manifest)), manifest, threads)
    expr = mnn.expr

    def infer(batch):
        return module.forward([expr.const(batch, list(batch.shape), expr.NCHW)])[0].read()

    return "MNN Module.forward", infer


BACKEND = register_backend(Backend(
    name="mnn", runtime=MnnRuntime, imports=("MNN",), extra="edge", distributions=("mnn",), default_target="mnn",
    precision_probe=precision_probe, raw_call=raw_call))
