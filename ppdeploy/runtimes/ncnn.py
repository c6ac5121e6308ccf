"""ncnn backend (Tencent's on-device runtime): runs ``ncnn`` and ``ncnn-fp16`` artifacts (``.param`` + ``.bin``).

What it computes in. ncnn's default options store weights in fp16 wherever the CPU can convert them (``F16C`` on
x86, every ARMv8 phone) and compute in fp16 on ARMv8.2: an fp32 artifact run with the defaults is not fp32.
Measured on this project's x86 machine, seeded ResNet18_vd on 120 judge photos against ONNX Runtime: max abs
7.3e-4 with the defaults, 6.5e-6 with fp16 storage off. So the options are always set explicitly: fp32 artifacts
with every fp16/bf16 option off, fp16 artifacts with fp16 weight storage on; fp16 *arithmetic* stays off for both,
so every layer computes in fp32 (``details["inference_precision"] == "f32"``; an fp16 artifact's weights are
fp16). On this machine the fp16 artifact gave bit-identical outputs with the defaults and with these settings.

ncnn has no batch dimension: a batch runs image by image through one extractor each.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from ppdeploy.artifacts import artifact_model_file, load_manifest
from ppdeploy.errors import ArtifactError, one_line
from ppdeploy.registry import Backend, register_backend
from ppdeploy.runtimes.base import Runtime, TensorSpec

if TYPE_CHECKING:
    import numpy as np

# ncnn.Option fields pinned for each artifact precision (see the module docstring).
OPTIONS = {
    "fp32": {"use_fp16_packed": False, "use_fp16_storage": False, "use_fp16_arithmetic": False,
             "use_bf16_storage": False, "use_bf16_packed": False},
    "fp16": {"use_fp16_packed": True, "use_fp16_storage": True, "use_fp16_arithmetic": False,
             "use_bf16_storage": False, "use_bf16_packed": False},
}


class NcnnRuntime(Runtime):
    """An ``ncnn.Net`` over an artifact's ``model.ncnn.param`` and ``model.ncnn.bin``, options pinned."""

    name = "ncnn"

    def _load(self) -> None:
        import ncnn

        manifest = load_manifest(self.artifact_dir)
        precision = str(manifest.get("precision", "unknown"))
        self._net = open_net(ncnn, manifest, self.artifact_dir, self.threads)
        self._blobs = (manifest["ncnn_input"], manifest["ncnn_output"])
        size, classes = int(manifest["input_size"]), int(manifest["output_classes"])
        self.inputs = (TensorSpec(manifest["input_name"], (None, 3, size, size), "float32"),)
        self.outputs = (TensorSpec(manifest["output_name"], (None, classes), "float32"),)
        self.details = {"precision": precision, "inference_precision": "f32",
                        "weights_in_memory": "fp16" if precision == "fp16" else "fp32",
                        "threads": str(self._net.opt.num_threads), "ncnn": ncnn.__version__}

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        return run_images(self._net, self._blobs, batch)

    def close(self) -> None:
        if getattr(self, "_net", None) is not None:
            self._net.clear()
        self._net = None
        super().close()


def open_net(ncnn, manifest: dict, artifact_dir, threads: int | None):
    """An ``ncnn.Net`` with the artifact's options, or a one-line ``ArtifactError``."""
    param = artifact_model_file(artifact_dir, manifest)
    weights = param.with_name(manifest.get("ncnn_weights", "model.ncnn.bin"))
    fix = (f"delete {param.parent} and reconvert: deploy convert {manifest.get('model_name', 'MODEL')} "
           f"--to {manifest.get('target', 'ncnn')}")
    if not weights.is_file():
        raise ArtifactError(one_line(str(weights), "missing from the artifact", fix))
    net = ncnn.Net()
    for name, value in OPTIONS.get(str(manifest.get("precision")), OPTIONS["fp32"]).items():
        setattr(net.opt, name, value)
    net.opt.num_threads = int(threads or len(os.sched_getaffinity(0)))
    for path, load in ((param, net.load_param), (weights, net.load_model)):
        if load(str(path)) != 0:
            raise ArtifactError(one_line(str(path), "ncnn cannot load it", fix))
    return net


def run_images(net, blobs: tuple[str, str], batch: np.ndarray) -> np.ndarray:
    """Run a float32 NCHW batch image by image (ncnn has no batch dimension) and stack the outputs."""
    import ncnn
    import numpy as np

    rows = []
    for image in batch:
        with net.create_extractor() as extractor:
            extractor.input(blobs[0], ncnn.Mat(np.ascontiguousarray(image)))
            status, out = extractor.extract(blobs[1])
            if status != 0:
                raise ArtifactError(one_line(f"ncnn blob '{blobs[1]}'", f"extract failed ({status})",
                                             "delete the artifact folder and reconvert"))
            rows.append(np.array(out, dtype=np.float32, copy=True).reshape(-1))
    return np.stack(rows)


def precision_probe() -> str:
    """``deploy doctor``: the CPU features ncnn detects, and the precision ppdeploy pins."""
    import ncnn

    features = {"avx2": ncnn.cpu_support_x86_avx2(), "arm fp16 (asimdhp)": ncnn.cpu_support_arm_asimdhp()}
    found = ", ".join(f"{name}={'yes' if bool(value) else 'no'}" for name, value in features.items())
    return (f"ncnn detects {found}; ppdeploy pins fp32 compute (fp16 storage only for fp16 artifacts, fp16 "
            "arithmetic off)")


def raw_call(runtime: NcnnRuntime, artifact_dir: str, threads: int):
    """A second ``ncnn.Net`` with the same options, one extractor per image (bench overhead)."""
    import ncnn

    manifest = load_manifest(artifact_dir)
    net = open_net(ncnn, manifest, artifact_dir, threads)
    blobs = (manifest["ncnn_input"], manifest["ncnn_output"])
    return "ncnn Extractor.extract per image", lambda batch: run_images(net, blobs, batch)


BACKEND = register_backend(Backend(
    name="ncnn", runtime=NcnnRuntime, imports=("ncnn",), extra="edge", distributions=("ncnn",),
    default_target="ncnn", precision_probe=precision_probe, raw_call=raw_call))
